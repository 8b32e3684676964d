"""MS lesion measures: plain numpy/scipy functions, no Nipype, no torch.

Conventions
-----------
All arrays are 3D, shape ``(X, Y, Z)``, on one voxel grid (lesion mask, lesion labels, template
regions warped to the subject, manual labels). ``zooms`` are the voxel sizes in mm (only the first
three are used). Volumes are reported in mm^3 and in mL (1 mL = 1000 mm^3). A *mask* is binary
(bool, or numbers that are all 0 or 1); a *label image* holds 0 for background and a positive integer
per lesion.

Lesions (``label_lesions``)
---------------------------
A lesion is a 3D connected component of the mask. Default connectivity is 26 (faces, edges and
corners), as LST-AI (``skimage.measure.label(connectivity=3)``) and ITK's "fully connected" labelling:
on thick-slice FLAIR (e.g. 1 x 1 x 3 mm) one lesion that drifts in-plane from one slice to the next
often touches itself only along an edge or a corner, and 6-connectivity would split it into several
"lesions" and inflate the count. The price is that lesions touching at a corner merge; 18 and 6 are
available for comparison with tools that use them.

Components smaller than ``min_volume_mm3`` (default 3 mm^3, kept when ``volume >= minimum``) are
dropped: 3 mm^3 is the default minimum lesion volume of the lesion detection scores of
animaSegPerfAnalyzer, the evaluation tool of the MSSEG-2016 challenge (Commowick et al., Sci Rep
2018), and removes one- and two-voxel specks at 1 mm isotropic resolution, which are noise rather
than lesions. The minimum is a volume, not a voxel count, so that it means the same on every grid.
Kept lesions are numbered 1..n by decreasing volume (ties in scan order) so that label 1 is the
largest lesion on every run.

For lesion ``l`` with voxel set ``V_l`` and voxel volume ``v = dx * dy * dz``::

    volume_mm3(l) = |V_l| * v            volume_ml(l) = volume_mm3(l) / 1000
    centroid(l)   = mean of the (i, j, k) indices of V_l               (voxel coordinates)
    world(l)      = affine @ (i, j, k, 1)                               (mm, the image's world space)

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

Agreement with manual labels (``segmentation_metrics``)
-------------------------------------------------------
Both masks are first reduced to their lesions of at least ``min_volume_mm3`` (pass 0 to use them as
given), so that every number describes the same set of lesions as ``lesion_load``. With ``P`` the
predicted and ``T`` the true lesion voxels::

    Dice             = 2 |P & T| / (|P| + |T|)                  (1 when both are empty)
    volume_error_%   = 100 * (vol(P) - vol(T)) / vol(T)         (NaN when T is empty)

Lesion-wise detection uses the "any overlap" criterion of the ISBI-2015 challenge's lesion true- and
false-positive rates (LTPR, LFPR; Carass et al., NeuroImage 2017): a true lesion is detected when any
predicted lesion voxel lies in it, and a predicted lesion is a true positive when it overlaps any true
lesion. The MSSEG-2016 detection criteria (animaSegPerfAnalyzer: at least 10 % of a true lesion
covered, limits on false-positive fractions of the detecting lesions) are stricter and are not
implemented here; the 3 mm^3 minimum is taken from them. With ``n_T`` true and ``n_P`` predicted
lesions::

    recall    = detected true lesions / n_T           (sensitivity, = LTPR)
    precision = true-positive predicted lesions / n_P  (= 1 - LFPR)
    F1        = 2 * precision * recall / (precision + recall)

Empty cases: both empty gives precision = recall = F1 = 1 (nothing to find, nothing found); an empty
truth with predictions gives recall NaN, precision 0, F1 0; an empty prediction with true lesions
gives precision NaN, recall 0, F1 0. F1 is 0 whenever precision + recall is 0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

LOGGER = logging.getLogger(__name__)

MM3_PER_ML = 1000.0

#: Smallest lesion kept, in mm^3 (MSSEG-2016's animaSegPerfAnalyzer default; see the module docstring).
DEFAULT_MIN_VOLUME_MM3 = 3.0

#: Default voxel connectivity of a lesion (26: faces, edges and corners; see the module docstring).
DEFAULT_CONNECTIVITY = 26

#: ``scipy.ndimage.generate_binary_structure`` rank for each supported 3D connectivity.
_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}

INFRATENTORIAL = "infratentorial"
PERIVENTRICULAR = "periventricular"
JUXTACORTICAL = "juxtacortical"
DEEP_WHITE_MATTER = "deep_white_matter"
UNASSIGNED = "unassigned"

#: Tie-break order of ``assign_region``, highest priority first (see the module docstring).
DEFAULT_REGION_PRIORITY: tuple[str, ...] = (INFRATENTORIAL, PERIVENTRICULAR, JUXTACORTICAL, DEEP_WHITE_MATTER)


@dataclass(frozen=True)
class Lesion:
    """One lesion: its label, size and centroid (voxel indices; world mm when an affine is known)."""

    index: int
    n_voxels: int
    volume_mm3: float
    volume_ml: float
    centroid_i: float
    centroid_j: float
    centroid_k: float
    x_mm: float | None = None
    y_mm: float | None = None
    z_mm: float | None = None

    def as_dict(self) -> dict:
        row = asdict(self)
        if self.x_mm is None:
            for key in ("x_mm", "y_mm", "z_mm"):
                del row[key]
        return row


@dataclass(frozen=True)
class LesionLoad:
    """Whole-brain lesion load; mean and median are NaN without lesions."""

    count: int
    total_volume_ml: float
    mean_volume_ml: float
    median_volume_ml: float


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


@dataclass(frozen=True)
class SegmentationMetrics:
    """Voxel-wise and lesion-wise agreement of a predicted lesion mask with manual labels."""

    dice: float
    pred_volume_ml: float
    truth_volume_ml: float
    volume_difference_ml: float
    volume_error_percent: float
    n_truth: int
    n_pred: int
    n_truth_detected: int
    n_pred_true_positive: int
    false_negatives: int
    false_positives: int
    lesion_precision: float
    lesion_recall: float
    lesion_f1: float


def voxel_volume_mm3(zooms) -> float:
    """Volume of one voxel in mm^3 from the first three voxel sizes (mm)."""
    try:
        sizes = [float(z) for z in tuple(zooms)[:3]]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"zooms {zooms!r} are not numbers; pass the voxel sizes in mm, "
                         "e.g. img.header.get_zooms()[:3].") from exc
    if len(sizes) < 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(f"zooms {zooms!r} must hold three positive voxel sizes in mm, "
                         "e.g. img.header.get_zooms()[:3].")
    return sizes[0] * sizes[1] * sizes[2]


def _as_mask(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name} has shape {array.shape}; a 3D (X, Y, Z) array is expected. "
                         "Squeeze or select a volume of 4D images first.")
    if array.dtype == bool:
        return array
    # A probability map passed by mistake would otherwise become one huge lesion.
    if np.any((array != 0) & (array != 1)):
        raise ValueError(f"{name} is not binary (values other than 0 and 1); threshold it first, "
                         f"e.g. {name} >= 0.5.")
    return array == 1


def _as_labels(array: np.ndarray, name: str = "labels") -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name} has shape {array.shape}; a 3D (X, Y, Z) array is expected.")
    if array.dtype == bool:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError(f"{name} holds non-integer values; pass a label image (0 = background, "
                             "1..n = lesions, e.g. from label_lesions) or a binary mask (threshold "
                             "probability maps first).")
    labels = array.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} holds negative values; labels must be 0 (background) or positive.")
    return labels


def _same_shape(reference: np.ndarray, other: np.ndarray, names: str) -> None:
    if reference.shape != other.shape:
        raise ValueError(f"{names} have different shapes {reference.shape} and {other.shape}; "
                         "resample them onto one grid first.")


def label_lesions(mask: np.ndarray, zooms, min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
                  connectivity: int = DEFAULT_CONNECTIVITY) -> tuple[np.ndarray, int]:
    """Connected lesions of a binary ``mask`` ``(X, Y, Z)``.

    Returns ``(labels, n)``: an int32 label image with lesions numbered 1..n by decreasing volume and
    the number of lesions. Components under ``min_volume_mm3`` are dropped; ``connectivity`` is 6, 18
    or 26 (see the module docstring for the defaults).
    """
    mask = _as_mask(mask, "mask")
    voxel = voxel_volume_mm3(zooms)
    if connectivity not in _CONNECTIVITY_RANK:
        raise ValueError(f"connectivity {connectivity!r} is not supported; use 6, 18 or 26.")
    min_volume_mm3 = float(min_volume_mm3)
    if not math.isfinite(min_volume_mm3) or min_volume_mm3 < 0:
        raise ValueError(f"min_volume_mm3 {min_volume_mm3!r} must be a finite volume >= 0 mm^3 "
                         "(0 keeps every component).")
    structure = ndimage.generate_binary_structure(3, _CONNECTIVITY_RANK[connectivity])
    raw, n_raw = ndimage.label(mask, structure=structure)
    counts = np.bincount(raw.ravel(), minlength=n_raw + 1)[1:]
    # Tolerance so that a component of exactly the minimum volume survives float rounding.
    keep = counts * voxel >= min_volume_mm3 * (1 - 1e-9)
    order = np.argsort(-counts, kind="stable")
    order = order[keep[order]]
    lut = np.zeros(n_raw + 1, dtype=np.int32)
    lut[order + 1] = np.arange(1, order.size + 1, dtype=np.int32)
    n = int(order.size)
    if n < n_raw:
        LOGGER.debug("Dropped %d of %d components under %.3g mm^3.", n_raw - n, n_raw, min_volume_mm3)
    return lut[raw], n


def _lesion_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lesion labels present and their voxel counts (both 1D, ascending label)."""
    counts = np.bincount(labels.ravel())
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    return ids, counts[ids]


def lesion_table(labels: np.ndarray, zooms, affine: np.ndarray | None = None) -> list[dict]:
    """One row per lesion of a label image: size, and centroid in voxels (and world mm with ``affine``).

    Keys: ``index, n_voxels, volume_mm3, volume_ml, centroid_i, centroid_j, centroid_k`` and, when a
    4x4 ``affine`` (voxel to world mm, e.g. ``img.affine``) is given, ``x_mm, y_mm, z_mm``.
    """
    labels = _as_labels(labels)
    voxel = voxel_volume_mm3(zooms)
    if affine is not None:
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise ValueError(f"affine has shape {affine.shape} or non-finite values; pass the image's "
                             "4x4 voxel-to-world matrix (img.affine) or None.")
    ids, counts = _lesion_ids(labels)
    if ids.size == 0:
        return []
    coords = np.nonzero(labels)
    which = labels[coords]
    # Sums of indices per label with bincount: one pass over the lesion voxels for all lesions.
    centroids = np.stack([np.bincount(which, weights=c, minlength=ids[-1] + 1)[ids] for c in coords],
                         axis=1) / counts[:, None]
    world = None
    if affine is not None:
        world = centroids @ affine[:3, :3].T + affine[:3, 3]
    rows = []
    for row, (index, n_voxels) in enumerate(zip(ids, counts)):
        volume = float(n_voxels) * voxel
        extra = {}
        if world is not None:
            extra = dict(x_mm=float(world[row, 0]), y_mm=float(world[row, 1]), z_mm=float(world[row, 2]))
        rows.append(Lesion(index=int(index), n_voxels=int(n_voxels), volume_mm3=volume,
                           volume_ml=volume / MM3_PER_ML, centroid_i=float(centroids[row, 0]),
                           centroid_j=float(centroids[row, 1]), centroid_k=float(centroids[row, 2]),
                           **extra).as_dict())
    return rows


def _labels_from_mask_or_labels(lesions: np.ndarray, zooms, min_volume_mm3: float,
                                connectivity: int) -> np.ndarray:
    array = np.asarray(lesions)
    if array.dtype == bool or not np.any((array != 0) & (array != 1)):
        return label_lesions(array, zooms, min_volume_mm3, connectivity)[0]
    return _as_labels(array, "lesions")


def lesion_load(lesions: np.ndarray, zooms, min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
                connectivity: int = DEFAULT_CONNECTIVITY) -> dict:
    """Lesion count and total, mean and median lesion volume (mL) of a mask or a label image.

    A binary ``lesions`` array (only 0 and 1) is a mask and is labelled with ``label_lesions``
    (``min_volume_mm3``, ``connectivity``), so that the total volume counts the same lesions as the
    count. Any other non-negative integer array is a label image and is used as given (each distinct
    positive value is one lesion).
    """
    labels = _labels_from_mask_or_labels(lesions, zooms, min_volume_mm3, connectivity)
    voxel = voxel_volume_mm3(zooms)
    _, counts = _lesion_ids(labels)
    volumes = counts * voxel / MM3_PER_ML
    if volumes.size == 0:
        return asdict(LesionLoad(count=0, total_volume_ml=0.0, mean_volume_ml=math.nan,
                                 median_volume_ml=math.nan))
    return asdict(LesionLoad(count=int(volumes.size), total_volume_ml=float(volumes.sum()),
                             mean_volume_ml=float(volumes.mean()), median_volume_ml=float(np.median(volumes))))


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


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, zooms,
                         min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
                         connectivity: int = DEFAULT_CONNECTIVITY) -> dict:
    """Agreement of a predicted lesion mask with manual labels (binary masks on one grid).

    Keys: ``dice, pred_volume_ml, truth_volume_ml, volume_difference_ml, volume_error_percent,
    n_truth, n_pred, n_truth_detected, n_pred_true_positive, false_negatives, false_positives,
    lesion_precision, lesion_recall, lesion_f1``. Lesions under ``min_volume_mm3`` are removed from
    both masks first; definitions and empty cases are in the module docstring.
    """
    pred_mask = _as_mask(pred, "pred")
    truth_mask = _as_mask(truth, "truth")
    _same_shape(pred_mask, truth_mask, "pred and truth")
    voxel = voxel_volume_mm3(zooms)
    pred_labels, n_pred = label_lesions(pred_mask, zooms, min_volume_mm3, connectivity)
    truth_labels, n_truth = label_lesions(truth_mask, zooms, min_volume_mm3, connectivity)
    p, t = pred_labels > 0, truth_labels > 0
    n_p, n_t, n_both = int(p.sum()), int(t.sum()), int(np.count_nonzero(p & t))
    dice = 1.0 if n_p + n_t == 0 else 2.0 * n_both / (n_p + n_t)
    pred_ml, truth_ml = n_p * voxel / MM3_PER_ML, n_t * voxel / MM3_PER_ML
    volume_error = 100.0 * (pred_ml - truth_ml) / truth_ml if n_t else math.nan

    detected = int(np.count_nonzero(np.bincount(truth_labels[p], minlength=n_truth + 1)[1:]))
    true_pred = int(np.count_nonzero(np.bincount(pred_labels[t], minlength=n_pred + 1)[1:]))
    if n_truth == 0 and n_pred == 0:
        precision = recall = f1 = 1.0
    else:
        precision, recall = _ratio(true_pred, n_pred), _ratio(detected, n_truth)
        # With one side empty the other ratio is undefined (NaN) but every lesion is an error: F1 = 0.
        p_, r_ = (0.0 if math.isnan(x) else x for x in (precision, recall))
        f1 = 2 * p_ * r_ / (p_ + r_) if p_ + r_ > 0 else 0.0
    return asdict(SegmentationMetrics(
        dice=float(dice), pred_volume_ml=pred_ml, truth_volume_ml=truth_ml,
        volume_difference_ml=pred_ml - truth_ml, volume_error_percent=volume_error,
        n_truth=n_truth, n_pred=n_pred, n_truth_detected=detected, n_pred_true_positive=true_pred,
        false_negatives=n_truth - detected, false_positives=n_pred - true_pred,
        lesion_precision=precision, lesion_recall=recall, lesion_f1=f1))


# ------------------------------------------------------------------------------ template regions
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
    ijk = np.indices(brain.shape).reshape(3, -1)
    xyz = (np.asarray(affine)[:3, :3] @ ijk + np.asarray(affine)[:3, 3:4]).reshape(3, *brain.shape)
    deep_csf = csf & (d_out > deep_csf_mm) & (np.abs(xyz[0]) < 35.0)
    lab, n = ndimage.label(deep_csf, np.ones((3, 3, 3)))
    sizes = np.bincount(lab.ravel()) * float(np.prod(zooms)) / MM3_PER_ML
    keep = sizes >= ventricle_min_ml
    keep[0] = False
    ventricles = keep[lab]
    infra = brain & (xyz[2] < -15.0 - 0.2 * (xyz[1] + 50.0)) & ((xyz[1] < -25.0) | (np.abs(xyz[0]) < 15.0))
    near_vent = ndimage.distance_transform_edt(~ventricles, sampling=zooms) <= periventricular_mm
    cortex = (gm >= 0.5) & (d_out < cortex_depth_mm)
    near_cortex = ndimage.distance_transform_edt(~cortex, sampling=zooms) <= juxtacortical_mm
    peri = brain & near_vent & ~infra & ~ventricles
    juxta = brain & (wm >= 0.5) & near_cortex & ~infra
    deep = brain & (wm >= 0.5) & ~infra & ~peri & ~juxta
    return {INFRATENTORIAL: infra, PERIVENTRICULAR: peri, JUXTACORTICAL: juxta, DEEP_WHITE_MATTER: deep}


# ---------------------------------------------------------------------------- participant report
#: Column descriptions (BIDS tabular sidecars) of the per-lesion table written by the app.
LESION_COLUMNS = {
    "lesion_id": {"Description": "Lesion number, 1 = largest (26-connected component of the mask)"},
    "volume_mm3": {"Description": "Lesion volume", "Units": "mm^3"},
    "volume_ml": {"Description": "Lesion volume", "Units": "mL"},
    "centroid_i": {"Description": "Centroid, first voxel index of the source image grid (0-based)"},
    "centroid_j": {"Description": "Centroid, second voxel index (0-based)"},
    "centroid_k": {"Description": "Centroid, third voxel index (0-based)"},
    "x_mm": {"Description": "Centroid in the source image's world space (NIfTI RAS+)", "Units": "mm"},
    "y_mm": {"Description": "Centroid in the source image's world space (NIfTI RAS+)", "Units": "mm"},
    "z_mm": {"Description": "Centroid in the source image's world space (NIfTI RAS+)", "Units": "mm"},
    "region": {"Description": "Region holding most of the lesion's voxels (template regions warped to the "
                              "subject; ties: infratentorial > periventricular > juxtacortical > deep white matter)",
               "Levels": {INFRATENTORIAL: "below the tentorium (geometric approximation in MNI space)",
                          PERIVENTRICULAR: "within 5 mm of the lateral and third ventricles",
                          JUXTACORTICAL: "white matter within 3 mm of the cortex",
                          DEEP_WHITE_MATTER: "other supratentorial white matter",
                          UNASSIGNED: "outside all four regions"}},
}

#: Column descriptions of the one-row summary table.
SUMMARY_COLUMNS = {
    "lesion_count": {"Description": "Number of lesions (connected components of at least min_lesion_mm3)"},
    "total_volume_ml": {"Description": "Total lesion volume", "Units": "mL"},
    "mean_volume_ml": {"Description": "Mean lesion volume (n/a without lesions)", "Units": "mL"},
    "median_volume_ml": {"Description": "Median lesion volume (n/a without lesions)", "Units": "mL"},
    **{f"{region}_{what}": {"Description": f"{text} ({region.replace('_', ' ')})", **units}
       for region in (PERIVENTRICULAR, JUXTACORTICAL, INFRATENTORIAL, DEEP_WHITE_MATTER, UNASSIGNED)
       for what, text, units in (("count", "Lesions assigned to the region", {}),
                                 ("volume_ml", "Volume of the lesions assigned to the region", {"Units": "mL"}))},
    "min_lesion_mm3": {"Description": "Smallest lesion counted", "Units": "mm^3"},
}

#: Column descriptions of the validation table (one row per manual label found for the image).
VALIDATION_COLUMNS = {
    "reference": {"Description": "File name of the manual label (derivatives/labels)"},
    "dice": {"Description": "Dice of the lesion mask with the manual label, lesions >= min_lesion_mm3 in both"},
    "lesion_precision": {"Description": "Predicted lesions overlapping a manual lesion / predicted lesions"},
    "lesion_recall": {"Description": "Manual lesions overlapped by a predicted lesion / manual lesions"},
    "lesion_f1": {"Description": "Harmonic mean of lesion precision and recall"},
    "n_pred": {"Description": "Predicted lesions"},
    "n_truth": {"Description": "Manual lesions"},
    "pred_volume_ml": {"Description": "Predicted lesion volume", "Units": "mL"},
    "truth_volume_ml": {"Description": "Manual lesion volume", "Units": "mL"},
    "volume_error_percent": {"Description": "100 (predicted - manual) / manual volume", "Units": "%"},
}


def lesion_report(mask: np.ndarray, zooms, affine: np.ndarray, regions: dict[str, np.ndarray],
                  references: dict[str, np.ndarray] | None = None,
                  min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3) -> tuple[list[dict], dict, list[dict]]:
    """Everything the participant level reports for one lesion mask ``(X, Y, Z)`` on the source grid.

    ``regions``: the four template regions warped to the same grid (see :func:`template_regions`);
    ``references``: manual masks on the same grid, keyed by a name (e.g. the file name).
    Returns ``(lesion_rows, summary, validation_rows)`` with the columns of :data:`LESION_COLUMNS`,
    :data:`SUMMARY_COLUMNS` and :data:`VALIDATION_COLUMNS`.
    """
    labels, _ = label_lesions(mask, zooms, min_volume_mm3)
    where = assign_region(labels, regions)
    rows = []
    for row in lesion_table(labels, zooms, affine):
        index = row.pop("index")
        row.pop("n_voxels")
        rows.append({"lesion_id": index, **row, "region": where[index]})
    summary = {f"lesion_{k}" if k == "count" else k: v for k, v in lesion_load(labels, zooms).items()}
    for region, load in regional_load(labels, regions, zooms).items():
        summary[f"{region}_count"] = load["n_lesions"]
        summary[f"{region}_volume_ml"] = load["assigned_volume_ml"]
    summary["min_lesion_mm3"] = float(min_volume_mm3)
    validation = []
    for name, truth in (references or {}).items():
        m = segmentation_metrics(labels > 0, truth, zooms, min_volume_mm3)
        validation.append({"reference": name, **{k: m[k] for k in VALIDATION_COLUMNS if k in m}})
    return rows, summary, validation
