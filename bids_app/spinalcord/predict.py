"""Prediction of the spinal-cord model (imports torch; only the segmentation node and training use it).

Conventions
-----------
Volumes are ``numpy`` arrays in the closest-canonical RAS+ orientation, shape ``(X, Y, Z)``, with voxel
sizes ``zooms`` in mm. The cord model is 2D: it works on axial ``(X, Y)`` slices resampled to a fixed
in-plane spacing (``input.spacing_mm``) and its soft output is brought back to the native in-plane grid
by area averaging, so that partial volume is preserved (the sum of the soft values times the voxel area
is the same on both grids).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from bids_app.models import ModelBundle

LOGGER = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# In-plane resampling shared by training and inference
# ----------------------------------------------------------------------------------------------------
def fine_shape(shape_xy: tuple[int, int], zooms_xy: tuple[float, float], spacing: float) -> tuple[int, int]:
    """Shape of an in-plane grid of ``spacing`` mm covering the same field of view."""
    return tuple(max(1, int(round(n * z / spacing))) for n, z in zip(shape_xy, zooms_xy))


def to_fine(slices: np.ndarray | torch.Tensor, zooms_xy: tuple[float, float], spacing: float) -> torch.Tensor:
    """Resample axial slices ``(N, X, Y)`` to ``spacing`` mm in plane (bilinear), returns ``(N, 1, X', Y')``."""
    tensor = torch.as_tensor(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    size = fine_shape(tuple(tensor.shape[-2:]), zooms_xy, spacing)
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)


def to_native(fine: torch.Tensor, shape_xy: tuple[int, int]) -> torch.Tensor:
    """Area-average ``(N, 1, X', Y')`` fine slices onto the native in-plane grid ``shape_xy``.

    Area averaging keeps the partial volume: each native pixel receives the mean soft value of the fine
    pixels it covers, so ``sum(native) * native_area == sum(fine) * fine_area`` up to edge effects.
    """
    return F.adaptive_avg_pool2d(fine, output_size=tuple(shape_xy))


def normalise_slices(slices: torch.Tensor, low: float = 0.5, high: float = 99.5) -> torch.Tensor:
    """Scale each ``(N, 1, X, Y)`` slice to about [0, 1] by its own percentiles (robust to outliers)."""
    flat = slices.flatten(1)
    lo = torch.quantile(flat, low / 100.0, dim=1)[:, None, None, None]
    hi = torch.quantile(flat, high / 100.0, dim=1)[:, None, None, None]
    return ((slices - lo) / (hi - lo).clamp_min(1e-6)).clamp(-0.5, 1.5)


# ----------------------------------------------------------------------------------------------------
# Cord prediction
# ----------------------------------------------------------------------------------------------------
def _predict_fine(bundle: ModelBundle, fine: torch.Tensor) -> torch.Tensor:
    """Sliding-window prediction on normalised fine slices ``(N, 1, X, Y)``, returns soft ``(N, 1, X, Y)``."""
    from monai.inferers import sliding_window_inference

    spec = bundle.metadata["input"]
    roi = tuple(spec["roi_size"])
    # Pad small slices up to the window so that every window sees the training field of view.
    pad_x, pad_y = max(0, roi[0] - fine.shape[-2]), max(0, roi[1] - fine.shape[-1])
    padded = F.pad(fine, (pad_y // 2, pad_y - pad_y // 2, pad_x // 2, pad_x - pad_x // 2))
    with torch.inference_mode():
        logits = sliding_window_inference(
            padded.to(bundle.device), roi_size=roi, sw_batch_size=spec.get("sw_batch_size", 16),
            predictor=bundle.network, overlap=spec.get("overlap", 0.25), mode="gaussian",
        )
    # A calibrated logit offset (Platt-style, fitted on manually labelled images) shifts the soft map
    # so that its area matches the manual masks' convention; see training/spinalcord/calibrate.py.
    soft = torch.sigmoid(logits + float(bundle.metadata["output"].get("logit_offset", 0.0))).cpu()
    return soft[..., pad_x // 2: pad_x // 2 + fine.shape[-2], pad_y // 2: pad_y // 2 + fine.shape[-1]]


def predict_soft_cord(bundle: ModelBundle, volume: np.ndarray, zooms: tuple[float, float, float]) -> np.ndarray:
    """Soft cord segmentation of a RAS volume ``(X, Y, Z)``; returns float32 ``(X, Y, Z)`` in [0, 1].

    Two passes: a detection pass on a subset of slices at full field of view locates the cord, then the
    segmentation pass runs on every slice, cropped to a box of ``input.crop_mm`` around the interpolated
    cord centre (the whole slice when the cord was not found). Intensities are normalised per slice on
    the region the network sees, as in training.
    """
    spec = bundle.metadata["input"]
    spacing = float(spec["spacing_mm"])
    volume = np.asarray(volume, dtype=np.float32)
    slices = np.moveaxis(volume, 2, 0)  # (Z, X, Y)
    n_slices = slices.shape[0]
    fine = to_fine(slices, zooms[:2], spacing)  # (Z, 1, X', Y')

    crop = int(round(spec["crop_mm"] / spacing))
    centres = None
    if min(fine.shape[-2:]) > crop:
        step = max(1, n_slices // spec.get("detection_slices", 24))
        probe = np.arange(0, n_slices, step)
        detected = _predict_fine(bundle, normalise_slices(fine[probe]))[:, 0].numpy()
        # The cord is the largest connected structure through the probed slices; other bright blobs
        # (vessels, vertebral bodies) must not pull the crop away from it.
        from scipy import ndimage

        labels, n_found = ndimage.label(detected > 0.5)
        found = []
        if n_found:
            largest = labels == (int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)
            found = [(k, np.argwhere(largest[i]).mean(axis=0)) for i, k in enumerate(probe) if largest[i].any()]
        if found:
            ks = np.array([k for k, _ in found], dtype=float)
            xy = np.array([c for _, c in found])
            centres = np.stack([np.interp(np.arange(n_slices), ks, xy[:, i]) for i in (0, 1)], axis=1)
        else:
            LOGGER.warning("Cord not found in the detection pass; segmenting whole slices.")

    soft_fine = torch.zeros_like(fine)
    if centres is None:
        soft_fine = _predict_fine(bundle, normalise_slices(fine))
    else:
        crops, boxes = [], []
        for k in range(n_slices):
            x0 = int(np.clip(round(centres[k, 0]) - crop // 2, 0, fine.shape[-2] - crop))
            y0 = int(np.clip(round(centres[k, 1]) - crop // 2, 0, fine.shape[-1] - crop))
            crops.append(fine[k, :, x0:x0 + crop, y0:y0 + crop])
            boxes.append((x0, y0))
        predicted = _predict_fine(bundle, normalise_slices(torch.stack(crops)))
        for k, (x0, y0) in enumerate(boxes):
            soft_fine[k, :, x0:x0 + crop, y0:y0 + crop] = predicted[k]
    native = to_native(soft_fine, slices.shape[1:])[:, 0].numpy()
    return np.moveaxis(native, 0, 2).astype(np.float32)


#: Prediction functions by the name a model's ``metadata.json['predictor']`` gives.
PREDICTORS = {"cord2d": predict_soft_cord}
