"""Known-answer tests of bids_app.imaging.registration: rigid and affine registration, composition (1 thread)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from bids_app.imaging import brain as masks
from bids_app.imaging import grid, registration
from tests.imaging.phantoms import THREADS, _dice, _grid, _ijk, _point_errors, _rotation, _thick_slices

# ---------------------------------------------------------------------------------- registration

def test_rigid_registration_recovers_known_motion(rigid_case):
    img, labels, fixed, true, est = rigid_case
    assert isinstance(est, sitk.Euler3DTransform)
    inverse_true = true.GetInverse()
    # translation of the brain's centre (fixed-space point that the truth maps to (0, 0, 0))
    centre = inverse_true.TransformPoint((0.0, 0.0, 0.0))
    translation_error = np.linalg.norm(np.subtract(est.TransformPoint(centre), true.TransformPoint(centre)))
    assert translation_error < 1.5  # measured: 0.02 mm
    r_est = np.array(est.GetMatrix()).reshape(3, 3)
    r_true = np.array(true.GetMatrix()).reshape(3, 3)
    angle_error = np.degrees(np.arccos(np.clip((np.trace(r_est @ r_true.T) - 1) / 2, -1, 1)))
    assert angle_error < 3.0  # measured: 1.6 degrees (of a 10.1 degree rotation)
    errors = _point_errors(est, true, labels, fixed_space_of=inverse_true)
    assert errors.max() < 1.0  # measured: mean 0.25, max 0.45 mm

    # resample the thick-slice fixed image back onto the 1 mm grid and find the ventricle again
    ventricle = _ijk(labels) == 2
    inner = _ijk(sitk.BinaryErode(sitk.Cast(labels > 0, sitk.sitkUInt8), [3, 3, 3])) > 0

    def ventricle_dice(transform):
        back = _ijk(grid.resample_to(fixed, img, transform.GetInverse(), "linear", threads=THREADS))
        return _dice((back > 10) & (back < 65) & inner, ventricle)

    dice = ventricle_dice(est)
    assert dice >= 0.85  # measured: 0.917 (0.915 with the true transform)
    assert ventricle_dice(sitk.Euler3DTransform()) < 0.5  # without registration: 0.25
    # labels warped with the estimated and the true transform agree at 1 mm
    fine = _grid((48, 48, 48), (1, 1, 1), np.array(fixed.GetDirection()).reshape(3, 3))
    vent_img = sitk.Cast(labels == 2, sitk.sitkUInt8)
    assert _dice(
        _ijk(grid.resample_to(vent_img, fine, est, "nearest")), _ijk(grid.resample_to(vent_img, fine, true, "nearest"))
    ) >= 0.95  # measured: 0.98


def test_rigid_registration_is_reproducible(rigid_case):
    img, _, fixed, _, est = rigid_case
    again = registration.rigid_register(img, fixed, threads=THREADS)
    assert again.GetParameters() == est.GetParameters()
    assert again.GetFixedParameters() == est.GetFixedParameters()


def test_sampling_per_level_equal_to_one_fraction_is_the_same_registration(rigid_case):
    img, labels, fixed, true, est = rigid_case
    # One fraction is the same fraction at every level: bit-identical, seed for seed.
    per_level = registration.rigid_register(img, fixed, threads=THREADS, sampling=(0.25, 0.25, 0.25))
    assert per_level.GetParameters() == est.GetParameters()
    # Fewer samples on the finest level only still find the known motion.
    sparse = registration.rigid_register(img, fixed, threads=THREADS, sampling=(0.25, 0.25, 0.1))
    assert sparse.GetParameters() != est.GetParameters()
    # measured: mean 0.29, max 0.53 mm (0.25, 0.44 with 25 % everywhere)
    assert _point_errors(sparse, true, labels, fixed_space_of=true.GetInverse()).max() < 1.0
    with pytest.raises(ValueError, match="per level"):
        registration.rigid_register(img, fixed, sampling=(0.5, 0.1))
    with pytest.raises(ValueError, match="sampling"):
        registration.affine_register(img, fixed, sampling=(0.5, 0.5, 0.0))


def test_affine_registration_and_template_mask(phantom):
    """Subject = template phantom scaled by 1.1 (+ small rotation and shift) on a thick oblique grid."""
    template, labels = phantom
    true = sitk.AffineTransform(3)  # template points -> subject points
    true.SetMatrix((1.1 * _rotation((0.2, 0.5, 1.0), 5.0)).ravel().tolist())
    true.SetTranslation((3.0, -2.0, 1.5))
    subject = _thick_slices(template, true.GetInverse(), (56, 56, 14), _rotation((0, 1, 0), -12))

    est = registration.affine_register(subject, template, threads=THREADS)

    assert isinstance(est, sitk.AffineTransform)
    matrix = np.array(est.GetMatrix()).reshape(3, 3)
    scale = np.linalg.det(matrix) ** (1 / 3)
    # measured: 1.081. Mattes MI itself (all voxels) peaks near 1.09 on this blurred thick-slice
    # phantom (-0.7022 at 1.09 vs -0.6992 at the true 1.10): a property of the data, not the optimizer
    assert abs(scale - 1.1) < 0.04
    errors = _point_errors(est, true, labels)
    assert errors.mean() < 1.0 and errors.max() < 1.5  # measured: mean 0.27, max 0.45 mm

    brain = sitk.Cast(labels > 0, sitk.sitkUInt8)
    mask = masks.brain_mask_from_template(subject, brain, est, threads=THREADS)
    expected = masks.brain_mask_from_template(subject, brain, true, threads=THREADS)
    assert mask.GetPixelID() == sitk.sitkUInt8 and mask.GetSize() == subject.GetSize()
    assert set(np.unique(_ijk(mask))) <= {0, 1}
    assert _dice(_ijk(mask), _ijk(expected)) >= 0.9  # measured: 0.975
    # and the warped mask covers the subject's tissue (away from the partial-volume edge)
    tissue = _ijk(subject) > 70
    assert (_ijk(mask)[tissue] > 0).mean() > 0.99  # measured: 0.9996

    # started from a given transform, only the affine stage runs and lands at the same place
    refined = registration.affine_register(subject, template, initial=est, threads=THREADS)
    assert _point_errors(refined, true, labels).max() < 1.5


def test_registration_rejects_bad_input(phantom):
    img, _ = phantom
    with pytest.raises(ValueError, match="constant"):
        registration.rigid_register(img, sitk.Image(img.GetSize(), sitk.sitkFloat32))
    with pytest.raises(ValueError, match="3D"):
        registration.affine_register(sitk.Image(8, 8, sitk.sitkFloat32), img)
    with pytest.raises(ValueError, match="threads"):
        registration.rigid_register(img, img, threads=0)



def test_compose_affine_equals_applying_both():
    outer = sitk.AffineTransform(3)
    outer.SetMatrix((1.1, 0.05, 0.0, -0.02, 0.9, 0.1, 0.0, 0.03, 1.2))
    outer.SetTranslation((3.0, -2.0, 1.0))
    outer.SetCenter((10.0, 5.0, -4.0))
    inner = sitk.Euler3DTransform((-6.0, 2.0, 8.0), 0.1, -0.05, 0.2, (1.5, 0.5, -2.5))
    both = registration.compose_affine(outer, inner)
    for p in [(0.0, 0.0, 0.0), (50.0, -30.0, 20.0), (-70.0, 40.0, -60.0)]:
        np.testing.assert_allclose(both.TransformPoint(p), outer.TransformPoint(inner.TransformPoint(p)), atol=1e-9)
