"""Intervertebral discs, vertebral levels and the PAM50 template axis: plain numpy, no Nipype, no torch.

Conventions
-----------
Slice positions are continuous indices along axis 2 of the RAS+ reoriented image (inferior to superior).
Disc labels follow SCT and spine-generic: value ``n`` marks the disc at the top of vertebra ``n``
(2 = C1/C2, 3 = C2/C3, ..., 8 = C7/T1, 9 = T1/T2), so vertebral level ``n`` spans from disc ``n`` down to
disc ``n + 1``. A slice belongs to level ``n`` when the nearest disc above it has value ``n``. Above
the top disc ``v`` the slices belong to level ``v - 1`` and below the bottom disc ``w`` to level ``w``,
in both cases only within one typical vertebral height (the median distance between the given discs,
or 20 mm with a single disc). A levelled cord mask (value = level per voxel) is used directly
(per-slice majority).

PAM50 normalisation (as SCT's ``sct_process_segmentation -normalize-PAM50``)
-----------------------------------------------------------------------------
Between two consecutive discs ``n`` (above, slice ``z_n``) and ``n + 1`` (below), a slice ``z`` is
mapped linearly onto the template::

    f       = (z_n - z) / (z_n - z_{n+1})                       (0 at disc n, 1 at disc n+1)
    pam50   = P[n] - f * (P[n] - P[n+1])                        (PAM50_small slice index, 2 mm apart)

with ``P`` = :data:`PAM50_DISC_SLICES`. Beyond the outermost discs the nearest interval's scale is
extrapolated for at most one vertebra (with a single disc: 1 mm of cord = 1 mm of template), so each
subject slice gets a template position and cohorts with different fields of view line up slice by slice.
"""

from __future__ import annotations

import numpy as np


#: Typical vertebral-body-plus-disc height (mm) used to bound open-ended levels with a single disc.
DEFAULT_LEVEL_HEIGHT_MM = 20.0
#: Disc slices of the PAM50_small template (2 mm slices; SCT convention, value = disc at the top of
#: vertebra n), read from ``PAM50_small_label_disc.nii.gz`` (tests check them against it when present).
PAM50_DISC_SLICES = {2: 235, 3: 227, 4: 218, 5: 209, 6: 201, 7: 193, 8: 184, 9: 173, 10: 162, 11: 150,
                     12: 138, 13: 126, 14: 113, 15: 99, 16: 86, 17: 72, 18: 58, 19: 42}
#: Slice thickness of PAM50_small (mm).
PAM50_SLICE_MM = 2.0
#: A label image whose values each cover at most this many voxels is a set of disc points, not a mask.
MAX_DISC_VOXELS = 27


def open_end_reach_mm(disc_slices: np.ndarray, dz: float) -> float:
    """How far (mm) levels reach beyond the outermost discs: the median spacing of the discs (slices,
    any order along the axis) or :data:`DEFAULT_LEVEL_HEIGHT_MM` with a single disc."""
    ordered = np.sort(np.asarray(disc_slices, dtype=float))
    return float(np.median(np.diff(ordered))) * dz if ordered.size > 1 else DEFAULT_LEVEL_HEIGHT_MM


def levels_from_discs(disc_z: dict[int, float], n_slices: int, dz: float) -> np.ndarray:
    """Vertebral level per slice (0 = unassigned) from disc positions ``{value: z index (float)}``.

    Axis 2 runs inferior to superior, so a disc "above" a slice has a larger z index.
    """
    levels = np.zeros(n_slices, dtype=int)
    if not disc_z:
        return levels
    ordered = sorted(disc_z.items(), key=lambda item: -item[1])  # superior first
    height = open_end_reach_mm(np.array([z for _, z in ordered]), dz)
    for k in range(n_slices):
        above = [(value, z) for value, z in ordered if z >= k]
        if above:
            value, z = above[-1]  # nearest disc above
            if value == ordered[-1][0] and (z - k) * dz > height:
                continue  # below the bottom disc by more than one vertebra
            levels[k] = value
        else:
            value, z = ordered[0]
            if (k - z) * dz <= height and value > 1:
                levels[k] = value - 1
    return levels


def map_labels_to_slices(label_data: np.ndarray, label_affine: np.ndarray, target_affine: np.ndarray,
                         ) -> list[tuple[int, float]]:
    """Map each labelled voxel of another image into slice coordinates of the target image.

    Returns ``(label value, continuous z index in the target)`` per labelled voxel, through world
    (scanner) coordinates, so labels drawn on a co-registered contrast can be used.
    """
    ijk = np.argwhere(label_data > 0)
    if ijk.size == 0:
        return []
    values = np.rint(label_data[tuple(ijk.T)]).astype(int)
    world = label_affine[:3, :3] @ ijk.T + label_affine[:3, 3:4]
    target = np.linalg.inv(target_affine)
    z = (target[:3, :3] @ world + target[:3, 3:4])[2]
    return list(zip(values.tolist(), z.tolist()))


def discs_from_levels(levels: np.ndarray) -> dict[int, float]:
    """Disc positions ``{n: slice}`` from per-slice levels (0 = none): between level ``n - 1`` and ``n``.

    Disc ``n`` sits midway between the lowest slice of level ``n - 1`` and the highest slice of level
    ``n``, when the two levels touch (at most one unlabelled slice between them).
    """
    levels = np.asarray(levels, dtype=int)
    discs = {}
    for n in sorted(set(levels[levels > 0].tolist())):
        below, above = np.flatnonzero(levels == n), np.flatnonzero(levels == n - 1)
        if below.size and above.size and 0 < above.min() - below.max() <= 2:
            discs[n] = (above.min() + below.max()) / 2.0
    return discs


def discs_and_levels(label_data: np.ndarray, label_affine: np.ndarray, target_affine: np.ndarray,
                     n_slices: int, dz: float) -> tuple[dict[int, float], np.ndarray]:
    """Discs ``{n: slice}`` and level per slice of the target image, from disc points or a levelled mask.

    The label image may be on any grid of the same session (mapped through world coordinates). Disc
    points give the discs directly; a levelled cord mask gives the levels, and the discs where two
    levels meet.
    """
    mapped = map_labels_to_slices(label_data, label_affine, target_affine)
    if not mapped:
        return {}, np.zeros(n_slices, dtype=int)
    values = np.array([v for v, _ in mapped])
    zs = np.array([z for _, z in mapped])
    counts = np.bincount(values)
    if counts[counts > 0].max() <= MAX_DISC_VOXELS:
        discs = {int(v): float(zs[values == v].mean()) for v in np.unique(values)}
        return discs, levels_from_discs(discs, n_slices, dz)
    index = np.rint(zs).astype(int)
    levels = np.array([int(np.bincount(values[index == k]).argmax()) if (index == k).any() else 0
                       for k in range(n_slices)], dtype=int)
    return discs_from_levels(levels), levels


def to_pam50(z: np.ndarray, discs: dict[int, float], dz: float) -> np.ndarray:
    """PAM50_small slice position (float) of each slice position ``z``; NaN where it cannot be placed.

    ``discs``: ``{n: slice}`` on the same axis (see the module docstring for the mapping).
    """
    z = np.asarray(z, dtype=float)
    out = np.full(z.shape, np.nan)
    known = sorted((n, s) for n, s in discs.items() if n in PAM50_DISC_SLICES)
    if not known:
        return out
    names = [n for n, _ in known]
    subject = np.array([s for _, s in known])  # superior (small n) first, so decreasing slices
    template = np.array([PAM50_DISC_SLICES[n] for n in names], dtype=float)
    if len(known) == 1:
        scale_top = scale_bottom = dz / PAM50_SLICE_MM
    else:
        scales = np.diff(template) / np.diff(subject)  # template slices per subject slice, > 0
        scale_top, scale_bottom = scales[0], scales[-1]
    inside = (z <= subject[0]) & (z >= subject[-1])
    if len(known) > 1:
        out[inside] = np.interp(z[inside], subject[::-1], template[::-1])
    else:
        out[z == subject[0]] = template[0]
    # Open ends reach as far as :func:`levels_from_discs` assigns levels (same rule, same comparison in mm).
    height = open_end_reach_mm(subject, dz)
    above = (z > subject[0]) & ((z - subject[0]) * dz <= height)
    below = (z < subject[-1]) & ((subject[-1] - z) * dz <= height)
    out[above] = template[0] + (z[above] - subject[0]) * scale_top
    out[below] = template[-1] + (z[below] - subject[-1]) * scale_bottom
    return out


def pam50_level(pam50_slice: np.ndarray) -> np.ndarray:
    """Vertebral level (int) of PAM50_small slices: level ``n`` from disc ``n`` down to disc ``n + 1``."""
    tops = sorted(PAM50_DISC_SLICES.items())  # (n, slice), slices decreasing with n
    out = np.zeros(np.shape(pam50_slice), dtype=int)
    for n, top in tops:
        bottom = PAM50_DISC_SLICES.get(n + 1, -np.inf)
        out[(pam50_slice <= top) & (pam50_slice > bottom)] = n
    out[np.asarray(pam50_slice) > tops[0][1]] = tops[0][0] - 1
    return out


def pam50_rows(pam50: np.ndarray, csa_soft: np.ndarray, csa_binary: np.ndarray) -> list[dict]:
    """Mean CSA per PAM50_small slice: rows ``pam50_slice, pam50_z_mm, vertlevel, n_slices, csa_mm2,
    csa_binary_mm2`` (superior first) from per-slice template positions and CSAs (NaN = no cord)."""
    valid = ~np.isnan(pam50) & ~np.isnan(csa_soft)
    index = np.floor(pam50[valid] + 0.5).astype(int)  # half-way slices go up, as pam50_level counts them
    rows = []
    for s in sorted(set(index.tolist()), reverse=True):
        here = index == s
        rows.append({"pam50_slice": s, "pam50_z_mm": s * PAM50_SLICE_MM, "vertlevel": int(pam50_level(np.array(s))),
                     "n_slices": int(here.sum()), "csa_mm2": float(np.mean(csa_soft[valid][here])),
                     "csa_binary_mm2": float(np.nanmean(csa_binary[valid][here]))})
    return rows


def disc_volume(discs: dict[int, float], centre_mm: np.ndarray, shape: tuple[int, int, int],
                zooms: tuple[float, float, float]) -> np.ndarray:
    """A point-label image ``(X, Y, Z)`` uint8: value ``n`` at disc ``n``'s slice, on the cord centreline.

    ``centre_mm``: ``(Z, 2)`` centreline (NaN where no cord); the nearest slice with cord gives the
    in-plane position of a disc outside the cord's extent. Discs outside the image are left out.
    """
    out = np.zeros(shape, dtype=np.uint8)
    with_cord = np.flatnonzero(~np.isnan(centre_mm[:, 0]))
    for n, z in discs.items():
        k = int(np.rint(z))
        if not 0 <= k < shape[2] or with_cord.size == 0:
            continue
        nearest = with_cord[np.argmin(np.abs(with_cord - k))]
        x, y = (int(np.clip(np.rint(c / d), 0, s - 1)) for c, d, s in zip(centre_mm[nearest], zooms[:2], shape[:2]))
        out[x, y, k] = n
    return out


#: BIDS-style descriptions of the PAM50 table columns (written into its sidecar).
PAM50_COLUMNS = {
    "pam50_slice": {"Description": "Slice of the PAM50_small template (2 mm slices, inferior to superior) this "
                                   "row's image slices map to, linearly between the discs"},
    "pam50_z_mm": {"Description": "Template position: pam50_slice * 2", "Units": "mm"},
    "vertlevel": {"Description": "PAM50 vertebral level of the template slice (2 = C2, ..., 8 = T1)"},
    "n_slices": {"Description": "Number of image slices that fell in this template slice"},
    "csa_mm2": {"Description": "Mean angle-corrected CSA of the soft segmentation", "Units": "mm^2"},
    "csa_binary_mm2": {"Description": "Mean angle-corrected CSA of the binary mask", "Units": "mm^2"},
}
