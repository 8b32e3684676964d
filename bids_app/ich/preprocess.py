"""Head-CT preprocessing for the ``ich`` task, shared by the app and ``training/ich`` (numpy/scipy only).

Arrays are ``(X, Y, Z)`` voxel arrays with a 4x4 voxel-to-world affine (RAS+ mm, nibabel convention;
a gantry-tilted scan has a sheared affine, which every function here honours). Intensities are
Hounsfield units (HU): air -1000, water 0, brain 20-45, bone 700-2000.

Steps, in the order the app runs them:

1. :func:`check_hu` refuses an image that is not CT in HU (an MR image; CT stored without its rescale
   intercept, i.e. air at 0 and brain near 1050).
2. :func:`model_grid` chooses the model's grid: axis-aligned RAS, ``spacing_mm`` isotropic, centred on the
   head (HU > ``HEAD_HU``), at least ``in_plane`` voxels across in x and y (a multiple of 8 so that a
   3-level UNet tiles it).
3. :func:`resample` puts the HU image (linear) or a label (nearest) on that grid, and
   :func:`to_native` brings a probability map back (linear).
   :func:`with_air` gives a skull-stripped CT air around the brain first.
4. :func:`intracranial_mask` finds the inside of the skull from HU thresholds alone.
5. :func:`window_channels` turns HU into the network's channels: each HU window ``[lo, hi]`` scaled to
   [0, 1] (clipped) for the slice and its ``context`` neighbours above and below (2.5D input).

What the model expects (spacing, windows, context, in-plane size) is read from its ``metadata.json``
(``input``); nothing here hard-codes it beyond the defaults used by tests.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage

LOGGER = logging.getLogger(__name__)

#: Anything denser than this is part of the head (skin and fat are above -200 HU, air is near -1000).
HEAD_HU = -300.0
#: Bone threshold for the skull (cortical bone 700-2000 HU; 2 mm partial volume keeps the inner table above it).
BONE_HU = 300.0
#: Soft tissue, blood and CSF between these bounds (fat -100, CSF 0-15, blood up to 90, contrast-free).
SOFT_HU = (-50.0, 200.0)


class NotCTError(ValueError):
    """The voxels are not a head CT in Hounsfield units; the message says why and how to fix it."""


def check_hu(data: np.ndarray, name: str = "image") -> str:
    """Check that ``data`` (any shape, float) is a head CT in HU; return the kind found.

    Returns ``"ct"`` (air present near -1000 HU) or ``"ct-skull-stripped"`` (no air: the background is one
    value and almost all other voxels lie in [-20, 120] HU, as in a brain-extracted CT template).

    Raises :class:`NotCTError` when

    * air is absent, the minimum is >= -1 and most non-background voxels lie in [1000, 1150]: CT stored
      without its rescale (HU = stored value + RescaleIntercept, usually -1024);
    * otherwise no air and most voxels outside [-20, 120]: not CT in HU (an MR image, or CT rescaled to
      another unit);
    * air present but almost no voxel in [-100, 100] HU (no soft tissue: not a head CT).
    """
    v = np.asarray(data, dtype=np.float32).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise NotCTError(f"{name} has no finite voxel value; it cannot be a CT.")
    step = max(1, v.size // 2_000_000)  # a fixed sample keeps the check under a second on a 512^2 x 300 scan
    v = v[::step]
    air = np.mean(v < -500)
    if air >= 0.02:
        head = v[v > -500]
        soft = np.mean((head > -100) & (head < 100)) if head.size else 0.0
        if soft < 0.1:
            raise NotCTError(
                f"{name} has air (values near -1000) but only {100 * soft:.0f} % of the head lies in [-100, 100] HU; "
                "a head CT in Hounsfield units has brain and scalp there. Check that it is a head CT and that its "
                "values are HU (rescale slope and intercept applied).")
        return "ct"
    values, counts = np.unique(np.round(v), return_counts=True)
    background = values[np.argmax(counts)]
    fore = v[np.abs(v - background) > 0.5]
    if fore.size < 0.01 * v.size:
        raise NotCTError(f"{name} is (almost) one value everywhere ({background:g}); it holds no image.")
    unrescaled = np.mean((fore >= 1000) & (fore <= 1150))
    if v.min() >= -1 and unrescaled > 0.3:
        raise NotCTError(
            f"{name} looks like CT stored without its rescale: {100 * unrescaled:.0f} % of the voxels lie in "
            "[1000, 1150] and none is negative, where brain should be 20-45 HU. Convert the DICOM with dcm2niix "
            "(which applies RescaleSlope/RescaleIntercept), or subtract the intercept (usually 1024) and save "
            "again.")
    brain = np.mean((fore >= -20) & (fore <= 120))
    if brain < 0.8:
        raise NotCTError(
            f"{name} does not look like CT in Hounsfield units: it has no air near -1000 and only "
            f"{100 * brain:.0f} % of its voxels lie in the brain range [-20, 120] HU (median {np.median(fore):.4g}). "
            "An MR image cannot be used by the ich task; give the head CT (ct/ folder, *_ct.nii.gz) in HU.")
    return "ct-skull-stripped"


def with_air(data: np.ndarray, kind: str) -> np.ndarray:
    """``data`` as the model expects it: a skull-stripped CT (``kind`` from :func:`check_hu`) gets air
    (-1024 HU) where its background value was, so that both kinds share one intensity convention."""
    if kind != "ct-skull-stripped":
        return data
    out = np.array(data, np.float32, copy=True)
    out[~head_mask(out)] = -1024.0
    return out


def _world_bbox(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World (RAS mm) min and max corners of the voxels of ``mask``, through a sheared affine too."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return world.min(0), world.max(0)


def head_mask(data: np.ndarray) -> np.ndarray:
    """Voxels of the head: HU > ``HEAD_HU``, or (a skull-stripped image) every voxel unlike the border."""
    mask = data > HEAD_HU
    if mask.mean() > 0.98:  # no air: skull-stripped, the background is the value on the image border
        border = np.concatenate([data[0].ravel(), data[-1].ravel(), data[:, 0].ravel(), data[:, -1].ravel()])
        values, counts = np.unique(np.round(border), return_counts=True)
        mask = np.abs(data - values[np.argmax(counts)]) > 0.5
    return mask


def model_grid(data: np.ndarray, affine: np.ndarray, spacing_mm: float = 2.0,
               in_plane: int = 128, margin_mm: float = 4.0) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``(grid_affine, grid_shape)`` of the model grid for a CT ``data`` with ``affine``.

    The grid is axis-aligned RAS with isotropic ``spacing_mm``; x and y hold at least ``in_plane`` voxels
    and every axis the head's world bounding box plus ``margin_mm``; each size is a multiple of 8 and the
    grid is centred on the head box.
    """
    head = head_mask(data)
    if not head.any():
        head = np.ones(data.shape, bool)
    lo, hi = _world_bbox(head, affine)
    lo, hi = lo - margin_mm, hi + margin_mm
    size = np.ceil((hi - lo) / spacing_mm).astype(int)
    size[:2] = np.maximum(size[:2], in_plane)
    size = ((size + 7) // 8) * 8
    centre = (lo + hi) / 2
    origin = centre - (size - 1) / 2 * spacing_mm
    grid = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    grid[:3, 3] = origin
    return grid, (int(size[0]), int(size[1]), int(size[2]))


def resample(data: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray, grid_shape: Sequence[int],
             order: int = 1, cval: float = -1024.0) -> np.ndarray:
    """``data`` (on ``affine``) resampled onto ``grid_shape`` voxels of ``grid_affine``: ``order`` 1 (HU,
    probabilities; float32) or 0 (labels; the input dtype). Points outside the image get ``cval``."""
    vox = np.linalg.solve(affine, grid_affine)  # grid voxel -> source voxel
    out = ndimage.affine_transform(np.asarray(data, np.float32 if order else data.dtype), vox[:3, :3],
                                   offset=vox[:3, 3], output_shape=tuple(int(n) for n in grid_shape),
                                   order=order, mode="constant", cval=cval, prefilter=False)
    return out


def to_native(grid_data: np.ndarray, grid_affine: np.ndarray, affine: np.ndarray,
              shape: Sequence[int], order: int = 1) -> np.ndarray:
    """A map on the model grid brought back to the native grid ``(shape, affine)`` (0 outside the grid)."""
    return resample(grid_data, grid_affine, affine, shape, order=order, cval=0.0)


def intracranial_mask(hu: np.ndarray, spacing_mm: float = 2.0, erosion_mm: float = 4.0) -> np.ndarray:
    """Inside of the skull, from HU thresholds (``hu`` on an isotropic grid of ``spacing_mm``).

    Soft tissue (``SOFT_HU``) that is not bone, eroded by ``erosion_mm`` to cut the brain from the scalp
    at the orbits and foramina; the largest eroded component is kept, grown back inside the soft tissue
    and hole-filled slice by slice (a bleed denser than ``SOFT_HU`` stays inside). A skull-stripped image
    put through :func:`with_air` first has no bone: its brain is the soft tissue.
    """
    bone = hu > BONE_HU
    soft = (hu > SOFT_HU[0]) & (hu < SOFT_HU[1]) & ~bone
    radius = max(1, int(round(erosion_mm / spacing_mm)))
    ball = ndimage.generate_binary_structure(3, 1)
    core = ndimage.binary_erosion(soft, ball, iterations=radius)
    labels, n = ndimage.label(core)
    if n == 0:
        return np.zeros(hu.shape, bool)
    sizes = ndimage.sum_labels(core, labels, index=np.arange(1, n + 1))
    brain = labels == (1 + int(np.argmax(sizes)))
    brain = ndimage.binary_dilation(brain, ball, iterations=radius + 1, mask=soft | (hu >= SOFT_HU[1]) & ~bone)
    for z in range(brain.shape[2]):
        brain[:, :, z] = ndimage.binary_fill_holes(brain[:, :, z])
    return brain


def window_channels(hu: np.ndarray, windows: Sequence[Sequence[float]], context: int = 1) -> np.ndarray:
    """Network input ``(len(windows) * (2 * context + 1), X, Y, Z)`` float32 from ``hu`` ``(X, Y, Z)``.

    Channel ``k * len(windows) + w`` is window ``w`` (``(clip(hu, lo, hi) - lo) / (hi - lo)``) of the slice
    ``z + k - context`` (edge slices repeat), so that a 2D network on axial slice ``z`` sees its
    neighbours.
    """
    scaled = [((np.clip(hu, lo, hi) - lo) / float(hi - lo)).astype(np.float32) for lo, hi in windows]
    nz = hu.shape[2]
    out = []
    for k in range(-context, context + 1):
        index = np.clip(np.arange(nz) + k, 0, nz - 1)
        out.extend(s[:, :, index] for s in scaled)
    return np.stack(out)
