"""MS lesion workflow: to template → segment (ensemble) → back to the FLAIR grid → binarise → measure → write."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

from nipype.interfaces.utility import IdentityInterface
from nipype.pipeline import engine as pe

from bids_app.bids import InputImage
from bids_app.interfaces import DerivativesSink
from bids_app.mslesion.qc import VIEWS
from bids_app.models import read_metadata
from bids_app.mslesion.interfaces import (BinariseLesions, CompanionToTemplate, FromTemplate, MeasureLesions,
                                          SegmentLesions, ToTemplate)
from bids_app.tasks import Task
from bids_app.workflows import connect_figures

LOGGER = logging.getLogger(__name__)


def init_mslesion_wf(
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
    name: str = "mslesion_wf",
) -> pe.Workflow:
    """Segment the white-matter lesions of one FLAIR and measure the lesion load.

    The FLAIR (raw clinical or already skull-stripped/MNI-registered; any orientation and slice
    thickness) is bias-corrected and affinely registered to MNI152NLin2009aSym, where the model runs;
    the probability map comes back to the FLAIR's native grid, where it is thresholded and measured.

    Outputs under ``output_dir`` (native FLAIR grid): ``label-lesion`` ``probseg`` (0..1) and ``mask``,
    the ensemble's spread ``desc-<suffix>uncertainty_probseg`` (0..0.5, the weighted standard deviation
    of the ensemble's members: :func:`bids_app.mslesion.predict.predict_ensemble_with_spread`),
    a per-lesion table (``desc-<suffix>lesions_morph.tsv``), a one-row summary (``desc-<suffix>summary_morph.tsv``)
    and, when ``manual_files`` (manual lesion masks of this image) are given, a validation table
    (``desc-<suffix>validation_morph.tsv``: Dice, lesion-wise precision/recall/F1, volume error per label).
    ``level_file`` is accepted for the common factory signature and unused.

    ``companions["T1w"]``, the session's T1w, is rigidly co-registered to the FLAIR and carried to the
    template with the FLAIR's affine (node ``t1w_to_template``) when the model has a ``T1w`` input
    channel (``metadata.json``); it is then listed in every output's ``Sources``. Without a T1w that
    channel is zeros, as the model saw in training.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(IdentityInterface(fields=["in_file"]), name="inputnode")
    inputnode.inputs.in_file = str(image.path)

    to_template = pe.Node(ToTemplate(num_threads=omp_nthreads), name="to_template", n_procs=omp_nthreads)
    segment = pe.Node(SegmentLesions(model_dir=str(model_dir), device=device, num_threads=omp_nthreads),
                      name="segment", n_procs=omp_nthreads)
    segment.use_gpu = device == "cuda"
    from_template = pe.Node(FromTemplate(reference=str(image.path)), name="from_template")
    spread_from_template = pe.Node(FromTemplate(reference=str(image.path)), name="spread_from_template")
    binarise = pe.Node(BinariseLesions(model_dir=str(model_dir)), name="binarise")
    measure = pe.Node(MeasureLesions(), name="measure")
    if manual_files:
        measure.inputs.manual_files = [str(f) for f in manual_files]

    t1w = (companions or {}).get("T1w")
    if t1w is not None and "T1w" not in read_metadata(model_dir)["input"]["channels"]:
        LOGGER.info("%s: the %s model takes no T1w channel; %s is not used", image.relpath, task.model, t1w.relpath)
        t1w = None

    common = dict(output_dir=str(output_dir), source_relpath=image.relpath, source_entities=image.entities,
                  label=task.label, model=model, version=version, other_sources=[t1w.relpath] if t1w else [])
    ds_probseg = pe.Node(DerivativesSink(suffix="probseg", extra={"Description": PROBSEG_DESCRIPTION}, **common),
                         name="ds_probseg", run_without_submitting=True)
    ds_uncertainty = pe.Node(DerivativesSink(suffix="probseg", desc_extra="uncertainty",
                                             extra={"Description": UNCERTAINTY_DESCRIPTION}, **common),
                             name="ds_uncertainty", run_without_submitting=True)
    ds_mask = pe.Node(DerivativesSink(suffix="mask", **common), name="ds_mask", run_without_submitting=True)
    ds_lesions = pe.Node(DerivativesSink(suffix="morph", desc_extra="lesions", **common), name="ds_lesions",
                         run_without_submitting=True)
    ds_summary = pe.Node(DerivativesSink(suffix="morph", desc_extra="summary", **common), name="ds_summary",
                         run_without_submitting=True)

    workflow.connect([
        (inputnode, to_template, [("in_file", "in_file")]),
        (to_template, segment, [("out_file", "in_file")]),
        (segment, from_template, [("out_file", "in_file")]),
        (to_template, from_template, [("transform_file", "transform_file")]),
        (segment, spread_from_template, [("spread_file", "in_file")]),
        (to_template, spread_from_template, [("transform_file", "transform_file")]),
        (from_template, binarise, [("out_file", "in_file")]),
        (binarise, measure, [("out_file", "mask_file"), ("min_lesion_mm3", "min_lesion_mm3")]),
        (to_template, measure, [("transform_file", "transform_file")]),
        (from_template, ds_probseg, [("out_file", "in_file")]),
        (spread_from_template, ds_uncertainty, [("out_file", "in_file")]),
        (binarise, ds_mask, [("out_file", "in_file"),
                             (("threshold", _mask_extra), "extra")]),
        (measure, ds_lesions, [("lesions_tsv", "in_file"), (("summary", _columns_extra, "lesions"), "extra")]),
        (measure, ds_summary, [("summary_tsv", "in_file"), (("summary", _columns_extra, "summary"), "extra")]),
    ])
    # QC figures: the FLAIR with the native-grid probability and mask, lesions numbered as in the table.
    connect_figures(workflow, task, VIEWS, common, [(inputnode, "in_file"), (from_template, "out_file"),
                                                   (binarise, "out_file")],
                    params={"min_lesion_mm3": float(read_metadata(model_dir)["output"]["min_lesion_mm3"])})
    if t1w is not None:
        t1w_to_template = pe.Node(CompanionToTemplate(in_file=str(t1w.path), reference=str(image.path),
                                                      num_threads=omp_nthreads),
                                  name="t1w_to_template", n_procs=omp_nthreads)
        workflow.connect([
            (to_template, t1w_to_template, [("transform_file", "transform_file")]),
            (t1w_to_template, segment, [("out_file", "t1w_file")]),
        ])
    if manual_files:
        ds_validation = pe.Node(DerivativesSink(suffix="morph", desc_extra="validation", **common),
                                name="ds_validation", run_without_submitting=True)
        workflow.connect([(measure, ds_validation, [("validation_tsv", "in_file"),
                                                    (("summary", _columns_extra, "validation"), "extra")])])
    return workflow


PROBSEG_DESCRIPTION = ("White-matter lesion probability in [0, 1] on the source FLAIR grid, from the mslesion "
                       "ensemble run in MNI152NLin2009aSym space (affine registration) and resampled back (linear).")

UNCERTAINTY_DESCRIPTION = (
    "Uncertainty of the lesion probability: the spread of the mslesion ensemble's members, their weighted "
    "standard deviation sqrt(sum_i w_i (p_i - m)^2 / sum_i w_i) with m = sum_i w_i p_i / sum_i w_i, computed "
    "in MNI152NLin2009aSym space and resampled back to the source FLAIR grid (linear). The members at a voxel "
    "are every sub-volume specialist whose box covers it, weighted by its cosine taper (the weights that fuse "
    "the probability map), and the generic whole-brain network with weight 1 (a specialist's weight at the "
    "centre of its box). 0 where the members agree; at most 0.5 (half the weight at probability 0, half at 1); "
    "two equally weighted members give half their difference. Unitless (probability), 0 outside the same "
    "white-matter search region as the probability map. A measure of the models' disagreement, not a "
    "calibrated error bar.")


def _mask_extra(threshold: float) -> dict:
    return {"Type": "ROI", "Threshold": threshold,
            "Description": "Binary lesion mask: probability >= Threshold, lesions smaller than the model's "
                           "minimum lesion volume removed (26-connected components)."}


def _columns_extra(summary: dict, table: str) -> dict:
    """Sidecar of a lesion table: a description of every column (and the summary values for the summary)."""
    from bids_app.mslesion.report import LESION_COLUMNS, SUMMARY_COLUMNS, VALIDATION_COLUMNS

    columns = {"lesions": LESION_COLUMNS, "summary": SUMMARY_COLUMNS, "validation": VALIDATION_COLUMNS}[table]
    return {"MinLesionVolume": summary.get("min_lesion_mm3"), **columns}
