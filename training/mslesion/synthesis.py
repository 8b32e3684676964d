"""SynthSeg-style training canvases on real anatomy, in template space.

The synthetic canvases of :mod:`.sampler` are drawn from the template's own tissue maps: one anatomy,
which the network learns by heart. Here each canvas is rendered from the whole-head label map of a real
subject (``synthseg-label-maps``: 39 maps, FreeSurfer label values, 1 mm) carried to the template grid
(MNI152NLin2009aSym, 1 mm, RAS, ``197 x 233 x 189``, numpy order ``(X, Y, Z)``), with random contrast,
resolution, artefacts and real lesion shapes, and normalised exactly like the app's inputs. The result
is a *labelled* canvas ``{"image", "label", "ignore"}`` that :class:`.sampler.Sampler` consumes unchanged.

Per canvas (every number from the ``"synthesis"`` block of ``configs/synthesis.json``, the only place
the defaults live; each stage has its own random stream, so switching one stage off leaves the draws
of the others as they were):

1. **Anatomy.** The label map registered to the template like an app input (:func:`register_label_map`),
   then a small random affine and a smooth nonlinear deformation (:func:`random_coordinates`), applied
   by nearest neighbour to the labels *with the lesions coded into them*, so both move together.
2. **Lesions.** Real lesion shapes (:func:`draw_lesion_mask`: random masks, random subsets of their
   connected components, random left-right flip) kept inside the subject's own white matter
   (:data:`LESION_WM_LABELS`) before the deformation.
3. **Contrast** (:func:`tissue_lut`): a Gaussian mixture, ``voxel = N(mean_l, std_l)`` per label ``l``,
   with the class means drawn from the ranges of the canvas's contrast type (FLAIR, T2, PD, T1 or
   fully random). Lesion component ``k`` adds ``G_s * (delta_k 1_k)``, ``delta_k = sign * c * mean_WM``
   (or a faint ``sign * c' * sqrt(std_WM^2 + std_noise^2)``), ``G_s`` a Gaussian of ``s`` mm; the
   target is ``G_s * 1_lesion`` (soft partial-volume edges).
4. **Hard negatives** (:func:`hard_negatives`), drawn into the image only: periventricular rims and
   caps, CSF partial volume beside sulci and the septum pellucidum, punctate deep-WM dots, flow
   artefacts (ghosts and streaks of vessels and the sagittal sinus along the phase-encode axis).
5. **Acquisition** (:func:`acquire`): partial-volume blur, bias field, thick slices along a random
   axis (:func:`thick_slices`, :func:`upsample_slices`), k-space ghosting and motion
   (:func:`kspace_artefacts`), Rician or Gaussian noise on the acquired grid; the skull kept or
   stripped; then :func:`bids_app.imaging.brain.normalise_intensity` inside the template brain mask,
   as :func:`bids_app.imaging.template_space.to_template_space` does.

:func:`synthetic_canvases` renders (or reads from its cache) the canvases of a training run.
``python -m training.mslesion.synthesis CONFIG --figure PNG`` draws examples for the model card.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from bids_app.imaging.brain import normalise_intensity
from training.common.paths import ROOT

LOGGER = logging.getLogger(__name__)

#: The defaults of every knob (the ``"synthesis"`` block); a training config's block is merged over it.
DEFAULTS_FILE = Path(__file__).resolve().parent / "configs" / "synthesis.json"

#: FreeSurfer / SynthSeg label values of each tissue class, for both kinds of maps (``training_seg_*``
#: with both hemispheres and 5xx extra-cerebral labels; ``subject*`` with merged hemispheres, 165 skull,
#: 258 other head tissue, 259 eyes). The 5xx labels are not named in the label table; their class is
#: read from their place in ``training_seg_01``: 506 eyes, 515 the skull shell, 509/512 the nasal
#: cavity and airway, the rest (scalp, muscle, fat, marrow, optic nerves) soft tissue. 25/57 (FreeSurfer
#: "lesion") are rendered as white matter: they are not the lesions of the target. Unlisted labels
#: are rendered as soft tissue.
TISSUES = {
    "wm": (2, 41, 7, 46, 16, 28, 60, 85, 25, 57, 77),
    "gm": (3, 42, 8, 47, 17, 53, 18, 54),
    "deep_gm": (10, 49, 11, 50, 12, 51, 26, 58),
    "pallidum": (13, 52),
    "csf": (4, 43, 5, 44, 14, 15, 24, 72),
    "choroid": (31, 63, 136, 137, 163, 164),
    "vessel": (30, 62),
    "eye": (506, 259),
    "bone": (165, 515),
    "air": (509, 512),
    "soft": (258, 502, 507, 508, 511, 514, 516, 530),
}
#: Cerebral and cerebellar white matter and brainstem: where lesions are kept.
LESION_WM_LABELS = (2, 41, 7, 46, 16, 25, 57, 77)
LATERAL_VENTRICLES = (4, 43)
CORTEX = (3, 42)
SULCAL_CSF = (24,)
MIDLINE_CSF = (14, 15)  # 3rd and 4th ventricles (CSF flow)
#: The brain (what a skull stripping keeps): every class inside the pia, without the outer CSF (24).
BRAIN_CLASSES = ("wm", "gm", "deep_gm", "pallidum", "csf", "choroid", "vessel")
#: Lesion components are coded into the label map as ``LESION_CODE + k`` while it is deformed.
LESION_CODE = 10000
#: FWHM of a Gaussian in units of its sigma, ``2 sqrt(2 ln 2)``.
FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: Independent random stream of each stage (index into the seed sequence).
STAGES = ("spatial", "contrast", "lesions", "negatives", "acquisition", "skull")


# ----------------------------------------------------------------------------------------- settings
def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def settings(config: dict | None = None) -> dict:
    """The synthesis settings: :data:`DEFAULTS_FILE`'s ``"synthesis"`` block with ``config["synthesis"]``
    (a training config, or ``configs/synthesis.json`` itself) merged over it, nested dicts key by key."""
    base = json.loads(DEFAULTS_FILE.read_text())["synthesis"]
    out = _merge(base, (config or {}).get("synthesis", {}))
    probs = out["contrast"]
    if min(probs.values()) < 0 or sum(probs.values()) <= 0:
        raise ValueError(f"synthesis.contrast probabilities must be >= 0 with a positive sum, got {probs}")
    for ct, p in probs.items():
        if p > 0:
            missing = set(TISSUES) - set(out["tissue_mean"].get(ct, {}))
            if missing:
                raise ValueError(f"synthesis.tissue_mean.{ct} lacks the classes {sorted(missing)}")
    return out


def _u(rng, rng_range) -> float:
    lo, hi = rng_range
    return float(rng.uniform(lo, hi))


def _lut(labels_by_class: dict, size: int, classes) -> np.ndarray:
    lut = np.zeros(size, bool)
    for c in classes:
        for v in labels_by_class[c]:
            if v < size:
                lut[v] = True
    return lut


def _label_lut(values, size: int) -> np.ndarray:
    lut = np.zeros(size, bool)
    lut[[v for v in values if v < size]] = True
    return lut


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``margin`` voxels (clipped to the grid), or ``None`` if empty."""
    out = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if hit.size == 0:
            return None
        out.append(slice(max(0, hit[0] - margin), min(mask.shape[ax], hit[-1] + margin + 1)))
    return tuple(out)


# ---------------------------------------------------------------------------------- smooth fields
def upsample(coarse: np.ndarray, shape) -> np.ndarray:
    """Cubic B-spline interpolation of a small ``(gx, gy, gz)`` array onto ``shape`` (both spanning the same
    extent, ``grid_mode``), float32.

    Separable: the 1D interpolation matrix of each axis is :func:`scipy.ndimage.zoom` of an identity, so
    the result equals ``ndimage.zoom(coarse, shape / coarse.shape, order=3)`` at a fraction of its cost
    (three small matrix products instead of 64 taps per output voxel).
    """
    mats = [ndimage.zoom(np.eye(g, dtype=np.float64), (n / g, 1.0), order=3, mode="nearest", grid_mode=True)
            .astype(np.float32) for g, n in zip(coarse.shape, shape)]
    t = np.tensordot(mats[0], coarse.astype(np.float32), axes=(1, 0))  # (X, gy, gz)
    t = np.tensordot(t, mats[1], axes=(1, 1))  # (X, gz, Y)
    return np.ascontiguousarray(np.tensordot(t, mats[2], axes=(1, 1)))  # (X, Y, Z)


def smooth_field(shape, spacing_mm: float, rng) -> np.ndarray:
    """A smooth zero-mean random field of unit standard deviation (before interpolation): i.i.d. normal
    control points every ``spacing_mm`` (1 mm voxels) interpolated by :func:`upsample`."""
    g = [max(2, int(np.ceil(n / spacing_mm)) + 1) for n in shape]
    return upsample(rng.standard_normal(g), shape)


# ---------------------------------------------------------------------------------------- anatomy
def random_coordinates(shape, rng, cfg: dict) -> np.ndarray:
    """Source coordinates ``(3, X, Y, Z)`` (voxels, float32) of a random small affine plus a smooth
    nonlinear deformation: ``src(x) = A (x - c) + c + t + u(x)``.

    ``c`` is the grid centre; ``A = R S H`` with rotations ``U(+-rotation_deg)`` about each axis, scales
    ``1 + U(+-scale)`` and shears ``U(+-shear)``; ``t ~ U(+-translation_mm)`` per axis; with probability
    ``nonlinear_probability`` ``u`` is three :func:`smooth_field` components (control points every
    ``nonlinear_spacing_mm``) scaled to an RMS displacement ``|u|`` of ``U(nonlinear_rms_mm)`` mm.
    """
    shape = tuple(shape)
    ang = np.deg2rad(rng.uniform(-cfg["rotation_deg"], cfg["rotation_deg"], 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    shear = np.eye(3)
    shear[np.triu_indices(3, 1)] = rng.uniform(-cfg["shear"], cfg["shear"], 3)
    a = rot @ np.diag(1 + rng.uniform(-cfg["scale"], cfg["scale"], 3)) @ shear
    t = rng.uniform(-cfg["translation_mm"], cfg["translation_mm"], 3)
    c = (np.asarray(shape) - 1) / 2.0
    grids = [(np.arange(n, dtype=np.float32) - c[i]).reshape([-1 if j == i else 1 for j in range(3)])
             for i, n in enumerate(shape)]
    coords = np.empty((3,) + shape, np.float32)
    for i in range(3):
        coords[i] = c[i] + t[i] + a[i, 0] * grids[0] + a[i, 1] * grids[1] + a[i, 2] * grids[2]
    if rng.random() < cfg["nonlinear_probability"]:
        u = np.stack([smooth_field(shape, cfg["nonlinear_spacing_mm"], rng) for _ in range(3)])
        u *= _u(rng, cfg["nonlinear_rms_mm"]) / (float(np.sqrt((u ** 2).sum(0).mean())) + 1e-6)
        coords += u
    return coords


def deform_labels(labels: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``labels`` (integer, ``(X, Y, Z)``) at the source coordinates ``coords`` by nearest neighbour (0 outside)."""
    return ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0, prefilter=False,
                                   output=labels.dtype)


# ----------------------------------------------------------------------------------------- lesions
def draw_lesion_mask(masks: list[np.ndarray], rng, cfg: dict, extra: list[np.ndarray] | None = None,
                     shape=None) -> np.ndarray:
    """A boolean ``(X, Y, Z)`` lesion mask on the template grid from real masks (``cfg`` is the
    ``lesions`` block).

    With probability ``none_probability`` empty. Otherwise ``U{masks_per_canvas}`` masks drawn without
    replacement from ``extra`` (with probability ``extra_probability`` when given; soft masks are taken
    at >= 0.5) or ``masks``; each flipped left-right (axis 0, the template is symmetric) with
    ``flip_probability``, and each of its connected components (26-connectivity) kept with a
    probability drawn from ``components_kept`` for that mask; their union.
    """
    shape = tuple(shape if shape is not None else masks[0].shape)
    out = np.zeros(shape, bool)
    if rng.random() < cfg["none_probability"]:
        return out
    pool = extra if extra and rng.random() < cfg["extra_probability"] else masks
    if not pool:
        return out
    lo, hi = cfg["masks_per_canvas"]
    k = min(int(rng.integers(lo, hi + 1)), len(pool))
    for j in rng.choice(len(pool), size=k, replace=False):
        m = np.asarray(pool[j])
        m = m >= 0.5 if m.dtype != bool else m
        if rng.random() < cfg["flip_probability"]:
            m = m[::-1]
        box = _box(m, 1)
        if box is None:
            continue
        lab, n = ndimage.label(m[box], np.ones((3, 3, 3)))
        keep = rng.random(n + 1) < _u(rng, cfg["components_kept"])
        keep[0] = False
        out[box] |= keep[lab]
    return out


# ---------------------------------------------------------------------------------------- contrast
def tissue_lut(size: int, contrast: str, rng, cfg: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-label mean and std (float32 arrays indexed by label value, ``size`` entries) and the class
    means: class mean ``m_c ~ U(tissue_mean[contrast][c])``, label mean ``m_c (1 + N(0, label_jitter))``
    (clipped at 0), label std ``U(tissue_std)``. Label 0 (air around the head) is 0 +- 0."""
    means = {c: _u(rng, cfg["tissue_mean"][contrast][c]) for c in TISSUES}
    mu = np.full(size, means["soft"], np.float32)
    for c, labs in TISSUES.items():
        for v in labs:
            if v < size:
                mu[v] = means[c]
    mu = np.clip(mu * (1 + cfg["label_jitter"] * rng.standard_normal(size)), 0, None).astype(np.float32)
    sd = rng.uniform(*cfg["tissue_std"], size).astype(np.float32)
    mu[0] = sd[0] = 0.0
    return mu, sd, means


# ---------------------------------------------------------------------------------- hard negatives
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


# ------------------------------------------------------------------------------------- acquisition
def _interp_axis(vol: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """``vol`` linearly interpolated at the fractional indices ``pos`` along ``axis`` (clamped at the ends)."""
    n = vol.shape[axis]
    pos = np.clip(pos, 0, n - 1)
    k0 = np.clip(np.floor(pos).astype(int), 0, max(0, n - 2))
    w = (pos - k0).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(vol.ndim)])
    a = np.take(vol, k0, axis=axis)
    b = np.take(vol, np.minimum(k0 + 1, n - 1), axis=axis)
    return (a * (1 - w) + b * w).astype(np.float32)


def thick_slices(img: np.ndarray, axis: int, spacing: float, thickness: float, offset: float) -> np.ndarray:
    """Acquire slices of ``thickness`` mm every ``spacing`` mm along ``axis`` (1 mm voxels).

    Slice profile: a Gaussian of FWHM ``thickness`` (``sigma = thickness / (2 sqrt(2 ln 2))``) along
    ``axis``, sampled (linearly) at ``offset + k spacing``, ``k = 0 .. floor((n - 1 - offset) / spacing)``.
    Returns the slices: ``img``'s shape with ``K`` (their number) along ``axis``.
    """
    blurred = ndimage.gaussian_filter1d(img, thickness / FWHM, axis=axis, mode="nearest")
    k = int(np.floor((img.shape[axis] - 1 - offset) / spacing)) + 1
    return _interp_axis(blurred, offset + spacing * np.arange(k), axis)


def upsample_slices(low: np.ndarray, axis: int, n: int, spacing: float, offset: float) -> np.ndarray:
    """Slices from :func:`thick_slices` back on the 1 mm grid (``n`` voxels along ``axis``) by linear
    interpolation between slice centres (nearest beyond the first and last), as the app's linear
    resampling of a thick-slice scan onto the template grid does."""
    return _interp_axis(low, (np.arange(n) - offset) / spacing, axis)


def kspace_artefacts(vol: np.ndarray, pe_axis: int, rng, cfg: dict) -> tuple[np.ndarray, list[str]]:
    """Ghosting and motion by corrupting phase-encode lines (``cfg`` is the ``kspace`` block).

    A modulation that is the same for every readout frequency commutes with the readout FFT, so a 1D
    FFT along ``pe_axis`` suffices. Ghosting: every ``m``-th line (``m ~ U{ghost_period}``, random
    phase) times ``U(ghost_scale)``. Motion: a fraction ``U(motion_lines)`` of the lines from a copy
    shifted by ``U(motion_shift_mm)`` in a random direction. The magnitude is kept (a magnitude image).
    """
    applied = []
    if rng.random() < cfg["ghosting_probability"]:
        k = np.fft.fft(vol, axis=pe_axis)
        m = int(rng.integers(cfg["ghost_period"][0], cfg["ghost_period"][1] + 1))
        sl = [slice(None)] * vol.ndim
        sl[pe_axis] = slice(int(rng.integers(m)), None, m)
        k[tuple(sl)] *= _u(rng, cfg["ghost_scale"])
        vol = np.abs(np.fft.ifft(k, axis=pe_axis)).astype(np.float32)
        applied.append(f"ghosting/{m}")
    if rng.random() < cfg["motion_probability"]:
        direction = rng.standard_normal(vol.ndim)
        shift = _u(rng, cfg["motion_shift_mm"]) * direction / np.linalg.norm(direction)
        moved = ndimage.shift(vol, shift, order=1, mode="nearest")
        lines = rng.random(vol.shape[pe_axis]) < _u(rng, cfg["motion_lines"])
        sel = lines.reshape([-1 if a == pe_axis else 1 for a in range(vol.ndim)])
        k = np.where(sel, np.fft.fft(moved, axis=pe_axis), np.fft.fft(vol, axis=pe_axis))
        vol = np.abs(np.fft.ifft(k, axis=pe_axis)).astype(np.float32)
        applied.append("motion")
    return vol, applied


def add_noise(vol: np.ndarray, std: float, rician: bool, rng) -> np.ndarray:
    """Rician noise ``sqrt((x + std n1)^2 + (std n2)^2)`` or Gaussian ``max(0, x + std n1)``, ``n`` i.i.d. N(0, 1)."""
    n1 = rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(std)
    if rician:
        n2 = rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(std)
        return np.sqrt((vol + n1) ** 2 + n2 ** 2)
    return np.maximum(vol + n1, 0)


def acquire(img: np.ndarray, rng, cfg: dict, noise_std: float, rician: bool, slice_axis: int | None,
            pe_axis: int) -> tuple[np.ndarray, dict]:
    """Everything between the object and the magnitude image on the 1 mm grid (float32 ``(X, Y, Z)``).

    Partial volume (isotropic Gaussian ``U(partial_volume_sigma_mm)``), bias field (``exp`` of a
    :func:`smooth_field` times ``U(bias.std)``, with ``bias.probability``), in-plane blur
    ``U(inplane_sigma_mm)`` (every axis when isotropic), then with ``slice_axis`` thick slices
    (spacing ``U(slice_spacing_mm)``, thickness ``spacing U(thickness_fraction)``, random offset),
    k-space artefacts and noise on the acquired grid (so noise is correlated across slices after
    upsampling, as in a real upsampled scan), upsampled back. Returns the image and what was drawn.
    """
    res, meta = cfg["resolution"], {}
    img = ndimage.gaussian_filter(img, _u(rng, cfg["partial_volume_sigma_mm"]))
    if rng.random() < cfg["bias"]["probability"]:
        std = _u(rng, cfg["bias"]["std"])
        img = img * np.exp(std * smooth_field(img.shape, cfg["bias"]["spacing_mm"], rng))
        meta["bias_std"] = round(std, 3)
    inplane = _u(rng, res["inplane_sigma_mm"])
    if slice_axis is None:
        img = ndimage.gaussian_filter(img, inplane)
        img, meta["kspace"] = kspace_artefacts(img, pe_axis, rng, cfg["kspace"])
        return add_noise(img, noise_std, rician, rng), meta
    img = ndimage.gaussian_filter(img, [0.0 if a == slice_axis else inplane for a in range(3)])
    spacing = _u(rng, res["slice_spacing_mm"])
    thickness = spacing * _u(rng, res["thickness_fraction"])
    offset = float(rng.uniform(0, spacing))
    low = thick_slices(img, slice_axis, spacing, thickness, offset)
    low, meta["kspace"] = kspace_artefacts(low, pe_axis, rng, cfg["kspace"])
    low = add_noise(low, noise_std, rician, rng)
    meta.update(spacing_mm=round(spacing, 2), thickness_mm=round(thickness, 2))
    return upsample_slices(low, slice_axis, img.shape[slice_axis], spacing, offset), meta


# ----------------------------------------------------------------------------------------- a canvas
def _streams(seed) -> dict:
    base = [int(s) for s in np.atleast_1d(seed)]
    return {stage: np.random.default_rng(base + [k]) for k, stage in enumerate(STAGES)}


def render_canvas(labels: np.ndarray, brain: np.ndarray, lesion: np.ndarray | None, cfg: dict, seed,
                  contrast: str | None = None) -> dict:
    """One synthetic canvas from a label map on the canvas grid (1 mm voxels, ``(X, Y, Z)``, RAS).

    Parameters
    ----------
    labels : integer ``(X, Y, Z)`` label map (FreeSurfer values, :data:`TISSUES`) already on the grid.
    brain : bool ``(X, Y, Z)``, the mask of the normalisation (the template brain mask).
    lesion : bool ``(X, Y, Z)`` lesion shapes (e.g. :func:`draw_lesion_mask`) or ``None``; only their
        part in this subject's white matter (:data:`LESION_WM_LABELS`) is used, in connected pieces of
        at least ``lesions.min_voxels`` voxels.
    cfg : :func:`settings`.
    seed : int or sequence of ints; each stage (:data:`STAGES`) draws from its own stream of it.
    contrast : force a contrast type instead of drawing it from ``cfg["contrast"]``.

    Returns ``{"image": float32 (x - median) / IQR in brain, "label": float32 soft lesion target in
    [0, 1], "labels": the deformed label map, "lesion": bool lesion voxels, "negatives": float32 the
    hard negatives added (before acquisition, intensity units), "meta": dict of what was drawn}``.
    """
    rng = _streams(seed)
    lab = np.asarray(labels).astype(np.uint16)
    size = int(lab.max()) + 1
    n_comp = 0
    if lesion is not None and lesion.any():
        les = lesion & _label_lut(LESION_WM_LABELS, size)[lab]
        comp, n_comp = ndimage.label(les, np.ones((3, 3, 3)))
        # Slivers left where a real lesion overlapped this subject's grey matter or CSF are dropped:
        # after partial volume they are invisible, yet would stay in the target.
        small = np.bincount(comp.ravel(), minlength=n_comp + 1) < cfg["lesions"]["min_voxels"]
        small[0] = False
        if small.any():
            les &= ~small[comp]
            comp, n_comp = ndimage.label(les, np.ones((3, 3, 3)))
        lab[les] = LESION_CODE + comp[les] - 1  # coded, so that labels and lesions deform together
        del comp, les
    lab = deform_labels(lab, random_coordinates(lab.shape, rng["spatial"], cfg["spatial"]))
    les = lab >= LESION_CODE
    comp = np.where(les, lab.astype(np.int32) - LESION_CODE, -1)
    lab[les] = 2  # lesions lie in white matter; their base is rendered as WM, their contrast added below

    # Contrast, noise level and geometry of the acquisition: the "contrast" stream.
    r = rng["contrast"]
    names = sorted(cfg["contrast"])
    p = np.array([cfg["contrast"][k] for k in names], float)
    drawn = names[r.choice(len(names), p=p / p.sum())]
    contrast = contrast or drawn
    mu, sd, means = tissue_lut(size, contrast, r, cfg)
    noise_std = _u(r, cfg["noise"]["std"])
    rician = bool(r.random() < cfg["noise"]["rician_probability"])
    res = cfg["resolution"]
    thick = r.random() < res["thick_probability"]
    ap = np.asarray(res["axis_probabilities"], float)
    slice_axis = int(r.choice(3, p=ap / ap.sum())) if thick else None
    pe_choices = [a for a in range(3) if a != slice_axis]
    pe_axis = int(pe_choices[r.integers(len(pe_choices))])
    img = mu[lab] + sd[lab] * r.standard_normal(lab.shape, dtype=np.float32)

    # Lesions: delta per component, soft target.
    lc = cfg["lesions"]
    sign = float(lc["sign"][contrast])
    mu_wm, sd_wm = means["wm"], float(sd[min(2, size - 1)])
    target = np.zeros(lab.shape, np.float32)
    rl = rng["lesions"]
    if les.any():
        n_def = int(comp.max()) + 1
        faint = rl.random(n_def) < lc["faint_fraction"]
        strong = rl.uniform(*lc["contrast"][contrast], n_def) * mu_wm
        weak = rl.uniform(*lc["faint_wm_std"], n_def) * np.sqrt(sd_wm ** 2 + noise_std ** 2)
        delta = sign * np.where(faint, weak, strong).astype(np.float32)
        edge = _u(rl, lc["edge_sigma_mm"])
        box = _box(les, int(np.ceil(4 * edge)) + 2)
        dmap = np.where(les[box], delta[np.maximum(comp[box], 0)], 0).astype(np.float32)
        tex = ndimage.gaussian_filter(rl.standard_normal(dmap.shape, dtype=np.float32), 1.0)
        dmap *= 1 + lc["texture"] * tex / (float(tex.std()) + 1e-6)
        img[box] += ndimage.gaussian_filter(dmap, edge)
        target[box] = np.clip(ndimage.gaussian_filter(les[box].astype(np.float32), edge), 0, 1)
        n_comp = n_def
    del comp

    negatives, neg_names = hard_negatives(lab, mu_wm, sign, n_comp, pe_axis, rng["negatives"], cfg["hard_negatives"])
    img += negatives

    img, acq = acquire(img, rng["acquisition"], cfg, noise_std, rician, slice_axis, pe_axis)

    rs = rng["skull"]
    skull = bool(rs.random() < cfg["skull_on_probability"])
    if not skull:
        d = int(rs.integers(cfg["strip_dilation_mm"][0], cfg["strip_dilation_mm"][1] + 1))
        # A skull-stripping mask holds the sulcal and outer CSF next to the brain (3 mm), then some
        # more or less of the tissue outside (d mm).
        keep = _lut(TISSUES, size, BRAIN_CLASSES)[lab]
        keep |= ndimage.binary_dilation(keep, iterations=3) & _label_lut(SULCAL_CSF, size)[lab]
        if d > 0:
            keep = ndimage.binary_dilation(keep, iterations=d)
        img = img * ndimage.binary_fill_holes(keep)
    image = normalise_intensity(img, brain)
    meta = {"contrast": contrast, "slice_axis": slice_axis, "pe_axis": pe_axis, "skull": skull,
            "noise_std": round(noise_std, 4), "rician": rician, "negatives": neg_names,
            "lesion_components": n_comp, "lesion_ml": round(float(target.sum()) / 1000, 2),
            "wm_mean": round(mu_wm, 4), **acq}
    return {"image": image.astype(np.float32), "label": target, "labels": lab, "lesion": les,
            "negatives": negatives, "meta": meta}


def describe(meta: dict, sep: str = ", ") -> str:
    """A canvas in words: contrast and resolution, then skull and artefacts (joined by ``sep``)."""
    if meta.get("slice_axis") is None:
        res = "1 mm isotropic"
    else:
        plane = ("sagittal", "coronal", "axial")[meta["slice_axis"]]
        res = f"{meta['spacing_mm']:.1f} mm {plane} slices ({meta['thickness_mm']:.1f} mm thick)"
    extra = list(meta.get("kspace", [])) + (["bias"] if "bias_std" in meta else [])
    return (f"{meta['contrast'].upper()}, {res}{sep}skull {'on' if meta['skull'] else 'off'}"
            + (f", {', '.join(extra)}" if extra else ""))


# ---------------------------------------------------------------------------------- registration
def _t1_like(labels: np.ndarray) -> np.ndarray:
    """A skull-stripped T1-like float32 image of a label map (WM 1.0 > deep GM > GM 0.6 > CSF 0.15, 0 outside
    the brain), the image the registration sees."""
    size = int(labels.max()) + 1
    values = {"wm": 1.0, "deep_gm": 0.75, "pallidum": 0.85, "gm": 0.6, "choroid": 0.5, "vessel": 0.3, "csf": 0.15}
    lut = np.zeros(size, np.float32)
    for c, v in values.items():
        for lab in TISSUES[c]:
            if lab < size:
                lut[lab] = v
    lut[[v for v in SULCAL_CSF if v < size]] = 0.15
    return lut[labels]


def register_label_map(path: Path, cache: Path) -> np.ndarray:
    """A whole-head label map on the template grid: uint16 ``(X, Y, Z)`` (RAS, 1 mm), cached as
    ``cache/labelmaps/<stem>.npy`` with the transform (``.tfm``) and the timings (``.json``).

    The map is registered the way the app registers an input: a skull-stripped T1-like image rendered
    from its labels (:func:`_t1_like`) goes through
    :func:`bids_app.imaging.template_space.to_template_space` (no N4: the image has no bias), i.e.
    its brain mask matched affinely to the template brain mask, then a rigid mutual-information step
    against the template T1w, all single-threaded. The synthetic anatomy so lands on the template with
    the residual misalignment an app input has. The labels are then resampled by nearest neighbour
    through that transform.
    """
    import SimpleITK as sitk

    from bids_app.imaging import templates
    from bids_app.imaging.grid import resample_to
    from bids_app.imaging.template_space import to_template_space

    out_dir = cache / "labelmaps"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(path).name.replace(".nii.gz", "")
    f = out_dir / f"{stem}.npy"
    if f.exists():
        return np.load(f)
    t0 = time.perf_counter()
    img = sitk.ReadImage(str(path))
    arr = np.rint(sitk.GetArrayFromImage(img)).astype(np.uint16)  # (k, j, i); some maps are float32
    labels = sitk.GetImageFromArray(arr)
    labels.CopyInformation(img)
    t1 = sitk.GetImageFromArray(_t1_like(arr))
    t1.CopyInformation(img)
    tpl_img = sitk.ReadImage(str(templates.get_template_file("T1w")))
    tpl_mask = sitk.ReadImage(str(templates.get_template_file("mask", desc="brain")))
    tsi = to_template_space(t1, tpl_img, tpl_mask, bias_correction=False, threads=1)
    warped = resample_to(labels, tpl_img, tsi.transform, "nearest", 0, threads=1)
    out = np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(warped), (2, 1, 0))).astype(np.uint16)
    np.save(f, out)
    sitk.WriteTransform(tsi.transform, str(out_dir / f"{stem}.tfm"))
    seconds = {"registration": round(tsi.seconds["registration"], 1), "total": round(time.perf_counter() - t0, 1)}
    (out_dir / f"{stem}.json").write_text(json.dumps(seconds))
    LOGGER.info("%s registered to the template in %.1f s (%.1f s in all)", stem, seconds["registration"],
                seconds["total"])
    return out


def label_map_paths(cfg: dict) -> list[Path]:
    """The label maps of ``cfg["label_maps"]`` (relative to the repository root), sorted."""
    folder = Path(cfg["label_maps"])
    folder = folder if folder.is_absolute() else ROOT / folder
    paths = sorted(p for p in folder.glob("*.nii.gz"))
    if not paths:
        raise FileNotFoundError(f"no label maps (*.nii.gz) in {folder}; set synthesis.label_maps")
    return paths


# ------------------------------------------------------------------------------------ training API
def _fingerprint(masks) -> str:
    h = hashlib.sha256()
    for m in masks or []:
        m = np.asarray(m)
        h.update(str(m.shape).encode())
        h.update(np.packbits(m >= 0.5 if m.dtype != bool else m).tobytes())
    return h.hexdigest()


def synthetic_canvases(config: dict, tpl: dict, lesion_masks: list[np.ndarray], cache: Path,
                       n: int | None = None, seed: int | None = None, extra_lesions: list[np.ndarray] | None = None,
                       label_maps: dict[str, np.ndarray] | None = None) -> list[dict]:
    """``n`` labelled canvases for :class:`.sampler.Sampler`: ``{"image": float32 (X, Y, Z) brain IQR,
    "label": float32 soft lesion target in [0, 1], "ignore": bool all False, "meta": dict}``.

    ``config``: a training config (its ``"synthesis"`` block over the defaults, :func:`settings`);
    ``n`` defaults to ``synthesis.n_canvases`` and ``seed`` to ``config["seed"]``. ``lesion_masks``:
    boolean masks on the template grid (:func:`.template.lesion_masks_in_template`); ``extra_lesions``:
    more masks (e.g. the labelled scans' lesions), drawn instead with ``lesions.extra_probability``.
    ``label_maps``: name -> label map already on the grid (tests); by default the maps of
    ``synthesis.label_maps`` are registered once (:func:`register_label_map`, cached in
    ``cache/labelmaps``). Canvas ``i`` uses anatomy ``perm[i % n_maps]`` (``perm`` a permutation drawn
    from ``seed``), so 40 canvases see all 39 anatomies, and the seed ``(seed, i)``.

    Rendered canvases are cached as float16 ``.npy`` in ``cache/canvases/<hash>/`` keyed by seed and
    index, where the hash covers the settings, the lesion masks, the anatomies and this module's
    source, so a changed recipe never reads stale canvases. Memory: ~70 MB per returned canvas on the
    full template grid (float32 image and label); one shared all-False ``ignore`` array serves every
    canvas (read-only use only).
    """
    cfg = settings(config)
    n = int(cfg["n_canvases"] if n is None else n)
    seed = int(config.get("seed", 0) if seed is None else seed)
    if label_maps is None:
        paths = label_map_paths(cfg)
        names = [p.name.replace(".nii.gz", "") for p in paths]
        load = {nm: (lambda p=p: register_label_map(p, cache)) for nm, p in zip(names, paths)}
    else:
        names = sorted(label_maps)
        load = {nm: (lambda nm=nm: label_maps[nm]) for nm in names}
    perm = np.random.default_rng([seed, 999]).permutation(len(names))
    key = hashlib.sha256(json.dumps({
        "cfg": cfg, "masks": _fingerprint(lesion_masks), "extra": _fingerprint(extra_lesions), "maps": names,
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "maps_data": None if label_maps is None else _fingerprint([label_maps[k] > 0 for k in names]),
    }, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = cache / "canvases" / key
    folder.mkdir(parents=True, exist_ok=True)
    ignore = np.zeros(tpl["brain"].shape, bool)
    out = []
    for i in range(n):
        name = names[perm[i % len(names)]]
        stem = folder / f"seed{seed}-{i:03d}"
        fi, fl, fm = (Path(f"{stem}_{s}") for s in ("image.npy", "label.npy", "meta.json"))
        if not (fi.exists() and fl.exists() and fm.exists()):
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, i, 100])
            les = draw_lesion_mask(lesion_masks, rng, cfg["lesions"], extra_lesions, tpl["brain"].shape)
            c = render_canvas(load[name](), tpl["brain"], les, cfg, (seed, i))
            meta = {**c["meta"], "anatomy": name, "seconds": round(time.perf_counter() - t0, 1)}
            np.save(fi, c["image"].astype(np.float16))
            np.save(fl, c["label"].astype(np.float16))
            fm.write_text(json.dumps(meta))
            LOGGER.info("synthetic canvas %d/%d (%s): %s, %.2f mL of lesion, negatives %s (%.1f s)", i + 1, n,
                        name, describe(meta), meta["lesion_ml"], meta["negatives"] or "none", meta["seconds"])
            del c
        out.append({"image": np.load(fi).astype(np.float32), "label": np.load(fl).astype(np.float32),
                    "ignore": ignore, "meta": json.loads(fm.read_text())})
    return out


# ------------------------------------------------------------------------------------------ figure
def figure(config: dict, png: Path, n: int = 8) -> None:
    """``n`` canvases of different anatomies on the real data, one axial slice each (the slice with the
    most lesion target), the target's 0.5 contour in red and the hard negatives (added intensity above
    5 % of the WM mean) in cyan; the contrast type is fixed per panel (three FLAIRs, then each other
    type with a non-zero probability, cycled), everything else drawn from the settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.mslesion.template import lesion_masks_in_template, load_template

    cfg = settings(config)
    tpl = load_template()
    folder = Path(cfg["lesion_masks"])
    masks = lesion_masks_in_template(folder if folder.is_absolute() else ROOT / folder, tpl)
    cache = Path(cfg["cache_dir"])
    cache = cache if cache.is_absolute() else ROOT / cache
    paths = label_map_paths(cfg)
    seed = int(cfg["figure_seed"])
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(paths), size=n, replace=False)
    types = [k for k in sorted(cfg["contrast"], key=lambda k: -cfg["contrast"][k]) if cfg["contrast"][k] > 0]
    order = ["flair"] * 3 + [t for t in types if t != "flair"]
    cols = 4
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 4.3 * rows), layout="constrained")
    for j, ax in enumerate(np.ravel(axes)):
        ax.set_axis_off()
        if j >= n:
            continue
        path = paths[picks[j]]
        les = draw_lesion_mask(masks, np.random.default_rng([seed, j, 100]), cfg["lesions"] | {"none_probability": 0},
                               None, tpl["brain"].shape)
        c = render_canvas(register_label_map(path, cache), tpl["brain"], les, cfg, (seed, j),
                          contrast=order[j % len(order)])
        area = (c["label"] >= 0.5).sum((0, 1))
        neg = np.abs(c["negatives"]) > 0.05 * c["meta"]["wm_mean"]
        z = int(np.argmax(area)) if area.max() > 0 else int(np.argmax(neg.sum((0, 1))))
        sl = c["image"][:, :, z].T
        lo, hi = np.percentile(c["image"][tpl["brain"]], [1, 99.5])
        ax.imshow(sl, cmap="gray", origin="lower", vmin=lo, vmax=hi)
        if (c["label"][:, :, z] >= 0.5).any():
            ax.contour(c["label"][:, :, z].T, [0.5], colors="red", linewidths=0.7)
        if neg[:, :, z].any():
            ax.contour(neg[:, :, z].T.astype(float), [0.5], colors="cyan", linewidths=0.5)
        m = c["meta"]
        negs = ", ".join(x.replace("csf_partial_volume", "CSF PV") for x in m["negatives"]) or "none"
        ax.set_title(f"{path.name.replace('.nii.gz', '').replace('_seg', '')}, z={z}, {m['lesion_ml']:.1f} mL\n"
                     f"{describe(m, sep=chr(10))}\nnegatives: {negs}", fontsize=7.5)
        LOGGER.info("figure canvas %d: %s %s", j, path.name, describe(m))
        del c
    fig.suptitle("Synthetic canvases on real anatomy, template grid (axial slice with the most lesion; red: lesion "
                 "target 0.5, cyan: hard negatives, not in the target)\ncontrast fixed per panel, everything else "
                 "drawn from configs/synthesis.json; image in brain IQR", fontsize=9)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=70)
    plt.close(fig)
    LOGGER.info("wrote %s (%d kB)", png, png.stat().st_size // 1024)


def benchmark(config: dict, n: int = 2) -> dict:
    """Seconds to render ``n`` canvases on the full template grid (wall and process CPU time, whatever the
    thread settings of the caller), and the registration time of the maps used (from their caches)."""
    from training.mslesion.template import lesion_masks_in_template, load_template

    cfg = settings(config)
    tpl = load_template()
    folder = Path(cfg["lesion_masks"])
    masks = lesion_masks_in_template(folder if folder.is_absolute() else ROOT / folder, tpl)
    cache = Path(cfg["cache_dir"])
    cache = cache if cache.is_absolute() else ROOT / cache
    paths = label_map_paths(cfg)
    rows = []
    for i in range(n):
        labels = register_label_map(paths[i], cache)
        reg = json.loads((cache / "labelmaps" / f"{paths[i].name.replace('.nii.gz', '')}.json").read_text())
        w0, c0 = time.perf_counter(), time.process_time()
        les = draw_lesion_mask(masks, np.random.default_rng([i, 100]), cfg["lesions"], None, tpl["brain"].shape)
        c = render_canvas(labels, tpl["brain"], les, cfg, (12345, i))
        rows.append({"map": paths[i].name, "render_wall_s": round(time.perf_counter() - w0, 2),
                     "render_cpu_s": round(time.process_time() - c0, 2), "registration_s": reg, "meta": c["meta"]})
        LOGGER.info("benchmark %s", rows[-1])
    return {"canvases": rows}


def main(argv=None) -> int:
    from training.common.logs import setup_logging

    ap = argparse.ArgumentParser(prog="python -m training.mslesion.synthesis")
    ap.add_argument("config", type=Path, help="configs/synthesis.json or a training config with a 'synthesis' block")
    ap.add_argument("--figure", type=Path, help="write example canvases to this PNG")
    ap.add_argument("--n", type=int, default=8, help="canvases in the figure")
    ap.add_argument("--benchmark", type=int, metavar="N", help="time N canvases on the full grid (JSON to stdout)")
    args = ap.parse_args(argv)
    setup_logging()
    config = json.loads(args.config.read_text())
    if args.figure:
        figure(config, args.figure, args.n)
    if args.benchmark:
        import sys

        sys.stdout.write(json.dumps(benchmark(config, args.benchmark), indent=1) + "\n")
    if not (args.figure or args.benchmark):
        ap.error("nothing to do: give --figure PNG and/or --benchmark N")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
