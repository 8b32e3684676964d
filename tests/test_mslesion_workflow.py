"""The mslesion task end to end: a synthetic oblique thick-slice FLAIR with three known lesions,
the shipped model, participant level (Nipype MultiProc) then group level."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.cli import main
from bids_app.synthetic import make_lesion_dataset


@pytest.fixture(scope="module")
def lesion_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lesion")
    bids = make_lesion_dataset(root / "ds")
    out = root / "out"
    code = main([str(bids), str(out), "participant", "--tasks", "mslesion", "--device", "cpu", "--nprocs", "2",
                 "-w", str(root / "work")])
    assert code == 0
    return bids, out


def test_outputs_on_the_native_flair_grid_with_sidecars(lesion_run):
    bids, out = lesion_run
    anat = out / "sub-01" / "anat"
    source = nib.load(bids / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz")
    prob = nib.load(anat / "sub-01_label-lesion_desc-FLAIR_probseg.nii.gz")
    mask = nib.load(anat / "sub-01_label-lesion_desc-FLAIR_mask.nii.gz")
    for img in (prob, mask):
        assert img.shape == source.shape and np.allclose(img.affine, source.affine, atol=1e-4)
    p = np.asarray(prob.dataobj)
    assert p.min() >= 0 and p.max() <= 1
    meta = json.loads((anat / "sub-01_label-lesion_desc-FLAIR_mask.json").read_text())
    assert meta["Sources"] == ["bids:raw:sub-01/anat/sub-01_FLAIR.nii.gz"] and len(meta["Model"]["SHA256"]) == 64
    assert 0 < meta["Threshold"] < 1
    # The mask is the thresholded map without lesions under the minimum volume.
    m = np.asarray(mask.dataobj) > 0
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1} and not (m & (p < meta["Threshold"])).any()


def test_the_known_lesions_are_found_and_measured(lesion_run):
    bids, out = lesion_run
    anat = out / "sub-01" / "anat"
    validation = pd.read_csv(anat / "sub-01_label-lesion_desc-FLAIRvalidation_morph.tsv", sep="\t")
    (row,) = validation.to_dict("records")
    assert row["reference"] == "sub-01_FLAIR_label-lesion_seg.nii.gz"
    # Three white-matter spheres of 5, 4 and 3.5 mm radius (0.95 mL on this 1 x 1 x 4 mm grid).
    assert row["truth_volume_ml"] == pytest.approx(0.95, abs=0.02)
    assert row["lesion_recall"] >= 2 / 3 and row["dice"] >= 0.4
    summary = pd.read_csv(anat / "sub-01_label-lesion_desc-FLAIRsummary_morph.tsv", sep="\t").iloc[0]
    table = pd.read_csv(anat / "sub-01_label-lesion_desc-FLAIRlesions_morph.tsv", sep="\t")
    assert summary["lesion_count"] == len(table) and summary["total_volume_ml"] == pytest.approx(table["volume_ml"].sum())
    regions = [c for c in summary.index if c.endswith("_count") and c != "lesion_count"]
    assert sum(summary[c] for c in regions) == summary["lesion_count"]
    # The largest lesion is the 5 mm sphere centred at (-26, -10, 28) mm: registration, back-resampling
    # and the centroid all hold to 2 mm; it lies in white matter away from cortex and brainstem.
    largest = table.iloc[0]
    assert np.allclose(largest[["x_mm", "y_mm", "z_mm"]].to_numpy(float), (-26, -10, 28), atol=2.0)
    assert largest["region"] in ("deep_white_matter", "periventricular")
    sidecar = json.loads((anat / "sub-01_label-lesion_desc-FLAIRlesions_morph.json").read_text())
    assert set(table.columns) <= set(sidecar)


def test_group_lesion_table(lesion_run):
    bids, out = lesion_run
    assert main([str(bids), str(out), "group", "--tasks", "mslesion"]) == 0
    table = pd.read_csv(out / "group_lesions.tsv", sep="\t")
    assert table["participant_id"].tolist() == ["sub-01"] and table["contrast"].tolist() == ["FLAIR"]
    assert (out / "figures" / "group_lesions_regions.png").is_file()
