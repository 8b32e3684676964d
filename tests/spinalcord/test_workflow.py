"""The whole app on a synthetic dataset: participant level (Nipype MultiProc) then group level."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.cli import main


@pytest.fixture(scope="module")
def derivatives(small_bids, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    code = main([str(small_bids), str(out), "participant", "--device", "cpu", "--nprocs", "2",
                 "-w", str(out.parent / "work"), "--bids-filter-file", str(_filter(out.parent))])
    assert code == 0
    return out


def _filter(folder):
    path = folder / "filter.json"
    path.write_text(json.dumps({"spinalcord": {"suffix": ["T2w", "T1w"]}}))
    return path


def test_outputs_on_native_grid_with_sidecars(derivatives, small_bids):
    anat = derivatives / "sub-01" / "anat"
    for contrast in ("T1w", "T2w"):
        source = nib.load(small_bids / "sub-01" / "anat" / f"sub-01_{contrast}.nii.gz")
        soft = nib.load(anat / f"sub-01_label-SC_desc-{contrast}_probseg.nii.gz")
        mask = nib.load(anat / f"sub-01_label-SC_desc-{contrast}_mask.nii.gz")
        assert soft.shape == source.shape and np.allclose(soft.affine, source.affine)
        assert mask.shape == source.shape
        values = np.asarray(soft.dataobj)
        assert values.min() >= 0 and values.max() <= 1 and set(np.unique(np.asarray(mask.dataobj))) == {0, 1}
        meta = json.loads((anat / f"sub-01_label-SC_desc-{contrast}_probseg.json").read_text())
        assert meta["Sources"] == [f"bids:raw:sub-01/anat/sub-01_{contrast}.nii.gz"]
        assert len(meta["Model"]["SHA256"]) == 64
    assert not (anat / "sub-01_label-SC_desc-T2starw_mask.nii.gz").exists()  # filtered out
    description = json.loads((derivatives / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"


def test_csa_tables(derivatives, small_bids):
    anat = derivatives / "sub-01" / "anat"
    slices = pd.read_csv(anat / "sub-01_label-SC_desc-T2wslices_morph.tsv", sep="\t", na_values="n/a")
    true_csa = math.pi * 6.0 * 4.0  # the synthetic sub-01 cord
    assert slices["csa_mm2"].mean() == pytest.approx(true_csa, rel=0.12)
    assert slices["angle_deg"].median() == pytest.approx(8.0, abs=3.0)  # phantom tilted by 8 degrees
    levels = pd.read_csv(anat / "sub-01_label-SC_desc-T2wlevels_morph.tsv", sep="\t", dtype={"level": str})
    assert levels["level"].tolist() == ["2", "3", "4"]  # from the disc labels (3 and 4)
    t1_levels = pd.read_csv(anat / "sub-01_label-SC_desc-T1wlevels_morph.tsv", sep="\t", dtype={"level": str})
    assert set(t1_levels["level"]) <= {"2", "3", "4"}  # the T2w's discs serve the T1w too
    meta = json.loads((anat / "sub-01_label-SC_desc-T2wlevels_morph.json").read_text())
    assert meta["LevelSource"] == "sub-01_T2w_label-disc_seg.nii.gz" and "csa_mean_mm2" in meta
    assert meta["CSAC2C3Mm2"] == pytest.approx(true_csa, rel=0.12) and "csa_binary_mean_mm2" in levels
    # The discs as this image sees them: one voxel each, values 3 and 4, on the source grid.
    discs = nib.load(anat / "sub-01_desc-T2wdiscs_dseg.nii.gz")
    values = np.asarray(discs.dataobj)
    assert sorted(values[values > 0].tolist()) == [3, 4]
    assert discs.shape == nib.load(next(small_bids.rglob("sub-01_T2w.nii.gz"))).shape
    pam50 = pd.read_csv(anat / "sub-01_label-SC_desc-T2wpam50_morph.tsv", sep="\t")
    assert set(pam50["vertlevel"]) <= {1, 2, 3, 4, 5} and pam50["pam50_slice"].is_monotonic_decreasing
    assert 227 in set(pam50["pam50_slice"]) and 218 in set(pam50["pam50_slice"])  # discs 3 and 4 of PAM50


def test_group_level(derivatives, small_bids):
    assert main([str(small_bids), str(derivatives), "group"]) == 0
    table = pd.read_csv(derivatives / "group_csa.tsv", sep="\t", dtype={"level": str})
    assert set(table["contrast"]) == {"T1w", "T2w"}
    assert set(table["participant_id"]) == {"sub-01"}
    assert table["csa_mean_mm2"].between(50, 100).all()
    assert (derivatives / "figures" / "group_csa.png").stat().st_size > 10_000
    columns = json.loads((derivatives / "group_csa.json").read_text())
    assert set(table.columns) <= set(columns)


def test_rerun_is_cached(derivatives, small_bids):
    """A second run reuses the Nipype cache and pybids database and leaves outputs identical."""
    soft = derivatives / "sub-01" / "anat" / "sub-01_label-SC_desc-T2w_probseg.nii.gz"
    before = soft.read_bytes()
    code = main([str(small_bids), str(derivatives), "participant", "--device", "cpu", "--nprocs", "2",
                 "-w", str(derivatives.parent / "work"), "--bids-filter-file", str(derivatives.parent / "filter.json")])
    assert code == 0 and soft.read_bytes() == before


def test_derivatives_pass_the_bids_validator(derivatives):
    from bids_app.bids import validate_dataset

    validate_dataset(derivatives)  # raises DatasetError on any validator error
    meta = json.loads((derivatives / "sub-01" / "anat" / "sub-01_label-SC_desc-T2w_mask.json").read_text())
    assert meta["Type"] == "ROI" and meta["SpatialReference"] == "bids:raw:sub-01/anat/sub-01_T2w.nii.gz"
