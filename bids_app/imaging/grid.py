"""Voxel grids: input checks, thread control, reorientation to RAS+ and resampling (SimpleITK).

Conventions (LPS+ world, voxel order, transforms, threads) are in :mod:`bids_app.imaging`.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
import SimpleITK as sitk

LOGGER = logging.getLogger(__name__)


_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}


# --------------------------------------------------------------------------------------- helpers
def _check_image(image: sitk.Image, name: str = "image") -> None:
    if not isinstance(image, sitk.Image):
        raise ValueError(
            f"{name} must be a SimpleITK.Image, got {type(image).__name__}; "
            "read files with SimpleITK.ReadImage(path)."
        )
    if image.GetDimension() != 3:
        raise ValueError(
            f"{name} must be a 3D image, got {image.GetDimension()}D (size {image.GetSize()}); "
            "extract one volume of a 4D series first, e.g. image[:, :, :, 0]."
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "pass a scalar (grey-level) image."
        )


def _check_same_grid(image: sitk.Image, other: sitk.Image, name: str, tol: float = 1e-4) -> None:
    same = (
        image.GetSize() == other.GetSize()
        and np.allclose(image.GetSpacing(), other.GetSpacing(), atol=tol)
        and np.allclose(image.GetOrigin(), other.GetOrigin(), atol=tol * 100)
        and np.allclose(image.GetDirection(), other.GetDirection(), atol=tol)
    )
    if not same:
        raise ValueError(
            f"{name} is not on the image's voxel grid (size {other.GetSize()} vs {image.GetSize()}, "
            f"spacing {other.GetSpacing()} vs {image.GetSpacing()}); resample it first with "
            "resample_to(mask, image, interpolator='nearest')."
        )


def _check_threads(threads: int | None) -> None:
    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}.")


def _set_threads(obj, threads: int | None) -> None:
    _check_threads(threads)
    if threads is not None:
        obj.SetNumberOfThreads(int(threads))


@contextmanager
def _global_threads(threads: int | None):
    """Set SimpleITK's global default number of threads for the duration of one call.

    The filters that a registration or N4 runs internally (smoothing, shrinking, the metric's
    threader) take the *global* default, not the number set on the outer object; without this a
    ``threads=1`` registration would still use every core and would not be bit-reproducible.
    The previous value is restored on exit. Not meant for concurrent calls from several Python
    threads of one process (Nipype's MultiProc plugin uses processes).
    """
    _check_threads(threads)
    if threads is None:
        yield
        return
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _interpolator(name: str) -> int:
    try:
        return _INTERPOLATORS[name]
    except KeyError:
        raise ValueError(
            f"Unknown interpolator {name!r}; use one of {sorted(_INTERPOLATORS)}."
        ) from None


# --------------------------------------------------------------------------------- orientation
def reorient_to_ras(image: sitk.Image) -> sitk.Image:
    """Permute/flip the voxel axes so that they point Right, Anterior, Superior (RAS+).

    The output holds the same voxels as ``nibabel.as_closest_canonical`` of the same file: once
    written to NIfTI and loaded with nibabel, its ``get_fdata()`` (indexed ``[i, j, k]``) equals
    that of ``as_closest_canonical(nib.load(file))``, and its affine is the canonical one. No
    resampling happens: only the voxel order, the direction matrix and the origin change; every
    voxel keeps its physical position, and an oblique acquisition stays oblique (each axis is
    assigned to the closest of R, A, S).

    ``sitk.DICOMOrient`` names each voxel axis by the direction it points *to*, in DICOM/ITK's
    LPS+ world: an identity direction matrix is ``"LPS"`` (i towards Left, j towards Posterior).
    nibabel's RAS+ canonical order is i towards Right, j towards Anterior, k towards Superior,
    which is therefore ``"RAS"`` (not ``"LPS"``: that would flip i and j relative to nibabel).

    Parameters
    ----------
    image : 3D scalar image, any orientation (e.g. thick axial, sagittal or coronal FLAIR).

    Returns
    -------
    The reoriented image (same pixel type; size permuted like the axes; spacing permuted).
    """
    _check_image(image)
    before = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(image.GetDirection())
    out = sitk.DICOMOrient(image, "RAS")
    LOGGER.debug("reoriented %s -> RAS, size %s -> %s", before, image.GetSize(), out.GetSize())
    return out


# ---------------------------------------------------------------------------------- resampling
def resample_to(
    image: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
    interpolator: str = "linear",
    default: float = 0.0,
    *,
    threads: int | None = None,
) -> sitk.Image:
    """Resample ``image`` onto the voxel grid of ``reference`` (size, spacing, origin, direction).

    ``transform`` maps points of the reference space to points of the image's space (ITK
    convention; what :func:`rigid_register`/:func:`affine_register` return with ``reference`` as
    the fixed image); ``None`` is the identity (both images already in one physical space).

    ``interpolator``: ``"linear"`` (intensities), ``"nearest"`` (labels and masks) or ``"bspline"``
    (cubic; may overshoot near edges). Points outside the image get ``default``.

    Returns
    -------
    An image on the reference grid: float32 for ``"linear"``/``"bspline"``; the input pixel type
    for ``"nearest"`` (labels stay integers).
    """
    _check_image(image)
    _check_image(reference, "reference")
    interp = _interpolator(interpolator)
    pixel = image.GetPixelID() if interpolator == "nearest" else sitk.sitkFloat32
    src = image if interpolator == "nearest" else sitk.Cast(image, sitk.sitkFloat32)
    flt = sitk.ResampleImageFilter()
    flt.SetReferenceImage(reference)
    flt.SetTransform(transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity))
    flt.SetInterpolator(interp)
    flt.SetDefaultPixelValue(float(default))
    flt.SetOutputPixelType(pixel)
    _set_threads(flt, threads)
    return flt.Execute(src)
