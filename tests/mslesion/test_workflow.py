"""The mslesion task end to end: a synthetic oblique thick-slice FLAIR with three known lesions,
the shipped model, participant level (Nipype MultiProc) then group level."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.cli import main
from bids_app.config import default_models_dir
from bids_app.models import read_metadata
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
    # The session's T1w is a source exactly when the shipped model has a T1w channel.
    uses_t1w = "T1w" in read_metadata(default_models_dir() / "mslesion")["input"]["channels"]
    assert meta["Sources"] == ["bids:raw:sub-01/anat/sub-01_FLAIR.nii.gz"] + (
        ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"] if uses_t1w else [])
    assert len(meta["Model"]["SHA256"]) == 64
    assert 0 < meta["Threshold"] < 1
    # The mask is the thresholded map without lesions under the minimum volume.
    m = np.asarray(mask.dataobj) > 0
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1} and not (m & (p < meta["Threshold"])).any()


def test_the_ensemble_spread_is_written_beside_the_probability(lesion_run):
    """``desc-FLAIRuncertainty_probseg``: the members' weighted standard deviation on the FLAIR grid,
    in [0, 0.5], with the derivatives writer's sidecar (same Sources and model) and its meaning."""
    bids, out = lesion_run
    anat = out / "sub-01" / "anat"
    source = nib.load(bids / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz")
    spread = nib.load(anat / "sub-01_label-lesion_desc-FLAIRuncertainty_probseg.nii.gz")
    assert spread.shape == source.shape and np.allclose(spread.affine, source.affine, atol=1e-4)
    u = np.asarray(spread.dataobj)
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() <= 0.5 and u.max() > 0
    meta = json.loads((anat / "sub-01_label-lesion_desc-FLAIRuncertainty_probseg.json").read_text())
    prob_meta = json.loads((anat / "sub-01_label-lesion_desc-FLAIR_probseg.json").read_text())
    for key in ("Sources", "Model", "GeneratedBy", "SpatialReference", "SourceDigests"):
        assert meta[key] == prob_meta[key]
    assert "weighted standard deviation" in meta["Description"] and "generic" in meta["Description"]


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


def test_the_t1w_is_coregistered_to_the_flair_and_lands_on_the_template(tmp_path):
    """The CompanionToTemplate node on the synthetic session: a 1.2 mm T1w tilted the other way than
    the 4 mm FLAIR reaches the template grid through the FLAIR; its hypointense lesions land on
    their known MNI positions (darker than the white matter around them)."""
    import os

    from bids_app.imaging import templates
    from bids_app.mslesion.interfaces import CompanionToTemplate, ToTemplate
    from bids_app.synthetic import FLAIR_LESIONS

    bids = make_lesion_dataset(tmp_path / "ds")
    anat = bids / "sub-01" / "anat"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        flair = ToTemplate(in_file=str(anat / "sub-01_FLAIR.nii.gz"), num_threads=2).run().outputs
        t1 = CompanionToTemplate(in_file=str(anat / "sub-01_T1w.nii.gz"), reference=str(anat / "sub-01_FLAIR.nii.gz"),
                                 transform_file=flair.transform_file, num_threads=2).run().outputs
    finally:
        os.chdir(cwd)
    assert t1.coverage > 0.95
    img = nib.load(t1.out_file)
    data = np.asarray(img.dataobj)
    assert img.shape == nib.load(templates.get_template_file("T1w")).shape
    ijk = np.indices(data.shape).reshape(3, -1)
    xyz = (img.affine[:3, :3] @ ijk + img.affine[:3, 3:4]).reshape(3, *data.shape)
    for centre, radius in FLAIR_LESIONS:
        d = np.sqrt(((xyz - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(0))
        core, shell = data[d <= radius - 1.5], data[(d > radius + 2) & (d <= radius + 4)]
        assert np.median(core) < np.median(shell) - 0.5  # hypointense lesion where the truth puts it


def test_a_model_with_a_t1w_channel_gets_the_coregistered_t1w(tmp_path):
    """With a model whose metadata lists a T1w channel, the workflow adds ``t1w_to_template``, feeds the
    network three channels and names the T1w in the outputs' ``Sources``. The model is a small
    random ensemble: this checks the wiring, not accuracy."""
    import torch
    from safetensors.torch import save_file

    from bids_app.models import sha256_of
    from bids_app.mslesion import predict

    meta = read_metadata(default_models_dir() / "mslesion")
    channels = (4, 8, 16, 32)
    torch.manual_seed(0)
    nets = [predict.build_net(3, channels) for _ in range(len(meta["ensemble"]["boxes"]) + 1)]
    tensors = {f"generic.{k}": v for k, v in nets[0].state_dict().items()}
    for i, n in enumerate(nets[1:]):
        tensors.update({f"special.{i:02d}.{k}": v for k, v in n.state_dict().items()})
    folder = tmp_path / "models" / "mslesion"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    meta.update(sha256=sha256_of(folder / "model.safetensors"), architecture=predict.architecture(3, channels))
    meta["input"]["channels"] = ["FLAIR", "T1w", "prior:WM probseg >= 0.5"]
    meta.pop("metrics", None)
    (folder / "metadata.json").write_text(json.dumps(meta))

    bids = make_lesion_dataset(tmp_path / "ds")
    out, work = tmp_path / "out", tmp_path / "work"
    code = main([str(bids), str(out), "participant", "--tasks", "mslesion", "--device", "cpu", "--nprocs", "2",
                 "-w", str(work), "--models-dir", str(tmp_path / "models")])
    assert code == 0
    assert list(work.rglob("t1w_to_template/*_space-template.nii.gz"))
    sidecar = json.loads((out / "sub-01" / "anat" / "sub-01_label-lesion_desc-FLAIR_probseg.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_FLAIR.nii.gz", "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
    assert sidecar["Model"]["SHA256"] == meta["sha256"]
