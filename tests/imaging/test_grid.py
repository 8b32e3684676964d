"""Known-answer tests of bids_app.imaging.grid: reorientation to RAS+ and resampling (1 thread)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from bids_app.imaging import grid
from tests.imaging.phantoms import _ijk, _rotation

# ---------------------------------------------------------------------------------- reorientation
AFFINES = {
    # thick axial, flipped i and k, slight obliquity
    "axial_flipped_oblique": _rotation((0, 1, 0), 8) @ np.diag([-0.9, 0.9, -5.0]),
    # sagittal: i -> A, j -> -S, k -> R (a permutation with a flip)
    "sagittal": np.array([[0, 0, 4.0], [1.0, 0, 0], [0, -1.0, 0]]),
    # coronal with all axes flipped and a 12 degree obliquity
    "coronal_oblique": _rotation((1, 0.3, 0), 12) @ np.array([[-1.0, 0, 0], [0, 0, -3.0], [0, -1.0, 0]]),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_reorient_to_ras_matches_nibabel_canonical(tmp_path, name):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(7, 9, 11)).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = AFFINES[name]
    affine[:3, 3] = [12.5, -30.0, 7.0]
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    src = tmp_path / "in.nii.gz"
    nib.save(img, src)

    canonical = nib.as_closest_canonical(nib.load(src))
    out = grid.reorient_to_ras(sitk.ReadImage(str(src)))
    # in memory: same voxel array (sitk stores [k, j, i]) ...
    np.testing.assert_array_equal(_ijk(out), canonical.get_fdata(dtype=np.float32))
    # ... and written back, the same array and affine as nibabel's canonical image
    dst = tmp_path / "out.nii.gz"
    sitk.WriteImage(out, str(dst))
    back = nib.load(dst)
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), canonical.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(back.affine, canonical.affine, atol=1e-4)
    assert nib.aff2axcodes(back.affine) == ("R", "A", "S")
    # the test can fail: the ITK identity orientation ("LPS") is not nibabel's RAS+
    lps = sitk.DICOMOrient(sitk.ReadImage(str(src)), "LPS")
    assert not np.array_equal(_ijk(lps), canonical.get_fdata(dtype=np.float32))


def test_reorient_rejects_2d():
    with pytest.raises(ValueError, match="3D"):
        grid.reorient_to_ras(sitk.Image(8, 8, sitk.sitkFloat32))


# ------------------------------------------------------------------------------------ resampling
def test_resample_to_identity_and_types(phantom):
    img, labels = phantom
    same = grid.resample_to(img, img)
    np.testing.assert_allclose(_ijk(same), _ijk(img), atol=1e-4)
    assert same.GetPixelID() == sitk.sitkFloat32
    # nearest keeps integer labels; a 2 mm shift along i moves them by two voxels
    shift = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))
    moved = grid.resample_to(labels, labels, shift, "nearest")
    assert moved.GetPixelID() == labels.GetPixelID()
    np.testing.assert_array_equal(_ijk(moved)[:-2], _ijk(labels)[2:])
    assert _ijk(grid.resample_to(img, img, shift, "bspline", default=-1.0))[-1].min() == -1.0
    with pytest.raises(ValueError, match="interpolator"):
        grid.resample_to(img, img, interpolator="cubic")


