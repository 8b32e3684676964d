"""Inference of the ``mslesion`` model on the template grid: the generic net and the fused ensemble
of sub-volume specialists (DeepLesionBrain-style hierarchical specialisation).

Arrays are numpy ``(C, X, Y, Z)`` images / ``(X, Y, Z)`` maps on the 1 mm MNI152NLin2009aSym grid
(RAS). Probabilities are in [0, 1]. This module imports torch; only the segmentation interface and
training import it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet


def brain_bbox(brain: np.ndarray, margin: int = 4) -> tuple[slice, ...]:
    idx = np.argwhere(brain)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, brain.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def subvolumes(brain: np.ndarray, grid: tuple[int, int, int], overlap: float,
               multiple: int = 8) -> list[tuple[slice, ...]]:
    """``grid`` overlapping boxes covering the brain bounding box.

    Along an axis of extent ``E`` split in ``n`` boxes, each box is ``ceil(E (1 + overlap) / n)``
    voxels, rounded up to a multiple of ``multiple`` (the UNet's total stride) and clipped to the
    volume; box starts are evenly spaced from the first to the last possible start.
    """
    bbox = brain_bbox(brain)
    axes = []
    for sl, n, size_total in zip(bbox, grid, brain.shape):
        extent = sl.stop - sl.start
        size = min(int(math.ceil(extent * (1 + overlap) / n / multiple) * multiple), size_total // multiple * multiple)
        last = min(sl.stop - size, size_total - size)
        first = max(min(sl.start, last), 0)
        starts = np.linspace(first, max(first, last), n).round().astype(int) if n > 1 else [first + max(0, (extent - size)) // 2]
        axes.append([slice(int(s), int(s) + size) for s in starts])
    return [(a, b, c) for a in axes[0] for b in axes[1] for c in axes[2]]


def build_net(in_channels: int, channels=(16, 32, 64, 128)) -> UNet:
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=1, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=1)


def taper(shape) -> np.ndarray:
    """Separable cosine (Hann-like, floor 0.05) weight over a box, for fusing overlapping boxes."""
    w = np.ones(shape, np.float32)
    for ax, n in enumerate(shape):
        v = 0.05 + 0.95 * np.sin(np.pi * (np.arange(n) + 0.5) / n)
        w *= v.reshape([-1 if a == ax else 1 for a in range(3)]).astype(np.float32)
    return w


def _device(net) -> torch.device:
    """Where ``net`` lives (its first parameter's device; CPU for a parameter-free module)."""
    return next(iter(net.parameters()), torch.empty(0)).device


def predict_generic(net, x: np.ndarray, brain: np.ndarray, roi=(96, 96, 96)) -> np.ndarray:
    """Probability map ``(X, Y, Z)`` from one net by MONAI Gaussian sliding windows on the brain box."""
    bbox = brain_bbox(brain)
    sub = torch.from_numpy(np.ascontiguousarray(x[(slice(None),) + bbox]))[None].to(_device(net))
    with torch.no_grad():
        logits = sliding_window_inference(sub, roi, 1, net, overlap=0.25, mode="gaussian")
    out = np.zeros(brain.shape, np.float32)
    out[bbox] = torch.sigmoid(logits)[0, 0].cpu().numpy()
    return out


def predict_ensemble(nets, boxes, x: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Fused probability map of the specialised nets, each run once on its whole sub-volume."""
    acc = np.zeros(brain.shape, np.float32)
    wsum = np.zeros(brain.shape, np.float32)
    for net, box in zip(nets, boxes):
        sub = torch.from_numpy(np.ascontiguousarray(x[(slice(None),) + box]))[None]
        with torch.no_grad():
            p = torch.sigmoid(net(sub.to(_device(net))))[0, 0].cpu().numpy()
        w = taper(p.shape)
        acc[box] += w * p
        wsum[box] += w
    return np.where(wsum > 0, acc / np.maximum(wsum, 1e-6), 0.0).astype(np.float32)


def architecture(in_channels: int, channels=(16, 32, 64, 128)) -> dict:
    """The ``metadata.json`` description of :func:`build_net` (MONAI ``UNet`` keyword arguments)."""
    return {"name": "UNet", "params": {
        "spatial_dims": 3, "in_channels": int(in_channels), "out_channels": 1,
        "channels": [int(c) for c in channels], "strides": [2] * (len(channels) - 1), "num_res_units": 1}}


def load_ensemble(folder, device: str = "cpu"):
    """Load ``folder/model.safetensors`` after checking its sha256 against ``metadata.json``.

    The file holds the generic net under ``generic.`` and specialist ``i`` under ``special.<ii>.``;
    ``metadata['ensemble']['boxes']`` gives each specialist's sub-volume as ``[[start, stop]] * 3``
    on the template grid. Returns ``(metadata, generic, specialists, boxes)``.
    """
    from pathlib import Path

    from safetensors.torch import load_file

    from bids_app.models import build_network, verified_weights

    metadata, weights = verified_weights(Path(folder))
    tensors = load_file(str(weights))

    def net(prefix):
        n = build_network(metadata["architecture"])
        n.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        return n.to(device).eval()

    boxes = [tuple(slice(int(a), int(b)) for a, b in box) for box in metadata["ensemble"]["boxes"]]
    specialists = [net(f"special.{i:02d}.") for i in range(len(boxes))]
    return metadata, net("generic."), specialists, boxes


def search_region(wm: np.ndarray, threshold: float = 0.5, dilation_mm: float = 3.0) -> np.ndarray:
    """Where white-matter lesions can be: template WM (probability >= ``threshold``) dilated by
    ``dilation_mm`` (1 mm grid), so that juxtacortical and periventricular lesions stay in.

    Multiplying the probability map by it removes the bright skull and scalp of raw scans and
    cortical hyperintensities, which a patch-based net otherwise mistakes for lesions.
    """
    from scipy import ndimage

    wm_mask = np.asarray(wm) >= threshold
    dist = ndimage.distance_transform_edt(~wm_mask)
    return dist <= dilation_mm


def lesion_probability(model, image: np.ndarray, wm: np.ndarray, brain: np.ndarray,
                       member: str = "ensemble", t1w: np.ndarray | None = None) -> np.ndarray:
    """Lesion probability ``(X, Y, Z)`` in [0, 1] on the template grid, inside the search region.

    ``model`` is what :func:`load_ensemble` returns; ``image`` the normalised FLAIR on the template
    grid (:func:`bids_app.imaging.template_space.to_template_space`); ``wm`` the template WM probability and
    ``brain`` its brain mask. The prior channel, the search region and the fusion come from the
    model's metadata. ``member``: ``"ensemble"`` (the fused specialists) or ``"generic"``.
    ``t1w``: the session's T1w on the template grid, normalised like the FLAIR
    (:func:`bids_app.imaging.template_space.companion_to_template`); used when the model has a ``T1w``
    channel, which is zeros without one (as the model saw in training), ignored otherwise.
    """
    metadata, generic, specialists, boxes = model
    x = np.stack([input_channel(name, image, wm, t1w) for name in metadata["input"]["channels"]])
    if member == "ensemble":
        prob = predict_ensemble(specialists, boxes, x, brain)
    elif member == "generic":
        prob = predict_generic(generic, x, brain, tuple(metadata["input"].get("roi_size", (96, 96, 96))))
    else:
        raise ValueError(f"member {member!r} is not 'ensemble' or 'generic'.")
    region = metadata["output"]["search_region"]
    return prob * search_region(wm, region["template_wm_threshold"], region["dilation_mm"])


def input_channel(name: str, image: np.ndarray, wm: np.ndarray, t1w: np.ndarray | None) -> np.ndarray:
    """One input channel ``(X, Y, Z)`` float32 by its metadata name (training assembles them the same way)."""
    if name == "FLAIR":
        return np.asarray(image, np.float32)
    if name == "T1w":
        return np.zeros(np.shape(image), np.float32) if t1w is None else np.asarray(t1w, np.float32)
    if name.startswith("prior:WM probseg >= "):  # the global-binary-mask prior, as in training
        return (np.asarray(wm) >= float(name.rsplit(">=", 1)[1])).astype(np.float32)
    raise ValueError(f"The model asks for an input channel {name!r} that this version of neuroseg cannot "
                     "provide; use the model that came with this version (or upgrade neuroseg).")
