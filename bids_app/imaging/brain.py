"""Brain masks (from the image, or warped from a template) and robust intensity normalisation.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from bids_app.imaging.grid import _check_image, resample_to

LOGGER = logging.getLogger(__name__)


#: Plausible volume (mL) of the head/brain mask of an image that shows a brain (:func:`brain_mask`).
#: Adult intracranial volume is about 1100-1900 mL, but on thick-slice clinical FLAIRs the mask can
#: keep far less: 43 and 45 mL on two 1.5T 2D FLAIRs of bids-dev (sub-ms3seg106639, 7.2 mm slices;
#: sub-ms3seg110218, 6.6 mm), which a 150 mL bound refused although they are brains.
BRAIN_MASK_RANGE_ML = (30.0, 3000.0)

#: Smallest left-right extent (mm) of the mask of an image that shows a brain. A brain is 130-150 mm
#: wide; the masks measured on bids-dev span 118-139 mm even where they keep only 43 mL, while the
#: spine images span 31-51 mm (sub-sct01 T2w 31, sub-unf01 T2w 47, sub-unf02 sagittal T2w 51, whose
#: mask is 156 mL and passes the volume bound) and the synthetic cord phantom 40 mm.
MIN_BRAIN_WIDTH_MM = 90.0


#: A registration mask under this volume (mL) is not a whole brain: :func:`brain_mask` then retries on
#: a median-filtered image. Adult brains are 1100-1900 mL; the masks of the noisy 1.5T 2D FLAIRs of
#: bids-dev that needed it kept 43-430 mL and drew the registration far off (five MS3SEG patients:
#: 21-78 % of their manual lesions outside the template white matter, one entirely off the grid).
MIN_REGISTRATION_BRAIN_ML = 800.0

#: In-plane median radii (voxels) tried in turn when the first mask is too small.
DENOISE_RADII = (1, 2)


def brain_mask(image: sitk.Image, opening_mm: float = 3.0, closing_mm: float = 4.0) -> sitk.Image:
    """:func:`brain_mask_once`, retried on a denoised image when the mask is too small to be a brain.

    When the mask keeps less than :data:`MIN_REGISTRATION_BRAIN_ML`, the
    image is median-filtered in-plane (radius :data:`DENOISE_RADII` voxels in turn, none across
    slices) and masked again; the first mask of at least that volume is returned, else the largest.
    Speckle noise on a thick-slice scan breaks the Otsu foreground into fragments that the
    opening then removes, so the largest component is a fragment; the median removes the speckle
    without blurring the dark skull into the brain as a Gaussian does. Masks of at least the bound
    are returned unchanged, so every image whose first mask was already plausible keeps it.
    """
    best = brain_mask_once(image, opening_mm, closing_mm)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    best_volume = float(sitk.GetArrayViewFromImage(best).sum()) * voxel_ml
    axis = int(np.argmax(image.GetSpacing()))  # the slice axis: no median across slices
    for radius in DENOISE_RADII:
        if best_volume >= MIN_REGISTRATION_BRAIN_ML:
            break
        r = [0 if a == axis else radius for a in range(3)]
        candidate = brain_mask_once(sitk.Median(sitk.Cast(image, sitk.sitkFloat32), r), opening_mm, closing_mm)
        v = float(sitk.GetArrayViewFromImage(candidate).sum()) * voxel_ml
        LOGGER.info("brain mask %.0f mL is not a whole brain; after an in-plane median of radius %d: %.0f mL",
                    best_volume, radius, v)
        if v > best_volume:
            best, best_volume = candidate, v
    return best


def brain_mask_once(image: sitk.Image, opening_mm: float = 3.0, closing_mm: float = 4.0) -> sitk.Image:
    """A brain mask of a FLAIR (or T1w), with or without skull, good enough to drive an affine registration.

    1. Otsu threshold of the whole image: brain tissue and scalp are bright, background, skull and
       CSF dark, so the brain is an island separated from the scalp by the dark skull and CSF.
    2. Opening against thin bridges: erosion by ``opening_mm`` (ball in mm, at least one voxel per
       axis, so one slice of a thick-slice scan), the largest connected component kept, dilation by
       the same amount inside the Otsu foreground.
    3. Closing by ``closing_mm`` (sulci, dark lesion cores), then holes filled in 3D and slice by
       slice across the axis with the largest spacing (ventricles open to the edge of a thick slab).

    Returns uint8 0/1 on the image grid. Measured on bids-dev: 1.08 L (sub-ms07, skull-stripped),
    1.45 L (sub-isbi03, raw 2D with skull), 1.28/1.27 L (sub-mslong01, two sessions), each following the
    brain surface to the eye. (The previous mask, head eroded by 8 mm and dilated by 4 mm, kept only
    0.5-0.8 L of these brains, which drew the registration to inflate the brains by 7-40 %.)
    """
    _check_image(image)
    if opening_mm <= 0 or closing_mm <= 0:
        raise ValueError(f"opening_mm and closing_mm must be > 0, got {opening_mm!r}, {closing_mm!r}.")
    image = sitk.Cast(image, sitk.sitkFloat32)
    spacing = image.GetSpacing()
    fg = sitk.OtsuThreshold(image, 0, 1)
    radius = [max(1, int(round(opening_mm / sp))) for sp in spacing]
    core = sitk.BinaryErode(fg, radius)
    if not np.any(sitk.GetArrayViewFromImage(core)):
        core = fg
    core = sitk.RelabelComponent(sitk.ConnectedComponent(core), sortByObjectSize=True) == 1
    mask = sitk.BinaryDilate(core, radius) & fg
    mask = sitk.BinaryMorphologicalClosing(mask, [max(1, int(round(closing_mm / sp))) for sp in spacing])
    mask = sitk.BinaryFillhole(mask)
    arr = sitk.GetArrayFromImage(mask).astype(bool)  # (k, j, i)
    axis = 2 - int(np.argmax(spacing))  # numpy axis of the largest spacing
    arr = np.stack([ndimage.binary_fill_holes(sl) for sl in np.moveaxis(arr, axis, 0)])
    out = sitk.GetImageFromArray(np.moveaxis(arr, 0, axis).astype(np.uint8))
    out.CopyInformation(image)
    return out


def brain_mask_from_template(
    subject: sitk.Image,
    template_mask: sitk.Image,
    transform: sitk.Transform,
    *,
    threshold: float = 0.5,
    threads: int | None = None,
) -> sitk.Image:
    """Warp a template brain mask into the subject's space (skull stripping by registration).

    ``transform`` is the result of ``affine_register(moving=subject, fixed=template)`` (or
    ``rigid_register``), i.e. it maps template points to subject points; its inverse, which maps
    subject points to template points, is used to pull the mask onto the subject grid.
    The mask is interpolated linearly (as a 0/1 float) and thresholded at ``threshold``: on a
    thick-slice grid this keeps a voxel when at least half of its centre's neighbourhood is brain,
    which is smoother than nearest-neighbour.

    Returns
    -------
    uint8 image (0/1) on the subject grid.
    """
    _check_image(subject, "subject")
    _check_image(template_mask, "template_mask")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}.")
    try:
        inverse = transform.GetInverse()
    except RuntimeError as exc:
        raise ValueError(
            f"The transform ({transform.GetName()}) is not invertible; pass the linear transform "
            "returned by affine_register(subject, template)."
        ) from exc
    binary = sitk.Cast(template_mask != 0, sitk.sitkFloat32)
    warped = resample_to(binary, subject, inverse, "linear", 0.0, threads=threads)
    mask = sitk.Cast(warped >= threshold, sitk.sitkUInt8)
    mask.CopyInformation(subject)
    return mask


# -------------------------------------------------------------------------------- normalisation
def normalise_intensity(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Robust per-volume intensity normalisation: ``(x - median) / IQR`` of the voxels in ``mask``.

    ``median`` and ``IQR = q75 - q25`` are computed over the voxels where ``mask`` is non-zero,
    with numpy's default (linear) percentile interpolation; the formula is then applied to every
    voxel (also outside the mask). Unlike mean/std (z-scoring), median and IQR are hardly moved by
    bright lesions, vessels or residual skull in the mask, and unlike min/max they do not depend on
    a few extreme voxels. For a brain mask on FLAIR the result is about 0 in normal-appearing
    tissue, and lesions are several IQRs above it.

    Parameters
    ----------
    array : any-shape numeric array (e.g. ``(X, Y, Z)``), intensities in arbitrary scanner units.
    mask : array of the same shape (bool or 0/1), the voxels that define the statistics.

    Returns
    -------
    float32 array of the same shape, dimensionless.
    """
    array = np.asarray(array)
    mask = np.asarray(mask)
    if array.shape != mask.shape:
        raise ValueError(
            f"array {array.shape} and mask {mask.shape} differ in shape; resample the mask to the "
            "image grid (resample_to(mask, image, interpolator='nearest'))."
        )
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"array must be real-valued, got dtype {array.dtype}.")
    inside = mask.astype(bool)
    values = array[inside].astype(np.float64)
    if values.size == 0:
        raise ValueError("The mask is empty; pass a brain (or head) mask with at least one voxel.")
    if not np.isfinite(values).all():
        raise ValueError("The image holds NaN/inf values inside the mask; clean the image first.")
    q25, median, q75 = np.percentile(values, [25.0, 50.0, 75.0])
    iqr = q75 - q25
    if not iqr > 0:
        raise ValueError(
            f"The interquartile range inside the mask is {iqr}: the masked intensities are (nearly) "
            "constant. Check that the mask covers the brain and the image is not empty."
        )
    LOGGER.debug("normalise_intensity: median %.4g, IQR %.4g (%d voxels)", median, iqr, values.size)
    return ((array.astype(np.float64) - median) / iqr).astype(np.float32)


def no_brain_reason(mask: sitk.Image) -> str | None:
    """Why ``mask`` (from :func:`brain_mask`) shows no brain, or ``None`` when it may: its volume outside
    :data:`BRAIN_MASK_RANGE_ML`, or its left-right extent in the world (mm) under
    :data:`MIN_BRAIN_WIDTH_MM` (a spine or a narrow slab). Guards, not a classifier: see the measurements
    at the constants."""
    array = sitk.GetArrayViewFromImage(mask)
    volume_ml = float(np.count_nonzero(array)) * float(np.prod(mask.GetSpacing())) / 1000.0
    low, high = BRAIN_MASK_RANGE_ML
    if not low <= volume_ml <= high:
        return f"its brain mask is {volume_ml:.0f} mL, outside the {low:.0f}-{high:.0f} mL of a brain"
    kji = np.argwhere(array)[::7]  # every 7th voxel: the extent, not the volume, is wanted
    ijk = kji[:, ::-1].astype(float) * np.asarray(mask.GetSpacing())
    world_x = (ijk @ np.asarray(mask.GetDirection()).reshape(3, 3).T)[:, 0] + mask.GetOrigin()[0]  # LPS x: R-L
    width = float(world_x.max() - world_x.min()) if len(world_x) else 0.0
    if width < MIN_BRAIN_WIDTH_MM:
        return f"its head/brain mask is {width:.0f} mm wide from left to right, less than a brain's {MIN_BRAIN_WIDTH_MM:.0f} mm"
    return None
