"""Label-efficient training code of the ich model (training/ich/learn.py, experiment.py, data.py) on tiny
synthetic head slabs with known answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bids_app.ich import preprocess  # noqa: E402
from training.ich import learn  # noqa: E402
from training.ich.data import NO_LABEL, Scan, load_collection  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CFG = {"iterations": 30, "batch": 4, "lr": 3e-3, "crop": 32, "windows": [[0, 80], [-20, 180], [-800, 2000]],
       "context": 1, "n_classes": 6, "channels": [4, 8, 16, 32], "spacing_mm": 2.0, "intracranial_margin_mm": 4.0}


def phantom(seed: int, bleed: bool = True, n: int = 40, nz: int = 6) -> Scan:
    """Air, a 1000 HU skull ring, 35 HU brain and (``bleed``) a 70 HU disc labelled 1 (IPH)."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    r = np.hypot(x - n / 2, y - n / 2)
    hu = np.full((n, n, nz), -1000.0, np.float32)
    hu[r < 17] = 1000.0
    hu[r < 14] = 35.0
    label = np.zeros((n, n, nz), np.uint8)
    if bleed:
        cx, cy = rng.integers(12, 28, 2)
        disc = np.hypot(x - cx, y - cy) < 4
        label[disc, 2:5] = 1
        hu[label > 0] = 70.0
    hu += rng.normal(0, 3, hu.shape).astype(np.float32)
    inside = np.broadcast_to((r < 14)[..., None], hu.shape).copy()
    return Scan(f"p{seed}", hu.astype(np.float16), label, inside, np.diag([2.0, 2, 2, 1]), int(bleed))


def test_window_layout_matches_the_app():
    """The training windows and the app's window_channels put the same value at the same channel."""
    hu = np.random.default_rng(0).uniform(-1000, 2000, (8, 8, 5)).astype(np.float32)
    app = preprocess.window_channels(hu, CFG["windows"], 1)  # (9, X, Y, Z)
    z = 2
    slab = torch.from_numpy(np.moveaxis(hu[:, :, z - 1:z + 2], 2, 0))[None]  # (1, 3, X, Y)
    ours = learn.windows(slab, CFG["windows"])[0].numpy()
    assert np.allclose(ours, app[..., z], atol=1e-6)


def test_transfer_copies_only_matching_tensors():
    src = learn.build_unet(9, 3, CFG["channels"]).state_dict()
    dst = learn.build_unet(9, 6, CFG["channels"])
    copied = learn.transfer(src, dst)
    own = dst.state_dict()
    assert 0 < copied < len(own)
    same = [k for k in own if own[k].shape == src[k].shape]
    assert copied == len(same)
    assert all(torch.equal(own[k], src[k]) for k in same)


def test_sampler_shapes_and_bleed_fraction():
    scans = [phantom(i) for i in range(3)]
    sampler = learn.Sampler(scans, crop=32, context=1, bleed_fraction=1.0, seed=0)
    b = sampler.batch(6)
    assert b["hu"].shape == (6, 3, 32, 32) and b["label"].shape == (6, 32, 32) and b["inside"].dtype == torch.bool
    assert all((b["label"][i] > 0).any() for i in range(6))  # bleed_fraction 1: every slice holds the bleed


def test_geometry_keeps_unknown_labels_unknown():
    scan = phantom(0)
    unlabelled = Scan(scan.stem, scan.hu, None, scan.inside, scan.affine, scan.weak)
    b = learn.augment_geometry(learn.Sampler([unlabelled], crop=32, seed=0).batch(4), np.random.default_rng(0))
    assert (b["label"] == NO_LABEL).all()


def test_weak_loss_reads_slice_labels_only():
    """Pooled logits: high on a bleed slice and low elsewhere give a small loss; swapped, a large one."""
    label = torch.zeros(2, 8, 8, dtype=torch.long)
    label[0, 2:4, 2:4] = 1
    inside = torch.ones(2, 8, 8, dtype=torch.bool)
    good = torch.full((2, 1, 8, 8), -6.0)
    good[0, 0, 2:4, 2:4] = 6.0
    bad = torch.full((2, 1, 8, 8), -6.0)
    bad[1, 0, 5:7, 5:7] = 6.0
    assert learn.loss_weak(good, label, inside) < 0.5 < learn.loss_weak(bad, label, inside)


@pytest.mark.parametrize("objective", ["supervised", "inpaint", "vicreg", "weak"])
def test_every_objective_lowers_its_loss(objective):
    scans = [phantom(i) for i in range(4)]
    cfg = dict(CFG, iterations=40)
    _, curve = learn.train(objective, scans, cfg, seed=1, log_every=10)
    assert np.isfinite(curve).all() and curve[-1] < curve[0]


def test_supervised_finds_the_phantom_bleed():
    scans = [phantom(i) for i in range(6)]
    state, _ = learn.train("supervised", scans, dict(CFG, iterations=150, lr=5e-3), seed=0, log_every=50)
    rows = learn.evaluate_grid(state, [phantom(100), phantom(101, bleed=False)], CFG)
    assert rows[0]["dice"] > 0.5
    assert rows[1]["pred_ml"] < 0.1
    summary = learn.summarise(rows[:1], rows[1:])
    assert summary["detection_ge1ml"] == 1.0 and summary["normal_max_ml"] < 0.1


def test_collection_from_a_bids_folder(tmp_path):
    """A BIDS-like folder with one labelled CT and one unlabelled: cached once, labels on the model grid."""
    scan = phantom(3, nz=20)
    hu = scan.hu.astype(np.float32)
    for sub, labelled in (("sub-a", True), ("sub-b", False)):
        (tmp_path / sub / "ct").mkdir(parents=True)
        nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2, 2, 1])), str(tmp_path / sub / "ct" / f"{sub}_ct.nii.gz"))
        if labelled:
            lab = tmp_path / "derivatives" / "labels" / sub / "ct"
            lab.mkdir(parents=True)
            nib.save(nib.Nifti1Image(scan.label, np.diag([2.0, 2, 2, 1])), str(lab / f"{sub}_ct_label-ICH_dseg.nii.gz"))
    scans = load_collection(tmp_path, tmp_path / "cache", spacing_mm=2.0, in_plane=64)
    assert [s.stem for s in scans] == ["sub-a_ct", "sub-b_ct"]
    assert scans[0].label is not None and scans[1].label is None
    assert scans[0].hu.shape[:2] == (64, 64)
    assert abs(int((scans[0].label > 0).sum()) - int((scan.label > 0).sum())) <= 2
    assert scans[0].weak == 1 and scans[1].weak == -1
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_generator_config_is_refused_by_the_trainer():
    out = subprocess.run([sys.executable, "-m", "training.ich", "training/ich/configs/synth.json"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "training.ich.synth" in out.stderr


def test_v1_config_has_every_stage():
    config = json.loads((ROOT / "training/ich/configs/v1.json").read_text())
    assert set(config["pretrain"]) == {"inpaint", "vicreg", "weak"}
    assert config["experiment"]["budgets"] == [5, 10, 25, 100]
    assert len(config["synthesis"]["held_out_maps"]) >= 5
