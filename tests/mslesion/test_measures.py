"""MS lesion measures on synthetic volumes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bids_app.mslesion import measures, report
from bids_app.mslesion import regions as lesion_regions

ANISO = (1.0, 1.0, 3.0)  # 3 mm^3 voxels, as on thick-slice FLAIR
ISO = (1.0, 1.0, 1.0)


def volume(shape=(20, 20, 20)) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


def box(mask: np.ndarray, lo: tuple[int, int, int], size: tuple[int, int, int]) -> np.ndarray:
    mask[lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]] = True
    return mask


# --- labelling, volumes and minimum size -------------------------------------------------------

def test_volumes_in_ml_on_anisotropic_grid_and_largest_first():
    mask = box(volume(), (1, 1, 1), (2, 2, 2))           # 8 voxels = 24 mm^3, first in scan order
    box(mask, (10, 10, 10), (3, 3, 3))                   # 27 voxels = 81 mm^3
    labels, n = measures.label_lesions(mask, ANISO)
    assert n == 2 and labels.dtype == np.int32
    assert labels[11, 11, 11] == 1 and labels[1, 1, 1] == 2  # renumbered by decreasing volume
    table = measures.lesion_table(labels, ANISO)
    assert [row["n_voxels"] for row in table] == [27, 8]
    assert [row["volume_mm3"] for row in table] == pytest.approx([81.0, 24.0])
    assert [row["volume_ml"] for row in table] == pytest.approx([0.081, 0.024])
    load = measures.lesion_load(mask, ANISO)
    assert load["count"] == 2
    assert load["total_volume_ml"] == pytest.approx(0.105)
    assert load["mean_volume_ml"] == pytest.approx(0.0525)
    assert load["median_volume_ml"] == pytest.approx(0.0525)


def test_minimum_size_drops_two_voxel_blob_and_keeps_three():
    mask = box(volume(), (2, 2, 2), (2, 1, 1))           # 2 voxels = 2 mm^3 < 3 mm^3
    box(mask, (10, 10, 10), (3, 1, 1))                   # 3 voxels = exactly the minimum: kept
    labels, n = measures.label_lesions(mask, ISO)
    assert n == 1
    assert labels[2, 2, 2] == 0 and labels[10, 10, 10] == 1
    assert measures.label_lesions(mask, ISO, min_volume_mm3=0)[1] == 2
    assert measures.lesion_load(mask, ISO)["total_volume_ml"] == pytest.approx(0.003)


def test_minimum_size_is_a_volume_not_a_voxel_count():
    mask = box(volume(), (5, 5, 5), (1, 1, 1))           # one 3 mm^3 voxel
    assert measures.label_lesions(mask, ANISO)[1] == 1
    assert measures.label_lesions(mask, ISO)[1] == 0


@pytest.mark.parametrize("connectivity, corner, edge", [(26, 1, 1), (18, 2, 1), (6, 2, 2)])
def test_connectivity_on_cubes_touching_at_a_corner_or_an_edge(connectivity, corner, edge):
    corner_mask = box(box(volume(), (2, 2, 2), (2, 2, 2)), (4, 4, 4), (2, 2, 2))
    edge_mask = box(box(volume(), (2, 2, 2), (2, 2, 2)), (4, 4, 2), (2, 2, 2))
    assert measures.label_lesions(corner_mask, ISO, connectivity=connectivity)[1] == corner
    assert measures.label_lesions(edge_mask, ISO, connectivity=connectivity)[1] == edge


def test_default_connectivity_keeps_a_drifting_lesion_whole():
    """An oblique lesion drifting in-plane between thick slices touches itself only at corners."""
    mask = volume()
    for k in range(4):
        box(mask, (2 + 2 * k, 2 + 2 * k, 5 + k), (2, 2, 1))
    assert measures.label_lesions(mask, ANISO)[1] == 1
    assert measures.label_lesions(mask, ANISO, connectivity=18)[1] == 4
    assert measures.label_lesions(mask, ANISO, connectivity=6)[1] == 4


def test_labels_given_as_labels_are_not_relabelled():
    labels = np.zeros((10, 10, 10), dtype=np.int16)
    labels[2:4, 2:4, 2:4] = 1
    labels[4:6, 2:4, 2:4] = 2                             # touches lesion 1: stays a separate lesion
    load = measures.lesion_load(labels, ISO)
    assert load["count"] == 2 and load["total_volume_ml"] == pytest.approx(0.016)


def test_empty_mask():
    labels, n = measures.label_lesions(volume(), ISO)
    assert n == 0 and not labels.any()
    assert measures.lesion_table(labels, ISO) == []
    load = measures.lesion_load(volume(), ISO)
    assert load["count"] == 0 and load["total_volume_ml"] == 0.0
    assert math.isnan(load["mean_volume_ml"]) and math.isnan(load["median_volume_ml"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(mask=np.full((4, 4, 4), 0.3), zooms=ISO), "not binary"),
    (dict(mask=np.zeros((4, 4)), zooms=ISO), "3D"),
    (dict(mask=np.zeros((4, 4, 4)), zooms=(1.0, -1.0, 1.0)), "positive"),
    (dict(mask=np.zeros((4, 4, 4)), zooms=(1.0, 1.0)), "three"),
    (dict(mask=np.zeros((4, 4, 4)), zooms=ISO, connectivity=8), "6, 18 or 26"),
    (dict(mask=np.zeros((4, 4, 4)), zooms=ISO, min_volume_mm3=-1), "min_volume_mm3"),
])
def test_bad_inputs_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        measures.label_lesions(**kwargs)


# --- centroids ---------------------------------------------------------------------------------

def test_centroid_of_cube_in_voxels_and_world_mm():
    labels = np.zeros((10, 10, 10), dtype=np.int32)
    labels[2:5, 5:8, 1:4] = 1                             # cube centred on (3, 6, 2)
    affine = np.array([[-1.0, 0, 0, 10], [0, 1, 0, -20], [0, 0, 3, 5], [0, 0, 0, 1]])
    (row,) = measures.lesion_table(labels, ANISO, affine=affine)
    assert (row["centroid_i"], row["centroid_j"], row["centroid_k"]) == pytest.approx((3.0, 6.0, 2.0))
    assert (row["x_mm"], row["y_mm"], row["z_mm"]) == pytest.approx((7.0, -14.0, 11.0))
    assert row["volume_mm3"] == pytest.approx(81.0)
    assert "x_mm" not in measures.lesion_table(labels, ANISO)[0]


def test_centroid_of_asymmetric_lesion_and_label_gaps():
    labels = np.zeros((6, 6, 6), dtype=np.int32)
    for voxel in [(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 1, 0)]:
        labels[voxel] = 4                                 # labels need not be consecutive
    (row,) = measures.lesion_table(labels, ISO)
    assert row["index"] == 4 and row["n_voxels"] == 4
    assert (row["centroid_i"], row["centroid_j"], row["centroid_k"]) == pytest.approx((0.75, 0.25, 0.0))


def test_bad_affine_raises():
    with pytest.raises(ValueError, match="4x4"):
        measures.lesion_table(np.ones((3, 3, 3), dtype=int), ISO, affine=np.eye(3))


# --- regions -----------------------------------------------------------------------------------

ZOOMS_REGION = (1.0, 1.0, 2.0)  # 2 mm^3 voxels
VOXEL_ML = 2.0 / 1000


def regions_and_lesions():
    """Overlapping regions (deep WM covers PV) and five lesions with known overlaps."""
    shape = (20, 20, 20)
    x = np.arange(20)[:, None, None] * np.ones(shape, bool)
    z = np.arange(20)[None, None, :] * np.ones(shape, bool)
    regions = {
        "periventricular": x < 10,
        "deep_white_matter": x < 16,
        "infratentorial": z < 5,
        "juxtacortical": (x >= 15) & (x < 18),
    }
    mask = volume(shape)
    box(mask, (2, 2, 10), (3, 3, 3))    # A 27: PV 27 = DWM 27           -> PV by priority
    box(mask, (8, 10, 10), (4, 3, 3))   # B 36: PV 18 < DWM 36           -> DWM by majority
    box(mask, (2, 15, 2), (3, 3, 3))    # C 27: IT = PV = DWM = 27       -> IT by priority
    box(mask, (14, 2, 15), (3, 3, 3))   # D 27: DWM 18 = JC 18           -> JC by priority
    box(mask, (18, 10, 15), (2, 2, 2))  # E 8: outside every region       -> unassigned
    labels, n = measures.label_lesions(mask, ZOOMS_REGION)
    assert n == 5
    where = {"A": (3, 3, 11), "B": (9, 11, 11), "C": (3, 16, 3), "D": (15, 3, 16), "E": (18, 10, 15)}
    return regions, labels, {name: int(labels[v]) for name, v in where.items()}


def test_assign_region_majority_then_priority():
    regions, labels, ids = regions_and_lesions()
    assigned = lesion_regions.assign_region(labels, regions)
    assert {name: assigned[i] for name, i in ids.items()} == {
        "A": "periventricular", "B": "deep_white_matter", "C": "infratentorial",
        "D": "juxtacortical", "E": "unassigned"}


def test_assign_region_custom_priority_changes_only_ties():
    regions, labels, ids = regions_and_lesions()
    priority = ("deep_white_matter", "periventricular", "infratentorial", "juxtacortical")
    assigned = lesion_regions.assign_region(labels, regions, priority=priority)
    assert {name: assigned[i] for name, i in ids.items()} == {
        "A": "deep_white_matter", "B": "deep_white_matter", "C": "deep_white_matter",
        "D": "deep_white_matter", "E": "unassigned"}


def test_regional_load_volumes_and_counts():
    regions, labels, _ = regions_and_lesions()
    load = lesion_regions.regional_load(labels, regions, ZOOMS_REGION)
    assert list(load) == ["periventricular", "deep_white_matter", "infratentorial", "juxtacortical",
                          "unassigned"]
    inside = {"periventricular": 27 + 18 + 27, "deep_white_matter": 27 + 36 + 27 + 18,
              "infratentorial": 27, "juxtacortical": 18, "unassigned": 8}
    assigned = {"periventricular": 27, "deep_white_matter": 36, "infratentorial": 27,
                "juxtacortical": 27, "unassigned": 8}
    for name in inside:
        assert load[name]["volume_ml"] == pytest.approx(inside[name] * VOXEL_ML), name
        assert load[name]["assigned_volume_ml"] == pytest.approx(assigned[name] * VOXEL_ML), name
        assert load[name]["n_lesions"] == 1, name
    total = measures.lesion_load(labels, ZOOMS_REGION)["total_volume_ml"]
    assert sum(r["assigned_volume_ml"] for r in load.values()) == pytest.approx(total)


def test_regions_must_match_the_grid():
    labels = np.zeros((5, 5, 5), dtype=int)
    with pytest.raises(ValueError, match="different shapes"):
        lesion_regions.regional_load(labels, {"periventricular": np.zeros((4, 4, 4), bool)}, ISO)
    with pytest.raises(ValueError, match="reserved"):
        lesion_regions.assign_region(labels, {"unassigned": np.zeros((5, 5, 5), bool)})


# --- agreement with manual labels --------------------------------------------------------------

def two_lesions() -> np.ndarray:
    return box(box(volume(), (2, 2, 2), (3, 3, 3)), (12, 12, 12), (2, 2, 2))   # 27 + 8 voxels


def test_identical_masks_are_perfect():
    truth = two_lesions()
    m = measures.segmentation_metrics(truth.copy(), truth, ANISO)
    assert m["dice"] == 1.0 and m["lesion_f1"] == 1.0
    assert m["lesion_precision"] == 1.0 and m["lesion_recall"] == 1.0
    assert m["volume_error_percent"] == 0.0
    assert m["truth_volume_ml"] == pytest.approx(35 * 3 / 1000)


def test_one_miss_and_one_false_lesion_give_half():
    truth = two_lesions()
    pred = box(box(volume(), (2, 2, 2), (3, 3, 3)), (12, 2, 12), (2, 2, 2))    # misses 2nd, adds one
    m = measures.segmentation_metrics(pred, truth, ISO)
    assert (m["n_truth"], m["n_pred"]) == (2, 2)
    assert (m["n_truth_detected"], m["n_pred_true_positive"]) == (1, 1)
    assert (m["false_negatives"], m["false_positives"]) == (1, 1)
    assert m["lesion_recall"] == 0.5 and m["lesion_precision"] == 0.5 and m["lesion_f1"] == 0.5
    assert m["dice"] == pytest.approx(2 * 27 / 70)
    assert m["volume_error_percent"] == 0.0


def test_any_overlap_detects_and_volume_error_sign():
    truth = box(volume(), (2, 2, 2), (3, 3, 3))                                # 27 voxels
    pred = box(volume(), (2, 2, 2), (4, 3, 3))                                 # 36 voxels, covers it
    m = measures.segmentation_metrics(pred, truth, ISO)
    assert m["lesion_f1"] == 1.0
    assert m["volume_error_percent"] == pytest.approx(100 * 9 / 27)
    assert m["volume_difference_ml"] == pytest.approx(0.009)
    shifted = box(volume(), (4, 4, 4), (3, 3, 3))                              # overlaps by 1 voxel
    assert measures.segmentation_metrics(shifted, truth, ISO)["lesion_recall"] == 1.0


def test_specks_under_minimum_size_are_ignored_by_default():
    truth = box(volume(), (2, 2, 2), (3, 3, 3))
    pred = box(truth.copy(), (15, 15, 15), (2, 1, 1))                          # 2 mm^3 speck
    assert measures.segmentation_metrics(pred, truth, ISO)["lesion_precision"] == 1.0
    assert measures.segmentation_metrics(pred, truth, ISO, min_volume_mm3=0)["lesion_precision"] == 0.5


def test_empty_truth_and_empty_prediction():
    truth = two_lesions()
    empty = volume()
    both = measures.segmentation_metrics(empty, empty, ISO)
    assert both["dice"] == 1.0 and both["lesion_f1"] == 1.0
    assert both["lesion_precision"] == 1.0 and both["lesion_recall"] == 1.0
    assert math.isnan(both["volume_error_percent"]) and both["volume_difference_ml"] == 0.0

    false_alarm = measures.segmentation_metrics(truth, empty, ISO)
    assert false_alarm["dice"] == 0.0 and false_alarm["lesion_f1"] == 0.0
    assert false_alarm["lesion_precision"] == 0.0 and math.isnan(false_alarm["lesion_recall"])
    assert math.isnan(false_alarm["volume_error_percent"])
    assert false_alarm["false_positives"] == 2

    missed = measures.segmentation_metrics(empty, truth, ISO)
    assert missed["dice"] == 0.0 and missed["lesion_f1"] == 0.0
    assert missed["lesion_recall"] == 0.0 and math.isnan(missed["lesion_precision"])
    assert missed["volume_error_percent"] == -100.0 and missed["false_negatives"] == 2


def test_metrics_need_one_grid():
    with pytest.raises(ValueError, match="different shapes"):
        measures.segmentation_metrics(volume((4, 4, 4)), volume((4, 4, 5)), ISO)


def synthetic_brain():
    """``(brain, wm, gm, affine)``: a spherical "brain" (radius 60 mm, 2 mm voxels, centred at MNI
    (0, -20, 0)): a 6 mm cortex ribbon of grey matter, white matter inside, and a central ventricle
    (radius 12 mm). Shared with ``test_infratentorial.py``."""
    n, step = 71, 2.0
    affine = np.diag([step, step, step, 1.0])
    affine[:3, 3] = [-70.0, -90.0, -70.0]  # voxel centres on even mm, so the probes below are exact
    ijk = np.indices((n, n, n)).astype(float)
    xyz = np.stack([affine[a, a] * ijk[a] + affine[a, 3] for a in range(3)])
    r = np.sqrt(xyz[0] ** 2 + (xyz[1] + 20.0) ** 2 + xyz[2] ** 2)
    brain = r <= 60
    vent = r <= 12
    gm = ((r > 54) & brain).astype(float)
    wm = (brain & ~vent & (r <= 54)).astype(float)
    return brain, wm, gm, affine


def test_template_regions_on_a_synthetic_brain():
    brain, wm, gm, affine = synthetic_brain()
    step = affine[0, 0]

    found = lesion_regions.template_regions(wm, gm, brain, affine)

    assert set(found) == {lesion_regions.INFRATENTORIAL, lesion_regions.PERIVENTRICULAR, lesion_regions.JUXTACORTICAL,
                            lesion_regions.DEEP_WHITE_MATTER}
    at = lambda x, y, z: tuple(int(round((v - affine[a, 3]) / step)) for a, v in enumerate((x, y, z)))  # noqa: E731
    assert found[lesion_regions.PERIVENTRICULAR][at(0, -20, 14)]  # 2 mm above the ventricle
    assert not found[lesion_regions.PERIVENTRICULAR][at(0, -20, 30)]
    assert found[lesion_regions.JUXTACORTICAL][at(0, -20, 52)]  # 2 mm under the cortex
    assert found[lesion_regions.DEEP_WHITE_MATTER][at(0, -20, 30)]
    assert found[lesion_regions.INFRATENTORIAL][at(0, -60, -40)]  # low and posterior
    assert not found[lesion_regions.INFRATENTORIAL][at(45, 0, -30)]  # a "temporal pole"
    assert not any(v[at(0, -20, 0)] for v in found.values())  # inside the ventricle: no region
    # the regions cover the white matter
    covered = np.zeros_like(brain)
    for v in found.values():
        covered |= v
    assert covered[wm > 0].all()


def test_lesion_report_counts_regions_and_validates_against_references():
    shape, zooms = (40, 40, 40), (1.0, 1.0, 2.0)
    mask = np.zeros(shape, bool)
    mask[5:10, 5:10, 5:10] = True      # 125 voxels = 250 mm^3, in "periventricular"
    mask[30:33, 30:33, 30:33] = True   # 27 voxels = 54 mm^3, in "deep_white_matter"
    mask[20, 20, 20] = True            # 2 mm^3: under the minimum, dropped
    peri = np.zeros(shape, bool); peri[:20] = True
    deep = np.zeros(shape, bool); deep[20:] = True
    truth = np.zeros(shape, bool); truth[5:10, 5:10, 5:10] = True
    rows, summary, validation = report.lesion_report(
        mask, zooms, np.diag([1.0, 1.0, 2.0, 1.0]), {"periventricular": peri, "deep_white_matter": deep},
        {"rater1": truth})
    assert [r["lesion_id"] for r in rows] == [1, 2]
    assert rows[0]["volume_mm3"] == pytest.approx(250) and rows[0]["region"] == "periventricular"
    assert rows[1]["region"] == "deep_white_matter" and rows[1]["z_mm"] == pytest.approx(2 * 31)
    assert set(rows[0]) == set(report.LESION_COLUMNS)
    assert summary["lesion_count"] == 2 and summary["total_volume_ml"] == pytest.approx(0.304)
    assert summary["periventricular_count"] == 1 and summary["deep_white_matter_volume_ml"] == pytest.approx(0.054)
    assert set(summary) <= set(report.SUMMARY_COLUMNS)
    (v,) = validation
    assert v["reference"] == "rater1" and v["dice"] == pytest.approx(2 * 125 / (152 + 125))
    assert v["lesion_recall"] == 1.0 and v["lesion_precision"] == 0.5


def test_lesions_lying_mostly_outside_the_white_matter_are_dropped():
    from bids_app.mslesion.measures import white_matter_components

    wm = np.zeros((20, 20, 20))
    wm[:10] = 0.9  # white matter in the first half
    mask = np.zeros(wm.shape, bool)
    mask[2:5, 2:5, 2:5] = True        # inside: mean WM 0.9
    mask[8:12, 8:10, 8:10] = True     # straddles: half inside, mean 0.45
    mask[15:18, 15:18, 15:18] = True  # outside: mean 0
    kept = white_matter_components(mask, wm, 0.4)
    assert kept[3, 3, 3] and kept[9, 9, 9] and not kept[16, 16, 16]
    kept = white_matter_components(mask, wm, 0.5)
    assert kept[3, 3, 3] and not kept[9, 9, 9] and kept.sum() == 27
    assert np.array_equal(white_matter_components(mask, wm, 0.0), mask)  # 0: off


def test_hysteresis_keeps_lesions_with_a_confident_core_and_their_rim():
    from bids_app.mslesion.measures import hysteresis_components

    prob = np.zeros((20, 20, 20), np.float32)
    prob[2:9, 2:9, 2:9] = 0.3        # rim of lesion A
    prob[4:7, 4:7, 4:7] = 0.8        # its core
    prob[12:16, 12:16, 12:16] = 0.35  # a faint blob without a core
    kept = hysteresis_components(prob, 0.25, 0.5)
    assert kept[2:9, 2:9, 2:9].all() and kept.sum() == 7 ** 3
    np.testing.assert_array_equal(hysteresis_components(prob, 0.5, 0.5), prob >= 0.5)
    assert hysteresis_components(prob, 0.25, 0.9).sum() == 0
    # 26-connectivity, as lesions are counted: a corner-touching rim voxel belongs to the lesion.
    prob[9, 9, 9] = 0.3
    assert hysteresis_components(prob, 0.25, 0.5)[9, 9, 9]
    with pytest.raises(ValueError, match="low <= high"):
        hysteresis_components(prob, 0.6, 0.5)
