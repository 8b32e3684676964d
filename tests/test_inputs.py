"""Tests of :mod:`bids_app.inputs`: each check is triggered by a small, really broken file."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app import inputs
from bids_app.errors import NeurosegError
from bids_app.inputs import InputImageError, check_header, load_checked

NAME = "sub-01_T2w.nii.gz"


def _volume(shape=(8, 8, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32) + 1.0


def _save(tmp_path: Path, data: np.ndarray | None = None, name: str = NAME, affine=None) -> Path:
    data = _volume() if data is None else data
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _refused(path: Path, *words: str, load: bool = False) -> str:
    with pytest.raises(InputImageError) as info:
        (load_checked if load else check_header)(path)
    message = str(info.value)
    assert path.name in message
    for word in words:
        assert word in message, message
    assert message.count("\n") == 0
    return message


# ------------------------------------------------------------------------------ a normal image passes


def test_error_class_and_constants():
    assert issubclass(InputImageError, NeurosegError)
    assert InputImageError.exit_code == 5
    assert (inputs.MIN_VOXELS_PER_AXIS, inputs.MIN_VOXEL_MM, inputs.MAX_VOXEL_MM) == (3, 0.05, 40.0)
    assert (inputs.QFORM_SFORM_TOLERANCE_MM, inputs.MAX_NONFINITE_FRACTION) == (1.0, 0.5)


@pytest.mark.parametrize(
    ("shape", "name"),
    [((8, 8, 8), NAME), ((8, 8, 8), "sub-01_T2w.nii"), ((8, 8, 8, 1), NAME), ((8, 8, 8, 1, 1), NAME)],
)
def test_normal_image_passes(tmp_path, caplog, shape, name):
    values = _volume(shape)
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = (-10, 20, 5)
    img = nib.Nifti1Image(values, affine)
    img.set_qform(affine, code=1)
    path = tmp_path / name
    nib.save(img, path)

    assert check_header(path).shape == shape
    with caplog.at_level(logging.WARNING, logger="bids_app.inputs"):
        image, data = load_checked(path)
    assert not caplog.records
    assert data.dtype == np.float32 and data.shape == (8, 8, 8)
    np.testing.assert_array_equal(data, values.reshape(8, 8, 8))
    assert image.shape == (8, 8, 8) and image.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), data)
    np.testing.assert_allclose(image.affine, affine)
    np.testing.assert_allclose(image.header.get_qform(), affine, atol=1e-5)
    assert image.header["qform_code"] == 1 and image.header["sform_code"] == 2
    # the returned image can be written and read back
    nib.save(image, tmp_path / "copy.nii.gz")
    np.testing.assert_array_equal(nib.load(tmp_path / "copy.nii.gz").get_fdata(), data)


def test_scaled_integer_image_is_read_as_float(tmp_path):
    values = np.arange(512, dtype=np.int16).reshape(8, 8, 8)
    img = nib.Nifti1Image(values, np.eye(4))
    img.set_data_dtype(np.int16)
    img.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / NAME
    nib.save(img, path)
    _, data = load_checked(path)
    assert data.dtype == np.float32
    np.testing.assert_allclose(data, nib.load(path).get_fdata(), rtol=1e-6)


# -------------------------------------------------------------------------------------- unreadable


def test_plain_bytes_named_nii_gz(tmp_path):
    path = tmp_path / NAME
    path.write_bytes(b"this is not an image at all " * 40)
    _refused(path, "cannot be read as a NIfTI image", "not gzip-compressed", "dcm2niix")


def test_uncompressed_nifti_named_nii_gz(tmp_path):
    plain = _save(tmp_path, name="plain.nii")
    path = tmp_path / NAME
    path.write_bytes(plain.read_bytes())
    _refused(path, "cannot be read as a NIfTI image", "not gzip-compressed")


def test_gzip_named_nii(tmp_path):
    packed = _save(tmp_path)
    path = tmp_path / "sub-01_T2w.nii"
    path.write_bytes(packed.read_bytes())
    _refused(path, "cannot be read as a NIfTI image", "gzip-compressed but named .nii")


def test_empty_file(tmp_path):
    path = tmp_path / NAME
    path.write_bytes(b"")
    _refused(path, "cannot be read as a NIfTI image", "empty")


@pytest.mark.parametrize("name", [NAME, "sub-01_T2w.nii"])
def test_random_bytes(tmp_path, name):
    raw = np.random.default_rng(1).bytes(2000)
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    _refused(path, "cannot be read as a NIfTI image", "no valid NIfTI header")


def test_header_itself_truncated(tmp_path):
    raw = _save(tmp_path, name="full.nii").read_bytes()
    path = tmp_path / NAME
    path.write_bytes(gzip.compress(raw[:200]))  # a valid gzip stream holding only 200 header bytes
    _refused(path, "cannot be read as a NIfTI image")


def test_missing_file(tmp_path):
    _refused(tmp_path / NAME, "cannot be opened", "exists")


def test_not_nifti_format(tmp_path):
    path = tmp_path / "sub-01_T2w.mgz"
    nib.save(nib.MGHImage(_volume(), np.eye(4)), path)
    _refused(path, "MGHImage", "not a single-file NIfTI")


# ---------------------------------------------------------------------------- truncated voxel data


def test_truncated_nii_gz_passes_header_check_but_not_load(tmp_path):
    path = _save(tmp_path, _volume((16, 16, 16)))  # random floats: the gzip stream is ~16 kB
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    img = check_header(path)  # header only: the missing half of the data is not noticed
    assert img.shape == (16, 16, 16)
    _refused(path, "truncated or corrupt", "copy or convert it again", load=True)


def test_gzip_with_header_but_short_data(tmp_path):
    raw = _save(tmp_path, name="full.nii").read_bytes()
    path = tmp_path / NAME
    path.write_bytes(gzip.compress(raw[:1000]))  # complete gzip stream, data cut short
    check_header(path)
    _refused(path, "truncated or corrupt", load=True)


def test_truncated_uncompressed_nii_found_from_file_size(tmp_path):
    path = _save(tmp_path, name="sub-01_T2w.nii")
    path.write_bytes(path.read_bytes()[:1000])
    _refused(path, "truncated or corrupt", "2400 bytes", "has 1000")


# ------------------------------------------------------------------------------------------- shape


def test_4d_with_several_volumes(tmp_path):
    path = _save(tmp_path, _volume((8, 8, 8, 3)))
    _refused(path, "4D with 3 volumes", "8x8x8x3", "fslroi")


def test_5d_with_non_singleton_extra_dimension(tmp_path):
    path = _save(tmp_path, _volume((8, 8, 8, 1, 2)))
    _refused(path, "5 dimensions", "single 3D volume")


def test_2d_image(tmp_path):
    path = _save(tmp_path, _volume((8, 8)))
    _refused(path, "is 2D", "not a 3D volume")


def test_a_thick_2d_acquisition_of_one_or_two_slices_is_accepted(tmp_path):
    """sub-unf02's T2starw on bids-dev is 45 x 45 x 2 (37.5 mm slices): a real 2D acquisition, which
    the slice-by-slice cord model can segment."""
    for shape in ((8, 8, 1), (2, 8, 8)):
        check_header(_save(tmp_path, _volume(shape)))


def test_a_line_of_voxels_is_refused(tmp_path):
    path = _save(tmp_path, _volume((8, 1, 2)))
    _refused(path, "only 1 along its second axis and 2 along its third axis", "at least 3")


def test_zero_size_dimension(tmp_path):
    path = _save(tmp_path, np.zeros((8, 0, 8), dtype=np.float32))
    assert nib.load(path).shape == (8, 0, 8)
    _refused(path, "zero-size dimension", "8x0x8")


def test_negative_dimension(tmp_path):
    path = _save(tmp_path, name="sub-01_T2w.nii")
    raw = bytearray(path.read_bytes())
    struct.pack_into("<h", raw, 42, -8)  # dim[1]
    path.write_bytes(bytes(raw))
    _refused(path, "negative dimension")


def test_complex_voxels(tmp_path):
    path = _save(tmp_path, (_volume() + 1j * _volume()).astype(np.complex64))
    _refused(path, "complex64", "not as real numbers")


# -------------------------------------------------------------------------------------- voxel size


@pytest.mark.parametrize("size", [50.0, 0.001])
def test_voxel_size_out_of_range(tmp_path, size):
    img = nib.Nifti1Image(_volume(), np.eye(4))
    img.header.set_zooms((size, 1.0, 1.0))
    path = tmp_path / NAME
    nib.save(img, path)
    assert nib.load(path).header.get_zooms()[0] == pytest.approx(size)
    _refused(path, f"{size:g} x 1 x 1 mm", "0.05-40 mm", "units", "xyzt_units")


def test_voxel_size_not_finite(tmp_path):
    img = nib.Nifti1Image(_volume(), np.eye(4))
    img.header["pixdim"][2] = np.nan
    path = tmp_path / NAME
    nib.save(img, path)
    _refused(path, "1 x nan x 1 mm")


def test_affine_voxel_size_in_metres(tmp_path):
    path = _save(tmp_path, affine=np.diag([0.001, 0.001, 0.001, 1.0]))  # pixdim follows: refused first
    _refused(path, "0.001 x 0.001 x 0.001 mm")
    img = nib.Nifti1Image(_volume(), np.eye(4))
    img.set_sform(np.diag([0.001, 0.001, 0.001, 1.0]), code=1)  # pixdim stays 1 mm
    nib.save(img, path)
    _refused(path, "affine (sform)", "0.001 x 0.001 x 0.001 mm")


# ------------------------------------------------------------------------------------------ affine


def test_non_invertible_sform(tmp_path):
    affine = np.eye(4)
    affine[1, :3] = 0.0
    img = nib.Nifti1Image(_volume(), np.eye(4))
    img.set_sform(affine, code=1)
    path = tmp_path / NAME
    nib.save(img, path)
    _refused(path, "non-invertible affine (its sform orientation matrix")


def test_non_finite_sform(tmp_path):
    affine = np.eye(4)
    affine[0, 3] = np.nan
    img = nib.Nifti1Image(_volume(), np.eye(4))
    img.set_sform(affine, code=1)
    path = tmp_path / NAME
    nib.save(img, path)
    _refused(path, "non-finite affine")


def test_qform_and_sform_disagree(tmp_path):
    img = nib.Nifti1Image(_volume(), np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    img.set_qform(shifted, code=1)
    path = tmp_path / NAME
    nib.save(img, path)
    _refused(path, "qform and an sform that disagree by 5.0 mm", "fslorient -copysform2qform", "set_qform")


def test_qform_and_sform_within_tolerance_pass(tmp_path):
    img = nib.Nifti1Image(_volume(), np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    img.set_qform(shifted, code=1)
    path = tmp_path / NAME
    nib.save(img, path)
    check_header(path)


def test_unusable_qform(tmp_path):
    img = nib.Nifti1Image(_volume(), np.eye(4))
    img.set_qform(np.eye(4), code=1)
    img.header["quatern_b"] = np.nan
    path = tmp_path / NAME
    nib.save(img, path)
    _refused(path, "disagree by an unknown amount")


# ------------------------------------------------------------------------------------------ voxels


def test_few_non_finite_voxels_become_zero_with_a_warning(tmp_path, caplog):
    values = _volume()
    values[0, 0, 0] = np.nan
    values[1, 2, 3] = np.inf
    values[4, 4, 4] = -np.inf
    path = _save(tmp_path, values)
    with caplog.at_level(logging.WARNING, logger="bids_app.inputs"):
        image, data = load_checked(path)
    assert data[0, 0, 0] == 0 and data[1, 2, 3] == 0 and data[4, 4, 4] == 0
    assert np.all(np.isfinite(data)) and np.all(np.isfinite(np.asanyarray(image.dataobj)))
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert NAME in record.getMessage() and "3 NaN/Inf voxels" in record.getMessage()
    assert "treated as 0" in record.getMessage()


def test_all_nan_image(tmp_path):
    path = _save(tmp_path, np.full((8, 8, 8), np.nan, dtype=np.float32))
    _refused(path, "512 NaN/Inf voxels", "100.0 %", "more than 50 %", load=True)


def test_mostly_nan_image(tmp_path):
    values = _volume()
    values[:5] = np.nan  # 5/8 of the voxels
    path = _save(tmp_path, values)
    _refused(path, "320 NaN/Inf voxels", "62.5 %", load=True)


def test_all_zero_image(tmp_path):
    path = _save(tmp_path, np.zeros((8, 8, 8), dtype=np.float32))
    check_header(path)
    _refused(path, "contains no signal (every voxel is 0)", load=True)


def test_constant_image_with_some_nan(tmp_path):
    values = np.full((8, 8, 8), 7.0, dtype=np.float32)
    values[0] = np.nan
    path = _save(tmp_path, values)
    _refused(path, "contains no signal (every voxel is 7)", load=True)
