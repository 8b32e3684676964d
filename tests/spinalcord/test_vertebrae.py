"""Discs, vertebral levels, the disc-label output and the PAM50 mapping, on phantoms with known answers."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.spinalcord import measures, vertebrae

PAM50_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "templates" / "PAM50_small"


def test_levels_from_discs_follow_sct_convention():
    # Axis 2 runs inferior -> superior: disc 3 (C2/C3) at z=20 is above disc 4 (C3/C4) at z=10.
    levels = vertebrae.levels_from_discs({3: 20.0, 4: 10.0}, n_slices=40, dz=1.0)
    assert levels[15] == 3  # between C2/C3 and C3/C4: level C3
    assert levels[25] == 2  # above the C2/C3 disc, within one vertebra: C2
    assert levels[5] == 4   # below the C3/C4 disc, within one vertebra: C4
    assert levels[39] == 0 and levels[31] == 0  # more than one vertebral height (10 mm) above the top disc
    assert levels[0] == 4


def test_levels_from_single_disc_use_default_height():
    levels = vertebrae.levels_from_discs({3: 30.0}, n_slices=60, dz=1.0)
    assert set(levels[31:50]) == {2} and levels[55] == 0
    assert set(levels[11:30]) == {3} and levels[5] == 0


def test_levels_map_through_world_coordinates():
    """Disc labels drawn on a co-registered image with another grid land on the right slices."""
    target_affine = np.diag([1.0, 1.0, 2.0, 1.0])
    label_affine = np.diag([0.5, 0.5, 0.5, 1.0])
    label = np.zeros((40, 40, 80), np.float32)
    label[20, 20, 60] = 3  # world z = 30 mm -> target slice 15
    label[20, 20, 20] = 4  # world z = 10 mm -> target slice 5
    discs, levels = vertebrae.discs_and_levels(label, label_affine, target_affine, n_slices=20, dz=2.0)
    assert levels[10] == 3 and levels[16] == 2 and levels[3] == 4
    assert discs == pytest.approx({3: 15.0, 4: 5.0})


def test_levelled_mask_majority_per_slice():
    levelled = np.zeros((8, 8, 6), int)
    levelled[1:7, 1:7, 0:2] = 5
    levelled[1:7, 1:7, 2:4] = 4
    levelled[1, 1, 2] = 5
    discs, levels = vertebrae.discs_and_levels(levelled, np.eye(4), np.eye(4), n_slices=6, dz=1.0)
    assert levels.tolist() == [5, 5, 4, 4, 0, 0]
    assert discs == {5: 1.5}  # midway between the highest slice of level 5 and the lowest of level 4


def curved_cord(shape=(40, 40, 120), zooms=(1.0, 1.0, 1.0), radius=3.5):
    """A cord whose centreline bends in the sagittal plane (y = 20 + 6 sin(z / 30)), and its centre per slice."""
    x, y = np.meshgrid(np.arange(shape[0]) * zooms[0], np.arange(shape[1]) * zooms[1], indexing="ij")
    cord = np.zeros(shape, np.float32)
    centres = []
    for k in range(shape[2]):
        cy = 20 + 6 * np.sin(k * zooms[2] / 30)
        cord[:, :, k] = ((x - 20) ** 2 + (y - cy) ** 2) <= radius ** 2
        centres.append((20.0, cy))
    return cord, np.array(centres)


def test_disc_labels_round_trip_through_a_rotated_grid(tmp_path):
    """Discs written by the app on one grid are read back at the same heights from another grid."""
    cord, _ = curved_cord()
    zooms = (1.0, 1.0, 1.0)
    truth = {3: 100.0, 4: 82.0, 5: 65.0, 6: 49.0}
    centre = measures.csa_per_slice(cord, zooms).centre_mm
    points = vertebrae.disc_volume(truth, centre, cord.shape, zooms)
    assert sorted(np.unique(points[points > 0]).tolist()) == [3, 4, 5, 6]
    for n, z in truth.items():  # one voxel each, on the cord centreline
        (x, y, k), = np.argwhere(points == n)
        assert k == z and cord[x, y, k] == 1
    # Save in a permuted/flipped orientation (as an image stored PSR would be), reload, map back.
    affine = np.array([[0, 0, 1.0, -20], [-1.0, 0, 0, 30], [0, 1.0, 0, -50], [0, 0, 0, 1]])
    stored = nib.Nifti1Image(np.transpose(points, (1, 2, 0))[::-1].copy(), affine)
    path = tmp_path / "sub-01_T2w_label-disc_dseg.nii.gz"
    stored.to_filename(path)
    loaded = nib.load(path)
    canonical = nib.as_closest_canonical(loaded)
    discs, levels = vertebrae.discs_and_levels(np.asarray(loaded.dataobj), loaded.affine, canonical.affine,
                                               cord.shape[2], 1.0)
    assert discs == pytest.approx(truth)
    assert levels[90] == 3 and levels[70] == 4 and levels[101] == 2


def test_curved_cord_levels_and_pam50_mapping_are_complete_and_monotonic():
    cord, _ = curved_cord()
    truth = {3: 100.0, 4: 82.0, 5: 65.0, 6: 49.0}
    levels = vertebrae.levels_from_discs(truth, cord.shape[2], 1.0)
    # A disc exactly on a slice leaves that slice in the level below: back within half a slice.
    assert vertebrae.discs_from_levels(levels) == pytest.approx({n: z + 0.5 for n, z in truth.items()}, abs=0.01)
    z = np.arange(cord.shape[2], dtype=float)
    pam50 = vertebrae.to_pam50(z, truth, 1.0)
    placed = ~np.isnan(pam50)
    # Complete: every slice with a level has a template position, and the discs land on the template's.
    assert placed[levels > 0].all()
    for n, s in truth.items():
        assert pam50[int(s)] == pytest.approx(vertebrae.PAM50_DISC_SLICES[n])
    # Monotonic: superior slices map to superior template slices.
    assert np.all(np.diff(pam50[placed]) > 0)
    # The template level of each mapped slice is the subject's level.
    same = vertebrae.pam50_level(pam50) == levels
    inside = (z <= 100) & (z > 49)
    assert same[inside].all()  # between the outermost discs: exactly the subject's level
    assert same[placed].mean() > 0.95  # extrapolated ends may cross into the next template level
    rows = vertebrae.pam50_rows(pam50, np.full(z.shape, 70.0), np.full(z.shape, 68.0))
    assert [r["pam50_slice"] for r in rows] == sorted({r["pam50_slice"] for r in rows}, reverse=True)
    assert all(r["csa_mm2"] == 70.0 and 1 <= r["vertlevel"] <= 7 for r in rows)


def test_pam50_level_of_every_template_slice_between_discs():
    slices = np.arange(30, 245)
    levels = vertebrae.pam50_level(slices)
    assert levels[slices == 236][0] == 1 and levels[slices == 235][0] == 2 and levels[slices == 226][0] == 3
    assert np.all(np.diff(levels[(slices >= 43) & (slices <= 240)]) <= 0)  # level decreases going up


@pytest.mark.skipif(not PAM50_DIR.is_dir(), reason="shared PAM50_small template not available")
def test_pam50_disc_constants_match_the_template():
    disc = np.asarray(nib.load(PAM50_DIR / "PAM50_small_label_disc.nii.gz").dataobj)
    found = {int(disc[tuple(i)]): int(i[2]) for i in np.argwhere(disc > 0)}
    assert found == vertebrae.PAM50_DISC_SLICES


def _measure(tmp_path, disc_world_z):
    """Run the MeasureCSA node on a straight synthetic cord (1 mm, 60 slices) with disc points at the
    given world heights (mm), drawn on another grid (0.5 mm) of the same session."""
    from bids_app.spinalcord.interfaces import MeasureCSA
    from bids_app.synthetic import elliptic_cylinder

    zooms = (1.0, 1.0, 1.0)
    cord = elliptic_cylinder((30, 30, 60), zooms, 5.0, 4.0, centre_mm=(15.0, 15.0, 30.0))
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.Nifti1Image(cord.astype(np.float32), affine).to_filename(tmp_path / "soft.nii.gz")
    nib.Nifti1Image((cord >= 0.5).astype(np.uint8), affine).to_filename(tmp_path / "mask.nii.gz")
    points = np.zeros((60, 60, 240), np.uint8)
    for n, z in disc_world_z.items():
        points[30, 30, int(z / 0.5)] = n
    nib.Nifti1Image(points, np.diag([0.5, 0.5, 0.5, 1.0])).to_filename(tmp_path / "discs.nii.gz")
    node = MeasureCSA(soft_file=str(tmp_path / "soft.nii.gz"), mask_file=str(tmp_path / "mask.nii.gz"),
                      level_file=str(tmp_path / "discs.nii.gz"))
    return node.run(cwd=str(tmp_path)).outputs


def test_measure_node_writes_levels_pam50_table_and_disc_points(tmp_path):
    import pandas as pd

    out = _measure(tmp_path, {3: 40.0, 4: 20.0})
    levels = pd.read_csv(out.levels_tsv, sep="\t", dtype={"level": str})
    assert levels["level"].tolist() == ["2", "3", "4"]
    assert out.summary["Discs"] == {"3": 40.0, "4": 20.0} and out.summary["SlicesC2C3"] > 30
    pam50 = pd.read_csv(out.pam50_tsv, sep="\t")
    assert {227, 218} <= set(pam50["pam50_slice"]) and pam50["pam50_slice"].is_monotonic_decreasing
    points = np.asarray(nib.load(out.disc_file).dataobj)
    (x3, y3, z3), = np.argwhere(points == 3)
    assert z3 == 40 and abs(x3 - 15) <= 1 and abs(y3 - 15) <= 1  # on the cord centreline at the disc


def test_discs_outside_the_field_of_view_give_slabs_not_levels(tmp_path):
    import pandas as pd

    out = _measure(tmp_path, {3: 110.0})  # 50 mm above the image: no level can be placed
    levels = pd.read_csv(out.levels_tsv, sep="\t", dtype={"level": str})
    assert levels["level"].str.startswith("z").all()  # 10 mm slabs
    assert "outside its field of view" in out.summary["LevelSource"]
    assert len(pd.read_csv(out.pam50_tsv, sep="\t")) == 0 and not np.asarray(nib.load(out.disc_file).dataobj).any()
