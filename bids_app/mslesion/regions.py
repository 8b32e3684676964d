"""MS lesion regions: where a lesion is (periventricular, juxtacortical, infratentorial, deep white matter).

Arrays are 3D ``(X, Y, Z)`` on one voxel grid, as in :mod:`bids_app.mslesion.measures`.

Regions (``assign_region``, ``regional_load``)
----------------------------------------------
Regions are boolean arrays (template masks warped to the subject), keyed by name; they may overlap.
A lesion is assigned to exactly one region: the one that holds most of its voxels (plurality;
voxels outside every region do not vote). Ties go to the region that comes first in ``priority``,
default ``infratentorial > periventricular > juxtacortical > deep_white_matter``:

* infratentorial first: it is anatomically separate from the other three, so an overlap only arises
  where warped template bands blur across the tentorium or around the fourth ventricle, and a lesion
  abutting the fourth ventricle is counted as infratentorial, not periventricular, in McDonald usage;
* periventricular before juxtacortical: a confluent lesion reaching from the ventricles towards the
  cortex is conventionally read as periventricular;
* deep white matter last: it is the "none of the above" location.

Regions missing from ``priority`` rank after those listed, in the order of the ``regions`` dict.
A lesion that overlaps no region is ``"unassigned"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bids_app.mslesion.measures import MM3_PER_ML, _as_labels, _as_mask, _lesion_ids, _same_shape, voxel_volume_mm3

INFRATENTORIAL = "infratentorial"


PERIVENTRICULAR = "periventricular"


JUXTACORTICAL = "juxtacortical"


DEEP_WHITE_MATTER = "deep_white_matter"


UNASSIGNED = "unassigned"


#: Tie-break order of ``assign_region``, highest priority first (see the module docstring).
DEFAULT_REGION_PRIORITY: tuple[str, ...] = (INFRATENTORIAL, PERIVENTRICULAR, JUXTACORTICAL, DEEP_WHITE_MATTER)


@dataclass(frozen=True)
class RegionLoad:
    """Lesion load of one region.

    ``volume_ml``: lesion voxels inside the region (a voxel in two overlapping regions counts in
    both); ``n_lesions`` and ``assigned_volume_ml``: lesions assigned to the region and their whole
    volume (these add up to the totals over all regions plus ``unassigned``).
    """

    volume_ml: float
    n_lesions: int
    assigned_volume_ml: float


def _check_regions(labels: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(regions, dict):
        raise ValueError("regions must be a dict {name: boolean (X, Y, Z) array}.")
    if UNASSIGNED in regions:
        raise ValueError(f"{UNASSIGNED!r} is reserved for lesions outside every region; rename that region.")
    checked = {}
    for name, region in regions.items():
        region = _as_mask(region, f"region {name!r}")
        _same_shape(labels, region, f"labels and region {name!r}")
        checked[name] = region
    return checked


def _ranked_names(regions: dict[str, np.ndarray], priority: tuple[str, ...] | list[str]) -> list[str]:
    if isinstance(priority, str):
        raise ValueError("priority must be a sequence of region names, not one string.")
    # Names absent from ``regions`` are skipped so that the default order serves partial region sets.
    listed = [name for name in dict.fromkeys(priority) if name in regions]
    return listed + [name for name in regions if name not in listed]


def _overlaps(labels: np.ndarray, regions: dict[str, np.ndarray], names: list[str],
              ids: np.ndarray) -> np.ndarray:
    """Voxel counts ``(len(names), len(ids))`` of each lesion inside each region."""
    size = int(ids[-1]) + 1 if ids.size else 1
    return np.array([np.bincount(labels[regions[name]], minlength=size)[ids] for name in names],
                    dtype=np.int64).reshape(len(names), ids.size)


def _assign(overlap: np.ndarray, names: list[str]) -> list[str]:
    if not names:
        return [UNASSIGNED] * overlap.shape[1]
    # argmax returns the first maximum, and rows are in priority order: that is the tie rule.
    best = np.argmax(overlap, axis=0)
    return [names[b] if overlap[b, col] > 0 else UNASSIGNED for col, b in enumerate(best)]


def assign_region(labels: np.ndarray, regions: dict[str, np.ndarray],
                  priority: tuple[str, ...] | list[str] = DEFAULT_REGION_PRIORITY) -> dict[int, str]:
    """Region of each lesion: ``{lesion label: region name}``, ``"unassigned"`` outside every region.

    Each lesion goes to the region holding most of its voxels; ties go to the region listed first in
    ``priority`` (regions not listed rank after, in dict order). See the module docstring.
    """
    labels = _as_labels(labels)
    regions = _check_regions(labels, regions)
    names = _ranked_names(regions, priority)
    ids, _ = _lesion_ids(labels)
    assigned = _assign(_overlaps(labels, regions, names, ids), names)
    return {int(index): name for index, name in zip(ids, assigned)}


def regional_load(labels: np.ndarray, regions: dict[str, np.ndarray], zooms,
                  priority: tuple[str, ...] | list[str] = DEFAULT_REGION_PRIORITY) -> dict[str, dict]:
    """Lesion load per region: ``{name: {volume_ml, n_lesions, assigned_volume_ml}}``.

    ``volume_ml`` is the volume of lesion voxels inside the region; ``n_lesions`` and
    ``assigned_volume_ml`` count whole lesions assigned by ``assign_region`` (majority, then
    ``priority``). An ``"unassigned"`` entry covers lesion voxels and lesions outside every region.
    """
    labels = _as_labels(labels)
    regions = _check_regions(labels, regions)
    voxel = voxel_volume_mm3(zooms)
    names = _ranked_names(regions, priority)
    ids, counts = _lesion_ids(labels)
    assigned = np.array(_assign(_overlaps(labels, regions, names, ids), names), dtype=object)
    lesion = labels > 0
    outside = lesion.copy()
    result = {}
    for name in list(regions) + [UNASSIGNED]:
        if name == UNASSIGNED:
            inside = int(outside.sum())
        else:
            inside = int(np.count_nonzero(lesion & regions[name]))
            outside &= ~regions[name]
        mine = assigned == name
        result[name] = asdict(RegionLoad(volume_ml=inside * voxel / MM3_PER_ML, n_lesions=int(mine.sum()),
                                         assigned_volume_ml=float(counts[mine].sum()) * voxel / MM3_PER_ML))
    return result


# ------------------------------------------------------------------------------ template regions
def _below_tentorium(xyz: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` bool from MNI coordinates ``xyz`` ``(3, X, Y, Z)`` in mm: the infratentorial rule of
    :func:`template_regions`."""
    return (xyz[2] < -15.0 - 0.2 * (xyz[1] + 50.0)) & ((xyz[1] < -25.0) | (np.abs(xyz[0]) < 15.0))


def _mm_coordinates(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates ``(3, X, Y, Z)`` in mm of every voxel of a grid ``shape`` with voxel-to-mm ``affine``."""
    ijk = np.indices(shape).reshape(3, -1)
    return (np.asarray(affine)[:3, :3] @ ijk + np.asarray(affine)[:3, 3:4]).reshape(3, *shape)


def infratentorial_mask(brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The infratentorial region of :func:`template_regions` alone: ``brain`` ``(X, Y, Z)`` below the
    approximate tentorium (brainstem and cerebellum), from the MNI voxel-to-mm ``affine``."""
    brain = np.asarray(brain, bool)
    return brain & _below_tentorium(_mm_coordinates(brain.shape, affine))


def template_regions(wm: np.ndarray, gm: np.ndarray, brain: np.ndarray, affine: np.ndarray,
                     periventricular_mm: float = 5.0, juxtacortical_mm: float = 3.0,
                     deep_csf_mm: float = 12.0, cortex_depth_mm: float = 12.0,
                     ventricle_min_ml: float = 0.5) -> dict[str, np.ndarray]:
    """The four lesion regions on a template grid, from its tissue maps (``(X, Y, Z)``, RAS world).

    ``wm``/``gm`` are probabilities in [0, 1], ``brain`` a mask, ``affine`` the voxel-to-mm (RAS)
    matrix of an MNI-space template (the infratentorial rule uses MNI coordinates). With
    ``csf = brain & (1 - wm - gm > 0.5)`` and ``d_out`` the distance (mm) to the outside of the brain:

    * ventricles = connected components of ``csf & d_out > deep_csf_mm & |x_mm| < 35`` of at least
      ``ventricle_min_ml`` (deep, medial CSF; sulcal CSF is near the surface or in small pieces);
    * infratentorial = brain below the tentorium, approximated by the plane
      ``z_mm < -15 - 0.2 (y_mm + 50)`` (about z = -7 mm at the occipital pole, -23 mm at the pons),
      behind ``y_mm = -25`` or within 15 mm of the midline (the brainstem), so that the temporal
      poles stay supratentorial. This is a geometric approximation, not an atlas: the inferior
      temporal lobe behind y = -25 mm can be counted as infratentorial;
    * periventricular = non-infratentorial brain within ``periventricular_mm`` of the ventricles;
    * juxtacortical = white matter (``wm >= 0.5``) within ``juxtacortical_mm`` of cortical grey matter
      (``gm >= 0.5`` and ``d_out < cortex_depth_mm``, which leaves the deep grey nuclei out);
    * deep white matter = the rest of the supratentorial white matter (``wm >= 0.5``).

    The regions may overlap (:func:`assign_region` breaks ties). Returns bool arrays keyed by the
    region names of this module.
    """
    from scipy import ndimage

    brain = _as_mask(brain, "brain")
    _same_shape(brain, np.asarray(wm), "brain and wm")
    _same_shape(brain, np.asarray(gm), "brain and gm")
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    d_out = ndimage.distance_transform_edt(brain, sampling=zooms)
    csf = brain & ((1.0 - wm - gm) > 0.5)
    xyz = _mm_coordinates(brain.shape, affine)
    deep_csf = csf & (d_out > deep_csf_mm) & (np.abs(xyz[0]) < 35.0)
    lab, n = ndimage.label(deep_csf, np.ones((3, 3, 3)))
    sizes = np.bincount(lab.ravel()) * float(np.prod(zooms)) / MM3_PER_ML
    keep = sizes >= ventricle_min_ml
    keep[0] = False
    ventricles = keep[lab]
    infra = brain & _below_tentorium(xyz)
    near_vent = ndimage.distance_transform_edt(~ventricles, sampling=zooms) <= periventricular_mm
    cortex = (gm >= 0.5) & (d_out < cortex_depth_mm)
    near_cortex = ndimage.distance_transform_edt(~cortex, sampling=zooms) <= juxtacortical_mm
    peri = brain & near_vent & ~infra & ~ventricles
    juxta = brain & (wm >= 0.5) & near_cortex & ~infra
    deep = brain & (wm >= 0.5) & ~infra & ~peri & ~juxta
    return {INFRATENTORIAL: infra, PERIVENTRICULAR: peri, JUXTACORTICAL: juxta, DEEP_WHITE_MATTER: deep}
