"""ich measures on synthetic arrays with known answers (bids_app/ich/measures.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bids_app.ich import measures

CLASSES = {0: "background", 1: "IPH", 2: "SDH", 3: "EDH", 4: "SAH", 5: "IVH"}


def test_volume_ml_is_count_times_voxel_volume():
    mask = np.zeros((10, 10, 10), bool)
    mask[:5, :4, :2] = True  # 40 voxels of 2 x 2 x 5 mm = 20 mm³ each
    assert measures.voxel_volume_mm3((2.0, 2.0, 5.0)) == 20.0
    assert measures.volume_ml(mask, (2.0, 2.0, 5.0)) == pytest.approx(0.8)
    assert measures.volume_ml(np.zeros((3, 3, 3)), (1, 1, 1)) == 0.0


def test_binarise_uses_the_given_threshold_inclusively():
    prob = np.array([0.2, 0.5, 0.51, 0.9]).reshape(1, 1, 4)
    assert measures.binarise(prob, 0.5).ravel().tolist() == [False, True, True, True]
    assert measures.binarise(prob, 0.6).ravel().tolist() == [False, False, False, True]


def test_small_components_are_dropped_by_volume_with_26_connectivity():
    mask = np.zeros((20, 20, 20), bool)
    mask[2:7, 2:7, 2:7] = True          # 125 voxels: 1 mL at 2 mm
    mask[15, 15, 15] = mask[16, 16, 16] = True  # corner neighbours: one component of 2 voxels (0.016 mL)
    mask[10, 2, 2] = True               # one voxel (0.008 mL)
    zooms = (2.0, 2.0, 2.0)
    assert measures.component_count(mask) == 3
    assert measures.remove_small_components(mask, zooms, 0.0).sum() == mask.sum()  # 0 keeps all
    kept = measures.remove_small_components(mask, zooms, 0.016)  # exactly the threshold is kept
    assert kept.sum() == 127 and measures.component_count(kept) == 2
    assert measures.remove_small_components(mask, zooms, 0.5).sum() == 125
    assert not measures.remove_small_components(mask, zooms, 2.0).any()


def test_type_is_the_argmax_over_the_bleed_classes_only():
    probs = np.zeros((6, 2, 1, 1), np.float32)
    probs[:, 0, 0, 0] = [0.9, 0.01, 0.05, 0.02, 0.01, 0.01]  # background wins overall, SDH among the bleeds
    probs[:, 1, 0, 0] = [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]        # IVH
    assert measures.bleed_type(probs).ravel().tolist() == [2, 5]
    mask = np.array([True, False]).reshape(2, 1, 1)
    assert measures.type_map(mask, measures.bleed_type(probs)).ravel().tolist() == [2, 0]


def test_per_type_volumes_add_up_to_the_total():
    dseg = np.zeros((10, 10, 10), np.uint8)
    dseg[:2, :5, :10] = 1   # 100 voxels IPH
    dseg[5:, :2, :5] = 4    # 50 voxels SAH
    mask = dseg > 0
    row = measures.haemorrhage_measures(mask, dseg, (1.0, 1.0, 2.0), CLASSES, intracranial_ml=30.0)
    assert row["total_volume_ml"] == pytest.approx(0.3)
    assert row["IPH_volume_ml"] == pytest.approx(0.2) and row["SAH_volume_ml"] == pytest.approx(0.1)
    assert row["SDH_volume_ml"] == row["EDH_volume_ml"] == row["IVH_volume_ml"] == 0.0
    assert sum(row[f"{n}_volume_ml"] for n in ("IPH", "SDH", "EDH", "SAH", "IVH")) == pytest.approx(0.3)
    assert row["component_count"] == 2 and row["intracranial_volume_ml"] == 30.0
    assert row["haemorrhage_percent"] == pytest.approx(1.0)
    assert measures.haemorrhage_measures(mask, dseg, (1, 1, 1), CLASSES)["haemorrhage_percent"] is None


def test_a_sphere_of_known_volume():
    """A 20 mL sphere on a 2 mm grid measures 20 mL to the voxelisation (under 2 %)."""
    from bids_app.synthetic import synthetic_ct

    _, _, bleed = synthetic_ct(20.0)
    assert measures.volume_ml(bleed, (2.0, 2.0, 2.0)) == pytest.approx(20.0, rel=0.02)
    assert measures.component_count(bleed) == 1


def test_classes_and_columns_come_from_the_metadata():
    classes = measures.classes_of({"classes": {"0": "background", "1": "IPH", "2": "XYZ"}})
    assert classes == {0: "background", 1: "IPH", 2: "XYZ"}
    columns = measures.volume_columns(classes)
    assert "IPH_volume_ml" in columns and "XYZ_volume_ml" in columns and "background_volume_ml" not in columns
    assert columns["total_volume_ml"]["Units"] == "mL"


def test_effective_zooms_give_the_true_voxel_volume_of_a_tilted_gantry():
    tilt = np.deg2rad(20.0)
    affine = np.eye(4)
    affine[:3, :3] = [[0.5, 0, 0], [0, 0.5, 5.0 * np.sin(tilt)], [0, 0, 5.0 * np.cos(tilt)]]  # slices 5 mm along the tilt
    zooms = measures.effective_zooms(affine)
    assert zooms[:2] == pytest.approx((0.5, 0.5)) and zooms[2] == pytest.approx(5.0 * np.cos(tilt))
    assert measures.voxel_volume_mm3(zooms) == pytest.approx(abs(np.linalg.det(affine[:3, :3])))
    assert measures.effective_zooms(np.diag([2.0, 3.0, 4.0, 1.0])) == pytest.approx((2.0, 3.0, 4.0))
