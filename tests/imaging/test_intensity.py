"""Known-answer tests of N4 (bids_app.imaging.bias), intensity normalisation and brain masks (bids_app.imaging.brain)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from bids_app.imaging import bias
from bids_app.imaging import brain as masks
from tests.imaging.phantoms import THREADS, _head, _ijk, _to_sitk


# -------------------------------------------------------------------------------------------- N4
def _cv(values: np.ndarray) -> float:
    return float(values.std() / values.mean())


def test_n4_removes_linear_ramp():
    n = 48
    x, y, z = np.indices((n, n, n)).astype(float) - (n - 1) / 2.0
    head = (x / 22) ** 2 + (y / 20) ** 2 + (z / 18) ** 2 <= 1
    wm = (x / 14) ** 2 + (y / 12) ** 2 + (z / 10) ** 2 <= 1
    vent = (x / 10) ** 2 + (y / 4) ** 2 + (z / 4) ** 2 <= 1
    classes = np.zeros((n, n, n), np.uint8)
    classes[head], classes[wm], classes[vent] = 1, 2, 3
    truth = np.array([0.0, 60.0, 100.0, 30.0], np.float32)[classes]
    ramp = 0.7 + 0.6 * (x - x.min()) / (x.max() - x.min())  # multiplicative bias 0.7 -> 1.3 along i
    noise = np.random.default_rng(0).normal(0.0, 0.5, truth.shape) * (classes > 0)
    biased = _to_sitk((truth * ramp + noise).astype(np.float32))

    corrected, field = bias.n4_bias_correction(biased, shrink=4, threads=THREADS)

    assert corrected.GetSize() == biased.GetSize() and field.GetSize() == biased.GetSize()
    assert corrected.GetPixelID() == sitk.sitkFloat32
    before, after = _ijk(biased), _ijk(corrected)
    cvs = {}
    for c in (1, 2, 3):
        cvs[c] = (_cv(before[classes == c]), _cv(after[classes == c]))
        assert cvs[c][1] <= 0.5 * cvs[c][0], cvs
    # measured: CV 0.136 -> 0.013, 0.082 -> 0.006, 0.058 -> 0.017 (noise floor 0.5/30 = 0.017)
    assert max(after_cv for _, after_cv in cvs.values()) < 0.03, cvs
    # the field is the ramp up to a global scale, and corrected * field gives the input back
    ratio = _ijk(field)[head] / ramp[head]
    assert _cv(ratio) < 0.02
    np.testing.assert_allclose((after * _ijk(field))[head], before[head], rtol=1e-4)


def test_n4_mask_must_match_grid():
    img = sitk.Image(16, 16, 16, sitk.sitkFloat32) + 1.0
    with pytest.raises(ValueError, match="grid"):
        bias.n4_bias_correction(img, mask=sitk.Image(8, 8, 8, sitk.sitkUInt8))
    with pytest.raises(ValueError, match="positive"):
        bias.n4_bias_correction(img, mask=sitk.Image(16, 16, 16, sitk.sitkUInt8))


# --------------------------------------------------------------------------------- normalisation
def test_normalise_intensity_known_values():
    array = np.zeros((3, 3, 2), np.float32)
    mask = np.zeros(array.shape, bool)
    array[:, :, 0] = np.arange(9).reshape(3, 3)  # in mask: 0..8 -> median 4, q25 2, q75 6, IQR 4
    mask[:, :, 0] = True
    array[:, :, 1] = 100.0  # outside the mask: does not move the statistics, still normalised
    out = masks.normalise_intensity(array, mask)
    assert out.dtype == np.float32 and out.shape == array.shape
    np.testing.assert_array_equal(out[:, :, 0], (np.arange(9).reshape(3, 3) - 4.0) / 4.0)
    np.testing.assert_array_equal(out[:, :, 1], np.full((3, 3), 24.0))
    # an extreme outlier in the mask (0 -> 1e6) moves the statistics by one rank only:
    # in-mask values 1..8 and 1e6 -> median 5, q25 3, q75 7 (mean/std would be ~1e5/3e5)
    array[0, 0, 0] = 1e6
    out = masks.normalise_intensity(array, mask)
    assert out[1, 1, 0] == pytest.approx(-0.25) and out[0, 1, 0] == pytest.approx(-1.0)


def test_normalise_intensity_bad_input():
    with pytest.raises(ValueError, match="shape"):
        masks.normalise_intensity(np.zeros((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="empty"):
        masks.normalise_intensity(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="interquartile"):
        masks.normalise_intensity(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        masks.normalise_intensity(np.array([1.0, np.nan, 3.0]), np.ones(3))


# ---------------------------------------------------------------------------- skull and pipeline

def test_brain_mask_drops_the_skull_and_keeps_the_brain():
    head, brain = _head(112, scale=2.6)  # an adult-sized brain (99 x 83 x 73 mm)
    mask = masks.brain_mask(head)  # the 3 mm dark gap separates the brain from the 4 mm bright shell
    m, b = _ijk(mask) > 0, _ijk(brain) > 0
    shell = _ijk(head) > 180
    assert mask.GetSize() == head.GetSize() and mask.GetPixelID() == sitk.sitkUInt8
    assert (m & shell).sum() == 0  # no skull voxel survives
    assert (m & b).sum() / b.sum() > 0.97  # the brain does, dark ventricle included (measured: 0.993)
    assert (m & ~b).sum() / b.sum() < 0.05  # and nothing else (measured: 0.0)
    # an already skull-stripped image: the mask is the brain, not a shrunken core of it
    stripped = _ijk(masks.brain_mask(sitk.Mask(head, brain))) > 0
    assert 2 * (stripped & b).sum() / (stripped.sum() + b.sum()) > 0.97  # measured: 0.9999
    with pytest.raises(ValueError, match="opening_mm"):
        masks.brain_mask(head, opening_mm=0)




def test_no_brain_reason_by_volume_and_width():
    """A 130 mm wide head passes; a 40 mm wide column of 60 mL (a spine) and a 10 mL speck do not."""
    def mask(shape, spacing, fill):
        array = np.zeros(shape[::-1], np.uint8)  # (k, j, i)
        fill(array)
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        return image

    z, y, x = np.mgrid[0:60, 0:80, 0:70]
    head = mask((70, 80, 60), (2.0, 2.0, 2.0),
                lambda a: a.__setitem__(((x - 35) / 32.5) ** 2 + ((y - 40) / 38) ** 2 + ((z - 30) / 28) ** 2 <= 1, 1))
    assert masks.no_brain_reason(head) is None
    column = mask((70, 80, 60), (2.0, 2.0, 2.0), lambda a: a.__setitem__((slice(0, 60), slice(20, 60), slice(25, 45)), 1))
    assert "wide from left to right" in masks.no_brain_reason(column)
    speck = mask((70, 80, 60), (2.0, 2.0, 2.0), lambda a: a.__setitem__((slice(0, 10), slice(0, 10), slice(0, 12)), 1))
    assert "mL, outside" in masks.no_brain_reason(speck)
