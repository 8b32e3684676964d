"""Hard negatives (:func:`hard_negatives`), drawn into the image only, never into the target:
periventricular rims and caps, CSF partial volume beside sulci and the septum pellucidum, punctate
deep-WM dots, flow artefacts of vessels and the sagittal sinus along the phase-encode axis."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from training.mslesion.synthesis.anatomy import (BRAIN_CLASSES, CORTEX, LATERAL_VENTRICLES, MIDLINE_CSF, SULCAL_CSF,
                                                 TISSUES, _label_lut, _lut)
from training.mslesion.synthesis.fields import FWHM, _box, _u, smooth_field


def periventricular(labels: np.ndarray, amp_unit: float, rng, cfg: dict) -> np.ndarray | None:
    """Thin bright band of WM along the lateral ventricles and caps at the frontal / occipital horns
    (float32 ``(X, Y, Z)`` to add, or ``None`` when there are no lateral ventricles).

    Rim: ``a_r max(0, 1 - d / w)`` for WM voxels at distance ``d`` mm from the ventricles, ``w ~
    U(rim_mm)``, ``a_r = amp_unit U(rim_contrast)``. Caps: per hemisphere (the grid's X midline) the
    ventricle voxels within 4 mm of its most anterior (Y) end and within 6 mm of its most posterior end
    are the horn tips; each tip with probability ``cap_probability`` brightens the WM within ``r ~
    U(cap_mm)`` of it by ``a_c (1 - d_tip / r)^0.7``; the larger of rim and caps is kept.
    """
    size = int(labels.max()) + 1
    vent_all = _label_lut(LATERAL_VENTRICLES, size)[labels]
    box = _box(vent_all, int(np.ceil(max(cfg["cap_mm"][1], cfg["rim_mm"][1]))) + 2)
    if box is None:
        return None
    vent = vent_all[box]
    wm = _lut(TISSUES, size, ("wm",))[labels[box]]
    d = ndimage.distance_transform_edt(~vent).astype(np.float32)
    w = _u(rng, cfg["rim_mm"])
    out = _u(rng, cfg["rim_contrast"]) * amp_unit * np.clip(1 - d / w, 0, 1)
    x = np.arange(box[0].start, box[0].stop).reshape(-1, 1, 1)
    mid = (labels.shape[0] - 1) / 2
    y = np.arange(vent.shape[1]).reshape(1, -1, 1)
    for side in (x < mid, x >= mid):
        v = vent & side
        if not v.any():
            continue
        ys = np.flatnonzero(v.any(axis=(0, 2)))
        for tip in (v & (y >= ys[-1] - 4), v & (y <= ys[0] + 6)):
            if rng.random() >= cfg["cap_probability"]:
                continue
            r = _u(rng, cfg["cap_mm"])
            dt = ndimage.distance_transform_edt(~tip).astype(np.float32)
            out = np.maximum(out, _u(rng, cfg["cap_contrast"]) * amp_unit * np.clip(1 - dt / r, 0, 1) ** 0.7)
    full = np.zeros(labels.shape, np.float32)
    full[box] = out * wm * (~vent)
    return full


def csf_partial_volume(labels: np.ndarray, amp_unit: float, rng, cfg: dict) -> np.ndarray | None:
    """Bright-ish rims where CSF meets grey matter, and the septum pellucidum (float32 to add, or ``None``).

    Sulci: cortex voxels face-adjacent to sulcal CSF (label 24), times a patchy weight
    ``clip(f, 0, 1)`` of a :func:`smooth_field` ``f`` (``patch_spacing_mm``), times ``amp_unit
    U(contrast)``. Septum: non-ventricle voxels between the lateral ventricles along X (closing of the
    ventricles by a 7-voxel line along X) within 4 mm of the X midline, times ``amp_unit U(septum_contrast)``.
    """
    size = int(labels.max()) + 1
    csf = _label_lut(SULCAL_CSF, size)[labels]
    box = _box(csf, 1)
    out = np.zeros(labels.shape, np.float32)
    if box is not None:
        band = _label_lut(CORTEX, size)[labels[box]] & ndimage.binary_dilation(csf[box])
        patch = np.clip(smooth_field(band.shape, cfg["patch_spacing_mm"], rng), 0, 1)
        out[box] = _u(rng, cfg["contrast"]) * amp_unit * band * patch
    vent = _label_lut(LATERAL_VENTRICLES, size)[labels]
    vbox = _box(vent, 4)
    if vbox is not None:
        v = vent[vbox]
        septum = ndimage.binary_closing(v, np.ones((7, 1, 1), bool)) & ~v
        x = np.arange(vbox[0].start, vbox[0].stop).reshape(-1, 1, 1)
        septum &= np.abs(x - (labels.shape[0] - 1) / 2) <= 4
        out[vbox] += _u(rng, cfg["septum_contrast"]) * amp_unit * septum
    return out if out.any() else None


def punctate(labels: np.ndarray, amp_unit: float, n_lesions: int, rng, cfg: dict) -> np.ndarray | None:
    """Tiny deep-WM dots (age-related punctate hyperintensities), not lesions (float32 to add, or ``None``).

    ``min(U{count}, max(1, n_lesions - 1))`` dots, each a Gaussian of FWHM ``U(diameter_mm)`` and peak
    ``amp_unit U(contrast)``, centred (with a sub-voxel offset) on a WM voxel at least 3 mm from any
    other tissue (WM eroded 3 times, 6-connectivity).
    """
    size = int(labels.max()) + 1
    wm = _lut(TISSUES, size, ("wm",))[labels]
    box = _box(wm, 0)
    if box is None:
        return None
    deep = np.argwhere(ndimage.binary_erosion(wm[box], iterations=3)) + [s.start for s in box]
    if len(deep) == 0:
        return None
    n = min(int(rng.integers(cfg["count"][0], cfg["count"][1] + 1)), max(1, n_lesions - 1))
    out = np.zeros(labels.shape, np.float32)
    g = np.indices((7, 7, 7)).astype(np.float32) - 3
    for c in deep[rng.integers(len(deep), size=n)]:
        sigma = _u(rng, cfg["diameter_mm"]) / FWHM
        off = rng.uniform(-0.5, 0.5, 3).reshape(3, 1, 1, 1)
        blob = np.exp(-(((g - off) ** 2).sum(0)) / (2 * sigma ** 2)) * _u(rng, cfg["contrast"]) * amp_unit
        sl = tuple(slice(int(v) - 3, int(v) + 4) for v in c)
        if all(s.start >= 0 and s.stop <= n_ for s, n_ in zip(sl, labels.shape)):
            out[sl] = np.maximum(out[sl], blob)
    return out


def flow_artefacts(labels: np.ndarray, amp_unit: float, pe_axis: int, rng, cfg: dict) -> np.ndarray | None:
    """Bright flow artefacts along the phase-encode axis ``pe_axis`` (float32 to add, or ``None``).

    Source: vessels (labels 30/62) and the superior sagittal sinus (a 3 x 3 mm tube 1-3 mm above the
    brain's top along the X midline), brightness ``b = amp_unit U(contrast)``. Ghosts: ``U{replicas}``
    copies on both sides shifted by multiples of ``U(offset_mm)`` along ``pe_axis`` (wrapping, as
    ghosts wrap in the field of view), the ``r``-th scaled by ``decay^r``. With ``streak_probability``
    a streak: the source smeared by a ``U{streak_mm}`` box along ``pe_axis`` at half brightness. With
    ``csf_probability`` the 3rd/4th ventricles get inflow brightening ``b`` times a patchy weight.
    """
    size = int(labels.max()) + 1
    src = _label_lut(TISSUES["vessel"], size)[labels].astype(np.float32)
    brain = _lut(TISSUES, size, BRAIN_CLASSES)[labels]
    mid = int(round((labels.shape[0] - 1) / 2))
    top = brain[max(0, mid - 1): mid + 2].any(0)  # (Y, Z)
    ys = np.flatnonzero(top.any(1))
    if ys.size:
        zt = top.shape[1] - 1 - np.argmax(top[ys, ::-1], axis=1)  # highest brain voxel per Y
        for y, z in zip(ys, zt):
            src[max(0, mid - 1): mid + 2, y, min(z + 1, labels.shape[2] - 1): min(z + 4, labels.shape[2])] = 1.0
    b = _u(rng, cfg["contrast"]) * amp_unit
    out = np.zeros(labels.shape, np.float32)
    if src.any():
        step = _u(rng, cfg["offset_mm"])
        decay = _u(rng, cfg["decay"])
        for r in range(1, int(rng.integers(cfg["replicas"][0], cfg["replicas"][1] + 1)) + 1):
            for sign in (1, -1):
                out += b * decay ** r * np.roll(src, sign * int(round(r * step)), axis=pe_axis)
        if rng.random() < cfg["streak_probability"]:
            length = int(rng.integers(cfg["streak_mm"][0], cfg["streak_mm"][1] + 1))
            # A box average spreads the 3 mm source over ``length`` mm; rescaled so the streak keeps half
            # the source's brightness wherever it reaches.
            out += 0.5 * b * np.minimum(1.0, ndimage.uniform_filter1d(src, length, axis=pe_axis) * length / 3.0)
    if rng.random() < cfg["csf_probability"]:
        mcsf = _label_lut(MIDLINE_CSF, size)[labels]
        box = _box(mcsf, 0)
        if box is not None:
            patch = np.clip(0.5 + smooth_field(mcsf[box].shape, 8.0, rng), 0, 1)
            out[box] += b * mcsf[box] * patch
    return out if out.any() else None


def hard_negatives(labels: np.ndarray, amp_unit: float, sign: float, n_lesions: int, pe_axis: int, rng,
                   cfg: dict) -> tuple[np.ndarray, list[str]]:
    """The sum (float32 ``(X, Y, Z)``, to add to the image, never to the target) of the hard negatives
    drawn for one canvas, and their names. ``cfg`` is the ``hard_negatives`` block; each kind is drawn
    with its ``probability``; all but flow artefacts take ``sign`` (hypo on T1, like lesions)."""
    out = np.zeros(labels.shape, np.float32)
    drawn = []
    # One draw per kind, always in this order, so each kind's decision does not depend on the others.
    on = {k: rng.random() < cfg[k]["probability"] for k in ("periventricular", "csf_partial_volume", "punctate", "flow")}
    parts = {
        "periventricular": lambda: periventricular(labels, amp_unit, rng, cfg["periventricular"]),
        "csf_partial_volume": lambda: csf_partial_volume(labels, amp_unit, rng, cfg["csf_partial_volume"]),
        "punctate": lambda: punctate(labels, amp_unit, n_lesions, rng, cfg["punctate"]),
    }
    for name, make in parts.items():
        if on[name]:
            d = make()
            if d is not None:
                out += sign * d
                drawn.append(name)
    if on["flow"]:
        d = flow_artefacts(labels, amp_unit, pe_axis, rng, cfg["flow"])
        if d is not None:
            out += d
            drawn.append("flow")
    return out, drawn
