"""Nipype interfaces of the ``spinalcord`` workflow: each reads files, calls a plain function, writes files.

The science lives in :mod:`bids_app.spinalcord.measures` and :mod:`bids_app.spinalcord.predict`; torch is
imported only inside :class:`Segment` so that the other nodes (and the group level) never load it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined, traits

from bids_app.inputs import InputImageError
from bids_app.interfaces import _out_path, _save_like
from bids_app.models import read_metadata
from bids_app.spinalcord import measures, vertebrae

LOGGER = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
class _SegmentInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="RAS+ image")
    model_dir = traits.Directory(exists=True, mandatory=True, desc="model folder (metadata.json + weights)")
    device = traits.Enum("cpu", "cuda", usedefault=True, nohash=True, desc="torch device")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="torch CPU threads")


class _SegmentOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="soft segmentation, float32 in [0, 1], RAS+ grid of in_file")


class Segment(SimpleInterface):
    """Run the model of ``model_dir`` on the GPU or CPU (the only node that imports torch)."""

    input_spec = _SegmentInputSpec
    output_spec = _SegmentOutputSpec

    def _run_interface(self, runtime):
        import torch

        from bids_app import models
        from bids_app.spinalcord import predict

        torch.set_num_threads(max(1, self.inputs.num_threads))
        bundle = models.load_model(Path(self.inputs.model_dir), self.inputs.device)
        img = nib.load(self.inputs.in_file)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        predictor = predict.PREDICTORS[bundle.metadata["predictor"]]
        soft = predictor(bundle, np.asarray(img.dataobj, dtype=np.float32), zooms)
        self._results["out_file"] = _out_path(runtime.cwd, self.inputs.in_file, "probseg")
        _save_like(soft, img, self._results["out_file"], np.float32)
        return runtime


# ----------------------------------------------------------------------------------------------------
class _BinariseInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="soft segmentation")
    model_dir = traits.Directory(exists=True, mandatory=True, desc="model folder (threshold, components)")


class _BinariseOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="binary mask, uint8")
    threshold = traits.Float(desc="threshold used")


class Binarise(SimpleInterface):
    """Threshold the soft map at the model's calibrated threshold; keep the largest component."""

    input_spec = _BinariseInputSpec
    output_spec = _BinariseOutputSpec

    def _run_interface(self, runtime):
        spec = read_metadata(Path(self.inputs.model_dir))["output"]
        img = nib.load(self.inputs.in_file)
        mask = measures.binarise(np.asarray(img.dataobj), spec["threshold"], spec.get("largest_component", False))
        # The model's own minimum (metadata ``min_volume_mm3``): less is noise, not a structure in view.
        volume = float(mask.sum()) * float(np.prod(img.header.get_zooms()[:3]))
        if volume < spec.get("min_volume_mm3", 0.0) or not mask.any():
            raise InputImageError(f"No {spec.get('structure', 'structure')} found in {Path(self.inputs.in_file).name}: "
                                  f"{volume:.0f} mm³ reach the model's threshold {spec['threshold']} (at least "
                                  f"{spec.get('min_volume_mm3', 0):g} needed); check that the image covers it, or "
                                  "leave the image out with --bids-filter-file.")
        self._results["out_file"] = _out_path(runtime.cwd, self.inputs.in_file, "mask")
        self._results["threshold"] = float(spec["threshold"])
        _save_like(mask, img, self._results["out_file"], np.uint8)
        return runtime


# ----------------------------------------------------------------------------------------------------
class _CSAInputSpec(BaseInterfaceInputSpec):
    soft_file = File(exists=True, mandatory=True, desc="soft cord segmentation (RAS+)")
    mask_file = File(exists=True, mandatory=True, desc="binary cord mask (RAS+)")
    level_file = File(exists=True, desc="disc labels or levelled cord mask, any grid of the same session")
    manual_file = File(exists=True, desc="manual cord mask of this image, for validation")


class _CSAOutputSpec(TraitedSpec):
    slices_tsv = File(exists=True, desc="CSA per slice")
    levels_tsv = File(exists=True, desc="CSA per vertebral level (or per 10 mm slab)")
    pam50_tsv = File(desc="CSA per PAM50 template slice (only with a level_file)")
    disc_file = File(desc="disc point labels on this image's RAS+ grid (only with a level_file)")
    summary = traits.Dict(desc="summary values for the sidecars")


class MeasureCSA(SimpleInterface):
    """CSA per slice (soft and binary) and per vertebral level; see :mod:`bids_app.spinalcord.measures`."""

    input_spec = _CSAInputSpec
    output_spec = _CSAOutputSpec

    def _run_interface(self, runtime):
        soft_img = nib.load(self.inputs.soft_file)
        soft = np.asarray(soft_img.dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(self.inputs.mask_file).dataobj) > 0
        zooms = tuple(float(z) for z in soft_img.header.get_zooms()[:3])
        levels, discs, level_source = None, {}, "none"
        if isdefined(self.inputs.level_file):
            label = nib.load(self.inputs.level_file)
            discs, levels = vertebrae.discs_and_levels(np.asarray(label.dataobj), label.affine, soft_img.affine,
                                                       soft.shape[2], zooms[2])
            level_source = Path(self.inputs.level_file).name
            if not levels.any():
                # Shown in the participant report (levels_from) and the sidecars.
                level_source += " (no level on this image's slices: outside its field of view; 10 mm slabs)"
        manual = None
        if isdefined(self.inputs.manual_file):
            manual = np.asarray(nib.as_closest_canonical(nib.load(self.inputs.manual_file)).dataobj) > 0.5
        slices, level_rows, summary = measures.csa_tables(soft, mask, zooms, levels, manual)
        summary["LevelSource"] = level_source
        self._results["slices_tsv"] = _out_path(runtime.cwd, self.inputs.soft_file, "slices", ".tsv")
        self._results["levels_tsv"] = _out_path(runtime.cwd, self.inputs.soft_file, "levels", ".tsv")
        if isdefined(self.inputs.level_file):
            summary["Discs"] = {str(n): round(float(z), 2) for n, z in sorted(discs.items())}
            pam50 = vertebrae.to_pam50(np.arange(soft.shape[2], dtype=float), discs, zooms[2])
            slices["pam50_slice"] = pam50
            rows = vertebrae.pam50_rows(pam50, np.asarray(slices["csa_mm2"], float),
                                        np.asarray(slices["csa_binary_mm2"], float))
            self._results["pam50_tsv"] = _out_path(runtime.cwd, self.inputs.soft_file, "pam50", ".tsv")
            _write_tsv(rows, self._results["pam50_tsv"], list(vertebrae.PAM50_COLUMNS))
            centre = measures.csa_per_slice(mask.astype(np.float32), zooms).centre_mm
            self._results["disc_file"] = _out_path(runtime.cwd, self.inputs.soft_file, "discs")
            _save_like(vertebrae.disc_volume(discs, centre, soft.shape, zooms), soft_img,
                       self._results["disc_file"], np.uint8)
        _write_tsv(slices, self._results["slices_tsv"])
        _write_tsv(level_rows, self._results["levels_tsv"], list(measures.LEVEL_COLUMNS))
        self._results["summary"] = summary
        return runtime


def _write_tsv(table, path: str, columns: list[str] | None = None) -> None:
    import pandas as pd

    pd.DataFrame(table, columns=columns).to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.4f")


# ----------------------------------------------------------------------------------------------------
class _NativeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image in RAS+ orientation")
    reference = File(exists=True, mandatory=True, desc="native image whose orientation is restored")


class _NativeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="in_file in the orientation and header of reference")


class ToNative(SimpleInterface):
    """Undo :class:`Reorient` exactly (axis permutation/flips), so outputs share the input's grid."""

    input_spec = _NativeInputSpec
    output_spec = _NativeOutputSpec

    def _run_interface(self, runtime):
        img = nib.load(self.inputs.in_file)
        ref = nib.load(self.inputs.reference)
        transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                                    nib.orientations.io_orientation(ref.affine))
        native = img.as_reoriented(transform)
        if native.shape[:3] != ref.shape[:3] or not np.allclose(native.affine, ref.affine, atol=1e-3):
            raise ValueError(f"Reorientation back to {self.inputs.reference} does not match its grid.")
        self._results["out_file"] = _out_path(runtime.cwd, self.inputs.in_file, "native")
        data = np.asarray(native.dataobj)
        _save_like(data, ref, self._results["out_file"], data.dtype)
        return runtime
