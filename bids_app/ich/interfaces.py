"""Thin Nipype interfaces of the ``ich`` workflow: each reads files, calls plain functions, writes files.

The science lives in :mod:`bids_app.ich.preprocess` (HU check, model grid, resampling, intracranial mask),
:mod:`bids_app.ich.predict` (the network; only :class:`SegmentICH` imports it, and with it torch) and
:mod:`bids_app.ich.measures`. Everything a model decides (grid spacing and size, windows, threshold,
smallest component, class names) is read from its ``metadata.json``.

Files passed between nodes: the CT in HU and the intracranial mask on the model grid (axis-aligned RAS,
isotropic), the bleed probability and the bleed type (argmax over the bleed classes) on the model grid,
then both on the CT's native grid.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from bids_app.bids import sidecar_metadata
from bids_app.errors import ModelError
from bids_app.ich import measures, preprocess
from bids_app.inputs import InputImageError, load_checked
from bids_app.interfaces import _out_path as _out
from bids_app.interfaces import _save_like
from bids_app.models import read_metadata

LOGGER = logging.getLogger(__name__)

#: The ``predictor`` of ``metadata.json`` that :func:`bids_app.ich.predict.predict_grid` implements.
PREDICTOR = "ich_slices"


def _save_grid(data: np.ndarray, affine: np.ndarray, path: str, dtype) -> None:
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.set_qform(affine, code=2)  # aligned to the scanner coordinates of the CT
    img.set_sform(affine, code=2)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def check_ct(path: Path) -> tuple[nib.Nifti1Image, np.ndarray, str]:
    """``(image, HU voxels float32, kind)`` of the CT at ``path`` after the shared input checks
    (:func:`~bids_app.inputs.load_checked`), the sidecar's ``Modality`` and :func:`preprocess.check_hu`.

    Raises :class:`InputImageError` (exit 5, the image listed in ``logs/failed.tsv``) for an image whose
    JSON sidecar says ``"Modality": "MR"`` or whose voxels are not CT in Hounsfield units.
    """
    path = Path(path)
    modality = str(sidecar_metadata(path).get("Modality", "")).strip().upper()
    if modality == "MR":
        raise InputImageError(
            f"{path.name}: its JSON sidecar says \"Modality\": \"MR\", but the ich task segments head CT in "
            "Hounsfield units; move the MR image out of the ct/ folder or leave it out with --bids-filter-file.")
    img, data = load_checked(path)
    try:
        kind = preprocess.check_hu(data, path.name)
    except preprocess.NotCTError as exc:
        raise InputImageError(str(exc)) from exc
    return img, data, kind


# ----------------------------------------------------------------------------------------------------
class _PrepareCTInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="head CT in HU on its native grid (*_ct.nii.gz)")
    model_dir = traits.Directory(exists=True, mandatory=True, desc="ich model folder (metadata.json: input grid)")


class _PrepareCTOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="CT in HU on the model grid (air -1024 outside the image)")
    intracranial_file = File(exists=True, desc="intracranial mask on the model grid, uint8")
    kind = traits.Str(desc="'ct' or 'ct-skull-stripped' (preprocess.check_hu)")


class PrepareCT(SimpleInterface):
    """Check the CT (HU, modality), give a skull-stripped CT air, and resample it (linear) onto the model grid
    (``metadata['input']``: ``spacing_mm``, ``in_plane``); the intracranial mask is found there too."""

    input_spec = _PrepareCTInputSpec
    output_spec = _PrepareCTOutputSpec

    def _run_interface(self, runtime):
        meta = read_metadata(Path(self.inputs.model_dir))["input"]
        img, data, kind = check_ct(Path(self.inputs.in_file))
        data = preprocess.with_air(data, kind)
        spacing = float(meta["spacing_mm"])
        grid_affine, grid_shape = preprocess.model_grid(data, img.affine, spacing_mm=spacing,
                                                        in_plane=int(meta["in_plane"]))
        hu = preprocess.resample(data, img.affine, grid_affine, grid_shape, order=1, cval=-1024.0)
        inside = preprocess.intracranial_mask(hu, spacing)
        self._results["out_file"] = _out(runtime.cwd, self.inputs.in_file, "grid")
        _save_grid(hu, grid_affine, self._results["out_file"], np.float32)
        self._results["intracranial_file"] = _out(runtime.cwd, self.inputs.in_file, "intracranial")
        _save_grid(inside, grid_affine, self._results["intracranial_file"], np.uint8)
        self._results["kind"] = kind
        LOGGER.info("%s: %s, model grid %s at %g mm", Path(self.inputs.in_file).name, kind, grid_shape, spacing)
        return runtime


# ----------------------------------------------------------------------------------------------------
class _SegmentICHInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="CT in HU on the model grid")
    model_dir = traits.Directory(exists=True, mandatory=True, desc="ich model folder")
    device = traits.Enum("cpu", "cuda", usedefault=True, nohash=True, desc="torch device")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="torch CPU threads")


class _SegmentICHOutputSpec(TraitedSpec):
    prob_file = File(exists=True, desc="bleed probability 1 - p(background) on the model grid, float32 0..1")
    type_file = File(exists=True, desc="bleed type on the model grid: argmax over classes 1..K, uint8")


class SegmentICH(SimpleInterface):
    """Run the model on the axial slices of the model grid (the only ich node that imports torch)."""

    input_spec = _SegmentICHInputSpec
    output_spec = _SegmentICHOutputSpec

    def _run_interface(self, runtime):
        import torch

        from bids_app import models
        from bids_app.ich import predict

        torch.set_num_threads(max(1, self.inputs.num_threads))
        bundle = models.load_model(Path(self.inputs.model_dir), self.inputs.device)
        predictor = bundle.metadata.get("predictor", PREDICTOR)
        if predictor != PREDICTOR:
            raise ModelError(f"The ich model in {self.inputs.model_dir} names the predictor '{predictor}'; this "
                             f"version of neuroseg runs '{PREDICTOR}' (predict.predict_grid) only.")
        img = nib.load(self.inputs.in_file)
        bleed, probs = predict.predict_grid(bundle.network, np.asarray(img.dataobj, np.float32),
                                            bundle.metadata["input"])
        self._results["prob_file"] = _out(runtime.cwd, self.inputs.in_file, "probseg")
        _save_grid(np.clip(bleed, 0, 1), img.affine, self._results["prob_file"], np.float32)
        self._results["type_file"] = _out(runtime.cwd, self.inputs.in_file, "type")
        _save_grid(measures.bleed_type(probs), img.affine, self._results["type_file"], np.uint8)
        return runtime


# ----------------------------------------------------------------------------------------------------
class _ICHToNativeInputSpec(BaseInterfaceInputSpec):
    prob_file = File(exists=True, mandatory=True, desc="bleed probability on the model grid")
    type_file = File(exists=True, mandatory=True, desc="bleed type on the model grid")
    reference = File(exists=True, mandatory=True, desc="the CT whose grid the outputs take")


class _ICHToNativeOutputSpec(TraitedSpec):
    prob_file = File(exists=True, desc="bleed probability on the CT grid (linear), float32 0..1")
    type_file = File(exists=True, desc="bleed type on the CT grid (nearest neighbour), uint8")


class ICHToNative(SimpleInterface):
    """Bring the probability (linear) and the type (nearest neighbour) back to the CT's native grid."""

    input_spec = _ICHToNativeInputSpec
    output_spec = _ICHToNativeOutputSpec

    def _run_interface(self, runtime):
        ref = nib.load(self.inputs.reference)
        shape = ref.shape[:3]
        for key, order, dtype in (("prob_file", 1, np.float32), ("type_file", 0, np.uint8)):
            grid = nib.load(getattr(self.inputs, key))
            native = preprocess.to_native(np.asarray(grid.dataobj).astype(dtype), grid.affine, ref.affine, shape,
                                          order=order)
            if order:
                native = np.clip(native, 0, 1)
            self._results[key] = _out(runtime.cwd, self.inputs.reference, f"native_{key[:-5]}")
            _save_like(native, ref, self._results[key], dtype)
        return runtime


# ----------------------------------------------------------------------------------------------------
class _BinariseICHInputSpec(BaseInterfaceInputSpec):
    prob_file = File(exists=True, mandatory=True, desc="bleed probability on the CT grid")
    type_file = File(exists=True, mandatory=True, desc="bleed type on the CT grid")
    model_dir = traits.Directory(exists=True, mandatory=True, desc="model folder (threshold, smallest component)")


class _BinariseICHOutputSpec(TraitedSpec):
    mask_file = File(exists=True, desc="haemorrhage mask, uint8 0/1")
    dseg_file = File(exists=True, desc="type map: the type inside the mask, 0 outside, uint8")
    types_tsv = File(exists=True, desc="the type map's lookup table (index, name)")
    threshold = traits.Float(desc="probability threshold")
    min_component_ml = traits.Float(desc="smallest component kept (mL)")


class BinariseICH(SimpleInterface):
    """Threshold at the model's threshold, drop components under its minimum volume, type the mask."""

    input_spec = _BinariseICHInputSpec
    output_spec = _BinariseICHOutputSpec

    def _run_interface(self, runtime):
        spec = read_metadata(Path(self.inputs.model_dir))["output"]
        img = nib.load(self.inputs.prob_file)
        zooms = measures.effective_zooms(img.affine)
        threshold, min_ml = float(spec["threshold"]), float(spec["min_component_ml"])
        mask = measures.remove_small_components(measures.binarise(np.asarray(img.dataobj), threshold), zooms, min_ml)
        dseg = measures.type_map(mask, np.asarray(nib.load(self.inputs.type_file).dataobj))
        self._results["mask_file"] = _out(runtime.cwd, self.inputs.prob_file, "mask")
        _save_like(mask, img, self._results["mask_file"], np.uint8)
        self._results["dseg_file"] = _out(runtime.cwd, self.inputs.prob_file, "dseg")
        _save_like(dseg, img, self._results["dseg_file"], np.uint8)
        self._results["types_tsv"] = _out(runtime.cwd, self.inputs.prob_file, "dseg", ".tsv")
        rows = ["index\tname"] + [f"{i}\t{name}" for i, name in sorted(measures.classes_of(spec).items())]
        Path(self._results["types_tsv"]).write_text("\n".join(rows) + "\n")
        self._results["threshold"], self._results["min_component_ml"] = threshold, min_ml
        return runtime


# ----------------------------------------------------------------------------------------------------
class _MeasureICHInputSpec(BaseInterfaceInputSpec):
    mask_file = File(exists=True, mandatory=True, desc="haemorrhage mask on the CT grid")
    dseg_file = File(exists=True, mandatory=True, desc="type map on the CT grid")
    intracranial_file = File(exists=True, mandatory=True, desc="intracranial mask on the model grid")
    model_dir = traits.Directory(exists=True, mandatory=True, desc="model folder (class names)")
    threshold = traits.Float(mandatory=True, desc="probability threshold used")
    min_component_ml = traits.Float(mandatory=True, desc="smallest component kept (mL)")
    kind = traits.Str(mandatory=True, desc="'ct' or 'ct-skull-stripped'")


class _MeasureICHOutputSpec(TraitedSpec):
    volumes_tsv = File(exists=True, desc="one row: total and per-type volume, components, intracranial volume")
    summary = traits.Dict(desc="the row's values")
    sidecar = traits.Dict(desc="the table's sidecar fields: every column's description, threshold, smallest component")


class MeasureICH(SimpleInterface):
    """The per-image volume table (:func:`measures.haemorrhage_measures`)."""

    input_spec = _MeasureICHInputSpec
    output_spec = _MeasureICHOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        spec = read_metadata(Path(self.inputs.model_dir))["output"]
        img = nib.load(self.inputs.mask_file)
        zooms = measures.effective_zooms(img.affine)
        inside = nib.load(self.inputs.intracranial_file)
        intracranial = measures.volume_ml(np.asarray(inside.dataobj) > 0, measures.effective_zooms(inside.affine))
        row = measures.haemorrhage_measures(np.asarray(img.dataobj) > 0, np.asarray(nib.load(self.inputs.dseg_file).dataobj),
                                            zooms, measures.classes_of(spec), intracranial or None)
        row.update(threshold=self.inputs.threshold, min_component_ml=self.inputs.min_component_ml,
                   input_kind=self.inputs.kind)
        self._results["volumes_tsv"] = _out(runtime.cwd, self.inputs.mask_file, "volumes", ".tsv")
        pd.DataFrame([row]).to_csv(self._results["volumes_tsv"], sep="\t", index=False, na_rep="n/a",
                                   float_format="%.4f")
        self._results["summary"] = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        self._results["sidecar"] = {"Threshold": self.inputs.threshold, "MinComponentMl": self.inputs.min_component_ml,
                                    **measures.volume_columns(measures.classes_of(spec))}
        LOGGER.info("%s: haemorrhage %.2f mL in %d component(s)", Path(self.inputs.mask_file).name,
                    row["total_volume_ml"], row["component_count"])
        return runtime


# ----------------------------------------------------------------------------------------------------
#: The nodes of :func:`bids_app.ich.workflow.init_ich_wf`, in the order it connects them.
NODE_ORDER = ("prepare", "segment", "to_native", "binarise", "measure")


def run_in_process(ct: Path, model_dir: Path, cwd: Path, num_threads: int = 1) -> tuple[dict, dict[str, float]]:
    """Run the workflow's nodes on one CT in this process, one after the other, without the Nipype engine
    (for evaluation and benchmarks: the same interfaces and the same inputs the workflow gives them).

    Node files are written under ``cwd``. Returns ``(outputs, seconds)``: each node's Nipype outputs and
    its wall seconds, keyed by :data:`NODE_ORDER`.
    """
    import os
    import time

    ct, model_dir = str(Path(ct).resolve()), str(model_dir)
    steps = {
        "prepare": lambda o: PrepareCT(in_file=ct, model_dir=model_dir),
        "segment": lambda o: SegmentICH(in_file=o["prepare"].out_file, model_dir=model_dir, num_threads=num_threads),
        "to_native": lambda o: ICHToNative(prob_file=o["segment"].prob_file, type_file=o["segment"].type_file,
                                           reference=ct),
        "binarise": lambda o: BinariseICH(prob_file=o["to_native"].prob_file, type_file=o["to_native"].type_file,
                                          model_dir=model_dir),
        "measure": lambda o: MeasureICH(mask_file=o["binarise"].mask_file, dseg_file=o["binarise"].dseg_file,
                                        intracranial_file=o["prepare"].intracranial_file, model_dir=model_dir,
                                        threshold=o["binarise"].threshold, min_component_ml=o["binarise"].min_component_ml,
                                        kind=o["prepare"].kind),
    }
    outputs: dict = {}
    seconds: dict[str, float] = {}
    previous = os.getcwd()
    Path(cwd).mkdir(parents=True, exist_ok=True)
    os.chdir(cwd)  # Nipype interfaces write their files into the working directory
    try:
        for name in NODE_ORDER:
            start = time.perf_counter()
            outputs[name] = steps[name](outputs).run().outputs
            seconds[name] = time.perf_counter() - start
    finally:
        os.chdir(previous)
    return outputs, seconds
