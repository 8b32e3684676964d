"""Thin Nipype interfaces of the ``mslesion`` workflow: each reads files, calls plain functions, writes files.

The science lives in :mod:`bids_app.imaging.template_space` (template space), :mod:`bids_app.mslesion.predict`
(the networks), :mod:`bids_app.mslesion.measures`, :mod:`~bids_app.mslesion.regions` and :mod:`~bids_app.mslesion.report`. Only :class:`SegmentLesions` imports torch.

Files passed between nodes: NIfTI images (the template-space FLAIR and lesion map on the template
grid, the native maps on the FLAIR's own grid) and the subject-to-template affine as an ITK text
transform (``.tfm``, template points to subject points).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_app.inputs import InputImageError, checked_path
from bids_app.interfaces import _out_path as _out
from bids_app.interfaces import _save_like
from bids_app.models import read_metadata

LOGGER = logging.getLogger(__name__)


def _template_arrays() -> dict:
    """Template T1w image (SimpleITK), affine, brain mask and WM/GM probabilities ``(X, Y, Z)``."""
    from bids_app.imaging import templates

    def arr(path):
        img = nib.load(str(path))
        return np.asarray(img.dataobj, dtype=np.float32), img.affine

    t1, affine = arr(templates.get_template_file("T1w"))
    return {"path": templates.get_template_file("T1w"), "affine": affine, "shape": t1.shape,
            "brain": arr(templates.get_template_file("mask", desc="brain"))[0] > 0,
            "wm": arr(templates.get_template_file("probseg", label="WM"))[0],
            "gm": arr(templates.get_template_file("probseg", label="GM"))[0]}


def _save_template(data: np.ndarray, affine: np.ndarray, path: str) -> None:
    img = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    img.set_qform(affine, code=4)  # MNI152 space
    img.set_sform(affine, code=4)
    nib.save(img, path)


def _to_native(data: np.ndarray, transform_file: str, reference: str, interpolator: str) -> np.ndarray:
    """A template-grid array ``(X, Y, Z)`` resampled onto the voxel grid of ``reference``, ``(X, Y, Z)``."""
    import SimpleITK as sitk

    from bids_app.imaging import grid, templates

    header = sitk.ReadImage(str(templates.get_template_file("T1w")))
    moving = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    moving.CopyInformation(header)
    transform = sitk.ReadTransform(transform_file)
    out = grid.resample_to(moving, sitk.ReadImage(reference), transform.GetInverse(), interpolator)
    return np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))


# ----------------------------------------------------------------------------------------------------
class _ToTemplateInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="FLAIR on its native grid (any orientation, with skull or not)")
    bias_correction = traits.Bool(True, usedefault=True, desc="run N4 first")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads")


class _ToTemplateOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="normalised FLAIR on the 1 mm template grid")
    transform_file = File(exists=True, desc="affine, template points -> subject points (ITK .tfm)")
    seconds = traits.Dict(desc="wall time per stage (n4, registration, resampling)")


class ToTemplate(SimpleInterface):
    """N4, affine registration to the template and normalisation (:func:`template_space.to_template_space`)."""

    input_spec = _ToTemplateInputSpec
    output_spec = _ToTemplateOutputSpec

    def _run_interface(self, runtime):
        import SimpleITK as sitk

        from bids_app.imaging import brain, template_space, templates

        in_file = checked_path(Path(self.inputs.in_file), Path(runtime.cwd))  # truncated, NaN, 4D ...
        image = sitk.ReadImage(str(in_file))
        # Refuse what shows no brain before registering nonsense. The guard looks at the image as
        # acquired, with the registration's own mask (retried on a denoised image when it is a
        # fragment): single-pass masks of noisy thick-slice clinical FLAIRs are fragments, 47-59 mm
        # wide on bids-dev's MS3SEG scans, which a brain-width guard would refuse.
        reason = brain.no_brain_reason(brain.brain_mask(image))
        if reason:
            raise InputImageError(f"No brain found in the image: {reason}; check that it is a head scan covering "
                                  "the brain, or leave it out with --bids-filter-file.")
        tsi = template_space.to_template_space(
            image, sitk.ReadImage(str(templates.get_template_file("T1w"))),
            sitk.ReadImage(str(templates.get_template_file("mask", desc="brain"))),
            bias_correction=self.inputs.bias_correction, threads=max(1, self.inputs.num_threads))
        self._results["out_file"] = _out(runtime.cwd, self.inputs.in_file, "space-template")
        _save_template(tsi.data, nib.load(str(templates.get_template_file("T1w"))).affine, self._results["out_file"])
        self._results["transform_file"] = _out(runtime.cwd, self.inputs.in_file, "xfm", ".tfm")
        sitk.WriteTransform(tsi.transform, self._results["transform_file"])
        self._results["seconds"] = {k: round(v, 2) for k, v in tsi.seconds.items()}
        LOGGER.info("%s to template: %s s", Path(self.inputs.in_file).name, self._results["seconds"])
        return runtime


# ----------------------------------------------------------------------------------------------------
class _CompanionToTemplateInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="second contrast of the session (T1w), native grid")
    reference = File(exists=True, mandatory=True, desc="the session's FLAIR (native grid), the co-registration target")
    transform_file = File(exists=True, mandatory=True, desc="template -> FLAIR affine from ToTemplate (ITK .tfm)")
    bias_correction = traits.Bool(True, usedefault=True, desc="run N4 first")
    min_coverage = traits.Float(0.8, usedefault=True, desc="smallest fraction of the template brain the image "
                                                          "must cover to be used (else the output is zeros)")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads (resampling)")


class _CompanionToTemplateOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="normalised image on the 1 mm template grid, voxel-aligned with the FLAIR's")
    coreg_file = File(exists=True, desc="rigid FLAIR -> image transform (ITK .tfm)")
    coverage = traits.Float(desc="fraction of the template brain inside the image's field of view")
    seconds = traits.Dict(desc="wall time per stage (n4, coregistration, resampling)")


class CompanionToTemplate(SimpleInterface):
    """Rigid co-registration of a T1w to its FLAIR, carried to the template with the FLAIR's affine
    (:func:`template_space.companion_to_template`)."""

    input_spec = _CompanionToTemplateInputSpec
    output_spec = _CompanionToTemplateOutputSpec

    def _run_interface(self, runtime):
        import SimpleITK as sitk

        from bids_app.imaging import template_space, templates

        tsi = template_space.companion_to_template(
            sitk.ReadImage(self.inputs.in_file), sitk.ReadImage(self.inputs.reference),
            sitk.ReadTransform(self.inputs.transform_file), sitk.ReadImage(str(templates.get_template_file("T1w"))),
            sitk.ReadImage(str(templates.get_template_file("mask", desc="brain"))),
            bias_correction=self.inputs.bias_correction, threads=max(1, self.inputs.num_threads))
        data = tsi.data
        if tsi.coverage < self.inputs.min_coverage:
            # Zeros is what the model saw for "no T1w" in training: better than a partial image.
            LOGGER.warning("%s covers %.0f %% of the template brain (< %.0f %%); it is not used (the T1w "
                           "channel is left empty). Exclude it with --bids-filter-file if this is expected.",
                           Path(self.inputs.in_file).name, 100 * tsi.coverage, 100 * self.inputs.min_coverage)
            data = np.zeros_like(data)
        self._results["coverage"] = round(tsi.coverage, 4)
        self._results["out_file"] = _out(runtime.cwd, self.inputs.in_file, "space-template")
        _save_template(data, nib.load(str(templates.get_template_file("T1w"))).affine, self._results["out_file"])
        self._results["coreg_file"] = _out(runtime.cwd, self.inputs.in_file, "coreg", ".tfm")
        sitk.WriteTransform(tsi.transform, self._results["coreg_file"])
        self._results["seconds"] = {k: round(v, 2) for k, v in tsi.seconds.items()}
        LOGGER.info("%s to template through %s: %s s", Path(self.inputs.in_file).name,
                    Path(self.inputs.reference).name, self._results["seconds"])
        return runtime


# ----------------------------------------------------------------------------------------------------
class _SegmentLesionsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="normalised FLAIR on the template grid")
    t1w_file = File(exists=True, desc="normalised T1w on the template grid (CompanionToTemplate); "
                                      "used when the model has a T1w channel")
    model_dir = traits.Directory(exists=True, mandatory=True, desc="mslesion model folder")
    member = traits.Enum("ensemble", "generic", usedefault=True, desc="fused specialists or the generic net")
    spread = traits.Bool(True, usedefault=True, desc="with member 'ensemble': also write the ensemble's spread "
                                                     "(runs the generic net too)")
    device = traits.Enum("cpu", "cuda", usedefault=True, nohash=True, desc="torch device")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="torch CPU threads")


class _SegmentLesionsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="lesion probability on the template grid, float32 in [0, 1]")
    spread_file = File(desc="ensemble spread (weighted standard deviation of the members) on the template "
                            "grid, float32 in [0, 0.5]; only with member 'ensemble' and spread")
    seconds = traits.Float(desc="wall time of the networks")


class SegmentLesions(SimpleInterface):
    """Run the lesion ensemble on the GPU or CPU (the only lesion node that imports torch).

    With ``member="ensemble"`` and ``spread`` (the defaults) every net runs once and gives both the
    probability (:func:`predict.lesion_probability`'s values) and the spread
    (:func:`predict.predict_ensemble_with_spread`: specialists plus generic net).
    """

    input_spec = _SegmentLesionsInputSpec
    output_spec = _SegmentLesionsOutputSpec

    def _run_interface(self, runtime):
        import time

        import torch

        from bids_app.mslesion import predict

        torch.set_num_threads(max(1, self.inputs.num_threads))
        model = predict.load_ensemble(Path(self.inputs.model_dir), self.inputs.device)
        tpl = _template_arrays()
        img = nib.load(self.inputs.in_file)
        t0 = time.perf_counter()
        t1w = np.asarray(nib.load(self.inputs.t1w_file).dataobj, np.float32) if isdefined(self.inputs.t1w_file) else None
        image = np.asarray(img.dataobj, np.float32)
        spread = None
        if self.inputs.member == "ensemble" and self.inputs.spread:
            prob, spread = predict.lesion_probability_with_spread(model, image, tpl["wm"], tpl["brain"], t1w=t1w)
        else:
            prob = predict.lesion_probability(model, image, tpl["wm"], tpl["brain"], self.inputs.member, t1w=t1w)
        self._results["seconds"] = round(time.perf_counter() - t0, 2)
        LOGGER.info("%s: lesion networks %.1f s (%s%s)", Path(self.inputs.in_file).name, self._results["seconds"],
                    self.inputs.member, " and spread" if spread is not None else "")
        self._results["out_file"] = _out(runtime.cwd, self.inputs.in_file, "probseg")
        _save_template(prob, img.affine, self._results["out_file"])
        if spread is not None:
            self._results["spread_file"] = _out(runtime.cwd, self.inputs.in_file, "spread")
            _save_template(spread, img.affine, self._results["spread_file"])
        return runtime


# ----------------------------------------------------------------------------------------------------
class _FromTemplateInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="map on the template grid, values in [0, 1] (a probability, "
                                                     "the ensemble spread)")
    transform_file = File(exists=True, mandatory=True, desc="template -> subject affine (ITK .tfm)")
    reference = File(exists=True, mandatory=True, desc="native image whose grid the output takes")


class _FromTemplateOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="in_file resampled (linear) onto the reference grid, float32 in [0, 1]")


class FromTemplate(SimpleInterface):
    """Bring a template-grid probability map (or the ensemble spread) back to the FLAIR's native grid
    (linear interpolation: a convex combination, so values stay in the input's range)."""

    input_spec = _FromTemplateInputSpec
    output_spec = _FromTemplateOutputSpec

    def _run_interface(self, runtime):
        img = nib.load(self.inputs.in_file)
        native = _to_native(np.asarray(img.dataobj, np.float32), self.inputs.transform_file,
                            self.inputs.reference, "linear")
        self._results["out_file"] = _out(runtime.cwd, self.inputs.reference, "native_probseg")
        _save_like(np.clip(native, 0, 1), nib.load(self.inputs.reference), self._results["out_file"], np.float32)
        return runtime


# ----------------------------------------------------------------------------------------------------
class _BinariseLesionsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="lesion probability on the native grid")
    model_dir = traits.Directory(exists=True, mandatory=True, desc="model folder (threshold, minimum lesion size)")


class _BinariseLesionsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="lesion mask, uint8 0/1")
    threshold = traits.Float(desc="probability threshold")
    min_lesion_mm3 = traits.Float(desc="smallest lesion kept (mm^3)")


class BinariseLesions(SimpleInterface):
    """Threshold at the model's threshold and drop lesions under its minimum volume."""

    input_spec = _BinariseLesionsInputSpec
    output_spec = _BinariseLesionsOutputSpec

    def _run_interface(self, runtime):
        from bids_app.mslesion import measures

        spec = read_metadata(Path(self.inputs.model_dir))["output"]
        img = nib.load(self.inputs.in_file)
        labels, _ = measures.label_lesions(np.asarray(img.dataobj) >= spec["threshold"], img.header.get_zooms()[:3],
                                          spec["min_lesion_mm3"])
        self._results["out_file"] = _out(runtime.cwd, self.inputs.in_file, "mask")
        _save_like(labels > 0, nib.load(self.inputs.in_file), self._results["out_file"], np.uint8)
        self._results["threshold"] = float(spec["threshold"])
        self._results["min_lesion_mm3"] = float(spec["min_lesion_mm3"])
        return runtime


# ----------------------------------------------------------------------------------------------------
class _MeasureLesionsInputSpec(BaseInterfaceInputSpec):
    mask_file = File(exists=True, mandatory=True, desc="lesion mask on the native FLAIR grid")
    transform_file = File(exists=True, mandatory=True, desc="template -> subject affine (ITK .tfm)")
    min_lesion_mm3 = traits.Float(mandatory=True, desc="smallest lesion counted (mm^3)")
    manual_files = InputMultiObject(File(exists=True), desc="manual lesion masks on the same grid (validation)")


class _MeasureLesionsOutputSpec(TraitedSpec):
    lesions_tsv = File(exists=True, desc="one row per lesion")
    summary_tsv = File(exists=True, desc="one row: lesion load, per-region load")
    validation_tsv = File(desc="one row per manual label (only with manual_files)")
    summary = traits.Dict(desc="summary values for the sidecars")


class MeasureLesions(SimpleInterface):
    """Per-lesion table, lesion load and regional load, and agreement with manual labels when given."""

    input_spec = _MeasureLesionsInputSpec
    output_spec = _MeasureLesionsOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        from bids_app.mslesion import regions, report

        img = nib.load(self.inputs.mask_file)
        mask = np.asarray(img.dataobj) > 0
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        tpl = _template_arrays()
        template = regions.template_regions(tpl["wm"], tpl["gm"], tpl["brain"], tpl["affine"])
        native_regions = {name: _to_native(r.astype(np.uint8), self.inputs.transform_file,
                                           self.inputs.mask_file, "nearest") > 0
                          for name, r in template.items()}
        references = {}
        if isdefined(self.inputs.manual_files):
            for path in self.inputs.manual_files:
                manual = nib.load(path)
                if manual.shape[:3] != mask.shape or not np.allclose(manual.affine, img.affine, atol=1e-3):
                    LOGGER.warning("Manual label %s is not on the FLAIR's grid; not used for validation.", path)
                    continue
                references[Path(path).name] = np.asarray(manual.dataobj) > 0.5
        rows, summary, validation = report.lesion_report(mask, zooms, img.affine, native_regions, references,
                                                          self.inputs.min_lesion_mm3)
        write = dict(sep="\t", index=False, na_rep="n/a", float_format="%.4f")
        self._results["lesions_tsv"] = _out(runtime.cwd, self.inputs.mask_file, "lesions", ".tsv")
        pd.DataFrame(rows, columns=list(report.LESION_COLUMNS)).to_csv(self._results["lesions_tsv"], **write)
        self._results["summary_tsv"] = _out(runtime.cwd, self.inputs.mask_file, "summary", ".tsv")
        pd.DataFrame([summary]).to_csv(self._results["summary_tsv"], **write)
        if isdefined(self.inputs.manual_files):  # written even when no label was usable, so the sink has a file
            self._results["validation_tsv"] = _out(runtime.cwd, self.inputs.mask_file, "validation", ".tsv")
            pd.DataFrame(validation, columns=list(report.VALIDATION_COLUMNS)).to_csv(
                self._results["validation_tsv"], **write)
            for row in validation:
                LOGGER.info("%s vs %s: %s", Path(self.inputs.mask_file).name, row["reference"],
                            json.dumps({k: round(v, 3) for k, v in row.items() if isinstance(v, float)}))
        self._results["summary"] = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in summary.items()}
        return runtime
