"""SSL² machinery of the lesion model (training/mslesion/ssl.py) on small synthetic data: the pretext
losses, the mean teacher, resumable training with both, and the cross-validation guards."""

import math

import numpy as np
import pytest
import torch

from bids_app.mslesion.predict import build_net
from training.mslesion import ssl
from training.mslesion.crossval import fold_config, load_config
from training.mslesion.sampler import Sampler
from training.mslesion.train import train_net

from .test_training import _template


def test_bottleneck_is_the_deepest_block_of_the_unet():
    net = build_net(2, (8, 16, 32, 64))
    seen = {}
    ssl.bottleneck(net).register_forward_hook(lambda _m, _i, out: seen.update(shape=out.shape))
    net(torch.zeros(1, 2, 16, 16, 16))
    assert seen["shape"] == (1, 64, 2, 2, 2)  # 16 voxels / 2^3, the last channel count


def test_rotation_by_four_quarters_is_identity_and_one_quarter_matches_numpy():
    x = torch.arange(2 * 1 * 4 * 4 * 3, dtype=torch.float32).reshape(2, 1, 4, 4, 3)
    assert torch.equal(ssl.rotate(x, torch.tensor([4, 0])), x)
    one = ssl.rotate(x, torch.tensor([1, 1]))
    assert np.array_equal(one[0, 0].numpy(), np.rot90(x[0, 0].numpy(), 1, axes=(0, 1)))


def test_nt_xent_known_answer_for_orthogonal_embeddings():
    b, t = 3, 0.5
    z = torch.eye(b, 8)
    # Each embedding's positive has similarity 1/t, its 2b-2 negatives 0 (orthogonal).
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * b - 2))
    assert ssl.nt_xent(z, z.clone(), t).item() == pytest.approx(expected, rel=1e-5)
    assert ssl.nt_xent(z, z[[1, 2, 0]], t).item() > expected + 1.0  # wrong pairs cost more


def test_holes_cover_part_of_each_patch():
    h = ssl.holes((2, 1, 16, 16, 16), np.random.default_rng(0), (2, 3), (4, 6))
    frac = h.float().mean((1, 2, 3, 4))
    assert h.shape == (2, 1, 16, 16, 16) and bool(((frac > 0.01) & (frac < 0.5)).all())


def test_unlabelled_patches_are_two_views_of_the_same_anatomy_without_pasted_lesions():
    tpl = _template()
    canvas = {"image": np.where(tpl["wm"] > 0, 0.0, 1.0).astype(np.float32) * tpl["brain"],
              "ignore": np.zeros(tpl["brain"].shape, bool)}
    s = Sampler(tpl, [np.ones(tpl["brain"].shape, bool)], [canvas], patch=16, real_fraction=1.0, seed=0)
    a, b, brain = s.unlabelled()
    assert a.shape == b.shape == (2, 16, 16, 16) and brain.shape == (16, 16, 16)
    assert np.array_equal(a[1], b[1])  # the prior channel is not augmented
    assert not np.array_equal(a[0], b[0])  # independent augmentation
    # Same geometry: the two views agree far better than a view and a shuffled copy of itself.
    r = np.corrcoef(a[0].ravel(), b[0].ravel())[0, 1]
    assert r > 0.5
    assert a[0].max() < 4.0  # the all-lesion mask was not pasted (pasted lesions add >= 0.6 IQR on top)


def test_pretraining_lowers_the_pretext_loss_and_resumes(tmp_path):
    tpl = _template(32)
    torch.manual_seed(0)
    s = Sampler(tpl, [np.zeros(tpl["brain"].shape, bool)], [], patch=16, real_fraction=0.0, seed=1,
                unlabelled_synthetic=1.0)
    cfg = {"seed": 0, "channels": [8, 16, 32, 64], "ssl": {
        "iterations": 60, "batch": 4, "lr": 0.003, "weights": {"inpaint": 1.0, "rotation": 1.0, "contrast": 1.0},
        "temperature": 0.5, "hole_count": [2, 4], "hole_edge": [3, 6]}}
    out = ssl.pretrain(cfg, s, 2, tmp_path / "pre.pt")
    losses = torch.load(out, weights_only=True)["losses"]
    assert [row[0] for row in losses] == [50, 60]
    cfg["ssl"]["iterations"] = 70
    ssl.pretrain(cfg, s, 2, out)  # resumes at 60
    losses = torch.load(out, weights_only=True)["losses"]
    assert [row[0] for row in losses] == [50, 60, 70]
    # The pre-trained net restores the holes of new patches better than a fresh one.
    net = build_net(2, cfg["channels"]); net.load_state_dict(ssl.pretrained_weights(out))
    views = ssl.two_views(s, 8)[:2]

    def inpaint(n):
        with torch.no_grad():
            return ssl.pretext_loss(ssl.Pretext(n, 64), views, np.random.default_rng(5), cfg["ssl"]["weights"], 0.5,
                                    (2, 4), (3, 6))["inpaint"]
    torch.manual_seed(0)
    assert inpaint(net) < 0.8 * inpaint(build_net(2, cfg["channels"]))


def test_mean_teacher_is_an_ema_of_the_student_and_ramps_up():
    student = build_net(1, (4, 8, 16, 32))
    mt = ssl.MeanTeacher(student, {"weight": 1.0, "ema": 0.9, "ramp": 0.5, "batch": 1}, iterations=100)
    assert mt.ramp(0) == pytest.approx(math.exp(-5)) and mt.ramp(50) == 1.0 and mt.ramp(99) == 1.0
    before = [p.clone() for p in mt.teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    mt.update(student, it=50)  # a = min(1 - 1/51, 0.9) = 0.9
    for t0, t, s in zip(before, mt.teacher.parameters(), student.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s, atol=1e-6)
    assert not any(p.requires_grad for p in mt.teacher.parameters())


def test_training_with_a_mean_teacher_checkpoints_the_teacher_and_resumes(tmp_path):
    tpl = _template(32)
    lesion = np.zeros(tpl["brain"].shape, bool)
    lesion[14:18, 14:18, 14:18] = True
    canvas = {"image": (tpl["wm"] * 0.2 + tpl["gm"] * 0.8).astype(np.float32), "ignore": np.zeros(tpl["brain"].shape, bool)}
    s = Sampler(tpl, [lesion], [canvas], patch=16, real_fraction=0.5, seed=2)
    net = build_net(2, (4, 8, 16, 32))
    cfg = {"weight": 1.0, "ema": 0.9, "ramp": 0.3, "batch": 1}
    ck = tmp_path / "generic.pt"
    train_net(net, s, 4, 2, 0.001, ck, log_every=2, mean_teacher=cfg)
    state = torch.load(ck, weights_only=True)
    assert state["it"] == 4 and "teacher" in state
    teacher = state["teacher"]
    assert any(not torch.equal(teacher[k], v) for k, v in state["net"].items() if v.is_floating_point())
    train_net(build_net(2, (4, 8, 16, 32)), s, 6, 2, 0.001, ck, log_every=2, mean_teacher=cfg)
    assert torch.load(ck, weights_only=True)["it"] == 6


def test_arm_configs_extend_their_base_and_differ_only_by_what_they_add():
    from training.common.paths import ROOT

    d = ROOT / "training/mslesion/configs"
    cv2, s0, s1, s2 = (load_config(d / f"{n}.json") for n in ("cv2", "ssl0", "ssl1", "ssl2"))
    assert s0["name"] == "ssl0" and s2["name"] == "ssl2"
    assert {k for k in s0 if s0[k] != cv2.get(k)} == {"name", "_comment", "run_dir", "special_iterations",
                                                        "generic_iterations", "threads", "baseline", "shipped_model"}
    assert {k for k in s1 if s1[k] != s0.get(k)} == {"name", "_comment", "run_dir", "ssl"}
    assert {k for k in s2 if s2[k] != s1.get(k)} == {"name", "_comment", "run_dir", "mean_teacher"}
    off = load_config(d / "ssl0_noprior.json")
    assert {k for k in off if off[k] != s0.get(k)} == {"name", "_comment", "run_dir", "prior"} and not off["prior"]


def test_seed_repeats_change_only_the_seed_and_where_they_write():
    from training.common.paths import ROOT

    d = ROOT / "training/mslesion/configs"
    for arm in ("ssl0", "ssl1", "ssl2", "ssl0_noprior"):
        base, repeat = load_config(d / f"{arm}.json"), load_config(d / f"{arm}_seed8.json")
        assert {k for k in repeat if repeat[k] != base.get(k)} <= {"name", "_comment", "run_dir", "seed", "ssl"}
        assert repeat["seed"] != base["seed"] and repeat["run_dir"] != base["run_dir"]
        if "ssl" in base:
            # The block is merged, not replaced: only the pre-training's own folder moves.
            assert {k for k in repeat["ssl"] if repeat["ssl"][k] != base["ssl"][k]} == {"run_dir"}


def test_a_fold_may_not_see_a_tested_patient_without_labels(tmp_path):
    cases = [{"subject": "a", "flair": str(tmp_path / "sub-a/anat/sub-a_FLAIR.nii.gz"), "labels": []},
             {"subject": "b", "flair": str(tmp_path / "sub-b/anat/sub-b_FLAIR.nii.gz"), "labels": []}]
    config = {"name": "x", "bids_dir": str(tmp_path), "run_dir": "r", "seed": 1, "folds": {"A": ["a"], "B": ["b"]},
              "real_canvases": ["sub-u/anat/sub-u_FLAIR.nii.gz"], "ssl": {"scans": ["sub-u/anat/sub-u_T1w.nii.gz"]}}
    assert fold_config(config, "A", cases)["name"] == "x_fold-A"
    config["ssl"]["scans"].append("sub-b/anat/sub-b_T2w.nii.gz")
    with pytest.raises(SystemExit, match="b"):
        fold_config(config, "A", cases)
