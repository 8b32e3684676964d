"""Haemorrhage measures of the ``ich`` task: plain functions on numpy arrays (numpy and scipy.ndimage only).

Arrays are ``(X, Y, Z)`` voxel arrays on one grid; ``zooms`` are its voxel sizes in mm. The app passes
:func:`effective_zooms` of the image's affine (the header's zooms unless the affine is sheared, as for a
gantry-tilted CT), so that a voxel's volume is ``|det(affine[:3, :3])|``.

Definitions
-----------
* Voxel volume (mm³) = ``zooms[0] * zooms[1] * zooms[2]``; 1 mL = 1000 mm³.
* Volume of a mask (mL) = number of voxels in the mask x voxel volume / 1000 (:func:`volume_ml`).
* Binary haemorrhage mask = ``probability >= threshold`` (:func:`binarise`), then every 26-connected
  component (voxels touching by a face, an edge or a corner) smaller than ``min_component_ml`` removed
  (:func:`remove_small_components`; a component of exactly ``min_component_ml`` is kept).
* Component count = number of 26-connected components of the final mask (:func:`component_count`).
* Type of a voxel = the bleed class ``k`` in 1..K with the largest class probability (class 0, background,
  is excluded: the type says *which* bleed, the probability says *whether*); the type map is the type
  inside the mask and 0 outside (:func:`type_map`).
* Volume per type (mL) = volume of the voxels of the type map with that value (:func:`type_volumes_ml`);
  the types' volumes add up to the total volume.
* Haemorrhage fraction (%) = 100 x total volume / intracranial volume (``n/a`` without intracranial volume).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

#: 26-connectivity in 3D: face, edge and corner neighbours.
CONNECTIVITY = np.ones((3, 3, 3), bool)


def effective_zooms(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) whose product is the true voxel volume ``|det(affine[:3, :3])|``: the lengths of the
    first two voxel axes and the spacing of the slices measured perpendicular to them. Equal to the header's
    zooms for an unsheared affine; smaller along the slices (by cos(tilt)) for a gantry-tilted CT, whose
    header zooms would overstate every volume."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    dx, dy = float(np.linalg.norm(a[:, 0])), float(np.linalg.norm(a[:, 1]))
    return dx, dy, float(abs(np.linalg.det(a))) / (dx * dy)


def voxel_volume_mm3(zooms: Sequence[float]) -> float:
    """Volume of one voxel in mm³: the product of the three voxel sizes (mm)."""
    return float(np.prod(np.asarray(zooms[:3], dtype=np.float64)))


def volume_ml(mask: np.ndarray, zooms: Sequence[float]) -> float:
    """Volume of the non-zero voxels of ``mask`` in mL: count x voxel volume (mm³) / 1000."""
    return int(np.count_nonzero(mask)) * voxel_volume_mm3(zooms) / 1000.0


def binarise(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask ``probability >= threshold`` (the threshold comes from the model's metadata)."""
    return np.asarray(probability) >= float(threshold)


def remove_small_components(mask: np.ndarray, zooms: Sequence[float], min_component_ml: float) -> np.ndarray:
    """``mask`` (bool) without its 26-connected components under ``min_component_ml`` mL (0 keeps all)."""
    mask = np.asarray(mask, bool)
    if min_component_ml <= 0 or not mask.any():
        return mask.copy()
    labels, n = ndimage.label(mask, structure=CONNECTIVITY)
    sizes_ml = np.bincount(labels.ravel(), minlength=n + 1) * voxel_volume_mm3(zooms) / 1000.0
    keep = sizes_ml >= float(min_component_ml)
    keep[0] = False
    return keep[labels]


def component_count(mask: np.ndarray) -> int:
    """Number of 26-connected components of the non-zero voxels of ``mask``."""
    return int(ndimage.label(np.asarray(mask) > 0, structure=CONNECTIVITY)[1])


def bleed_type(class_probabilities: np.ndarray) -> np.ndarray:
    """Type ``(X, Y, Z)`` uint8 in 1..K: argmax over classes 1..K of ``class_probabilities`` ``(K+1, X, Y, Z)``
    (class 0, background, left out; ties go to the lower class)."""
    probs = np.asarray(class_probabilities)
    return (np.argmax(probs[1:], axis=0) + 1).astype(np.uint8)


def type_map(mask: np.ndarray, types: np.ndarray) -> np.ndarray:
    """The type map: ``types`` (1..K) inside ``mask``, 0 outside; uint8."""
    return np.where(np.asarray(mask) > 0, np.asarray(types), 0).astype(np.uint8)


def type_volumes_ml(dseg: np.ndarray, zooms: Sequence[float], classes: Mapping[int, str]) -> dict[str, float]:
    """``{name: volume in mL}`` of each bleed type ``index: name`` of ``classes`` (index 0, background, is
    skipped) in the type map ``dseg``."""
    dseg = np.asarray(dseg)
    return {name: volume_ml(dseg == int(index), zooms) for index, name in sorted(classes.items()) if int(index) != 0}


def haemorrhage_measures(mask: np.ndarray, dseg: np.ndarray, zooms: Sequence[float], classes: Mapping[int, str],
                         intracranial_ml: float | None = None) -> dict[str, float | int | None]:
    """The per-image row: ``total_volume_ml``, ``<type>_volume_ml`` per type, ``component_count``,
    ``intracranial_volume_ml`` and ``haemorrhage_percent`` (definitions in the module docstring)."""
    total = volume_ml(mask, zooms)
    row: dict[str, float | int | None] = {"total_volume_ml": total}
    row.update({f"{name}_volume_ml": v for name, v in type_volumes_ml(dseg, zooms, classes).items()})
    row["component_count"] = component_count(mask)
    row["intracranial_volume_ml"] = intracranial_ml
    row["haemorrhage_percent"] = 100.0 * total / intracranial_ml if intracranial_ml else None
    return row


def classes_of(output_meta: Mapping) -> dict[int, str]:
    """``{index: name}`` of the model's classes from ``metadata["output"]["classes"]`` (JSON keys are strings)."""
    return {int(k): str(v) for k, v in output_meta["classes"].items()}


#: Expansions of the usual bleed-type abbreviations (for the column descriptions; unknown names are used as is).
TYPE_NAMES = {"IPH": "intraparenchymal haemorrhage", "SDH": "subdural haematoma", "EDH": "epidural haematoma",
              "SAH": "subarachnoid haemorrhage", "IVH": "intraventricular haemorrhage"}


def volume_columns(classes: Mapping[int, str]) -> dict[str, dict[str, str]]:
    """Column descriptions (BIDS tabular sidecar) of the per-image volume table for the model's ``classes``."""
    columns = {"total_volume_ml": {"Description": "Total haemorrhage volume: voxels of the mask x voxel volume",
                                   "Units": "mL"}}
    for index, name in sorted(classes.items()):
        if int(index):
            columns[f"{name}_volume_ml"] = {
                "Description": f"Volume of the mask's voxels typed {name} ({TYPE_NAMES.get(name, name)}; type = "
                               "argmax of the bleed-class probabilities)", "Units": "mL"}
    columns.update({
        "component_count": {"Description": "Number of 26-connected components of the mask"},
        "intracranial_volume_ml": {"Description": "Intracranial volume (inside of the skull from HU thresholds, "
                                                  "on the model grid)", "Units": "mL"},
        "haemorrhage_percent": {"Description": "100 x total_volume_ml / intracranial_volume_ml", "Units": "%"},
        "threshold": {"Description": "Probability threshold of the mask (model metadata output.threshold)"},
        "min_component_ml": {"Description": "Smallest component kept (model metadata output.min_component_ml)",
                             "Units": "mL"},
        "input_kind": {"Description": "What the HU check found", "Levels": {
            "ct": "head CT with air around the head", "ct-skull-stripped": "brain-extracted CT (air added around it)"}},
    })
    return columns
