"""Rigid and affine registration with Mattes mutual information (SimpleITK), reproducible by seed.

Conventions (LPS+ world, fixed-to-moving transforms, threads, reproducibility) are in :mod:`bids_app.imaging`.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from bids_app.imaging.grid import _check_image, _check_same_grid, _global_threads, _set_threads

LOGGER = logging.getLogger(__name__)


DEFAULT_SEED = 20240611


# Multi-resolution schedule shared by both registrations (coarse to fine). Shrink factors are in
# voxels of the fixed and moving images, smoothing sigmas in mm (applied before shrinking).
_SHRINK_FACTORS = (4, 2, 1)


_SMOOTHING_SIGMAS_MM = (2.0, 1.0, 0.0)


# -------------------------------------------------------------------------------- registration
def _registration_method(
    *,
    iterations: int,
    bins: int,
    sampling: float | tuple[float, ...],
    seed: int,
    threads: int | None,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None = None,
    metric: str = "mattes",
) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    if metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    elif metric == "meansquares":
        reg.SetMetricAsMeanSquares()
    else:
        raise ValueError(f"metric must be 'mattes' or 'meansquares', got {metric!r}.")
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    if isinstance(sampling, (tuple, list)):
        reg.SetMetricSamplingPercentagePerLevel([float(s) for s in sampling], seed)
    else:
        reg.SetMetricSamplingPercentage(sampling, seed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(sitk.Cast(fixed_mask != 0, sitk.sitkUInt8))
    if moving_mask is not None:
        reg.SetMetricMovingMask(sitk.Cast(moving_mask != 0, sitk.sitkUInt8))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-4,
        numberOfIterations=iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(_SHRINK_FACTORS))
    reg.SetSmoothingSigmasPerLevel(list(_SMOOTHING_SIGMAS_MM))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    _set_threads(reg, threads)
    return reg


def _check_registration_inputs(moving, fixed, fixed_mask, sampling):
    _check_image(moving, "moving")
    _check_image(fixed, "fixed")
    if fixed_mask is not None:
        _check_image(fixed_mask, "fixed_mask")
        _check_same_grid(fixed, fixed_mask, "fixed_mask")
    levels = tuple(sampling) if isinstance(sampling, (tuple, list)) else (sampling,)
    if isinstance(sampling, (tuple, list)) and len(levels) != len(_SHRINK_FACTORS):
        raise ValueError(f"sampling per level needs {len(_SHRINK_FACTORS)} values (coarse to fine), got {sampling!r}.")
    if not all(0.0 < s <= 1.0 for s in levels):
        raise ValueError(f"sampling must be in (0, 1], got {sampling!r}.")
    for name, img in (("moving", moving), ("fixed", fixed)):
        arr = sitk.GetArrayViewFromImage(img)
        if not np.isfinite(arr).all() or float(arr.max()) == float(arr.min()):
            raise ValueError(
                f"The {name} image is constant or holds NaN/inf values: nothing to register. "
                "Check that the right file was passed."
            )


def _run(
    reg: sitk.ImageRegistrationMethod, fixed, moving, initial, stage: str, threads: int | None
) -> sitk.Transform:
    reg.SetInitialTransform(initial, inPlace=False)
    with _global_threads(threads):
        out = reg.Execute(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32))
    LOGGER.info(
        "%s registration: metric %.4f after %d iterations (last level); %s",
        stage, reg.GetMetricValue(), reg.GetOptimizerIteration(),
        reg.GetOptimizerStopConditionDescription(),
    )
    return out


def compose_affine(outer: sitk.Transform, inner: sitk.Transform) -> sitk.AffineTransform:
    """One ``AffineTransform`` equal to ``outer(inner(x))`` (both with a matrix: Euler3D, Similarity3D,
    Affine). With ``T(x) = M (x - c) + c + t = M x + b``: ``M = M_o M_i``, ``b = M_o b_i + b_o``."""
    def parts(t):
        t = t.Downcast() if hasattr(t, "Downcast") else t
        m = np.asarray(t.GetMatrix(), float).reshape(3, 3)
        c = np.asarray(t.GetCenter(), float)
        return m, np.asarray(t.GetTranslation(), float) + c - m @ c
    mo, bo = parts(outer)
    mi, bi = parts(inner)
    out = sitk.AffineTransform(3)
    out.SetMatrix((mo @ mi).ravel().tolist())
    out.SetTranslation((mo @ bi + bo).tolist())
    return out


def _as_type(transform: sitk.Transform, cls):
    """The registered transform as ``cls`` (Execute may wrap it in a CompositeTransform)."""
    t = transform.Downcast() if hasattr(transform, "Downcast") else transform
    if isinstance(t, sitk.CompositeTransform):
        if t.GetNumberOfTransforms() != 1:
            raise RuntimeError(f"expected one transform, got a composite of {t.GetNumberOfTransforms()}")
        t = t.GetNthTransform(0).Downcast()
    return cls(t)


def rigid_register(
    moving: sitk.Image,
    fixed: sitk.Image,
    *,
    fixed_mask: sitk.Image | None = None,
    iterations: int = 200,
    bins: int = 32,
    sampling: float | tuple[float, float, float] = 0.25,
    seed: int = DEFAULT_SEED,
    threads: int | None = None,
    initial: str = "moments",
) -> sitk.Euler3DTransform:
    """Rigid (6 degrees of freedom) intra-subject registration, e.g. T1w/T2w (moving) to FLAIR (fixed).

    * Initialisation (``initial``): ``"moments"``, ``CenteredTransformInitializer(..., MOMENTS)``:
      rotation centre at the fixed image's intensity centre of mass, translation that superimposes
      the two centres of mass, no rotation; ``"header"``: the identity in world coordinates
      (rotation centre at the fixed image's centre of mass), i.e. trust the scanner coordinates,
      which images of one session share. Centres of mass of raw scans with different fields of view
      (neck, fat, a 3 mm vs a 4 mm slab) can lie centimetres apart; the header cannot.
    * Metric: Mattes mutual information (``bins`` histogram bins), evaluated at ``sampling`` x 100 %
      of the fixed voxels (inside ``fixed_mask`` when given) drawn at random with ``seed`` (one
      fraction, or one per level, coarse to fine: the finest level costs ~90 % of the time); linear
      interpolation of the moving image. MI suits images of different contrasts.
    * Optimizer: regular-step gradient descent on parameters scaled so that a unit step of any
      parameter moves the image by about 1 mm (``SetOptimizerScalesFromPhysicalShift``): first step
      1.0, halved (relaxation 0.5) whenever the gradient direction reverses, stops a level at a step
      below 1e-4, a gradient below 1e-8 or after ``iterations`` iterations. (The plain gradient
      descent with its windowed convergence test stopped after ~10 iterations, 2-3 mm off, on the
      test phantom; a larger minimum step, 1e-3, left ~1 mm.)
    * Multi-resolution: 3 levels, shrink factors 4, 2, 1 (voxels), Gaussian smoothing 2, 1, 0 mm.

    Both images may have any grid (e.g. a 1 mm isotropic T1w and a 1 x 1 x 4 mm oblique FLAIR);
    work is done in physical (LPS, mm) space.

    Returns
    -------
    ``sitk.Euler3DTransform`` (parameters: 3 angles in radians, 3 translations in mm) that maps
    points of the fixed space to the moving space: ``resample_to(moving, fixed, transform)``
    puts the moving image on the fixed grid.
    """
    _check_registration_inputs(moving, fixed, fixed_mask, sampling)
    if initial not in ("moments", "header"):
        raise ValueError(f"initial must be 'moments' or 'header', got {initial!r}.")
    start = sitk.CenteredTransformInitializer(
        sitk.Cast(fixed, sitk.sitkFloat32),
        sitk.Cast(moving, sitk.sitkFloat32),
        sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    if initial == "header":
        start = sitk.Euler3DTransform(start.GetCenter())  # same centre, identity
    reg = _registration_method(
        iterations=iterations, bins=bins, sampling=sampling, seed=seed, threads=threads,
        fixed_mask=fixed_mask,
    )
    return _as_type(_run(reg, fixed, moving, start, "rigid", threads), sitk.Euler3DTransform)


def affine_register(
    moving: sitk.Image,
    fixed: sitk.Image,
    initial: sitk.Transform | None = None,
    *,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    iterations: int = 200,
    bins: int = 32,
    sampling: float | tuple[float, float, float] = 0.25,
    seed: int = DEFAULT_SEED,
    threads: int | None = None,
    metric: str = "mattes",
) -> sitk.AffineTransform:
    """Affine (12 degrees of freedom) registration, e.g. subject FLAIR/T1w (moving) to a template (fixed).

    Without ``initial``, two stages: a similarity stage (rigid + one isotropic scale, 7 parameters,
    initialised with ``CenteredTransformInitializer(..., MOMENTS)``) then the full affine stage
    started from it; the full affine alone is easily drawn into shears by the skull. With
    ``initial`` (any transform with a matrix, e.g. the result of :func:`rigid_register` or of a
    previous call), only the affine stage runs, started from it.

    Metric: ``"mattes"`` (Mattes MI, as in :func:`rigid_register`; images of different contrasts) or
    ``"meansquares"`` (the mean squared difference; images of the same kind, e.g. two smoothed brain
    masks, see :func:`to_template_space`). Optimizer and multi-resolution schedule as in
    :func:`rigid_register` (``seed``-ed random sampling, gradient descent with scales from physical
    shift, 3 levels).
    ``fixed_mask`` restricts the metric to a region of the fixed image, e.g. a dilated template
    brain mask when the template is skull-stripped and the subject image is not; ``moving_mask``
    does the same on the subject side (e.g. :func:`brain_mask`).

    Returns
    -------
    ``sitk.AffineTransform`` mapping points of the fixed (template) space to the moving (subject)
    space, in mm: ``resample_to(moving, fixed, transform)`` puts the subject on the template grid;
    ``transform.GetInverse()`` maps subject points to the template.
    """
    _check_registration_inputs(moving, fixed, fixed_mask, sampling)
    kwargs = dict(
        iterations=iterations, bins=bins, sampling=sampling, seed=seed, threads=threads,
        fixed_mask=fixed_mask, moving_mask=moving_mask, metric=metric,
    )
    if initial is None:
        start = sitk.CenteredTransformInitializer(
            sitk.Cast(fixed, sitk.sitkFloat32),
            sitk.Cast(moving, sitk.sitkFloat32),
            sitk.Similarity3DTransform(),
            sitk.CenteredTransformInitializerFilter.MOMENTS,
        )
        similarity = _as_type(
            _run(_registration_method(**kwargs), fixed, moving, start, "similarity", threads),
            sitk.Similarity3DTransform,
        )
        LOGGER.info("similarity stage: scale %.4f", similarity.GetScale())
        initial = similarity
    else:
        initial = initial.Downcast() if hasattr(initial, "Downcast") else initial
        if isinstance(initial, sitk.CompositeTransform) and initial.GetNumberOfTransforms() == 1:
            initial = initial.GetNthTransform(0).Downcast()
        if not hasattr(initial, "GetMatrix") or initial.GetDimension() != 3:
            raise ValueError(
                f"initial must be a 3D transform with a matrix (Euler3D, Similarity3D, Affine...), "
                f"got {initial.GetName()}; compose or convert it first."
            )
    start = sitk.AffineTransform(3)
    start.SetMatrix(initial.GetMatrix())
    start.SetTranslation(initial.GetTranslation())
    start.SetCenter(initial.GetCenter())
    affine = _run(_registration_method(**kwargs), fixed, moving, start, "affine", threads)
    return _as_type(affine, sitk.AffineTransform)
