"""ICH workflow: check the CT → model grid → segment → back to the CT grid → binarise and type → measure → write."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from bids_app.bids import InputImage
from bids_app.ich.interfaces import BinariseICH, ICHToNative, MeasureICH, PrepareCT, SegmentICH
from bids_app.ich.qc import VIEWS, brain_window
from bids_app.interfaces import DerivativesSink
from bids_app.models import read_metadata
from bids_app.tasks import Task
from bids_app.workflows import connect_figures

LOGGER = logging.getLogger(__name__)


def init_ich_wf(
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
    name: str = "ich_wf",
) -> pe.Workflow:
    """Segment the intracranial haemorrhage of one head CT (HU) and measure its volume per type.

    ``prepare`` checks the image (shared input checks, then CT in HU and a sidecar ``Modality`` that is not
    MR: else the image fails with its reason) and resamples it (linear, air -1024 HU outside) onto the
    model grid (``metadata.json`` ``input``: isotropic ``spacing_mm``, at least ``in_plane`` voxels across);
    ``segment`` runs the 2.5D network there: bleed probability (1 - p(background), 0 outside the
    intracranial mask grown by ``intracranial_margin_mm``) and the bleed type (argmax over classes 1..K,
    taken on the model grid). ``to_native`` brings the probability back to the CT's grid (linear) and the
    type (nearest neighbour); ``binarise`` thresholds at ``output.threshold``, drops components under
    ``output.min_component_ml`` and keeps the type inside the mask; ``measure`` writes the volumes.

    Outputs under ``output_dir`` (native CT grid, folder ``ct``): ``label-ICH`` ``probseg`` (0..1) and
    ``mask``, the type map ``desc-<suffix>ICHtypes_dseg.nii.gz`` with its ``dseg.tsv`` lookup table (BIDS
    allows no ``label`` entity on a dseg) and the volume table ``desc-<suffix>volumes_morph.tsv``.
    ``level_file``, ``manual_files`` and ``companions`` are accepted for the common factory signature and
    unused.
    """
    meta = read_metadata(model_dir)
    if meta.get("status") == "experimental":
        # The model's own card says it misses its accuracy targets; a user must not read its volumes unwarned.
        LOGGER.warning("The ich model %s %s is experimental: %s See %s/README.md.", meta["name"], meta["version"],
                       meta.get("status_reason", ""), model_dir)
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=["in_file"]), name="inputnode")
    inputnode.inputs.in_file = str(image.path)

    prepare = pe.Node(PrepareCT(model_dir=str(model_dir)), name="prepare")
    segment = pe.Node(SegmentICH(model_dir=str(model_dir), device=device, num_threads=omp_nthreads),
                      name="segment", n_procs=omp_nthreads)
    # Nipype's MultiProc schedules GPU nodes only on n_gpu_procs slots.
    segment.use_gpu = device == "cuda"
    to_native = pe.Node(ICHToNative(reference=str(image.path)), name="to_native")
    binarise = pe.Node(BinariseICH(model_dir=str(model_dir)), name="binarise")
    measure = pe.Node(MeasureICH(model_dir=str(model_dir)), name="measure")

    common = dict(output_dir=str(output_dir), source_relpath=image.relpath, source_entities=image.entities,
                  label=task.label, model=model, version=version)
    ds_probseg = pe.Node(DerivativesSink(suffix="probseg", extra={"Description": PROBSEG_DESCRIPTION}, **common),
                         name="ds_probseg", run_without_submitting=True)
    ds_mask = pe.Node(DerivativesSink(suffix="mask", **common), name="ds_mask", run_without_submitting=True)
    # BIDS allows no label entity on a dseg: the type map is told apart by desc (<suffix>ICHtypes).
    ds_dseg = pe.Node(DerivativesSink(suffix="dseg", desc_extra="ICHtypes", companion_extension=".tsv",
                                      extra=_dseg_extra(meta), **{**common, "label": ""}),
                      name="ds_dseg", run_without_submitting=True)
    ds_volumes = pe.Node(DerivativesSink(suffix="morph", desc_extra="volumes", **common), name="ds_volumes",
                         run_without_submitting=True)

    workflow.connect([
        (inputnode, prepare, [("in_file", "in_file")]),
        (prepare, segment, [("out_file", "in_file")]),
        (segment, to_native, [("prob_file", "prob_file"), ("type_file", "type_file")]),
        (to_native, binarise, [("prob_file", "prob_file"), ("type_file", "type_file")]),
        (binarise, measure, [("mask_file", "mask_file"), ("dseg_file", "dseg_file"), ("threshold", "threshold"),
                             ("min_component_ml", "min_component_ml")]),
        (prepare, measure, [("intracranial_file", "intracranial_file"), ("kind", "kind")]),
        (to_native, ds_probseg, [("prob_file", "in_file")]),
        (binarise, ds_mask, [("mask_file", "in_file"), (("threshold", _mask_extra), "extra")]),
        (binarise, ds_dseg, [("dseg_file", "in_file"), ("types_tsv", "companion_file")]),
        (measure, ds_volumes, [("volumes_tsv", "in_file"), ("sidecar", "extra")]),
    ])
    # QC figures: the CT in a brain window with the mask outlined and the probability in colour.
    connect_figures(workflow, task, VIEWS, common, [(inputnode, "in_file"), (to_native, "prob_file"),
                                                   (binarise, "mask_file")],
                    params={"window": brain_window(meta["input"])})
    return workflow


PROBSEG_DESCRIPTION = ("Intracranial haemorrhage probability in [0, 1] on the source CT grid: 1 - p(background) of "
                       "the ich model run on axial slices of its isotropic grid (0 outside the intracranial mask "
                       "grown by the model's margin), resampled back (linear).")


def _dseg_extra(meta: dict) -> dict:
    from bids_app.ich.measures import classes_of

    return {"Description": "Haemorrhage type per voxel of the mask (0 outside): argmax of the bleed-class "
                           "probabilities on the model grid, brought to the CT grid by nearest neighbour. The "
                           "lookup table (index, name) is the .tsv beside this file.",
            "Labels": {str(i): name for i, name in sorted(classes_of(meta["output"]).items())}}


def _mask_extra(threshold: float) -> dict:
    return {"Type": "ROI", "Threshold": threshold,
            "Description": "Binary haemorrhage mask: probability >= Threshold, 26-connected components smaller "
                           "than the model's min_component_ml removed."}

