"""Mass effect: the anatomy of the label grid is deformed away from space-occupying bleeds.

Rule (all parameters in ``mass_effect`` of the configuration; a generator choice, not a published
model): bleeds of ``types`` (IPH, SDH, EDH) of at least ``min_volume_ml`` push. For each, the bleed
mask is blurred with a Gaussian of SD ``falloff_mm``; tissue moves down the gradient of that blur
(away from the bleed) by ``push = min(strength * size, max_push_mm)`` at the steepest point, ``size``
being the clot's equivalent-sphere radius (IPH) or its central thickness (SDH, EDH), and less farther
away. The midline shifts away from the side with the larger supratentorial pushing volume ``V`` by
``M = min(midline_shift_mm_per_ml * V, max_midline_shift_mm)`` (0.12 mm/mL: 30 mL -> 3.6 mm, 100 mL ->
12 mm), a left-right displacement that is ``M`` at the midline level of the bleed and falls off as a
Gaussian with the distance from the midline (SD ``midline_lateral_sd_mm``) and along it (SD
``midline_longitudinal_sd_mm``), tapered to 0 within ``skull_taper_mm`` of the inner table and kept
above the tentorium. The skull and everything outside the intracranial cavity stay fixed.

The deformation is a backward nearest-neighbour warp of the class volume (``cls(x) <- cls(x - u(x))``;
the field is smooth enough that this approximates the inverse), so calcifications and the masks of the
non-pushing bleeds (SAH, IVH, small ones), encoded in the class volume as ``BLEED_BASE + k``, move with
the tissue (a shifted pineal, compressed ventricles); the pushing bleeds keep their masks.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from training.ich.anatomy import Anatomy
from training.ich.bleeds import Bleed
from training.ich.tissues import BLEED_BASE, CLASS_INDEX, INTRACRANIAL, bbox

COARSE = 2  # the displacement field is computed on a grid this many times coarser, then upsampled


def _coarse_world(anat: Anatomy, box) -> list[np.ndarray]:
    step = tuple(slice(s.start, s.stop, COARSE) for s in box)
    return anat.box_world(step)


def _upsample(mask: np.ndarray, shape) -> np.ndarray:
    """A coarse mask repeated back to the fine ``shape`` (nearest)."""
    up = mask
    for axis in range(3):
        up = np.repeat(up, COARSE, axis=axis)
    return up[tuple(slice(0, s) for s in shape)]


def apply_mass_effect(anat: Anatomy, bleeds: list[Bleed], draws, cfg: dict) -> None:
    """Deform ``anat.cls`` away from the pushing bleeds (in place) and update the masks of the others;
    records ``mass_effect.*`` (strength, falloff, push per bleed, midline shift)."""
    pushing = [k for k, b in enumerate(bleeds)
               if b.kind in cfg["types"] and b.info["volume_ml_fine"] >= cfg["min_volume_ml"]]
    for k, b in enumerate(bleeds):  # the others move with the tissue
        if k not in pushing:
            anat.cls[b.mask] = BLEED_BASE + k
    draws.record("mass_effect.pushing_bleeds", pushing)
    if not pushing or not anat.icv.any():
        draws.record("mass_effect.midline_shift_mm", 0.0)
        return
    strength = draws.uniform("mass_effect.strength", cfg["strength"])
    falloff = draws.uniform("mass_effect.falloff_mm", cfg["falloff_mm"])
    box = bbox(anat.icv, 2)
    step = tuple(slice(None, None, COARSE) for _ in box)
    jac = anat.affine[:3, :3]
    jinv = np.linalg.inv(jac)
    coarse_vox = anat.voxel_mm * COARSE
    shape_c = anat.cls[box][step].shape
    u = np.zeros((3,) + shape_c, np.float32)
    volume_side = {1.0: 0.0, -1.0: 0.0}
    centroid_side: dict[float, list] = {1.0: [], -1.0: []}
    for k in pushing:
        b = bleeds[k]
        size = b.info.get("equivalent_radius_mm", b.info.get("thickness_mm", 0.0))
        push = min(strength * float(size), cfg["max_push_mm"])
        b.info["push_mm"] = push
        phi = ndimage.gaussian_filter(b.mask[box][step].astype(np.float32), falloff / coarse_vox)
        grad_i = np.stack(np.gradient(phi), axis=0) / COARSE  # per fine index step
        grad_w = np.einsum("ba,a...->b...", jinv.T, grad_i)  # world gradient: J^-T grad_i
        mag = np.sqrt((grad_w ** 2).sum(axis=0))
        if mag.max() > 0:
            u -= push * grad_w / mag.max()
        centroid = np.round(np.argwhere(b.mask).mean(axis=0)).astype(int)
        if not anat.supratentorial()[tuple(centroid)]:
            continue  # a posterior-fossa bleed does not shift the (supratentorial) midline
        c = anat.world(centroid)[0]
        side = 1.0 if anat.lateral(*c) >= 0 else -1.0
        volume_side[side] += b.info["volume_ml_fine"]
        centroid_side[side].append(c)
    side = 1.0 if volume_side[1.0] >= volume_side[-1.0] else -1.0
    shift = min(cfg["midline_shift_mm_per_ml"] * volume_side[side], cfg["max_midline_shift_mm"])
    draws.record("mass_effect.midline_shift_mm", shift)
    draws.record("mass_effect.shift_away_from", "right" if side > 0 else "left")
    if shift > 0:
        x, y, z = _coarse_world(anat, box)
        c = np.mean(centroid_side[side], axis=0)
        a, b_, c_ = anat.midline
        normal = np.array([1.0, -b_, -c_]) / np.sqrt(1 + b_ * b_ + c_ * c_)
        lat = anat.lateral(x, y, z)
        along = (y - c[1]) ** 2 + (z - c[2]) ** 2
        taper = np.clip(anat.d_inner_table()[box][step] / cfg["skull_taper_mm"], 0.0, 1.0)
        supra = anat.supratentorial()[box][step]
        w = (np.exp(-lat ** 2 / (2 * cfg["midline_lateral_sd_mm"] ** 2))
             * np.exp(-along / (2 * cfg["midline_longitudinal_sd_mm"] ** 2)) * taper * supra)
        u -= (side * shift * w)[None] * normal[:, None, None, None].astype(np.float32)
    u *= anat.icv[box][step][None]
    draws.record("mass_effect.max_displacement_mm", float(np.sqrt((u ** 2).sum(axis=0)).max()))
    shape = anat.cls[box].shape
    moved_c = np.abs(u).max(axis=0) > 0.1
    moved = _upsample(moved_c, shape) & anat.icv[box]
    if not moved.any():
        return
    pts = np.argwhere(moved).T.astype(np.float32)
    u_pts = np.stack([ndimage.map_coordinates(u[i], pts / COARSE, order=1, mode="nearest") for i in range(3)])
    src = pts - np.einsum("ba,a...->b...", jinv, u_pts)  # world -> index displacement
    cls_box = anat.cls[box]
    sampled = ndimage.map_coordinates(cls_box, src, order=0, mode="nearest")
    inside = np.isin(sampled, [CLASS_INDEX[n] for n in INTRACRANIAL]) | (sampled >= BLEED_BASE)
    sampled[~inside] = CLASS_INDEX["csf"]  # tissue pulled in from the skull side becomes CSF
    cls_box[moved] = sampled
    for k, b in enumerate(bleeds):
        if k not in pushing:
            b.mask = anat.cls == BLEED_BASE + k
            b.info["volume_ml_fine"] = float(b.mask.sum() * anat.voxel_ml)
