"""Tissue classes of the SynthSeg label maps and their Hounsfield units.

Label maps are integer arrays ``(X, Y, Z)`` with FreeSurfer/SynthSeg label values and a voxel -> world
(RAS+, mm) affine; both families of ``../shared/data/synthseg-label-maps`` are handled:

* ``training_seg_01..20``: both hemispheres, and extra-cerebral labels 5xx. Those have no FreeSurfer
  meaning here; they were identified by their position and neighbours (checked on ``training_seg_01``):
  502 paired neck/skull-base arteries (carotids, vertebrals), 506 eyes (globes), 507 generic soft
  tissue (scalp, muscles, face, neck), 508 extra-ocular muscles, 509 nasal mucosa and turbinates
  (bordering air), 511 skin (the outermost layer), 512 spinal cord (continuing the brainstem), 514 veins
  and dural sinuses (sigmoid sinuses, jugular veins), 515 cortical bone (skull, mandible, vertebrae),
  516 cancellous bone (diploe and marrow: 70 % of its border is 515), 530 intra-orbital optic nerves.
  136/137 and 163/164 border the left and right lateral ventricles and temporal horns: choroid plexus.
  25/57 (FreeSurfer "lesion") lie in periventricular white matter: white matter.
* ``subject01..19``: hemispheres merged (right structures carry the left labels), 31 choroid plexus,
  165 skull (whole bone; its interior deeper than ``cancellous_depth_mm`` becomes cancellous bone),
  258 all extra-cerebral soft tissue, 259 eyes.

Label 0 is air, outside the head and inside it (sinuses, airways, mastoid cells). A label the table
does not know is treated as soft tissue. The maps have no fat label: orbital fat is the generic soft
tissue within ``orbital_fat_mm`` of a globe, not anterior to the globes, and :func:`add_random_fat`
turns a random, smooth ``fat_fraction`` of the remaining generic soft tissue into fat per scan.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage


class HURange(NamedTuple):
    """A published (or, where said, generator-chosen) Hounsfield-unit range with its source."""
    low: float
    high: float
    source: str


_TEXTBOOK = "typical textbook range for unenhanced head CT (no single citation)"
_SCALE = ("Hounsfield scale definition (water 0 HU, air -1000 HU): Hounsfield GN, Computerized transverse "
          "axial scanning (tomography), Br J Radiol 1973;46:1016-1022")
_PARIZEL = ("Parizel PM et al., Intracranial hemorrhage: principles of CT and MRI interpretation, "
            "Eur Radiol 2001;11:1770-1783")

#: Tissue class -> per-scan HU range. Each scan draws one value per class uniformly in its range (the
#: random per-scan offset; grey matter follows white matter, :func:`tissue_values`), adds one calibration
#: offset common to all classes and clips back into the range.
TISSUE_HU: dict[str, HURange] = {
    "air": HURange(-1005.0, -995.0, _SCALE),
    "fat": HURange(-120.0, -80.0, _TEXTBOOK + ": fat about -100 HU"),
    "csf": HURange(0.0, 15.0, _TEXTBOOK + ": CSF close to water, 0-15 HU"),
    "ventricles": HURange(0.0, 15.0, _TEXTBOOK + ": ventricular CSF, as CSF"),
    "eyes": HURange(0.0, 20.0, _TEXTBOOK + ": vitreous close to water"),
    "choroid_plexus": HURange(20.0, 40.0, _TEXTBOOK + ": non-calcified choroid plexus slightly denser than CSF"),
    "gm": HURange(35.0, 45.0, _TEXTBOOK + ": grey matter ~35-45 HU"),
    "wm": HURange(20.0, 30.0, _TEXTBOOK + ": white matter ~20-30 HU"),
    "deep_gm": HURange(32.0, 42.0, _TEXTBOOK + ": basal ganglia and thalami, grey-matter-like"),
    "cerebellum": HURange(35.0, 45.0, _TEXTBOOK + ": cerebellar cortex, as grey matter"),
    "cerebellar_wm": HURange(20.0, 30.0, _TEXTBOOK + ": as white matter"),
    "brainstem": HURange(25.0, 35.0, _TEXTBOOK + ": mixed grey and white matter"),
    "spinal_cord": HURange(25.0, 40.0, _TEXTBOOK + ": as brainstem"),
    "vessels": HURange(35.0, 50.0, _TEXTBOOK + ": unclotted blood ~40 HU, haematocrit-dependent"),
    "soft_tissue": HURange(35.0, 60.0, _TEXTBOOK + ": muscle and skin ~35-60 HU"),
    "cancellous_bone": HURange(250.0, 700.0, _TEXTBOOK + ": cancellous bone, diploe"),
    "bone": HURange(700.0, 2000.0, _TEXTBOOK + ": cortical bone 700-2000 HU"),
    # not tissue classes of the label maps: painted by the bleed and calcification generators
    "blood_acute": HURange(50.0, 90.0, "acute clotted haematoma, hyperdense, about 50-90 HU (cf. " + _PARIZEL + ")"),
    "blood_subacute": HURange(30.0, 45.0, "subacute haematoma isodense to brain (cf. " + _PARIZEL + "); range "
                              "chosen to overlap grey and white matter"),
    "oedema": HURange(5.0, 25.0, _TEXTBOOK + ": perihaematomal oedema hypodense to parenchyma; range is a "
                      "generator choice below grey matter"),
    "calcification": HURange(100.0, 400.0, _TEXTBOOK + ": calcification above ~100 HU; range from issue 15"),
}

#: The tissue classes of a label map, in the order of the class indices of :func:`class_volume`.
CLASSES: tuple[str, ...] = ("air", "fat", "csf", "ventricles", "eyes", "choroid_plexus", "gm", "wm", "deep_gm",
                            "cerebellum", "cerebellar_wm", "brainstem", "spinal_cord", "vessels", "soft_tissue",
                            "cancellous_bone", "bone")
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}
#: Class indices ``BLEED_BASE + k`` mark bleed ``k`` while the anatomy is deformed (:mod:`.mass`); from
#: ``CALC_BASE`` on they are calcifications (one index per calcification, :mod:`.anatomy`).
BLEED_BASE = 150
CALC_BASE = 200

#: FreeSurfer/SynthSeg label values of each class (both map families; see the module docstring).
LABELS: dict[str, tuple[int, ...]] = {
    "air": (0,),
    "csf": (24,),
    "ventricles": (4, 43, 5, 44, 14, 15, 72),
    "eyes": (506, 259),
    "choroid_plexus": (31, 63, 136, 137, 163, 164),
    "gm": (3, 42, 17, 53, 18, 54),
    "wm": (2, 41, 25, 57, 77, 85),
    "deep_gm": (10, 49, 11, 50, 12, 51, 13, 52, 26, 58, 28, 60, 30, 62),
    "cerebellum": (8, 47),
    "cerebellar_wm": (7, 46),
    "brainstem": (16,),
    "spinal_cord": (512,),
    "vessels": (502, 514),
    "soft_tissue": (507, 508, 509, 511, 530, 258),
    "cancellous_bone": (516,),
    "bone": (515, 165),
}
#: Generic soft-tissue labels that may become fat (orbital fat, random fat).
GENERIC_SOFT = (507, 258)
PARENCHYMA = ("gm", "wm", "deep_gm", "cerebellum", "cerebellar_wm", "brainstem")
INTRACRANIAL = PARENCHYMA + ("csf", "ventricles", "choroid_plexus", "spinal_cord")


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths (mm) of an affine: the norms of its first three columns."""
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))


def class_volume(label_map: np.ndarray, voxel_mm, orbital_fat_mm: float, cancellous_depth_mm: float,
                 anterior_axis: np.ndarray) -> np.ndarray:
    """Class indices (uint8, :data:`CLASSES` order) of a label map ``(X, Y, Z)``.

    ``anterior_axis``: the world +y (anterior) direction in voxel index space (a 3-vector), to keep
    orbital fat behind the globes.
    """
    labels = np.asarray(label_map).astype(np.int32)
    lut = np.full(max(int(labels.max()) + 1, 600), CLASS_INDEX["soft_tissue"], np.uint8)
    for name, values in LABELS.items():
        lut[list(values)] = CLASS_INDEX[name]
    cls = lut[np.clip(labels, 0, None)]
    vox = np.asarray(voxel_mm, float)
    eyes = cls == CLASS_INDEX["eyes"]
    if eyes.any() and orbital_fat_mm > 0:
        pad = int(np.ceil(orbital_fat_mm / vox.min())) + 1
        box = bbox(eyes, pad)
        dist = ndimage.distance_transform_edt(~eyes[box], sampling=vox)
        grid = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"), -1)
        centre = np.argwhere(eyes).mean(axis=0)
        behind = (grid - centre) @ np.asarray(anterior_axis, float) <= 0
        near = (dist <= orbital_fat_mm) & behind & np.isin(labels[box], GENERIC_SOFT)
        cls[box][near] = CLASS_INDEX["fat"]
    bone = cls == CLASS_INDEX["bone"]
    if bone.any() and not (cls == CLASS_INDEX["cancellous_bone"]).any():
        depth = max(int(round(cancellous_depth_mm / vox.min())), 1)
        box = bbox(bone, 1)
        inner = ndimage.binary_erosion(bone[box], iterations=depth)
        cls[box][inner] = CLASS_INDEX["cancellous_bone"]
    return cls


def label_groups(label_map: np.ndarray, affine: np.ndarray | None = None, orbital_fat_mm: float = 10.0,
                 cancellous_depth_mm: float = 2.0) -> dict[str, np.ndarray]:
    """Boolean masks ``(X, Y, Z)``, one per tissue class (:data:`CLASSES`), of a SynthSeg label map.

    ``affine`` (voxel -> world RAS+ mm; identity when ``None``) gives the voxel size and the anterior
    direction used for orbital fat. How each label is mapped: :data:`LABELS` and the module docstring.
    """
    affine = np.eye(4) if affine is None else np.asarray(affine, float)
    anterior = np.linalg.inv(affine[:3, :3]) @ np.array([0.0, 1.0, 0.0])
    cls = class_volume(label_map, voxel_sizes(affine), orbital_fat_mm, cancellous_depth_mm, anterior)
    return {name: cls == i for i, name in enumerate(CLASSES)}


def bbox(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    """The bounding box of ``mask`` (not empty) grown by ``pad`` voxels (clipped to the array)."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(max(hit[0] - pad, 0)), int(min(hit[-1] + pad + 1, mask.shape[axis]))))
    return tuple(box)


def smooth_field(shape, rng: np.random.Generator, cell_vox) -> np.ndarray:
    """A smooth Gaussian random field ``shape`` (float32, zero mean, unit SD), correlated over about
    ``cell_vox`` voxels (a scalar or one per axis): coarse white noise, linearly upsampled."""
    cell = np.broadcast_to(np.maximum(np.asarray(cell_vox, float), 1.0), (len(shape),))
    coarse_shape = [int(np.ceil(s / c)) + 2 for s, c in zip(shape, cell)]
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), 0.6)
    field = ndimage.zoom(coarse, [(s + 2 * c) / n for s, c, n in zip(shape, cell, coarse_shape)], order=1,
                         grid_mode=False)
    field = field[tuple(slice(0, s) for s in shape)]
    sd = float(field.std())
    return ((field - field.mean()) / (sd if sd > 0 else 1.0)).astype(np.float32)


def add_random_fat(cls: np.ndarray, labels: np.ndarray, draws, cfg: dict, voxel_mm) -> None:
    """Turn a smooth random ``tissues.fat_fraction`` of the generic soft tissue into fat (in place)."""
    soft = (cls == CLASS_INDEX["soft_tissue"]) & np.isin(labels, GENERIC_SOFT)
    if not soft.any():
        return
    fraction = draws.uniform("tissues.fat_fraction", cfg["fat_fraction"])
    box = bbox(soft, 0)
    field = smooth_field(soft[box].shape, draws.rng, cfg["fat_cell_mm"] / np.asarray(voxel_mm, float))
    inside = soft[box]
    threshold = np.quantile(field[inside], 1.0 - fraction)
    sub = cls[box]
    sub[inside & (field > threshold)] = CLASS_INDEX["fat"]


#: Grey-matter classes whose HU is their white matter's plus the scan's grey-white contrast.
GREY_OF_WHITE = {"gm": "wm", "cerebellum": "cerebellar_wm"}


def tissue_values(draws, cfg: dict) -> dict[str, float]:
    """The per-scan HU of every class: uniform in its :data:`TISSUE_HU` range -- except grey matter and
    cerebellar cortex, which are their white matter plus a grey-white contrast ``gm_wm_contrast_hu``
    (6-14 HU, a generator choice: unenhanced CT shows about 10 HU; independent draws would give up to
    25), clipped into their range --, plus one calibration offset (``calibration_offset_hu``) for all
    classes but air, clipped back into the range."""
    offset = draws.uniform("tissues.calibration_offset_hu", cfg["calibration_offset_hu"])
    contrast = draws.uniform("tissues.gm_wm_contrast_hu", cfg["gm_wm_contrast_hu"])
    raw = {}
    for name in CLASSES:
        if name not in GREY_OF_WHITE:
            raw[name] = draws.uniform(f"tissue_hu.{name}", TISSUE_HU[name][:2])
    for grey, white in GREY_OF_WHITE.items():
        raw[grey] = float(np.clip(raw[white] + contrast, *TISSUE_HU[grey][:2]))
    values = {}
    for name in CLASSES:
        lo, hi, _ = TISSUE_HU[name]
        values[name] = float(np.clip(raw[name] + (offset if name != "air" else 0.0), lo, hi))
    draws.record("tissue_hu_final", values)
    return values


def paint_tissues(cls: np.ndarray, values: dict[str, float], calc_hu: dict[int, float], draws, cfg: dict,
                  voxel_mm) -> np.ndarray:
    """HU volume (float32, same shape as ``cls``): the class values, calcification values
    (``calc_hu``: class index -> HU) and a smooth texture (``tissues.texture_sd_hu``) in every tissue
    except air and bone."""
    lut = np.zeros(256, np.float32)
    for name, i in CLASS_INDEX.items():
        lut[i] = values[name]
    for i, hu in calc_hu.items():
        lut[i] = hu
    hu = lut[cls]
    sd = draws.uniform("tissues.texture_sd_hu", cfg["texture_sd_hu"])
    soft = (cls != CLASS_INDEX["air"]) & (cls != CLASS_INDEX["bone"]) & (cls < CALC_BASE)
    if sd > 0 and soft.any():
        box = bbox(soft, 0)
        field = smooth_field(soft[box].shape, draws.rng, cfg["texture_cell_mm"] / np.asarray(voxel_mm, float))
        sub = hu[box]
        sub[soft[box]] += sd * field[soft[box]]
    return hu
