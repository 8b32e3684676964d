"""N4 bias-field correction (SimpleITK). Conventions in :mod:`bids_app.imaging`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import SimpleITK as sitk

from bids_app.imaging.grid import _check_image, _check_same_grid, _global_threads, _set_threads

LOGGER = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ N4
def _shrink_factors(spacing: Sequence[float], shrink: int) -> list[int]:
    """Per-axis shrink factors that bring voxels close to ``shrink * finest spacing`` (>= 1)."""
    finest = min(spacing)
    return [max(1, int(round(shrink * finest / s))) for s in spacing]


def n4_bias_correction(
    image: sitk.Image,
    mask: sitk.Image | None = None,
    shrink: int = 4,
    iterations: Sequence[int] = (50, 50, 30),
    *,
    convergence: float = 1e-3,
    threads: int | None = None,
) -> tuple[sitk.Image, sitk.Image]:
    """N4 bias-field correction (Tustison et al., IEEE TMI 2010) with SimpleITK.

    The model is multiplicative: ``image = true * bias`` with a smooth, positive ``bias``.

    1. ``mask`` (default: Otsu threshold of the image, i.e. the head) restricted to voxels > 0,
       since N4 works on ``log(image)``.
    2. The image and mask are shrunk (subsampled) for speed: each axis by a factor that brings its
       spacing close to ``shrink`` times the finest spacing, so a thick-slice axis (e.g. 1 x 1 x 4 mm
       with ``shrink=4``: factors 4, 4, 1) is not shrunk further.
    3. N4 fits a cubic B-spline log-bias field on the shrunk image: one fitting level per entry of
       ``iterations`` (the control-point lattice doubles at each level, starting from 4 per axis),
       at most that many iterations per level, stopping a level when the change falls below
       ``convergence``; 200 histogram bins, Wiener noise 0.01, bias FWHM 0.15 (ITK defaults).
    4. The fitted B-spline is evaluated at full resolution with ``GetLogBiasFieldAsImage(image)``
       (it is defined in physical space, so this is exact, not an interpolation of the shrunk
       field), ``bias = exp(log_bias)`` and ``corrected = image / bias`` everywhere (also outside the
       mask).

    Parameters
    ----------
    image : 3D scalar image (any pixel type; computed in float32), intensities >= 0.
    mask : optional 3D image on the same grid, non-zero inside the region used for the fit.
    shrink : shrink factor (>= 1) of the finest axis.
    iterations : maximum iterations per fitting level (one level per entry).
    convergence : N4 convergence threshold.
    threads : number of threads of this call (``None``: SimpleITK's global default).

    Returns
    -------
    ``(corrected, bias_field)``: two float32 images on the input grid. ``bias_field`` is the
    multiplicative field (around 1; N4 leaves its overall scale free), so ``corrected * bias_field``
    gives the input back.
    """
    _check_image(image)
    if int(shrink) < 1:
        raise ValueError(f"shrink must be >= 1, got {shrink!r}.")
    iterations = [int(i) for i in iterations]
    if not iterations or min(iterations) < 1:
        raise ValueError(f"iterations must be a non-empty list of positive integers, got {iterations!r}.")
    img = sitk.Cast(image, sitk.sitkFloat32)
    positive = sitk.Cast(img > 0, sitk.sitkUInt8)
    if mask is None:
        head = sitk.OtsuThreshold(img, 0, 1, 200)
        mask_img = sitk.And(sitk.Cast(head, sitk.sitkUInt8), positive)
    else:
        _check_image(mask, "mask")
        _check_same_grid(img, mask, "mask")
        mask_img = sitk.And(sitk.Cast(mask != 0, sitk.sitkUInt8), positive)
    n_mask = int(sitk.GetArrayViewFromImage(mask_img).sum())
    if n_mask == 0:
        raise ValueError(
            "The N4 mask holds no voxel with a positive intensity; pass a mask that overlaps the "
            "head, or shift/rescale the image so that the tissue intensities are positive."
        )

    factors = _shrink_factors(img.GetSpacing(), int(shrink))
    small = sitk.Shrink(img, factors)
    small_mask = sitk.Shrink(mask_img, factors)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(iterations)
    corrector.SetConvergenceThreshold(float(convergence))
    _set_threads(corrector, threads)
    with _global_threads(threads):
        corrector.Execute(small, small_mask)
        log_bias = corrector.GetLogBiasFieldAsImage(img)
    bias = sitk.Cast(sitk.Exp(log_bias), sitk.sitkFloat32)
    corrected = sitk.Cast(sitk.Divide(img, bias), sitk.sitkFloat32)
    corrected.CopyInformation(img)
    bias.CopyInformation(img)
    LOGGER.info(
        "N4: shrink %s, %d mask voxels, levels %s, elapsed iterations %s, bias range %.3f-%.3f",
        factors, n_mask, iterations, corrector.GetElapsedIterations(),
        *_minmax(bias, mask_img),
    )
    return corrected, bias


def _minmax(image: sitk.Image, mask: sitk.Image) -> tuple[float, float]:
    values = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0]
    return float(values.min()), float(values.max())
