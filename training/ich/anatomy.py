"""Anatomy of one label map for placing bleeds and calcifications: classes, the intracranial cavity, the
distance to the inner table of the skull, the midline plane, world coordinates, calcifications.

Arrays are ``(X, Y, Z)`` on the (cropped) label grid; world coordinates are RAS+ mm (x to the right,
y anterior, z superior) through the label map's affine.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from training.ich.tissues import CALC_BASE, CLASS_INDEX, INTRACRANIAL, PARENCHYMA, bbox, voxel_sizes

#: Labels whose centroids define the midline plane: 3rd ventricle, 4th ventricle, brainstem, optic chiasm.
MIDLINE_LABELS = (14, 15, 16, 85)
LATERAL_VENTRICLES = (4, 43)
THIRD_VENTRICLE = 14
PALLIDUM = (13, 52)
BRAINSTEM = 16
CEREBRAL = ("gm", "wm", "deep_gm")
INFRATENTORIAL = ("cerebellum", "cerebellar_wm", "brainstem")


class Anatomy:
    """Label map ``labels`` (int32), class indices ``cls`` (uint8, :data:`~training.ich.tissues.CLASSES`)
    and the affine of their grid."""

    def __init__(self, labels: np.ndarray, cls: np.ndarray, affine: np.ndarray):
        self.labels, self.cls = labels, cls
        self.affine = np.asarray(affine, float)
        self.inv = np.linalg.inv(self.affine)
        self.voxel_mm = voxel_sizes(self.affine)
        self.voxel_ml = float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0
        self.icv = self.mask(*INTRACRANIAL)
        self.midline = self._midline()
        self._d_inner = None
        self.cache: dict = {}

    def mask(self, *names: str) -> np.ndarray:
        """Voxels of the given classes (bool ``(X, Y, Z)``)."""
        return np.isin(self.cls, [CLASS_INDEX[n] for n in names])

    def parenchyma(self) -> np.ndarray:
        return self.mask(*PARENCHYMA)

    def world(self, idx) -> np.ndarray:
        """Voxel indices ``(N, 3)`` -> world mm ``(N, 3)``."""
        idx = np.atleast_2d(np.asarray(idx, float))
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def index(self, world) -> np.ndarray:
        """World mm ``(N, 3)`` -> (fractional) voxel indices ``(N, 3)``."""
        world = np.atleast_2d(np.asarray(world, float))
        return world @ self.inv[:3, :3].T + self.inv[:3, 3]

    def box_world(self, box: tuple[slice, ...]) -> list[np.ndarray]:
        """World x, y, z (float32 arrays of the box's shape) of the voxels of ``box``."""
        ii, jj, kk = np.ogrid[box[0], box[1], box[2]]
        a = self.affine
        return [(a[r, 0] * ii + a[r, 1] * jj + a[r, 2] * kk + a[r, 3]).astype(np.float32) for r in range(3)]

    def box(self, centre_idx, radius_mm: float) -> tuple[slice, ...]:
        """The box of voxels within ``radius_mm`` (per axis) of a voxel, clipped to the grid."""
        r = np.ceil(radius_mm / self.voxel_mm).astype(int)
        c = np.round(np.asarray(centre_idx, float)).astype(int)
        lo, hi = np.maximum(c - r, 0), np.minimum(c + r + 1, self.cls.shape)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))

    def _midline(self) -> np.ndarray:
        """``(a, b, c)`` of the midline plane ``x = a + b y + c z`` (world mm), least squares through the
        centroids of :data:`MIDLINE_LABELS` (a plane of constant x through them when fewer than three;
        through the brain's centroid when none)."""
        pts = [self.world(ndimage.center_of_mass(self.labels == v))[0] for v in MIDLINE_LABELS
               if (self.labels == v).any()]
        if len(pts) >= 3:
            p = np.asarray(pts)
            design = np.column_stack([np.ones(len(p)), p[:, 1], p[:, 2]])
            coef, *_ = np.linalg.lstsq(design, p[:, 0], rcond=None)
            if np.all(np.abs(coef[1:]) < 0.5):  # a plausible midline (within ~27 degrees of sagittal)
                return coef
        if pts:
            return np.array([np.mean([q[0] for q in pts]), 0.0, 0.0])
        brain = self.parenchyma()
        x = self.world(ndimage.center_of_mass(brain))[0][0] if brain.any() else 0.0
        return np.array([x, 0.0, 0.0])

    def lateral(self, x, y, z):
        """Signed distance (mm) to the midline plane, positive to the right (arrays broadcast)."""
        a, b, c = self.midline
        return (x - (a + b * y + c * z)) / np.sqrt(1.0 + b * b + c * c)

    def supratentorial(self) -> np.ndarray:
        """Voxels nearer the cerebrum than the cerebellum and brainstem (above the tentorium; bool
        ``(X, Y, Z)``), computed on a 2x coarser grid and cached."""
        if "supratentorial" not in self.cache:
            sub = (slice(None, None, 2),) * 3
            cer, inf = self.mask(*CEREBRAL)[sub], self.mask(*INFRATENTORIAL)[sub]
            if not inf.any():
                self.cache["supratentorial"] = np.ones(self.cls.shape, bool)
            else:
                near = ndimage.distance_transform_edt(~cer) <= ndimage.distance_transform_edt(~inf)
                for axis in range(3):
                    near = np.repeat(near, 2, axis=axis)
                self.cache["supratentorial"] = near[tuple(slice(0, s) for s in self.cls.shape)]
        return self.cache["supratentorial"]

    def d_inner_table(self) -> np.ndarray:
        """Distance (mm, float32 ``(X, Y, Z)``) from each intracranial voxel to the nearest voxel outside
        the intracranial cavity (the inner table of the skull, or the foramen magnum); 0 outside."""
        if self._d_inner is None:
            d = np.zeros(self.cls.shape, np.float32)
            if self.icv.any():
                box = bbox(self.icv, 1)
                d[box] = ndimage.distance_transform_edt(self.icv[box], sampling=self.voxel_mm)
            self._d_inner = d
        return self._d_inner


def _ball(anat: Anatomy, centre_idx, diameter_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """A ball of ``diameter_mm`` around a voxel: its box and mask."""
    box = anat.box(centre_idx, diameter_mm / 2 + 1)
    x, y, z = anat.box_world(box)
    c = anat.world(centre_idx)[0]
    return box, (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= (diameter_mm / 2) ** 2


def _atrium(anat: Anatomy, side: float, band) -> np.ndarray | None:
    """The voxel of a lateral ventricle's atrium (trigone) on one side (``side`` +1 right, -1 left): the
    ventricle (or choroid-plexus) voxel nearest the centroid of the ventricle's antero-posterior
    quantile ``band`` (default 15-40 %, from the back)."""
    vent = np.isin(anat.labels, LATERAL_VENTRICLES)
    idx = np.argwhere(vent)
    if len(idx) == 0:
        return None
    w = anat.world(idx)
    keep = np.sign(anat.lateral(w[:, 0], w[:, 1], w[:, 2])) == side
    idx, w = idx[keep], w[keep]
    if len(idx) < 5:
        return None
    lo, hi = np.quantile(w[:, 1], band)
    band = (w[:, 1] >= lo) & (w[:, 1] <= hi)
    target = w[band].mean(axis=0)
    plexus = np.argwhere(anat.cls == CLASS_INDEX["choroid_plexus"])
    if len(plexus):
        pw = anat.world(plexus)
        same = np.sign(anat.lateral(pw[:, 0], pw[:, 1], pw[:, 2])) == side
        if same.any():
            idx, w = np.concatenate([idx, plexus[same]]), np.concatenate([w, pw[same]])
    return idx[np.argmin(((w - target) ** 2).sum(axis=1))]


def _pineal(anat: Anatomy, offset_mm: float) -> np.ndarray | None:
    """The pineal position: on the midline, ``offset_mm`` posterior to the 3rd ventricle, at the height
    of its posterior fifth (voxel indices), or ``None`` without a 3rd ventricle."""
    idx = np.argwhere(anat.labels == THIRD_VENTRICLE)
    if len(idx) == 0:
        return None
    w = anat.world(idx)
    back = w[w[:, 1] <= np.quantile(w[:, 1], 0.2)]
    y = back[:, 1].min() - offset_mm
    z = back[:, 2].mean()
    a, b, c = anat.midline
    return np.round(anat.index([a + b * y + c * z, y, z])[0]).astype(int)


def place_calcifications(anat: Anatomy, draws, cfg: dict) -> dict[int, float]:
    """Physiological calcifications, hard negatives (not bleeds): choroid plexus glomus in the atria of
    the lateral ventricles (uni- or bilateral), pineal (midline, posterior to the 3rd ventricle) and,
    rarely, pallidal. Each is 1-``blobs`` balls of ``diameter_mm`` at ``hu`` (uniform in its range;
    :data:`~training.ich.tissues.TISSUE_HU` ``calcification``), written into ``anat.cls`` as class
    ``CALC_BASE + k``; returns class index -> HU. Records ``calcifications`` (a list) in the params."""
    found, hu = [], {}

    def add(kind: str, centre, restrict: np.ndarray | None):
        k = len(found)
        name = f"calcifications.{k}"
        value = draws.uniform(f"{name}.hu", cfg["hu"])
        n = draws.integer(f"{name}.blobs", cfg["blobs"])
        diameter = draws.uniform(f"{name}.diameter_mm", cfg["diameter_mm"])
        offsets = []
        for b in range(n):
            jitter = draws.rng.normal(0.0, diameter / 3, 3) if b else np.zeros(3)
            offsets.append(jitter.round(2).tolist())
            centre_b = np.asarray(centre) + jitter / anat.voxel_mm
            box, ball = _ball(anat, centre_b, diameter * (1.0 if b == 0 else 0.7))
            if restrict is not None:
                ball &= restrict[box]
            anat.cls[box][ball] = CALC_BASE + k
        hu[CALC_BASE + k] = value
        found.append({"kind": kind, "centre_mm": anat.world(centre)[0].round(1).tolist(), "diameter_mm": diameter,
                      "hu": value, "blobs": n, "blob_offsets_grid_mm": offsets})

    if draws.bernoulli("calcifications.choroid_plexus", cfg["choroid_plexus_probability"]):
        both = draws.bernoulli("calcifications.choroid_bilateral", cfg["bilateral_probability"])
        first = 1.0 if draws.bernoulli("calcifications.choroid_right_first", 0.5) else -1.0
        near_vent = ndimage.binary_dilation(anat.mask("ventricles", "choroid_plexus"), iterations=1)
        for side in ([first, -first] if both else [first]):
            atrium = _atrium(anat, side, cfg["atrium_band"])
            if atrium is not None:
                add("choroid_plexus", atrium, near_vent)
    if draws.bernoulli("calcifications.pineal", cfg["pineal_probability"]):
        centre = _pineal(anat, cfg["pineal_offset_mm"])
        if centre is not None and all(0 <= c < s for c, s in zip(centre, anat.cls.shape)):
            add("pineal", centre, anat.icv)
    if draws.bernoulli("calcifications.pallidal", cfg["pallidal_probability"]):
        for side in (1.0, -1.0):
            pall = np.argwhere(np.isin(anat.labels, PALLIDUM))
            if len(pall):
                w = anat.world(pall)
                pall = pall[np.sign(anat.lateral(w[:, 0], w[:, 1], w[:, 2])) == side]
            if len(pall):
                add("pallidal", pall[len(pall) // 2], np.isin(anat.labels, PALLIDUM))
    draws.record("calcifications", found)
    return hu
