"""Inference of the ``mslesion`` model on the template grid: the generic net and the fused ensemble
of sub-volume specialists (DeepLesionBrain-style hierarchical specialisation).

Arrays are numpy ``(C, X, Y, Z)`` images / ``(X, Y, Z)`` maps on the 1 mm MNI152NLin2009aSym grid
(RAS). Probabilities are in [0, 1]. This module imports torch; only the segmentation interface and
training import it.

Uncertainty (:func:`predict_ensemble_with_spread`): the spread of the ensemble's members at a voxel,
their weighted standard deviation, written beside the lesion probability by the app.

Left-right flip averaging (``flip=True``; a model asks for it with ``metadata["inference"]["flip_lr"]``):
every net also runs on the image mirrored along the first (left-right) axis, and its map, mirrored
back, joins the members. The template (MNI152NLin2009aSym) is exactly symmetric on its grid (voxel
``i`` mirrors to ``X - 1 - i``), so the mirrored image is a plausible brain in the same space; a
specialist's mirrored map covers the mirrored box (:func:`mirror_box`).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

LOGGER = logging.getLogger(__name__)

#: Weight of the generic net in the ensemble's spread (:func:`predict_ensemble_with_spread`): the
#: weight a specialist has at the centre of its box, the largest value of :func:`taper`. A specialist's
#: taper falls towards its box faces, where it lacks context; the generic net has no such face inside
#: the brain (Gaussian-blended sliding windows over the whole brain box), so it is weighted everywhere
#: as a specialist is where it sees most.
GENERIC_WEIGHT = 1.0


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


def mirror_box(box: tuple[slice, ...], size_x: int) -> tuple[slice, ...]:
    """``box`` reflected along the first axis of a grid ``size_x`` voxels wide (voxel ``i`` -> ``size_x - 1 - i``)."""
    sx = box[0]
    return (slice(size_x - sx.stop, size_x - sx.start), *box[1:])


def _mirrored(x: np.ndarray, axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.flip(x, axis))


def predict_generic(net, x: np.ndarray, brain: np.ndarray, roi=(96, 96, 96), flip: bool = False) -> np.ndarray:
    """Probability map ``(X, Y, Z)`` from one net by MONAI Gaussian sliding windows on the brain box;
    with ``flip``, the mean of that map and the map of the left-right mirrored input, mirrored back."""
    maps = [m for m, _ in _generic_members(net, x, brain, roi, flip)]
    return maps[0] if len(maps) == 1 else (0.5 * (maps[0] + maps[1])).astype(np.float32)


def _generic_members(net, x: np.ndarray, brain: np.ndarray, roi, flip: bool
                     ) -> list[tuple[np.ndarray, tuple[slice, ...]]]:
    """``[(map (X, Y, Z), box)]``: the net's map on the brain box; with ``flip`` also its map of the
    mirrored input, mirrored back, with the mirrored box."""
    members = [(_sliding_map(net, x, brain, roi), brain_bbox(brain))]
    if flip:
        mirrored_brain = _mirrored(brain, 0)
        members.append((_mirrored(_sliding_map(net, _mirrored(x, 1), mirrored_brain, roi), 0),
                        mirror_box(brain_bbox(mirrored_brain), brain.shape[0])))
    return members


def _sliding_map(net, x: np.ndarray, brain: np.ndarray, roi) -> np.ndarray:
    """One net's probability ``(X, Y, Z)`` by MONAI Gaussian sliding windows on the brain box, 0 outside it."""
    bbox = brain_bbox(brain)
    sub = torch.from_numpy(np.ascontiguousarray(x[(slice(None),) + bbox]))[None].to(_device(net))
    with torch.no_grad():
        logits = sliding_window_inference(sub, roi, 1, net, overlap=0.25, mode="gaussian")
    out = np.zeros(brain.shape, np.float32)
    out[bbox] = torch.sigmoid(logits)[0, 0].cpu().numpy()
    return out


def predict_ensemble(nets, boxes, x: np.ndarray, brain: np.ndarray, flip: bool = False) -> np.ndarray:
    """Fused probability map of the specialised nets, each run once on its whole sub-volume (twice
    with ``flip``: the mirrored runs join as members on the mirrored boxes, :func:`_specialist_members`)."""
    return _fuse(*_specialist_members(nets, boxes, x, flip), brain.shape)


def _specialist_members(nets, boxes, x: np.ndarray, flip: bool) -> tuple[list[np.ndarray], list[tuple[slice, ...]]]:
    """``(maps, boxes)`` of the ensemble's members: each specialist on its box of ``x``; with ``flip``
    also each specialist on its box of the mirrored ``x``, that map mirrored back onto the mirrored box."""
    maps, member_boxes = _specialist_maps(nets, boxes, x), list(boxes)
    if flip:
        size_x = x.shape[1]
        maps += [_mirrored(m, 0) for m in _specialist_maps(nets, boxes, _mirrored(x, 1))]
        member_boxes += [mirror_box(b, size_x) for b in boxes]
    return maps, member_boxes


def _specialist_maps(nets, boxes, x: np.ndarray) -> list[np.ndarray]:
    """Each specialist's probability ``(bx, by, bz)`` float32 on its own box of ``x`` ``(C, X, Y, Z)``."""
    maps = []
    for net, box in zip(nets, boxes):
        sub = torch.from_numpy(np.ascontiguousarray(x[(slice(None),) + box]))[None]
        with torch.no_grad():
            maps.append(torch.sigmoid(net(sub.to(_device(net))))[0, 0].cpu().numpy())
    return maps


def _fuse(maps, boxes, shape) -> np.ndarray:
    """Taper-weighted mean ``(X, Y, Z)`` float32 of the specialists' maps, 0 where no box reaches."""
    acc = np.zeros(shape, np.float32)
    wsum = np.zeros(shape, np.float32)
    for p, box in zip(maps, boxes):
        w = taper(p.shape)
        acc[box] += w * p
        wsum[box] += w
    return np.where(wsum > 0, acc / np.maximum(wsum, 1e-6), 0.0).astype(np.float32)


def predict_ensemble_with_spread(nets, boxes, x: np.ndarray, brain: np.ndarray, generic,
                                 roi=(96, 96, 96), generic_weight: float = GENERIC_WEIGHT, flip: bool = False
                                 ) -> tuple[np.ndarray, np.ndarray]:
    """The fused map of :func:`predict_ensemble` and the ensemble's spread, each net run once.

    ``nets``/``boxes``: the specialists and their sub-volumes (as :func:`predict_ensemble`);
    ``generic``: the generic net, run as :func:`predict_generic` with windows ``roi``; ``x`` ``(C, X, Y, Z)``
    the input channels and ``brain`` ``(X, Y, Z)`` the template brain mask, on the 1 mm template grid.
    Returns ``(mean, spread)``, both ``(X, Y, Z)`` float32:

    - ``mean`` is :func:`predict_ensemble`'s result, bit for bit (the same operations in the same
      order): the lesion probability the app thresholds. The generic net does not enter it.
    - ``spread`` is the weighted standard deviation of the members' probabilities at each voxel::

          m = sum_i w_i p_i / sum_i w_i
          spread = sqrt( sum_i w_i (p_i - m)^2 / sum_i w_i )

      over the members at that voxel: every specialist whose box covers it, with its taper weight
      ``w_i = taper(box shape)`` at the voxel (the weights of the fusion), plus the generic net
      wherever its brain box (:func:`brain_bbox`) covers it, with weight ``generic_weight``
      (:data:`GENERIC_WEIGHT`, 1: see there). ``m`` is the members' own weighted mean, generic
      included, so ``spread`` is a true standard deviation of values in [0, 1] and lies in
      [0, 0.5] (0.5 only when the weight is split evenly between members at 0 and at 1); about
      ``mean`` instead it could reach 1 where a box-edge specialist (weight down to 0.05^3) disagrees
      with the generic net. With the generic net every voxel of the brain box has at least two
      members; a voxel with one member has spread 0, a voxel with none has 0 too.

    With ``flip`` every net also runs on the mirrored ``x`` and its map, mirrored back, is one more
    member (a specialist's on the mirrored box, the generic net's with the same ``generic_weight``);
    ``mean`` is then :func:`predict_ensemble`'s ``flip=True`` map.

    Units: probability (unitless). Two members at ``p1, p2`` with weights ``w1, w2`` give
    ``|p1 - p2| sqrt(w1 w2) / (w1 + w2)``: half their difference at equal weights.
    """
    t0 = time.perf_counter()
    maps, member_boxes = _specialist_members(nets, boxes, x, flip)
    t1 = time.perf_counter()
    generics = _generic_members(generic, x, brain, roi, flip)
    t2 = time.perf_counter()
    mean = _fuse(maps, member_boxes, brain.shape)
    spread = _spread(maps, member_boxes, generics, generic_weight)
    LOGGER.debug("ensemble: %d specialists %.1f s, generic net %.1f s, fusion and spread %.1f s",
                 len(maps), t1 - t0, t2 - t1, time.perf_counter() - t2)
    return mean, spread


def _spread(maps, boxes, generics: list[tuple[np.ndarray, tuple[slice, ...]]],
            generic_weight: float) -> np.ndarray:
    """Weighted standard deviation ``(X, Y, Z)`` float32 of the specialists' ``maps`` (on ``boxes``,
    taper weights) and the generic net's maps ``generics`` (``[(map (X, Y, Z), box)]``: one, two with
    the mirrored run; each weight ``generic_weight`` on its box); 0 where no member reaches, and where
    only one does. Formula: :func:`predict_ensemble_with_spread`."""
    weights = [taper(p.shape) for p in maps]
    shape = generics[0][0].shape
    wsum = np.zeros(shape, np.float32)
    acc = np.zeros(shape, np.float32)
    for generic_map, generic_box in generics:
        wsum[generic_box] += generic_weight
        acc[generic_box] += generic_weight * generic_map[generic_box]
    for p, w, box in zip(maps, weights, boxes):
        wsum[box] += w
        acc[box] += w * p
    covered = wsum > 0
    m = np.divide(acc, wsum, out=np.zeros_like(acc), where=covered)
    # Two passes (deviations about m, member by member) rather than E[p^2] - m^2: the latter cancels
    # where the members agree, float32 then gives noise of order 1e-4 instead of 0.
    dev = np.zeros_like(acc)
    for generic_map, generic_box in generics:
        dev[generic_box] += generic_weight * (generic_map[generic_box] - m[generic_box]) ** 2
    for p, w, box in zip(maps, weights, boxes):
        dev[box] += w * (p - m[box]) ** 2
    spread = np.sqrt(np.divide(dev, wsum, out=dev, where=covered), out=dev)
    # The bound 0.5 is exact in arithmetic; float32 rounding of an even 0/1 split may pass it by an ulp.
    return np.minimum(spread, np.float32(0.5), out=spread)


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


def search_region(wm: np.ndarray, threshold: float = 0.5, dilation_mm: float = 3.0,
                  infratentorial: np.ndarray | None = None) -> np.ndarray:
    """Where white-matter lesions can be: template WM (probability >= ``threshold``) dilated by
    ``dilation_mm`` (1 mm grid), so that juxtacortical and periventricular lesions stay in; with
    ``infratentorial`` (a brain mask ``(X, Y, Z)`` of the brainstem and cerebellum,
    :func:`bids_app.mslesion.regions.infratentorial_mask`) also all of it: there the template WM
    probability is low (0.04-0.5 on the brainstem and cerebellar lesions of the dev patients), so
    the WM rule alone drops infratentorial lesions, one of the four McDonald locations.

    Multiplying the probability map by it removes the bright skull and scalp of raw scans and
    cortical hyperintensities, which a patch-based net otherwise mistakes for lesions.
    """
    from scipy import ndimage

    wm_mask = np.asarray(wm) >= threshold
    dist = ndimage.distance_transform_edt(~wm_mask)
    region = dist <= dilation_mm
    return region | np.asarray(infratentorial, bool) if infratentorial is not None else region


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
    Left-right flip averaging when the model asks for it (:func:`flip_lr`).
    """
    metadata, generic, specialists, boxes = model
    x = np.stack([input_channel(name, image, wm, t1w) for name in metadata["input"]["channels"]])
    if member == "ensemble":
        prob = predict_ensemble(specialists, boxes, x, brain, flip_lr(metadata))
    elif member == "generic":
        prob = predict_generic(generic, x, brain, tuple(metadata["input"].get("roi_size", (96, 96, 96))),
                               flip_lr(metadata))
    else:
        raise ValueError(f"member {member!r} is not 'ensemble' or 'generic'.")
    return prob * _search_region(metadata, wm, brain)


def lesion_probability_with_spread(model, image: np.ndarray, wm: np.ndarray, brain: np.ndarray,
                                   t1w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(probability, spread)`` ``(X, Y, Z)`` on the template grid, from one run of every net.

    ``probability`` is :func:`lesion_probability`'s ``member="ensemble"`` map (the same values);
    ``spread`` the ensemble's weighted standard deviation (:func:`predict_ensemble_with_spread`: the
    specialists plus the generic net), in [0, 0.5], multiplied by the same search region. Arguments
    as :func:`lesion_probability`.
    """
    metadata, generic, specialists, boxes = model
    x = np.stack([input_channel(name, image, wm, t1w) for name in metadata["input"]["channels"]])
    prob, spread = predict_ensemble_with_spread(specialists, boxes, x, brain, generic,
                                                tuple(metadata["input"].get("roi_size", (96, 96, 96))),
                                                flip=flip_lr(metadata))
    region = _search_region(metadata, wm, brain)
    return prob * region, spread * region


def flip_lr(metadata: dict) -> bool:
    """Whether the model's maps are averaged with its maps of the left-right mirrored image
    (``metadata["inference"]["flip_lr"]``; absent: no, as for models exported before it existed)."""
    return bool(metadata.get("inference", {}).get("flip_lr", False))


def _search_region(metadata: dict, wm: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """:func:`search_region` with the model's parameters (``metadata['output']['search_region']``;
    ``"infratentorial": true`` adds the template's brainstem and cerebellum, absent: no)."""
    region = metadata["output"]["search_region"]
    infra = None
    if region.get("infratentorial", False):
        from bids_app.mslesion.regions import infratentorial_mask

        infra = infratentorial_mask(brain, _template_affine())
    return search_region(wm, region["template_wm_threshold"], region["dilation_mm"], infra)


def _template_affine() -> np.ndarray:
    """The voxel-to-mm affine of the template grid the model runs on (MNI152NLin2009aSym, 1 mm)."""
    import nibabel as nib

    from bids_app.imaging import templates

    return nib.load(str(templates.get_template_file("T1w"))).affine


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
