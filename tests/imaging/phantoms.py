"""Synthetic SimpleITK phantoms with known geometry for the tests of bids_app.imaging (<= 64^3 voxels)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from bids_app.imaging import grid

THREADS = 1


# ---------------------------------------------------------------------------------------- helpers
def _to_sitk(array_ijk: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=None, direction=None) -> sitk.Image:
    """numpy array indexed [i, j, k] -> SimpleITK image (which stores [k, j, i])."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_ijk.transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    if direction is not None:
        img.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    if origin is not None:
        img.SetOrigin([float(v) for v in origin])
    return img


def _ijk(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _rotation(axis, degrees) -> np.ndarray:
    return np.array(sitk.VersorTransform(tuple(float(v) for v in axis), np.deg2rad(degrees)).GetMatrix()).reshape(3, 3)


def _grid(size, spacing, direction, centre=(0.0, 0.0, 0.0)) -> sitk.Image:
    """An empty float32 grid of ``size`` voxels whose centre is at ``centre`` (mm, LPS)."""
    img = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    half = (np.asarray(size) - 1) / 2.0 * np.asarray(spacing)
    img.SetOrigin((np.asarray(centre) - np.asarray(direction) @ half).tolist())
    return img


def _thick_slices(image: sitk.Image, transform: sitk.Transform, size, direction, slice_mm=4.0) -> sitk.Image:
    """``image`` seen through ``transform`` on a 1 x 1 x ``slice_mm`` mm grid with ``direction``.

    Resampled first at 1 mm on the oblique grid, averaged along the slice axis (Gaussian, FWHM =
    slice thickness: partial volume like a real thick slice), then subsampled to the slice centres.
    """
    nk = int(size[2])
    fine = _grid((size[0], size[1], int(nk * slice_mm)), (1, 1, 1), direction)
    hi = grid.resample_to(image, fine, transform, "linear", 0.0, threads=THREADS)
    hi = sitk.SmoothingRecursiveGaussian(hi, [0.3, 0.3, slice_mm / 2.355])
    return grid.resample_to(hi, _grid(size, (1, 1, slice_mm), direction), None, "linear", 0.0, threads=THREADS)


def _phantom(n: int = 48):
    """Ellipsoid "brain" (100) with an off-centre inner ellipsoid "ventricle" (30) and a bright
    blob (160) that breaks the symmetries; 1 mm, identity direction, centred on (0, 0, 0) mm.
    Returns (image smoothed by 0.7 mm, labels: 1 brain, 2 ventricle)."""
    x, y, z = np.indices((n, n, n)).astype(float) - (n - 1) / 2.0
    brain = (x / 19) ** 2 + (y / 16) ** 2 + (z / 14) ** 2 <= 1
    vent = ((x - 4) / 8) ** 2 + ((y + 2) / 5) ** 2 + ((z - 2) / 6) ** 2 <= 1
    blob = ((x + 9) / 4) ** 2 + ((y - 7) / 4) ** 2 + ((z + 5) / 3) ** 2 <= 1
    arr = np.zeros((n, n, n), np.float32)
    arr[brain] = 100
    arr[vent] = 30
    arr[blob & brain] = 160
    origin = [-(n - 1) / 2.0] * 3
    img = sitk.SmoothingRecursiveGaussian(_to_sitk(arr, origin=origin), 0.7)
    labels = _to_sitk((brain.astype(np.uint8) + vent.astype(np.uint8)), origin=origin)
    return img, labels




def _cv(values: np.ndarray) -> float:
    return float(values.std() / values.mean())



def _point_errors(est, true, labels, fixed_space_of=None):
    """Distances (mm) between est(p) and true(p) for brain points p of the fixed space."""
    pts = np.argwhere(_ijk(labels) > 0)[::29]
    world = [labels.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in pts]
    if fixed_space_of is not None:
        world = [fixed_space_of.TransformPoint(p) for p in world]
    return np.array([np.linalg.norm(np.subtract(est.TransformPoint(p), true.TransformPoint(p))) for p in world])



def _head(n: int = 64, scale: float = 1.0):
    """The phantom brain inside a 6 mm dark "CSF + skull" gap and a 4 mm bright "scalp" shell (an adult
    head has 5-10 mm of dark skull and CSF around the brain on FLAIR; thinner gaps vanish in 4 mm slices).

    ``scale`` shrinks the voxel coordinates (so 2.0 draws a brain twice as large on the same n).
    Returns (image, brain mask) on a 1 mm grid centred on (0, 0, 0) mm."""
    x, y, z = (np.indices((n, n, n)).astype(float) - (n - 1) / 2.0) / scale
    def ell(a, b, c):
        return (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1
    brain = ell(19, 16, 14)
    vent = ((x - 4) / 8) ** 2 + ((y + 2) / 5) ** 2 + ((z - 2) / 6) ** 2 <= 1
    blob = ((x + 9) / 4) ** 2 + ((y - 7) / 4) ** 2 + ((z + 5) / 3) ** 2 <= 1
    # gap and shell in mm whatever the scale
    g, t = 6.0 / scale, 4.0 / scale
    shell = ell(19 + g + t, 16 + g + t, 14 + g + t) & ~ell(19 + g, 16 + g, 14 + g)
    arr = np.where(ell(19 + g, 16 + g, 14 + g), 10.0, 0.0).astype(np.float32)
    arr[shell] = 220
    arr[brain] = 100
    arr[vent & brain] = 30
    arr[blob & brain] = 160
    origin = [-(n - 1) / 2.0] * 3
    return sitk.SmoothingRecursiveGaussian(_to_sitk(arr, origin=origin), 0.7), _to_sitk(brain.astype(np.uint8), origin=origin)



def _inverse_chain(flair_to_t1: sitk.Euler3DTransform, to_flair: sitk.AffineTransform) -> sitk.Transform:
    """T1w points -> template points: the inverse of ``flair_to_t1(to_flair(x))``."""
    inv = sitk.CompositeTransform(3)
    inv.AddTransform(to_flair.GetInverse())
    inv.AddTransform(flair_to_t1.GetInverse())
    return inv

