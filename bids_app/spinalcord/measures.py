"""Morphometry on segmentations: plain numpy/scipy functions, no Nipype, no torch.

Conventions
-----------
Arrays are in the closest-canonical RAS+ orientation, shape ``(X, Y, Z)``; axis 2 runs inferior to
superior and ``zooms`` are voxel sizes in mm. Slices are axial planes ``[:, :, k]``.

Cross-sectional area (CSA), as in SCT's ``sct_process_segmentation``
---------------------------------------------------------------------
For slice ``k`` with in-plane voxel size ``dx, dy`` (mm) and segmentation values ``s`` in [0, 1]::

    area_k  = dx * dy * sum_ij s_ijk                      (mm^2; soft values count partial volume)
    c(z)    = smoothed centre of mass (x_k, y_k) in mm as a function of z_k = k * dz
    theta_k = arccos( 1 / || (dx/dz, dy/dz, 1) || )       (angle between cord tangent and slice normal)
    CSA_k   = area_k * cos(theta_k)                       (area of the cut perpendicular to the cord)

The centreline is a smoothing spline of the per-slice centres of mass (GCV-chosen smoothing, SciPy's
``make_smoothing_spline``) when at least 5 slices contain cord, a straight line otherwise.

Vertebral levels come from :mod:`bids_app.spinalcord.vertebrae`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceCSA:
    """Per-slice morphometry, each array of length Z (NaN where the slice holds no cord).

    ``z_mm``: slice position (k * dz); ``area_mm2``: axial area; ``angle_deg``: cord tilt;
    ``csa_mm2``: angle-corrected CSA; ``centre_mm``: (Z, 2) fitted centreline in mm.
    """

    z_mm: np.ndarray
    area_mm2: np.ndarray
    angle_deg: np.ndarray
    csa_mm2: np.ndarray
    centre_mm: np.ndarray


def centreline(seg: np.ndarray, zooms: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit a centreline to ``seg`` ``(X, Y, Z)``.

    Returns ``(slices, centre_mm, tangent)``: indices of slices with cord, the fitted (x, y) in mm on
    those slices ``(n, 2)`` and the derivatives (dx/dz, dy/dz) ``(n, 2)``.
    """
    dx, dy, dz = zooms
    sums = seg.sum(axis=(0, 1))
    slices = np.flatnonzero(sums > 0)
    if slices.size == 0:
        return slices, np.zeros((0, 2)), np.zeros((0, 2))
    raw = np.array([ndimage.center_of_mass(seg[:, :, k]) for k in slices]) * np.array([dx, dy])
    z = slices * dz
    if slices.size >= 5:
        from scipy.interpolate import make_smoothing_spline

        splines = [make_smoothing_spline(z, raw[:, i], w=sums[slices]) for i in (0, 1)]
        fitted = np.stack([s(z) for s in splines], axis=1)
        tangent = np.stack([s.derivative()(z) for s in splines], axis=1)
    elif slices.size >= 2:
        coefs = [np.polyfit(z, raw[:, i], 1, w=np.sqrt(sums[slices])) for i in (0, 1)]
        fitted = np.stack([np.polyval(c, z) for c in coefs], axis=1)
        tangent = np.tile([c[0] for c in coefs], (slices.size, 1))
    else:
        fitted, tangent = raw, np.zeros_like(raw)
    return slices, fitted, tangent


def csa_per_slice(seg: np.ndarray, zooms: tuple[float, float, float], angle_correction: bool = True) -> SliceCSA:
    """Angle-corrected cross-sectional area per axial slice (see the module docstring for formulas).

    ``seg``: ``(X, Y, Z)`` soft (0..1) or binary segmentation; ``zooms``: voxel sizes in mm.
    """
    seg = np.clip(np.asarray(seg, dtype=np.float64), 0.0, 1.0)
    dx, dy, dz = (float(z) for z in zooms[:3])
    n_z = seg.shape[2]
    area = np.full(n_z, np.nan)
    angle = np.full(n_z, np.nan)
    centre = np.full((n_z, 2), np.nan)
    slices, fitted, tangent = centreline(seg, (dx, dy, dz))
    area[slices] = seg[:, :, slices].sum(axis=(0, 1)) * dx * dy
    centre[slices] = fitted
    if angle_correction:
        angle[slices] = np.degrees(np.arccos(1.0 / np.sqrt(1.0 + (tangent ** 2).sum(axis=1))))
    else:
        angle[slices] = 0.0
    csa = area * np.cos(np.radians(angle))
    return SliceCSA(z_mm=np.arange(n_z) * dz, area_mm2=area, angle_deg=angle, csa_mm2=csa, centre_mm=centre)


def level_name(level: str) -> str:
    """SCT numbering: 1..7 → C1..C7, 8..19 → T1..T12, 20.. → L1..; slab names are kept."""
    if not level.isdigit():
        return level
    n = int(level)
    if n <= 7:
        return f"C{n}"
    if n <= 19:
        return f"T{n - 7}"
    return f"L{n - 19}"


def aggregate_by_level(csa: SliceCSA, levels: np.ndarray, binary: np.ndarray | None = None) -> list[dict[str, float]]:
    """Mean/std/min/max CSA per vertebral level (rows only for levels with cord).

    ``binary``: per-slice CSA of the binary mask (length Z), adds ``csa_binary_mean_mm2`` to each row.
    """
    rows = []
    for level in sorted(set(levels[levels > 0].tolist())):
        where = (levels == level) & ~np.isnan(csa.csa_mm2)
        if where.any():
            rows.append(_summary({"level": f"{level}"}, csa.csa_mm2[where], _mean(binary, where)))
    return rows


def _mean(values: np.ndarray | None, where: np.ndarray) -> float | None:
    return None if values is None else float(np.nanmean(values[where]))


def aggregate_by_range(csa: SliceCSA, step_mm: float = 10.0, binary: np.ndarray | None = None) -> list[dict[str, float]]:
    """Mean CSA per slab of ``step_mm`` along z, used when no vertebral level is known."""
    rows = []
    valid = ~np.isnan(csa.csa_mm2)
    if not valid.any():
        return rows
    z = csa.z_mm
    start = np.floor(z[valid].min() / step_mm) * step_mm
    while start <= z[valid].max():
        inside = valid & (z >= start) & (z < start + step_mm)
        if inside.any():
            rows.append(_summary({"level": f"z{start:g}-{start + step_mm:g}mm"}, csa.csa_mm2[inside],
                                 _mean(binary, inside)))
        start += step_mm
    return rows


def _summary(row: dict, values: np.ndarray, binary_mean: float | None = None) -> dict[str, float]:
    row.update(n_slices=int(values.size), csa_mean_mm2=float(np.mean(values)), csa_std_mm2=float(np.std(values)),
               csa_min_mm2=float(np.min(values)), csa_max_mm2=float(np.max(values)))
    if binary_mean is not None:
        row["csa_binary_mean_mm2"] = binary_mean
    return row


def binarise(soft: np.ndarray, threshold: float, largest_component: bool = True) -> np.ndarray:
    """Binary mask (uint8) of ``soft >= threshold``; optionally keep the largest 3D connected component."""
    mask = soft >= threshold
    if largest_component and mask.any():
        labels, n = ndimage.label(mask)
        if n > 1:
            sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
            mask = labels == (int(np.argmax(sizes)) + 1)
    return mask.astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two binary arrays (1.0 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def csa_tables(soft: np.ndarray, mask: np.ndarray, zooms: tuple[float, float, float],
               levels: np.ndarray | None = None, manual: np.ndarray | None = None,
               ) -> tuple[dict[str, np.ndarray], list[dict], dict]:
    """Per-slice columns, per-level rows and summary values of one cord segmentation.

    ``soft`` and ``mask`` are ``(X, Y, Z)`` RAS+ arrays; the soft CSA counts only voxels within two
    voxels of the binary mask (the kept component), so that faint stray blobs add no area.
    ``levels``: vertebral level per slice (0 = unknown) or ``None`` (then 10 mm slabs);
    ``manual``: a manual mask on the same grid adds validation columns and values.
    """
    support = ndimage.binary_dilation(mask, iterations=2) if mask.any() else np.zeros(mask.shape, bool)
    csa = csa_per_slice(soft * support, zooms)
    csa_bin = csa_per_slice(mask.astype(np.float32), zooms)
    levels = np.zeros(soft.shape[2], dtype=int) if levels is None else levels
    slices = {"slice": np.arange(soft.shape[2]), "z_mm": csa.z_mm,
              "vertlevel": np.where(levels > 0, levels.astype(object), "n/a"), "area_mm2": csa.area_mm2,
              "angle_deg": csa.angle_deg, "csa_mm2": csa.csa_mm2, "csa_binary_mm2": csa_bin.csa_mm2}
    valid = ~np.isnan(csa.csa_mm2)
    summary = {"CSAMeanMm2": float(np.mean(csa.csa_mm2[valid])) if valid.any() else None,
               "SlicesWithCord": int(valid.sum())}
    if manual is not None and manual.shape == mask.shape:
        ref = csa_per_slice(manual.astype(np.float32), zooms)
        slices["csa_manual_mm2"] = ref.csa_mm2
        same = ~np.isnan(ref.csa_mm2)
        summary.update(ManualDice=dice(mask, manual), ManualCSAMeanMm2=float(np.mean(ref.csa_mm2[same])),
                       CSAMeanSameSlicesMm2=float(np.mean(np.nan_to_num(csa.csa_mm2[same]))))
    rows = aggregate_by_level(csa, levels, csa_bin.csa_mm2) if levels.any() else \
        aggregate_by_range(csa, binary=csa_bin.csa_mm2)
    c2c3 = np.isin(levels, (2, 3)) & valid
    if c2c3.any():  # the number most cord studies quote
        summary.update(CSAC2C3Mm2=float(np.mean(csa.csa_mm2[c2c3])),
                       CSABinaryC2C3Mm2=float(np.nanmean(csa_bin.csa_mm2[c2c3])), SlicesC2C3=int(c2c3.sum()))
    return slices, rows, summary


#: BIDS-style descriptions of the per-slice CSA table columns (written into its sidecar).
SLICE_COLUMNS = {
    "slice": {"Description": "Axial slice index along the inferior-superior axis of the RAS+ reoriented image"},
    "z_mm": {"Description": "Slice position: index times slice thickness", "Units": "mm"},
    "vertlevel": {"Description": "Vertebral level (2 = C2, ...), from disc labels or a levelled mask; n/a if unknown"},
    "area_mm2": {"Description": "Axial area of the soft segmentation (partial volume counted)", "Units": "mm^2"},
    "angle_deg": {"Description": "Angle between the cord centreline and the slice normal", "Units": "degree"},
    "csa_mm2": {"Description": "Cross-sectional area from the soft segmentation: area_mm2 * cos(angle_deg)",
                "Units": "mm^2"},
    "csa_binary_mm2": {"Description": "Cross-sectional area from the binary mask, same formula", "Units": "mm^2"},
    "csa_manual_mm2": {"Description": "Cross-sectional area of the manual mask (only when one was supplied)",
                       "Units": "mm^2"},
    "pam50_slice": {"Description": "Position of the slice on the PAM50_small template (2 mm slices), linear "
                                   "between the discs (only with disc labels or levels)"},
}
#: Descriptions of the per-level CSA table columns.
LEVEL_COLUMNS = {
    "level": {"Description": "Vertebral level, or z range 'z<a>-<b>mm' when no level is known"},
    "n_slices": {"Description": "Number of slices with cord in this level"},
    "csa_mean_mm2": {"Description": "Mean angle-corrected soft CSA", "Units": "mm^2"},
    "csa_std_mm2": {"Description": "Standard deviation of the CSA over the slices", "Units": "mm^2"},
    "csa_min_mm2": {"Description": "Minimum CSA", "Units": "mm^2"},
    "csa_max_mm2": {"Description": "Maximum CSA", "Units": "mm^2"},
    "csa_binary_mean_mm2": {"Description": "Mean angle-corrected CSA of the binary mask", "Units": "mm^2"},
}
