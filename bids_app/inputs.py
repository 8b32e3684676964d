"""Checks on an input NIfTI image before neuroseg processes it: plain functions, no Nipype, no torch.

Each problem raises :class:`InputImageError` with one sentence that names the file, says what is
wrong with it and what the user should do. Two entry points:

* :func:`check_header` reads the header only (never the voxel data), so it is cheap enough to run
  on every image of a 200-participant dataset in the main process. It returns the lazy image.
* :func:`load_checked` runs :func:`check_header`, then reads the voxels as float32 and checks them.

Checks and their limits
-----------------------
Header (:func:`check_header`), in this order:

1. **Readable.** The file exists, is not empty (0 bytes), is gzip-compressed if it is named
   ``*.gz``, and nibabel can parse its header as NIfTI-1 or NIfTI-2 (Analyze, MGH, ... are refused).
2. **One 3D volume.** At least 3 dimensions; a 4th dimension must have a single volume and any
   5th-7th dimension must have size 1 (callers squeeze those singleton dimensions away).
3. **No empty dimension.** Every dimension is > 0 voxels (0 or negative means a damaged header).
4. **Not a single line of voxels.** At least :data:`MIN_VOXELS_PER_AXIS` (3) voxels along two of the 3 spatial
   axes; the third may hold 1 or 2 slices (a thick 2D acquisition: the cord model works slice by slice).
5. **Real voxel type.** Voxels are stored as bool, integers or floats (complex and RGB are refused).
6. **Voxel size** (``header.get_zooms()[:3]``, the pixdim) is finite and within
   [:data:`MIN_VOXEL_MM`, :data:`MAX_VOXEL_MM`] = [0.05, 40.0] mm along each axis.
7. **Affine** (``img.affine``, the sform if set, else the qform): all 16 entries finite and its 3x3
   part invertible, i.e. its condition number (largest / smallest singular value) is at most
   :data:`AFFINE_MAX_CONDITION` (1e8). The voxel size it implies (norms of its 3 columns) must also
   lie within [0.05, 40.0] mm.
8. **qform and sform agree** when both are set (codes > 0): the 8 corners of the field of view
   (voxel edges, i.e. indices -0.5 and n - 0.5) mapped by each are at most
   :data:`QFORM_SFORM_TOLERANCE_MM` (1.0 mm) apart.
9. **Complete file** (uncompressed ``.nii`` only, from the file size, without reading the data):
   the file holds at least ``vox_offset + voxels x bytes per voxel`` bytes. A ``.nii.gz`` can only
   be found truncated by decompressing it, which :func:`load_checked` does.

Voxel data (:func:`load_checked`):

10. **Readable data.** The voxels decompress and read completely (a truncated or corrupt file fails).
11. **Finite voxels.** If more than :data:`MAX_NONFINITE_FRACTION` (0.5, i.e. 50 %) of the voxels
    are NaN or +/-Inf the image is refused; otherwise they are set to 0 and one warning is logged.
12. **Some signal.** The finite voxels are not all equal (e.g. an all-zero image is refused).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from numpy.typing import NDArray

from bids_app.errors import NeurosegError

LOGGER = logging.getLogger(__name__)

#: Fewest voxels accepted along two of the 3 spatial axes (the third may hold 1 or 2 slices).
MIN_VOXELS_PER_AXIS = 3
#: Smallest accepted voxel size along any axis, in mm (smaller suggests micrometres or wrong units).
MIN_VOXEL_MM = 0.05
#: Largest accepted voxel size along any axis, in mm (larger suggests metres or wrong units). Real
#: thick-slab acquisitions reach far beyond 12 mm: 17 mm (sub-sct01's axial MT-on/MT-off PDw, which the
#: cord model segments) and 37.5 mm (sub-unf02's T2starw) on bids-dev; a unit error is a factor 10-1000.
MAX_VOXEL_MM = 40.0
#: Largest accepted condition number of the affine's 3x3 part (dimensionless); above is "non-invertible".
AFFINE_MAX_CONDITION = 1e8
#: Largest accepted distance between the qform and the sform positions of a field-of-view corner, in mm.
QFORM_SFORM_TOLERANCE_MM = 1.0
#: Largest accepted fraction (0-1) of NaN/Inf voxels; up to it they are replaced by 0 with a warning.
MAX_NONFINITE_FRACTION = 0.5

_GZIP_MAGIC = b"\x1f\x8b"
_AXIS_NAMES = ("first", "second", "third")
# What nibabel, gzip and zlib raise on a damaged file.
_READ_ERRORS = (OSError, gzip.BadGzipFile, EOFError, zlib.error, ImageFileError, HeaderDataError, ValueError)


class InputImageError(NeurosegError):
    """An input image cannot be processed; the message says which file, why, and what to do."""

    exit_code = 5


def check_header(path: Path) -> nib.Nifti1Image:
    """Check the header of the NIfTI image at ``path`` without reading its voxel data.

    Returns the (lazy) image as loaded by ``nib.load``; it may still be 4D or more with singleton
    extra dimensions. Raises :class:`InputImageError` for any problem listed in the module docstring
    (checks 1-9).
    """
    path = Path(path)
    name = path.name
    img = _open(path)
    header = img.header
    shape = tuple(int(n) for n in img.shape)
    _check_shape(name, shape)
    _check_dtype(name, img)
    _check_zooms(name, header)
    _check_affine(name, img)
    _check_qform_sform(name, header, shape)
    _check_file_size(path, img, shape)
    return img


def load_checked(path: Path) -> tuple[nib.Nifti1Image, NDArray[np.float32]]:
    """Check the image at ``path`` (header, then voxels) and return it with its data as float32.

    Returns ``(image, data)``: ``data`` is a 3D float32 array (a single-volume 4D image is squeezed)
    in which NaN/Inf voxels were replaced by 0, and ``image`` is a 3D image of the same class,
    affine and header (qform, sform, units) holding ``data``. Raises :class:`InputImageError`
    for any problem listed in the module docstring (checks 1-12).
    """
    image, data, _ = _load_checked(Path(path))
    return image, data


def _load_checked(path: Path) -> tuple[nib.Nifti1Image, NDArray[np.float32], int]:
    """:func:`load_checked` plus the number of NaN/Inf voxels that were set to 0."""
    name = path.name
    img = check_header(path)
    try:
        # Overflow of huge float64 values into float32 becomes Inf, which is counted below.
        with np.errstate(over="ignore", invalid="ignore"):
            data = np.asarray(img.dataobj, dtype=np.float32)
    except _READ_ERRORS as exc:
        raise InputImageError(
            f"{name} is truncated or corrupt ({_reason(exc, path)}); copy or convert it again."
        ) from exc
    data = data.reshape(img.shape[:3])
    if not data.flags.writeable or not data.flags.c_contiguous:
        data = np.array(data, dtype=np.float32, order="C")

    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    if n_bad:
        percent = 100.0 * n_bad / data.size
        if n_bad > MAX_NONFINITE_FRACTION * data.size:
            raise InputImageError(
                f"{name} has {n_bad} NaN/Inf voxels ({percent:.1f} % of the image, more than "
                f"{100 * MAX_NONFINITE_FRACTION:g} % allowed); check the conversion or the "
                "processing step that produced it and export it again."
            )
        data[~finite] = 0.0
        LOGGER.warning("%s has %d NaN/Inf voxels (%.2g %%); they are treated as 0.", name, n_bad, percent)
    low = float(np.min(data, where=finite, initial=np.inf))
    high = float(np.max(data, where=finite, initial=-np.inf))
    if low == high:
        raise InputImageError(
            f"{name} contains no signal (every voxel is {low:g}); check that it is the right file "
            "and convert it again from the scanner data."
        )

    out = type(img)(data, img.affine, img.header)
    out.set_data_dtype(np.float32)
    out.header.set_slope_inter(None, None)
    return out, data, n_bad


# ---------------------------------------------------------------------------------------- helpers


def _reason(exc: BaseException, path: Path) -> str:
    """A short, one-line reason from a read error, naming the file by its name only."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.replace(str(path), path.name).replace(str(path.resolve()), path.name)
    if text.startswith("Cannot work out file type"):
        text = "no valid NIfTI header was found"
    if len(text) > 120:
        text = text[:117] + "..."
    return text


def _open(path: Path) -> nib.Nifti1Image:
    """``nib.load`` the header of ``path`` (check 1), with a precise reason when it fails."""
    name = path.name
    try:
        size = path.stat().st_size
        with path.open("rb") as stream:
            magic = stream.read(2)
    except OSError as exc:
        raise InputImageError(
            f"{name} cannot be opened ({exc.strerror or type(exc).__name__}); check that the file "
            "exists and is readable."
        ) from exc
    reason = None
    if size == 0:
        reason = "the file is empty (0 bytes)"
    elif path.name.endswith(".gz") and magic != _GZIP_MAGIC:
        reason = "it is named .gz but is not gzip-compressed"
    elif path.name.endswith(".nii") and magic == _GZIP_MAGIC:
        reason = "it is gzip-compressed but named .nii instead of .nii.gz"
    if reason is None:
        try:
            img = nib.load(path, mmap=False)
            _ = img.shape, img.affine, img.header.get_zooms()
        except _READ_ERRORS as exc:
            reason = _reason(exc, path)
    if reason is not None:
        raise InputImageError(
            f"{name} cannot be read as a NIfTI image ({reason}); re-export or re-convert it "
            "(e.g. with dcm2niix)."
        )
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image is a subclass and is accepted
        raise InputImageError(
            f"{name} is a {type(img).__name__}, not a single-file NIfTI image; convert it to "
            "NIfTI (.nii.gz), e.g. with dcm2niix or mri_convert."
        )
    return img


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def _check_shape(name: str, shape: tuple[int, ...]) -> None:
    """Checks 2-4: one 3D volume, no empty dimension, at least MIN_VOXELS_PER_AXIS along two spatial axes."""
    ndim = len(shape)
    text = _shape_text(shape)
    if ndim < 3:
        raise InputImageError(
            f"{name} is {ndim}D (shape {text or 'none'}), not a 3D volume; convert the acquisition "
            "again as a 3D image."
        )
    if any(n < 0 for n in shape):
        raise InputImageError(
            f"{name} has a negative dimension in its header (shape {text}); the header is damaged, "
            "so re-export or re-convert the image."
        )
    if any(n == 0 for n in shape):
        raise InputImageError(
            f"{name} has a zero-size dimension (shape {text}), so it holds no voxels; re-export or "
            "re-convert the image."
        )
    if ndim == 4 and shape[3] > 1:
        raise InputImageError(
            f"{name} is 4D with {shape[3]} volumes (shape {text}) but neuroseg needs a single 3D "
            "volume; extract the volume you want (e.g. `fslroi in.nii.gz out.nii.gz 0 1`) or store "
            "each volume in its own file."
        )
    if ndim > 4 and any(n != 1 for n in shape[3:]):
        raise InputImageError(
            f"{name} has {ndim} dimensions (shape {text}) but neuroseg needs a single 3D volume; "
            "extract one 3D volume from it and save that instead."
        )
    thin = [axis for axis, n in enumerate(shape[:3]) if n < MIN_VOXELS_PER_AXIS]
    if len(thin) >= 2:  # one thin axis is a 2D acquisition's slice axis; two make a line of voxels
        names = " and ".join(f"{shape[axis]} along its {_AXIS_NAMES[axis]} axis" for axis in thin)
        raise InputImageError(
            f"{name} has only {names} (shape {text}) but neuroseg needs at least {MIN_VOXELS_PER_AXIS} "
            "voxels along two axes; use a 3D acquisition or the whole stack of slices."
        )


def _check_dtype(name: str, img: nib.Nifti1Image) -> None:
    """Check 5: real-valued scalar voxels."""
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InputImageError(
            f"{name} stores its voxels as {dtype} (complex or RGB), not as real numbers; convert "
            "it to a real-valued image (e.g. float32 magnitude or grey levels)."
        )


def _size_text(sizes: NDArray[np.float64]) -> str:
    return " x ".join(f"{s:g}" for s in sizes)


def _bad_sizes(sizes: NDArray[np.float64]) -> bool:
    finite = bool(np.all(np.isfinite(sizes)))
    return not finite or bool(np.any(sizes < MIN_VOXEL_MM) or np.any(sizes > MAX_VOXEL_MM))


def _check_zooms(name: str, header: nib.Nifti1Header) -> None:
    """Check 6: the header's voxel size (pixdim) is finite and in [MIN_VOXEL_MM, MAX_VOXEL_MM]."""
    zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
    if _bad_sizes(zooms):
        unit = header.get_xyzt_units()[0]
        raise InputImageError(
            f"{name} has a voxel size of {_size_text(zooms)} mm (header unit: {unit}), outside the "
            f"accepted range {MIN_VOXEL_MM:g}-{MAX_VOXEL_MM:g} mm per axis; the header's units are "
            "probably wrong (e.g. metres or micrometres), so fix its pixdim and xyzt_units "
            "(e.g. nibabel header.set_zooms and header.set_xyzt_units('mm'))."
        )


def _check_affine(name: str, img: nib.Nifti1Image) -> None:
    """Check 7: the affine is finite, invertible, and implies a voxel size in the accepted range."""
    header = img.header
    source = "sform" if header["sform_code"] > 0 else "qform" if header["qform_code"] > 0 else "pixdim"
    affine = np.asarray(img.affine, dtype=np.float64)
    fix = "fix the qform/sform of the header (e.g. re-convert the image with dcm2niix)"
    if not np.all(np.isfinite(affine)):
        raise InputImageError(
            f"{name} has a non-finite affine (its {source} orientation matrix contains NaN/Inf); {fix}."
        )
    singular = np.linalg.svd(affine[:3, :3], compute_uv=False)
    if singular[-1] <= 0 or singular[0] / singular[-1] > AFFINE_MAX_CONDITION:
        raise InputImageError(
            f"{name} has a non-invertible affine (its {source} orientation matrix maps the volume "
            f"onto a plane or line, condition number above {AFFINE_MAX_CONDITION:g}); {fix}."
        )
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    if _bad_sizes(sizes):
        raise InputImageError(
            f"{name} has an affine ({source}) whose voxel size is {_size_text(sizes)} mm, outside the "
            f"accepted range {MIN_VOXEL_MM:g}-{MAX_VOXEL_MM:g} mm per axis; the {source} is probably "
            f"in the wrong units (e.g. metres or micrometres), so {fix}."
        )


def _corners(shape: tuple[int, ...]) -> NDArray[np.float64]:
    """The 8 corners of the field of view (voxel edges) as a 4x8 homogeneous voxel-coordinate array."""
    edges = [(-0.5, n - 0.5) for n in shape[:3]]
    points = np.array([[i, j, k, 1.0] for i in edges[0] for j in edges[1] for k in edges[2]])
    return points.T


def _check_qform_sform(name: str, header: nib.Nifti1Header, shape: tuple[int, ...]) -> None:
    """Check 8: when both are set, the qform and the sform put the field of view at the same place."""
    if header["qform_code"] <= 0 or header["sform_code"] <= 0:
        return
    corners = _corners(shape)
    with np.errstate(invalid="ignore"):
        qform = np.asarray(header.get_qform(), dtype=np.float64)
        sform = np.asarray(header.get_sform(), dtype=np.float64)
        distance = np.linalg.norm((qform @ corners - sform @ corners)[:3], axis=0).max()
    if not np.isfinite(distance) or distance > QFORM_SFORM_TOLERANCE_MM:
        if np.isfinite(distance):
            by = f"{distance:.1f} mm"
        else:
            by = "an unknown amount (the qform has NaN/Inf entries)"
        raise InputImageError(
            f"{name} has a qform and an sform that disagree by {by} at the corners of the field of "
            f"view (at most {QFORM_SFORM_TOLERANCE_MM:g} mm allowed); check which one is right and "
            "make them agree, e.g. with `fslorient -copysform2qform` or nibabel "
            "`img.set_qform(img.get_sform())`."
        )


def _check_file_size(path: Path, img: nib.Nifti1Image, shape: tuple[int, ...]) -> None:
    """Check 9: an uncompressed file is long enough for its voxel data (from its size only)."""
    if path.name.endswith(".gz"):
        return
    # nibabel moves vox_offset from the loaded header into the (lazy) array proxy.
    offset = getattr(img.dataobj, "offset", None)
    offset = int(img.header.get_data_offset() if offset is None else offset)
    needed = offset + int(np.prod(shape)) * img.get_data_dtype().itemsize
    size = path.stat().st_size
    if size < needed:
        raise InputImageError(
            f"{path.name} is truncated or corrupt (its header announces {needed} bytes but the file "
            f"has {size}); copy or convert it again."
        )


def checked_path(path: Path, folder: Path) -> Path:
    """``path`` after :func:`load_checked`; when voxels had to be replaced (NaN/Inf set to 0), a
    cleaned copy written in ``folder`` is returned instead, for readers (SimpleITK) that take a file."""
    image, data, n_bad = _load_checked(Path(path))
    if not n_bad:
        return Path(path)
    cleaned = Path(folder) / f"{Path(path).name.split('.')[0]}_finite.nii.gz"
    nib.save(image, str(cleaned))
    return cleaned
