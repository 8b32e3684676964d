"""CSA, levels and mask measures on phantoms with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bids_app.spinalcord import measures
from bids_app.synthetic import elliptic_cylinder

A, B = 6.0, 4.0
TRUE_CSA = math.pi * A * B


@pytest.mark.parametrize("tilt", [0.0, 10.0, 20.0, 30.0])
def test_csa_of_tilted_elliptic_cylinder_within_2_percent(tilt):
    zooms = (0.5, 0.5, 1.0)
    cord = elliptic_cylinder((64, 64, 30), zooms, A, B, tilt_deg=tilt, azimuth_deg=30.0)
    csa = measures.csa_per_slice(cord, zooms)
    inner = csa.csa_mm2[5:-5]  # the cylinder leaves the field of view at the ends when tilted
    assert np.all(np.abs(inner / TRUE_CSA - 1) < 0.02), inner
    assert np.nanmean(csa.angle_deg[5:-5]) == pytest.approx(tilt, abs=1.0)


def test_angle_correction_matters_for_tilted_cord():
    zooms = (0.5, 0.5, 1.0)
    cord = elliptic_cylinder((64, 64, 20), zooms, A, B, tilt_deg=25.0)
    raw = measures.csa_per_slice(cord, zooms, angle_correction=False).csa_mm2[5:-5]
    assert np.mean(raw) == pytest.approx(TRUE_CSA / math.cos(math.radians(25.0)), rel=0.02)


def test_soft_csa_beats_binary_on_partial_volume_phantom():
    """At 1.3 mm in-plane voxels the cord is ~9 x 6 voxels: binarising loses the partial volume."""
    zooms = (1.3, 1.3, 2.0)
    errors_soft, errors_binary = [], []
    for shift in np.linspace(0, 1.3, 7):  # sub-voxel positions of the cord
        cord = elliptic_cylinder((24, 24, 6), zooms, A, B, centre_mm=(15 + shift, 15 + shift / 2, 5.0))
        soft = measures.csa_per_slice(cord, zooms).csa_mm2
        binary = measures.csa_per_slice((cord >= 0.5).astype(np.float32), zooms).csa_mm2
        errors_soft.append(abs(np.mean(soft) / TRUE_CSA - 1))
        errors_binary.append(abs(np.mean(binary) / TRUE_CSA - 1))
    assert max(errors_soft) < 0.005
    assert np.mean(errors_binary) > 3 * np.mean(errors_soft)


def test_empty_segmentation_gives_nan_not_zero():
    csa = measures.csa_per_slice(np.zeros((8, 8, 4)), (1, 1, 1))
    assert np.all(np.isnan(csa.csa_mm2))


def test_aggregate_by_level_and_by_range():
    zooms = (0.5, 0.5, 1.0)
    cord = elliptic_cylinder((40, 40, 30), zooms, A, B)
    csa = measures.csa_per_slice(cord, zooms)
    levels = np.array([0] * 10 + [3] * 10 + [2] * 10)
    rows = measures.aggregate_by_level(csa, levels)
    assert [r["level"] for r in rows] == ["2", "3"]
    assert rows[0]["n_slices"] == 10 and rows[0]["csa_mean_mm2"] == pytest.approx(TRUE_CSA, rel=0.02)
    slabs = measures.aggregate_by_range(csa, step_mm=10.0)
    assert [r["level"] for r in slabs] == ["z0-10mm", "z10-20mm", "z20-30mm"]


def test_binarise_keeps_largest_component():
    soft = np.zeros((10, 10, 10), np.float32)
    soft[1:5, 1:5, 1:5] = 0.9
    soft[7:9, 7:9, 7:9] = 0.8
    mask = measures.binarise(soft, 0.5, largest_component=True)
    assert mask.sum() == 64
    assert measures.binarise(soft, 0.5, largest_component=False).sum() == 72


def test_dice():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert measures.dice(a, b) == pytest.approx(0.5)
    assert measures.dice(np.zeros(3), np.zeros(3)) == 1.0
