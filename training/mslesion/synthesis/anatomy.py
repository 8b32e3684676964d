"""The anatomy of a canvas: tissue classes of the FreeSurfer / SynthSeg label values, the label maps
registered to the template grid like an app input (:func:`register_label_map`), and the random affine
plus smooth nonlinear deformation applied to them (:func:`random_coordinates`, :func:`deform_labels`)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from training.common.paths import ROOT
from training.mslesion.synthesis.fields import _u, smooth_field

LOGGER = logging.getLogger(__name__)

#: FreeSurfer / SynthSeg label values of each tissue class, for both kinds of maps (``training_seg_*``
#: with both hemispheres and 5xx extra-cerebral labels; ``subject*`` with merged hemispheres, 165 skull,
#: 258 other head tissue, 259 eyes). The 5xx labels are not named in the label table; their class is
#: read from their place in ``training_seg_01``: 506 eyes, 515 the skull shell, 509/512 the nasal
#: cavity and airway, the rest (scalp, muscle, fat, marrow, optic nerves) soft tissue. 25/57 (FreeSurfer
#: "lesion") are rendered as white matter: they are not the lesions of the target. Unlisted labels
#: are rendered as soft tissue.
TISSUES = {
    "wm": (2, 41, 7, 46, 16, 28, 60, 85, 25, 57, 77),
    "gm": (3, 42, 8, 47, 17, 53, 18, 54),
    "deep_gm": (10, 49, 11, 50, 12, 51, 26, 58),
    "pallidum": (13, 52),
    "csf": (4, 43, 5, 44, 14, 15, 24, 72),
    "choroid": (31, 63, 136, 137, 163, 164),
    "vessel": (30, 62),
    "eye": (506, 259),
    "bone": (165, 515),
    "air": (509, 512),
    "soft": (258, 502, 507, 508, 511, 514, 516, 530),
}
#: Cerebral and cerebellar white matter and brainstem: where lesions are kept.
LESION_WM_LABELS = (2, 41, 7, 46, 16, 25, 57, 77)
LATERAL_VENTRICLES = (4, 43)
CORTEX = (3, 42)
SULCAL_CSF = (24,)
MIDLINE_CSF = (14, 15)  # 3rd and 4th ventricles (CSF flow)
#: The brain (what a skull stripping keeps): every class inside the pia, without the outer CSF (24).
BRAIN_CLASSES = ("wm", "gm", "deep_gm", "pallidum", "csf", "choroid", "vessel")
#: Lesion components are coded into the label map as ``LESION_CODE + k`` while it is deformed.
LESION_CODE = 10000


def _lut(labels_by_class: dict, size: int, classes) -> np.ndarray:
    lut = np.zeros(size, bool)
    for c in classes:
        for v in labels_by_class[c]:
            if v < size:
                lut[v] = True
    return lut


def _label_lut(values, size: int) -> np.ndarray:
    lut = np.zeros(size, bool)
    lut[[v for v in values if v < size]] = True
    return lut


def random_coordinates(shape, rng, cfg: dict) -> np.ndarray:
    """Source coordinates ``(3, X, Y, Z)`` (voxels, float32) of a random small affine plus a smooth
    nonlinear deformation: ``src(x) = A (x - c) + c + t + u(x)``.

    ``c`` is the grid centre; ``A = R S H`` with rotations ``U(+-rotation_deg)`` about each axis, scales
    ``1 + U(+-scale)`` and shears ``U(+-shear)``; ``t ~ U(+-translation_mm)`` per axis; with probability
    ``nonlinear_probability`` ``u`` is three :func:`smooth_field` components (control points every
    ``nonlinear_spacing_mm``) scaled to an RMS displacement ``|u|`` of ``U(nonlinear_rms_mm)`` mm.
    """
    shape = tuple(shape)
    ang = np.deg2rad(rng.uniform(-cfg["rotation_deg"], cfg["rotation_deg"], 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rot = (np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]))
    shear = np.eye(3)
    shear[np.triu_indices(3, 1)] = rng.uniform(-cfg["shear"], cfg["shear"], 3)
    a = rot @ np.diag(1 + rng.uniform(-cfg["scale"], cfg["scale"], 3)) @ shear
    t = rng.uniform(-cfg["translation_mm"], cfg["translation_mm"], 3)
    c = (np.asarray(shape) - 1) / 2.0
    grids = [(np.arange(n, dtype=np.float32) - c[i]).reshape([-1 if j == i else 1 for j in range(3)])
             for i, n in enumerate(shape)]
    coords = np.empty((3,) + shape, np.float32)
    for i in range(3):
        coords[i] = c[i] + t[i] + a[i, 0] * grids[0] + a[i, 1] * grids[1] + a[i, 2] * grids[2]
    if rng.random() < cfg["nonlinear_probability"]:
        u = np.stack([smooth_field(shape, cfg["nonlinear_spacing_mm"], rng) for _ in range(3)])
        u *= _u(rng, cfg["nonlinear_rms_mm"]) / (float(np.sqrt((u ** 2).sum(0).mean())) + 1e-6)
        coords += u
    return coords


def deform_labels(labels: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``labels`` (integer, ``(X, Y, Z)``) at the source coordinates ``coords`` by nearest neighbour (0 outside)."""
    return ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0, prefilter=False,
                                   output=labels.dtype)


def _t1_like(labels: np.ndarray) -> np.ndarray:
    """A skull-stripped T1-like float32 image of a label map (WM 1.0 > deep GM > GM 0.6 > CSF 0.15, 0 outside
    the brain), the image the registration sees."""
    size = int(labels.max()) + 1
    values = {"wm": 1.0, "deep_gm": 0.75, "pallidum": 0.85, "gm": 0.6, "choroid": 0.5, "vessel": 0.3, "csf": 0.15}
    lut = np.zeros(size, np.float32)
    for c, v in values.items():
        for lab in TISSUES[c]:
            if lab < size:
                lut[lab] = v
    lut[[v for v in SULCAL_CSF if v < size]] = 0.15
    return lut[labels]


def register_label_map(path: Path, cache: Path) -> np.ndarray:
    """A whole-head label map on the template grid: uint16 ``(X, Y, Z)`` (RAS, 1 mm), cached as
    ``cache/labelmaps/<stem>.npy`` with the transform (``.tfm``) and the timings (``.json``).

    The map is registered the way the app registers an input: a skull-stripped T1-like image rendered
    from its labels (:func:`_t1_like`) goes through
    :func:`bids_app.imaging.template_space.to_template_space` (no N4: the image has no bias), i.e.
    its brain mask matched affinely to the template brain mask, then a rigid mutual-information step
    against the template T1w, all single-threaded. The synthetic anatomy so lands on the template with
    the residual misalignment an app input has. The labels are then resampled by nearest neighbour
    through that transform.
    """
    import SimpleITK as sitk

    from bids_app.imaging import templates
    from bids_app.imaging.grid import resample_to
    from bids_app.imaging.template_space import to_template_space

    out_dir = cache / "labelmaps"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(path).name.replace(".nii.gz", "")
    f = out_dir / f"{stem}.npy"
    if f.exists():
        return np.load(f)
    t0 = time.perf_counter()
    img = sitk.ReadImage(str(path))
    arr = np.rint(sitk.GetArrayFromImage(img)).astype(np.uint16)  # (k, j, i); some maps are float32
    labels = sitk.GetImageFromArray(arr)
    labels.CopyInformation(img)
    t1 = sitk.GetImageFromArray(_t1_like(arr))
    t1.CopyInformation(img)
    tpl_img = sitk.ReadImage(str(templates.get_template_file("T1w")))
    tpl_mask = sitk.ReadImage(str(templates.get_template_file("mask", desc="brain")))
    tsi = to_template_space(t1, tpl_img, tpl_mask, bias_correction=False, threads=1)
    warped = resample_to(labels, tpl_img, tsi.transform, "nearest", 0, threads=1)
    out = np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(warped), (2, 1, 0))).astype(np.uint16)
    np.save(f, out)
    sitk.WriteTransform(tsi.transform, str(out_dir / f"{stem}.tfm"))
    seconds = {"registration": round(tsi.seconds["registration"], 1), "total": round(time.perf_counter() - t0, 1)}
    (out_dir / f"{stem}.json").write_text(json.dumps(seconds))
    LOGGER.info("%s registered to the template in %.1f s (%.1f s in all)", stem, seconds["registration"],
                seconds["total"])
    return out


def label_map_paths(cfg: dict) -> list[Path]:
    """The label maps of ``cfg["label_maps"]`` (relative to the repository root), sorted."""
    folder = Path(cfg["label_maps"])
    folder = folder if folder.is_absolute() else ROOT / folder
    paths = sorted(p for p in folder.glob("*.nii.gz"))
    if not paths:
        raise FileNotFoundError(f"no label maps (*.nii.gz) in {folder}; set synthesis.label_maps")
    return paths
