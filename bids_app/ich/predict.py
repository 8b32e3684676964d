"""Inference of the ``ich`` model: a 2D network over the axial slices of the model grid (2.5D input).

Arrays are numpy ``(X, Y, Z)`` maps on the model grid of :func:`bids_app.ich.preprocess.model_grid`
(axis-aligned RAS, isotropic, Z = axial slices). The network reads ``(C, X, Y)`` per slice, with the
channels of :func:`bids_app.ich.preprocess.window_channels`, and returns ``len(classes)`` logits per
pixel (class 0 background, then the bleed types of ``metadata['output']['classes']``). This module
imports torch; only the segmentation node and training import it.
"""

from __future__ import annotations

import numpy as np
import torch

from bids_app.ich import preprocess


def _device(net: torch.nn.Module) -> torch.device:
    return next(iter(net.parameters()), torch.empty(0)).device


def class_probabilities(net: torch.nn.Module, channels: np.ndarray, batch: int = 16) -> np.ndarray:
    """Softmax class probabilities ``(K, X, Y, Z)`` float32 of ``net`` on ``channels`` ``(C, X, Y, Z)``,
    slice by slice in batches of ``batch`` axial slices. X and Y must be multiples of the net's stride."""
    device = _device(net)
    nz = channels.shape[3]
    out = None
    with torch.no_grad():
        for start in range(0, nz, batch):
            block = np.ascontiguousarray(np.moveaxis(channels[..., start:start + batch], 3, 0))  # (B, C, X, Y)
            probs = torch.softmax(net(torch.from_numpy(block).to(device)), dim=1).cpu().numpy()
            if out is None:
                out = np.zeros((probs.shape[1],) + channels.shape[1:], np.float32)
            out[..., start:start + probs.shape[0]] = np.moveaxis(probs, 0, 3)
    return out


def predict_grid(net: torch.nn.Module, hu: np.ndarray, input_meta: dict, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``(bleed_probability, class_probabilities)`` on the model grid for ``hu`` ``(X, Y, Z)`` (HU, with air).

    ``bleed_probability`` ``(X, Y, Z)`` = 1 - p(background), set to 0 outside the intracranial mask grown by
    ``input_meta['intracranial_margin_mm']`` (a bleed lies inside the skull; this removes scalp haematomas
    and streaks outside the head); ``class_probabilities`` ``(K, X, Y, Z)`` as :func:`class_probabilities`.
    """
    channels = preprocess.window_channels(hu, input_meta["windows"], int(input_meta.get("context", 1)))
    probs = class_probabilities(net, channels, batch)
    bleed = 1.0 - probs[0]
    margin = float(input_meta.get("intracranial_margin_mm", 0.0))
    if margin >= 0:
        spacing = float(input_meta["spacing_mm"])
        inside = preprocess.intracranial_mask(hu, spacing)
        if margin > 0:
            from scipy import ndimage
            inside = ndimage.binary_dilation(inside, iterations=max(1, int(round(margin / spacing))))
        bleed = np.where(inside, bleed, 0.0).astype(np.float32)
    return bleed, probs

