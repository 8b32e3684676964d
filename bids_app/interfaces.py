"""Thin Nipype interfaces: each reads files, calls a plain function, writes files.

The science lives in :mod:`bids_app.measures` and :mod:`bids_app.inference`; torch is imported only
inside :class:`Segment` so that the other nodes (and the group level) never load it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, isdefined,
                                    traits)

from bids_app import measures, outputs
from bids_app.inference_meta import read_metadata
from bids_app.inputs import InputImageError, load_checked

LOGGER = logging.getLogger(__name__)

# MultiProc workers start from a fork server with Nipype's default (INFO) log levels and console
# handlers; the CLI passes the run's level and log file through the environment and this module,
# imported by every worker, applies them: a worker's node errors go to the log file (the main
# process reports each failure in one line), and to the console only with -v.
if os.environ.get("NEUROSEG_NIPYPE_LOG_LEVEL"):
    _log_file = os.environ.get("NEUROSEG_LOG_FILE")
    _to_console = os.environ.get("NEUROSEG_NIPYPE_CONSOLE") == "1"
    for _name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        _logger = logging.getLogger(_name)
        _logger.setLevel(os.environ["NEUROSEG_NIPYPE_LOG_LEVEL"])
        if _log_file and not _to_console and not any(isinstance(h, logging.FileHandler) for h in _logger.handlers):
            _handler = logging.FileHandler(_log_file, delay=True)  # append mode: whole lines from each process
            _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [worker %(process)d]: "
                                                    "%(message)s"))
            _logger.handlers[:] = [_handler]
            _logger.propagate = False


def _out_path(runtime_cwd: str, in_file: str, suffix: str, ext: str = ".nii.gz") -> str:
    stem = Path(in_file).name.split(".")[0]
    return str(Path(runtime_cwd) / f"{stem}_{suffix}{ext}")


def _save_like(data: np.ndarray, reference: nib.Nifti1Image, path: str, dtype) -> None:
    """Save ``data`` with the affine of ``reference``; float outputs keep 0..1 without scaling."""
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine)
    img.set_qform(reference.affine, code=1)
    img.set_sform(reference.affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


# ----------------------------------------------------------------------------------------------------
class _ReorientInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image on its native grid")


class _ReorientOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the same voxels in closest-canonical RAS+ orientation, float32")


class Reorient(SimpleInterface):
    """Reorient to RAS+ by permuting/flipping axes only (no interpolation)."""

    input_spec = _ReorientInputSpec
    output_spec = _ReorientOutputSpec

    def _run_interface(self, runtime):
        img, _ = load_checked(Path(self.inputs.in_file))  # refuses truncated data, NaN-filled images
        canonical = nib.as_closest_canonical(img)
        self._results["out_file"] = _out_path(runtime.cwd, self.inputs.in_file, "ras")
        _save_like(np.asarray(canonical.dataobj, dtype=np.float32), canonical, self._results["out_file"], np.float32)
        return runtime


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

        from bids_app import inference

        torch.set_num_threads(max(1, self.inputs.num_threads))
        bundle = inference.load_model(Path(self.inputs.model_dir), self.inputs.device)
        img = nib.load(self.inputs.in_file)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        predictor = inference.PREDICTORS[bundle.metadata["predictor"]]
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
    summary = traits.Dict(desc="summary values for the sidecars")


class MeasureCSA(SimpleInterface):
    """CSA per slice (soft and binary) and per vertebral level; see :mod:`bids_app.measures`."""

    input_spec = _CSAInputSpec
    output_spec = _CSAOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        soft_img = nib.load(self.inputs.soft_file)
        soft = np.asarray(soft_img.dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(self.inputs.mask_file).dataobj) > 0
        levels, level_source = None, "none"
        if isdefined(self.inputs.level_file):
            label = nib.load(self.inputs.level_file)
            levels = measures.levels_per_slice(np.asarray(label.dataobj), label.affine, soft_img.affine,
                                               soft.shape[2], float(soft_img.header.get_zooms()[2]))
            level_source = Path(self.inputs.level_file).name
        manual = None
        if isdefined(self.inputs.manual_file):
            manual = np.asarray(nib.as_closest_canonical(nib.load(self.inputs.manual_file)).dataobj) > 0.5
        slices, level_rows, summary = measures.csa_tables(
            soft, mask, tuple(float(z) for z in soft_img.header.get_zooms()[:3]), levels, manual)
        summary["LevelSource"] = level_source
        self._results["slices_tsv"] = _out_path(runtime.cwd, self.inputs.soft_file, "slices", ".tsv")
        self._results["levels_tsv"] = _out_path(runtime.cwd, self.inputs.soft_file, "levels", ".tsv")
        pd.DataFrame(slices).to_csv(self._results["slices_tsv"], sep="\t", index=False, na_rep="n/a",
                                    float_format="%.4f")
        pd.DataFrame(level_rows, columns=list(measures.LEVEL_COLUMNS)).to_csv(
            self._results["levels_tsv"], sep="\t", index=False, na_rep="n/a", float_format="%.4f")
        self._results["summary"] = summary
        return runtime


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


# ----------------------------------------------------------------------------------------------------
class _SinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="file to store")
    output_dir = traits.Directory(mandatory=True, desc="derivatives root")
    source_relpath = traits.Str(mandatory=True, desc="source image path relative to the raw dataset")
    source_entities = traits.Dict(mandatory=True, desc="pybids entities of the source image")
    label = traits.Str(mandatory=True, desc="label entity")
    suffix = traits.Str(mandatory=True, desc="BIDS suffix: probseg, mask, morph")
    desc_extra = traits.Str("", usedefault=True, desc="appended to the source suffix in desc")
    model = traits.Dict(desc="model name, version, sha256")
    version = traits.Str(mandatory=True, desc="app version")
    extra = traits.Dict(desc="more sidecar fields")
    other_sources = traits.List(traits.Str, desc="raw-dataset paths of other images used (listed in Sources)")
    source_digests = traits.Dict(desc="sha256 of every input file (sidecar SourceDigests, checked on resume)")


class _SinkOutputSpec(TraitedSpec):
    out_file = File(desc="written derivative")


class DerivativesSink(SimpleInterface):
    """Store one file in the derivatives with its sidecar, via :mod:`bids_app.outputs`."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    @staticmethod
    def relpath(inputs) -> Path:
        """Path of the derivative under ``output_dir``, from the node's static inputs (known before
        the run, so that a rerun can tell whether an image's outputs are complete)."""
        ext = ".tsv" if inputs.suffix == "morph" else ".nii.gz"
        return outputs.derivative_relpath(inputs.source_entities, inputs.label, inputs.suffix, ext,
                                          inputs.desc_extra)

    def _run_interface(self, runtime):
        relpath = self.relpath(self.inputs)
        extra = dict(self.inputs.extra) if isdefined(self.inputs.extra) else {}
        if relpath.name.endswith(".nii.gz"):  # images stay on the source image's grid
            extra.setdefault("SpatialReference", f"bids:raw:{self.inputs.source_relpath}")
        if isdefined(self.inputs.source_digests):
            extra["SourceDigests"] = dict(self.inputs.source_digests)
        content = outputs.sidecar(self.inputs.source_relpath,
                                  self.inputs.model if isdefined(self.inputs.model) else None,
                                  self.inputs.version,
                                  other_sources=self.inputs.other_sources if isdefined(self.inputs.other_sources) else (),
                                  **extra)
        self._results["out_file"] = str(outputs.write_output(Path(self.inputs.output_dir), Path(self.inputs.in_file),
                                                             relpath, content))
        return runtime
