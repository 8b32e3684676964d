"""Spinal-cord workflow: reorient → segment → binarise → measure CSA → back to native grid → QC figures → write."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from bids_app.bids import InputImage
from bids_app.interfaces import DerivativesSink, Reorient
from bids_app.spinalcord.qc import VIEWS
from bids_app.spinalcord.interfaces import Binarise, MeasureCSA, Segment, ToNative
from bids_app.tasks import Task
from bids_app.workflows import connect_figures

LOGGER = logging.getLogger(__name__)


def init_spinalcord_wf(
    task: Task,
    image: InputImage,
    output_dir: Path,
    model_dir: Path,
    model: dict[str, str],
    version: str,
    device: str = "cpu",
    omp_nthreads: int = 1,
    level_file: Path | None = None,
    manual_files: Sequence[Path] = (),
    companions: Mapping[str, InputImage] | None = None,
    name: str = "spinalcord_wf",
) -> pe.Workflow:
    """Segment the cord of one image and measure its CSA.

    Outputs (on the image's native grid) are the soft segmentation (``probseg``, 0..1), the binary
    mask (``mask``) and two CSA tables (``morph``: per slice and per level), all under ``output_dir``.
    ``level_file`` (disc labels or a levelled cord mask) enables the per-level table; without it the
    table is per 10 mm slab. ``manual_files`` (manual cord masks of this image; the first is used) add validation
    columns (Dice, manual CSA). ``companions`` is accepted for the common factory signature and unused
    (the cord model takes one image of any contrast).
    """
    if level_file is None:
        LOGGER.warning("%s: no disc labels or levelled cord mask for this participant/session under the labels "
                       "folder; CSA is reported per 10 mm slab, not per vertebral level (README: Vertebral levels).",
                       image.relpath)
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=["in_file"]), name="inputnode")
    inputnode.inputs.in_file = str(image.path)

    reorient = pe.Node(Reorient(), name="reorient")
    segment = pe.Node(Segment(model_dir=str(model_dir), device=device, num_threads=omp_nthreads), name="segment",
                      n_procs=omp_nthreads)
    # Nipype's MultiProc schedules GPU nodes only on n_gpu_procs slots.
    segment.use_gpu = device == "cuda"
    binarise = pe.Node(Binarise(model_dir=str(model_dir)), name="binarise")
    measure = pe.Node(MeasureCSA(), name="measure")
    if level_file is not None:
        measure.inputs.level_file = str(level_file)
    if manual_files:
        measure.inputs.manual_file = str(manual_files[0])
    soft_native = pe.Node(ToNative(reference=str(image.path)), name="soft_native")
    mask_native = pe.Node(ToNative(reference=str(image.path)), name="mask_native")

    common = dict(output_dir=str(output_dir), source_relpath=image.relpath, source_entities=image.entities,
                  label=task.label, model=model, version=version)
    ds_probseg = pe.Node(DerivativesSink(suffix="probseg", extra={"Description": PROBSEG_DESCRIPTION}, **common),
                         name="ds_probseg", run_without_submitting=True)
    ds_mask = pe.Node(DerivativesSink(suffix="mask", **common), name="ds_mask", run_without_submitting=True)
    ds_slices = pe.Node(DerivativesSink(suffix="morph", desc_extra="slices", **common), name="ds_slices",
                        run_without_submitting=True)
    ds_levels = pe.Node(DerivativesSink(suffix="morph", desc_extra="levels", **common), name="ds_levels",
                        run_without_submitting=True)

    if level_file is not None:
        # Discs (as mapped onto this image) and CSA along the PAM50 template: only where levels are known.
        disc_native = pe.Node(ToNative(reference=str(image.path)), name="disc_native")
        # BIDS allows no label entity on a dseg: the discs are told apart by desc (<suffix>discs).
        ds_discs = pe.Node(DerivativesSink(suffix="dseg", desc_extra="discs", **{**common, "label": ""},
                                           extra={"Description": DISC_DESCRIPTION}),
                           name="ds_discs", run_without_submitting=True)
        ds_pam50 = pe.Node(DerivativesSink(suffix="morph", desc_extra="pam50", **common), name="ds_pam50",
                           run_without_submitting=True)
        workflow.connect([
            (measure, disc_native, [("disc_file", "in_file")]),
            (disc_native, ds_discs, [("out_file", "in_file")]),
            (measure, ds_pam50, [("pam50_tsv", "in_file"), (("summary", _columns_extra, "pam50"), "extra")]),
        ])
    workflow.connect([
        (inputnode, reorient, [("in_file", "in_file")]),
        (reorient, segment, [("out_file", "in_file")]),
        (segment, binarise, [("out_file", "in_file")]),
        (segment, measure, [("out_file", "soft_file")]),
        (binarise, measure, [("out_file", "mask_file")]),
        (segment, soft_native, [("out_file", "in_file")]),
        (binarise, mask_native, [("out_file", "in_file")]),
        (soft_native, ds_probseg, [("out_file", "in_file")]),
        (mask_native, ds_mask, [("out_file", "in_file")]),
        (binarise, ds_mask, [(("threshold", _threshold_extra), "extra")]),
        (measure, ds_slices, [("slices_tsv", "in_file"), (("summary", _columns_extra, "slices"), "extra")]),
        (measure, ds_levels, [("levels_tsv", "in_file"), (("summary", _columns_extra, "levels"), "extra")]),
    ])
    # QC figures: the image with the native-grid soft map and mask.
    connect_figures(workflow, task, VIEWS, common, [(inputnode, "in_file"), (soft_native, "out_file"),
                                                   (mask_native, "out_file")])
    return workflow


PROBSEG_DESCRIPTION = ("Soft spinal-cord segmentation: per-voxel cord fraction in [0, 1] on the source grid "
                       "(partial volume preserved), from the contrast-agnostic cord model.")


DISC_DESCRIPTION = ("Intervertebral disc labels on the source grid, SCT convention: value n marks the disc at the "
                    "top of vertebra n (3 = C2/C3), one voxel each on the cord centreline at the disc's height; "
                    "from the user's disc labels or levelled cord mask of this session, mapped through world "
                    "coordinates. Correct them and save as derivatives/labels/<stem>_label-disc_seg.nii.gz to "
                    "use them as input.")


def _threshold_extra(threshold: float) -> dict:
    return {"Type": "ROI", "Threshold": threshold,
            "Description": "Binary spinal-cord mask: soft segmentation >= Threshold, largest connected component."}


def _columns_extra(summary: dict, table: str) -> dict:
    """Sidecar of a CSA table: the run's summary values plus a description of every column."""
    from bids_app.spinalcord.measures import LEVEL_COLUMNS, SLICE_COLUMNS
    from bids_app.spinalcord.vertebrae import PAM50_COLUMNS

    columns = {"slices": SLICE_COLUMNS, "levels": LEVEL_COLUMNS, "pam50": PAM50_COLUMNS}[table]
    return {**summary, **columns}
