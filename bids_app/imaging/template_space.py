"""A subject image to the template grid (N4, brain mask, rigid then affine registration, normalisation), and a
companion image of the same session (e.g. a T1w beside a FLAIR) onto the same grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from bids_app.imaging.bias import n4_bias_correction
from bids_app.imaging.brain import brain_mask, normalise_intensity
from bids_app.imaging.grid import resample_to
from bids_app.imaging.registration import affine_register, compose_affine, rigid_register

LOGGER = logging.getLogger(__name__)


#: Metric sampling of the two template registrations, per level (coarse to fine: 8, 4, 2 mm; see
#: :mod:`bids_app.imaging.registration`), as the fraction of the 2 mm grid's voxels drawn. The finest
#: level costs most; drawing 10 % (outline) and 15 % (inner) there instead of 50 % cut the
#: registration of the labelled dev FLAIRs from 20-63 s to 10-21 s (idle, 2 threads) and moved the transforms by 0.2-2.9
#: mm, as much as the old setting moves between two random seeds (``benchmarks/registration.py``).
OUTLINE_SAMPLING = (0.5, 0.5, 0.1)
INNER_SAMPLING = (0.5, 0.5, 0.15)


# ------------------------------------------------------------------------------ whole pipeline
@dataclass(frozen=True)
class TemplateSpaceImage:
    """A subject image brought to template space by :func:`to_template_space`.

    ``data`` is the normalised image on the template grid, numpy order ``(X, Y, Z)`` (i, j, k of the
    template; the template is RAS, 1 mm), dimensionless (``(x - median) / IQR`` inside the template
    brain mask). ``transform`` maps template points to subject points (LPS mm, ITK convention), so
    ``resample_to(template_map, subject, transform.GetInverse())`` returns a map to the subject grid.
    ``seconds`` holds the wall time of each stage (``n4``, ``registration``, ``resampling``).
    """

    data: np.ndarray
    transform: sitk.Transform
    seconds: dict
    #: Fraction of the template brain mask inside the image's field of view (1.0 when not computed).
    coverage: float = 1.0


def _bias_corrected(image: sitk.Image, bias_correction: bool, seconds: dict) -> sitk.Image:
    """N4 (one thread) or a float32 cast; the wall time goes to ``seconds["n4"]``."""
    import time

    t0 = time.perf_counter()
    if bias_correction:
        # One thread: N4 is reproducible for a given thread count but not across counts.
        image, _ = n4_bias_correction(image, threads=1)
    else:
        image = sitk.Cast(image, sitk.sitkFloat32)
    seconds["n4"] = time.perf_counter() - t0
    return image


def to_template_space(
    image: sitk.Image,
    template: sitk.Image,
    template_mask: sitk.Image,
    *,
    bias_correction: bool = True,
    initial: sitk.Transform | None = None,
    registration_spacing: float = 2.0,
    threads: int | None = None,
) -> TemplateSpaceImage:
    """Bias-correct, affinely register and resample one subject image onto the template grid.

    1. N4 (:func:`n4_bias_correction`, head mask by Otsu, shrink 4) unless ``bias_correction`` is
       false (an already corrected input).
    2. Affine registration of the subject's brain to the template's brain, both as masks: the
       subject's :func:`brain_mask` and the template brain mask, each smoothed by a Gaussian of
       ``registration_spacing`` mm on a ``registration_spacing`` mm grid (an affine needs no finer
       grid), matched by :func:`affine_register` with ``metric="meansquares"`` (affine stage only),
       started from the masks' centres of mass and the isotropic scale
       ``(V_subject / V_template) ** (1/3)`` of the two mask volumes (``initial`` replaces that
       start). The brain outline fixes scale, shear and position well whatever the contrast; a
       rigid :func:`rigid_register` (Mattes MI) of the subject so aligned against the template T1w
       then refines the rotation and shift from the inner anatomy; the result is their composition
       (:func:`compose_affine`). (Mutual information between a FLAIR and the template T1w, with the
       old eroded mask, inflated every bids-dev brain by 7-40 % linear, measured against the brain
       outline; started from this result an MI affine drifted again by 5-10 % in scale, so MI is
       not allowed to change the scale.) Metric sampling per level: :data:`OUTLINE_SAMPLING` and
       :data:`INNER_SAMPLING`. Always one thread, so that the
       result is reproducible (see the module docstring); N4 likewise (its result changes slightly
       with the thread count), so ``threads`` only applies to the resampling.
    3. Linear resampling of the bias-corrected image onto the 1 mm template grid, then
       :func:`normalise_intensity` inside the template brain mask.
    """
    import time

    seconds = {}
    image = _bias_corrected(image, bias_correction, seconds)

    t0 = time.perf_counter()
    coarse = _coarse_grid(template, registration_spacing)
    fixed_mask = resample_to(sitk.Cast(template_mask != 0, sitk.sitkFloat32), coarse, None, "linear")
    subject_brain = brain_mask(image)
    moving_mask = sitk.Cast(subject_brain, sitk.sitkFloat32)
    volumes = [float(sitk.GetArrayViewFromImage(m).sum()) * float(np.prod(m.GetSpacing()))
               for m in (moving_mask, fixed_mask)]
    # One thread: ITK's multi-threaded metric sums in a varying order, and the optimiser amplifies
    # that; with 2 threads two runs on one FLAIR differed by 2 % in scale and 0.6 mm in shift,
    # and the lesion volume by up to 15 %. Single-threaded it is bit-reproducible (and 2 mm is fast).
    moving_soft = sitk.SmoothingRecursiveGaussian(moving_mask, registration_spacing)
    fixed_soft = sitk.SmoothingRecursiveGaussian(fixed_mask, registration_spacing)
    if initial is None:
        initial = sitk.CenteredTransformInitializer(
            fixed_soft, moving_soft, sitk.Similarity3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
        initial.SetScale((volumes[0] / volumes[1]) ** (1.0 / 3.0))
    outline = affine_register(moving_soft, fixed_soft, initial, sampling=OUTLINE_SAMPLING, threads=1,
                              metric="meansquares")
    # The outline leaves small rotations of a near-ellipsoid loosely fixed; the inner anatomy
    # (ventricles, grey/white boundaries) pins them: a rigid MI step between the subject brought
    # to the template by ``outline`` and the template T1w. Scale stays the outline's (MI scales
    # a FLAIR against a T1w wrongly, see above).
    template_coarse = resample_to(sitk.SmoothingRecursiveGaussian(template, registration_spacing / 2), coarse)
    warped = resample_to(sitk.Mask(image, subject_brain), coarse, outline, "linear")
    inner = rigid_register(warped, template_coarse, fixed_mask=sitk.Cast(fixed_mask > 0.5, sitk.sitkUInt8),
                           sampling=INNER_SAMPLING, threads=1, initial="header")
    transform = compose_affine(outline, inner)
    seconds["registration"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    warped = resample_to(image, template, transform, "linear", 0.0, threads=threads)
    data = np.transpose(sitk.GetArrayFromImage(warped), (2, 1, 0))
    mask = np.transpose(sitk.GetArrayFromImage(template_mask), (2, 1, 0)) != 0
    data = normalise_intensity(data, mask)
    seconds["resampling"] = time.perf_counter() - t0
    return TemplateSpaceImage(data=data, transform=transform, seconds=seconds)


def companion_to_template(
    image: sitk.Image,
    flair: sitk.Image,
    flair_transform: sitk.Transform,
    template: sitk.Image,
    template_mask: sitk.Image,
    *,
    bias_correction: bool = True,
    max_shift_mm: float = 15.0,
    threads: int | None = None,
) -> TemplateSpaceImage:
    """Bring a second contrast of the same session (T1w, T2w) to template space through its FLAIR.

    1. N4 of ``image`` (one thread, as in :func:`to_template_space`) unless ``bias_correction`` is
       false.
    2. Intra-subject co-registration: :func:`rigid_register` of ``image`` (moving) to ``flair``
       (fixed, its metric restricted to :func:`brain_mask` of the FLAIR), one thread, so the
       result is reproducible. Mutual information copes with the contrast difference. It starts
       from the scanner coordinates (``initial="header"``), which scans of one session share, and
       its result is kept only if no point of the FLAIR's brain moves by more than
       ``max_shift_mm``; otherwise the header alignment is used and a warning logged. (On a raw
       clinical 2D T1w with weak grey/white contrast and bright scalp fat, MI is higher with the fat
       over the FLAIR's brain edge than at the true alignment: the optimiser walked 64 mm away from
       a header alignment that was right to the eye.)
    3. Resampling onto the template grid through the composition ``rigid(flair_transform(x))``
       (template point -> FLAIR point -> ``image`` point; ``flair_transform`` is the
       :attr:`TemplateSpaceImage.transform` of the FLAIR), so both contrasts land on the same
       template voxels with one interpolation, then :func:`normalise_intensity` inside the
       template brain mask.

    Returns a :class:`TemplateSpaceImage` whose ``transform`` is the rigid FLAIR -> ``image`` part
    (fixed = FLAIR points to moving = ``image`` points), whose ``seconds`` holds ``n4``,
    ``coregistration`` and ``resampling`` and whose ``coverage`` is the fraction of the template
    brain inside ``image``'s field of view (a T1w of the spine, or a slab, covers little of it;
    callers should not use such an image as a whole-brain channel).
    """
    import time

    seconds = {}
    image = _bias_corrected(image, bias_correction, seconds)

    t0 = time.perf_counter()
    fixed = sitk.Cast(flair, sitk.sitkFloat32)
    fixed_mask = brain_mask(fixed)
    try:
        rigid = rigid_register(image, fixed, fixed_mask=fixed_mask, sampling=0.25, threads=1, initial="header")
    except RuntimeError as exc:  # e.g. ITK's "All samples map outside moving image buffer" for a small field of view
        LOGGER.warning("co-registration failed (%s); keeping the scanner (header) alignment",
                       str(exc).strip().splitlines()[-1][:200])
        rigid = sitk.Euler3DTransform()  # identity: the header alignment
    shift = _max_displacement(rigid, fixed_mask)
    if shift > max_shift_mm:
        LOGGER.warning("co-registration moved the brain by up to %.1f mm (> %.1f mm): implausible within one "
                       "session, keeping the scanner (header) alignment instead", shift, max_shift_mm)
        rigid = sitk.Euler3DTransform()
    seconds["coregistration"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    chain = sitk.CompositeTransform(3)
    chain.AddTransform(rigid)  # applied second: FLAIR -> image
    chain.AddTransform(flair_transform)  # applied first: template -> FLAIR
    warped = resample_to(image, template, chain, "linear", 0.0, threads=threads)
    data = np.transpose(sitk.GetArrayFromImage(warped), (2, 1, 0))
    mask = np.transpose(sitk.GetArrayFromImage(template_mask), (2, 1, 0)) != 0
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    inside = np.transpose(sitk.GetArrayFromImage(resample_to(ones, template, chain, "nearest", 0)), (2, 1, 0)) > 0
    coverage = float((inside & mask).sum() / max(1, mask.sum()))
    data = normalise_intensity(data, mask & inside if (mask & inside).any() else mask)
    seconds["resampling"] = time.perf_counter() - t0
    return TemplateSpaceImage(data=data, transform=rigid, seconds=seconds, coverage=coverage)


def _max_displacement(transform: sitk.Transform, mask: sitk.Image) -> float:
    """Largest distance (mm) by which ``transform`` moves a corner of ``mask``'s bounding box."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask != 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        return 0.0
    x0, y0, z0, nx, ny, nz = stats.GetBoundingBox(1)
    corners = [(x, y, z) for x in (x0, x0 + nx - 1) for y in (y0, y0 + ny - 1) for z in (z0, z0 + nz - 1)]
    points = [mask.TransformIndexToPhysicalPoint(c) for c in corners]
    return max(float(np.linalg.norm(np.subtract(transform.TransformPoint(p), p))) for p in points)


def _coarse_grid(reference: sitk.Image, spacing: float) -> sitk.Image:
    """An empty image covering ``reference``'s field of view with isotropic ``spacing`` mm voxels."""
    size = [max(1, int(round(n * s / spacing))) for n, s in zip(reference.GetSize(), reference.GetSpacing())]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing([float(spacing)] * 3)
    grid.SetDirection(reference.GetDirection())
    # Same physical corner: voxel centres shift by half the change of voxel size.
    shift = [(spacing - s) / 2 for s in reference.GetSpacing()]
    d = np.asarray(reference.GetDirection()).reshape(3, 3)
    grid.SetOrigin(tuple(np.asarray(reference.GetOrigin()) + d @ np.asarray(shift)))
    return grid
