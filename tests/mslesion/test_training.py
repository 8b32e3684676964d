"""The lesion training data synthesis, on a small synthetic template (no shared data needed)."""

import numpy as np
from scipy import ndimage

from training.common.paths import ROOT
from training.mslesion import adapt
from training.mslesion.__main__ import main
from training.mslesion.augment import augment
from training.mslesion.baseline import baseline_name, cross_validated_baseline, intensity_baseline
from training.mslesion.canvases import IGNORE_ABOVE_IQR, ignore_threshold, real_canvas
from training.mslesion.channels import PRIOR_CHANNEL, input_channels
from training.mslesion.sampler import Sampler
from training.mslesion.template import load_template, sulcal_ridges
from training.mslesion.train import initial_weights


def _template(n=40):
    g = np.indices((n, n, n)).astype(np.float32) - (n - 1) / 2
    r = np.sqrt((g ** 2).sum(0))
    brain = r <= 17
    wm = (brain & (r <= 12)).astype(np.float32)
    gm = (brain & (r > 12) & (r <= 16)).astype(np.float32)
    return {"brain": brain, "wm": wm, "gm": gm, "prior": (wm >= 0.5).astype(np.float32), "affine": np.eye(4)}


def test_sampler_pastes_bright_lesions_inside_the_brain_and_white_matter():
    tpl = _template()
    lesion = np.zeros(tpl["brain"].shape, bool)
    lesion[18:23, 18:23, 18:23] = True  # a 125 mm^3 "real" lesion in white matter
    s = Sampler(tpl, [lesion], [], patch=16, real_fraction=0.0, seed=0, contrast=(2.0, 2.0), lesion_wm=0.3)
    seen = 0
    for _ in range(20):
        (img, prior), target, weight = s.sample()
        assert img.shape == prior.shape == target.shape == weight.shape == (16, 16, 16)
        assert img.dtype == np.float32 and np.isfinite(img).all()
        assert set(np.unique(target)) <= {0.0, 1.0} and (weight == 1).all()
        if target.sum():
            seen += 1
            # lesions are brighter than the rest of the white matter of the patch, on average
            wm_only = (prior > 0) & (target == 0)
            if wm_only.sum() > 20:
                assert img[target > 0].mean() > img[wm_only].mean()
    assert seen >= 5


def test_sampler_ignores_bright_white_matter_of_real_canvases():
    tpl = _template()
    canvas = np.zeros(tpl["brain"].shape, np.float32)
    canvas[10:14, 10:14, 20:24] = 5.0  # an unlabelled "real lesion" in the canvas
    real = {"image": canvas, "ignore": canvas > 2}
    lesion = np.zeros(tpl["brain"].shape, bool)
    s = Sampler(tpl, [lesion], [real], patch=40, real_fraction=1.0, seed=1)
    _, target, weight = s.sample()
    assert (weight[10:14, 10:14, 20:24] == 0).all() and weight.mean() > 0.99
    assert (target[~tpl["brain"]] == 0).all()  # pasted lesions (here only the random ellipsoids) stay in the brain


def test_augment_keeps_shape_and_finiteness():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((24, 24, 24)).astype(np.float32)
    brain = np.ones(img.shape, bool)
    for _ in range(30):
        out = augment(img, brain, rng)
        assert out.shape == img.shape and out.dtype == np.float32 and np.isfinite(out).all()


def test_sampler_uses_the_soft_manual_label_of_a_labelled_canvas():
    tpl = _template()
    canvas = np.zeros(tpl["brain"].shape, np.float32)
    label = np.zeros(tpl["brain"].shape, np.float32)
    canvas[18:22, 18:22, 18:22] = 4.0
    label[18:22, 18:22, 18:22] = 0.5  # two raters, one of whom drew the lesion
    real = {"image": canvas, "label": label, "ignore": np.zeros(canvas.shape, bool)}
    no_lesions = np.zeros(tpl["brain"].shape, bool)
    s = Sampler(tpl, [no_lesions], [real], patch=40, real_fraction=1.0, seed=3, labelled_weight=2.0)
    for _ in range(5):
        _, target, weight = s.sample()
        assert (weight == 1).all()  # a labelled canvas has no unknown voxels
        assert np.allclose(target[18:22, 18:22, 18:22], 0.5)  # the soft rater mean is the target
        assert target.max() <= 1.0


def test_synthetic_flair_from_the_template_t1_orders_tissues_like_flair():
    tpl = _template()
    # A T1w-like template: CSF 20 < GM 160 < WM 220.
    tpl["t1"] = (20 + 140 * tpl["gm"] + 200 * tpl["wm"]).astype(np.float32) * tpl["brain"]
    tpl["t1_knots"] = (20.0, 160.0, 220.0)
    s = Sampler(tpl, [np.zeros(tpl["brain"].shape, bool)], [], patch=40, real_fraction=0.0, seed=5,
                  t1_fraction=1.0)
    csf = tpl["brain"] & (tpl["wm"] + tpl["gm"] == 0)
    for _ in range(5):
        img, t1 = s._synthetic(tuple(slice(0, 40) for _ in range(3)))
        assert t1 is None  # no T1w channel asked for
        gm, wm, c = (img[m].mean() for m in (tpl["gm"] > 0, tpl["wm"] > 0, csf))
        assert gm > wm > c  # FLAIR: grey matter brightest, CSF darkest


def _t1_template():
    tpl = _template()
    tpl["t1"] = (20 + 140 * tpl["gm"] + 200 * tpl["wm"]).astype(np.float32) * tpl["brain"]
    tpl["t1_knots"] = (20.0, 160.0, 220.0)
    return tpl


def test_sampler_t1w_channel_lesions_dark_on_t1w_and_zeros_without_one():
    tpl = _t1_template()
    lesion = np.zeros(tpl["brain"].shape, bool)
    lesion[18:23, 18:23, 18:23] = True
    wm = tpl["wm"] > 0
    with_t1 = {"image": np.where(wm, 0.0, 1.0).astype(np.float32), "t1w": np.where(wm, 1.0, -1.0).astype(np.float32),
               "ignore": np.zeros(lesion.shape, bool)}
    s = Sampler(tpl, [lesion], [with_t1], patch=40, real_fraction=1.0, seed=2, contrast=(3.0, 3.0),
                  prior=True, t1w=True, t1w_dropout=0.0, t1w_contrast=(1.5, 1.5))
    for _ in range(5):
        x, target, _ = s.sample()
        assert x.shape == (3, 40, 40, 40) and x.dtype == np.float32
        flair, t1, prior = x
        normal_wm = (prior > 0) & (target == 0)
        if target.sum() > 20 and normal_wm.sum() > 20:
            assert flair[target > 0].mean() > flair[normal_wm].mean()  # bright on FLAIR
            assert t1[target > 0].mean() < t1[normal_wm].mean()  # iso- to hypointense on T1w
    without = {k: v for k, v in with_t1.items() if k != "t1w"}
    s = Sampler(tpl, [lesion], [without], patch=40, real_fraction=1.0, seed=2, prior=True, t1w=True)
    assert not s.sample()[0][1].any()  # a canvas without a T1w gives a zero channel, as the app does
    s = Sampler(tpl, [lesion], [with_t1], patch=40, real_fraction=1.0, seed=2, prior=False, t1w=True,
                  t1w_dropout=1.0)
    x, _, _ = s.sample()
    assert x.shape == (2, 40, 40, 40) and not x[1].any()  # dropped out: zeros


def test_synthetic_t1w_orders_tissues_like_t1w():
    tpl = _t1_template()
    s = Sampler(tpl, [np.zeros(tpl["brain"].shape, bool)], [], patch=40, real_fraction=0.0, seed=6, t1w=True)
    csf = tpl["brain"] & (tpl["wm"] + tpl["gm"] == 0)
    for _ in range(5):
        _, t1 = s._synthetic(tuple(slice(0, 40) for _ in range(3)))
        gm, wm, c = (t1[m].mean() for m in (tpl["gm"] > 0, tpl["wm"] > 0, csf))
        assert wm > gm > c


def test_input_channels_follow_the_config():
    assert input_channels({"prior": True}) == ["FLAIR", PRIOR_CHANNEL]
    assert input_channels({"prior": True, "t1w": True}) == ["FLAIR", "T1w", PRIOR_CHANNEL]
    assert input_channels({"prior": False}) == ["FLAIR"]


def test_normal_white_matter_hyperintensity_is_bright_but_not_a_lesion():
    """``normal_hyper``: white matter gets brighter (a negative example), the target stays empty."""
    tpl = _template()
    none = np.zeros(tpl["brain"].shape, bool)
    plain = Sampler(tpl, [none], [], patch=40, real_fraction=0.0, seed=4)
    hyper = Sampler(tpl, [none], [], patch=40, real_fraction=0.0, seed=4, normal_hyper=1.0)
    box = tuple(slice(0, 40) for _ in range(3))
    added = np.stack([hyper._normal_hyperintensity(box) for _ in range(20)])
    assert (added >= 0).all() and added.max() <= 2.4 + 1e-6  # at most 1.2 (field) + 1.2 (rim) IQR
    assert added[:, tpl["wm"] == 0].max() <= 1.2 + 1e-6  # the diffuse part stays in white matter
    assert added.max(axis=(1, 2, 3)).min() > 0.2  # every draw brightens something
    means = {}
    for name, s in (("plain", plain), ("hyper", hyper)):
        s._ellipsoids = lambda wm: np.zeros(wm.shape, bool)  # no random lesions: only the brightening differs
        wm_means = []
        for _ in range(10):
            (img, _), target, _ = s.sample()
            assert target.sum() == 0  # brightening never makes a lesion
            wm_means.append(img.mean())
        means[name] = np.mean(wm_means)
    assert means["hyper"] > means["plain"]  # the whole template fits in a 40 voxel patch: same tissue


def test_sulcal_ridges_find_the_closed_sulcus_between_two_gyri():
    """Two white-matter cores with 8 mm of grey matter between them: the ridge is the mid-plane."""
    n = 40
    wm = np.zeros((n, n, n), np.float32)
    wm[6:14, 5:35, 5:35] = 1
    wm[22:30, 5:35, 5:35] = 1  # grey matter x = 14..21, mid-plane between x = 17 and 18
    gm = np.zeros_like(wm)
    gm[2:34, 2:38, 2:38] = 1
    gm[wm > 0] = 0
    brain = (wm + gm) > 0
    ridge = sulcal_ridges(wm, gm, brain)
    xs = np.unique(np.argwhere(ridge[:, 10:30, 10:30])[:, 0] if ridge.any() else [])
    assert set(xs) == {17, 18}  # only the closed sulcus, not the pial surface at x = 2..5 or 30..33


def test_opened_sulci_darken_grey_matter_only_along_the_ridges_and_warp_keeps_lesions():
    tpl = _template()
    tpl["gm"] = tpl["gm"].copy()
    tpl["wm"][:, 18:23, :] = 0  # a cleft through the white matter, filled by 5 mm of grey matter
    tpl["gm"][:, 18:23, :] = tpl["brain"][:, 18:23, :]
    s = Sampler(tpl, [np.zeros(tpl["brain"].shape, bool)], [], patch=40, real_fraction=0.0, seed=8, sulci=1.0)
    box = tuple(slice(0, 40) for _ in range(3))
    csf = s._sulcal_csf(box)
    assert 0 <= csf.min() and csf.max() <= 1 and csf.max() > 0.9
    assert csf[tpl["wm"] > 0].max() < 0.8  # white matter is at most partial-volumed, never replaced
    img, _ = s._synthetic(box)
    ridge = s.ridges
    assert img[ridge].mean() < img[(tpl["gm"] > 0) & ~ndimage.binary_dilation(ridge, iterations=2)].mean() - 0.5
    # the warp moves anatomy by 1-3 mm RMS and carries lesion and image together
    target = np.zeros((40, 40, 40), np.float32)
    target[15:25, 15:25, 15:25] = 1
    moved_img, moved_target = s._warp(target.copy() * 3.0, target)
    assert abs(moved_target.sum() - target.sum()) < 0.25 * target.sum()
    assert np.allclose(moved_img, 3.0 * moved_target, atol=1e-4)
    assert (moved_target != target).any()


def test_intensity_baseline_keeps_bright_white_matter_only():
    tpl = _template()
    flair = np.zeros(tpl["brain"].shape, np.float32)
    flair[18:23, 18:23, 18:23] = 3.0  # a bright 5 mm cube in white matter: a lesion
    flair[20:23, 20:23, 35:38] = 3.0  # as bright, in the grey-matter shell: not white matter
    mask = intensity_baseline(flair, tpl["wm"], flair_iqr=1.5, template_wm=0.5)
    assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
    assert mask[19:22, 19:22, 19:22].all()  # the cube's core survives the 0.5 mm smoothing
    assert not mask[:, :, 30:].any()  # nothing outside white matter
    assert not intensity_baseline(flair, tpl["wm"], flair_iqr=3.5, template_wm=0.5).any()  # above its brightness


def _baseline_row(image, t, w, dice):
    return {"image": image, "case": f"{image}_label", "flair_iqr": t, "template_wm": w, "dice": dice,
            "model": baseline_name(t, w)}


def test_cross_validated_baseline_chooses_each_point_on_the_other_image():
    rows = [_baseline_row("a", 1.0, 0.5, 0.9), _baseline_row("a", 2.0, 0.5, 0.1),
            _baseline_row("b", 1.0, 0.5, 0.2), _baseline_row("b", 2.0, 0.5, 0.6),
            _baseline_row("b", 2.0, 0.5, 0.4)]  # image b has two raters: their mean Dice decides
    out = {r["image"]: r for r in cross_validated_baseline(rows)}
    # a is scored at b's best point (2.0: mean 0.5 > 0.2), b at a's best point (1.0), never their own
    assert out["a"]["flair_iqr"] == 2.0 and out["a"]["dice"] == 0.1
    assert [r["dice"] for r in cross_validated_baseline(rows) if r["image"] == "b"] == [0.2]
    assert out["a"]["seen_in_training"] == "none" and "chosen on b" in out["a"]["model"]


def test_ignore_threshold_follows_a_faint_canvas_but_never_exceeds_two_iqr():
    tpl = _template()
    rng = np.random.default_rng(3)
    faint = (0.3 * rng.standard_normal(tpl["brain"].shape)).astype(np.float32)  # white matter ~N(0, 0.3)
    assert ignore_threshold(faint, tpl["wm"]) == IGNORE_ABOVE_IQR
    q98 = ignore_threshold(faint, tpl["wm"], 98)
    assert 0.3 * 1.9 < q98 < 0.3 * 2.3  # the 98th percentile of N(0, 0.3) is 0.62
    assert ignore_threshold(faint * 10, tpl["wm"], 98) == IGNORE_ABOVE_IQR  # capped at the fixed rule


def test_real_canvas_ignores_faint_unlabelled_lesions_with_a_percentile(tmp_path):
    tpl = _template()
    img = np.zeros(tpl["brain"].shape, np.float32)
    img[tpl["wm"] > 0] = np.random.default_rng(4).normal(0, 0.2, int((tpl["wm"] > 0).sum()))
    img[18:22, 18:22, 18:22] = 1.2  # a faint unlabelled lesion: below 2 IQR, above the WM's 98th percentile
    np.save(tmp_path / "faint_FLAIR.npy", img)  # the cached template-space image: no registration runs
    fixed = real_canvas(tmp_path / "faint_FLAIR.nii.gz", tpl, tmp_path)
    relative = real_canvas(tmp_path / "faint_FLAIR.nii.gz", tpl, tmp_path, ignore_percentile=98)
    assert not fixed["ignore"][18:22, 18:22, 18:22].any()
    assert relative["ignore"][18:22, 18:22, 18:22].all()
    assert relative["ignore"].mean() < 0.1  # the rest of the white matter stays in the loss


def test_initial_weights_come_from_the_shipped_model_and_must_match_the_config():
    import json

    import pytest
    import torch

    from bids_app.mslesion.predict import load_ensemble

    config = json.loads((ROOT / "training/mslesion/configs/default.json").read_text())
    config["init_from"] = "models/mslesion"
    generic = initial_weights(config)
    _, shipped_generic, _, _ = load_ensemble(ROOT / "models/mslesion")
    state = shipped_generic.state_dict()
    assert generic.keys() == state.keys() and all(torch.equal(generic[k], v) for k, v in state.items())
    with pytest.raises(SystemExit, match="input channels"):
        initial_weights({**config, "prior": False})
    with pytest.raises(SystemExit, match="architecture"):
        initial_weights({**config, "channels": [8, 16, 32, 64]})


def test_adapt_fine_tunes_the_shipped_model_on_a_dataset_without_labels(tmp_path, monkeypatch):
    """``--adapt`` end to end on a synthetic dataset, with a schedule of a few iterations."""
    import json

    import nibabel as nib
    import torch

    from bids_app.mslesion.predict import load_ensemble
    from bids_app.synthetic import make_lesion_dataset

    bids = make_lesion_dataset(tmp_path / "ds", t1w=False)
    tpl = load_template()
    masks = tmp_path / "masks"
    masks.mkdir()
    core = np.argwhere(tpl["wm"] > 0.9)
    c = core[len(core) // 2]
    g = np.indices(tpl["wm"].shape)
    ball = ((g - c.reshape(3, 1, 1, 1)) ** 2).sum(0) <= 9  # a 3 mm radius lesion in deep white matter
    nib.save(nib.Nifti1Image(ball.astype(np.uint8), tpl["affine"]), str(masks / "p01_mask.nii.gz"))
    monkeypatch.setattr(adapt, "ADAPT_SCHEDULE", {"generic_iterations": 2, "special_iterations": 1, "lr": 0.0005})
    models = tmp_path / "models"
    argv = ["training/mslesion/configs/default.json", "--adapt", str(bids), "--lesion-masks", str(masks),
            "--models-dir", str(models)]
    assert main([str(ROOT / argv[0])] + argv[1:]) == 0

    meta, generic, specialists, _ = load_ensemble(models / "mslesion")  # the hash of the new weights checks out
    config = json.loads((models / "mslesion" / "training_config.json").read_text())
    assert config["real_canvases"] == ["sub-01/anat/sub-01_FLAIR.nii.gz"] and config["labelled_canvases"] == {}
    assert meta["training"]["config"] == str(models / "mslesion" / "training_config.json")
    shipped = json.loads((ROOT / "models/mslesion/metadata.json").read_text())
    assert meta["sha256"] != shipped["sha256"] and len(specialists) == len(shipped["ensemble"]["boxes"])
    assert meta["inference"] == shipped["inference"]  # the recipe's inference options (flip) come along
    _, shipped_generic, _, _ = load_ensemble(ROOT / "models/mslesion")
    moved = [not torch.equal(a, b) for a, b in zip(generic.state_dict().values(), shipped_generic.state_dict().values())
             if a.is_floating_point()]
    assert any(moved)  # fine-tuned, not copied
    card = (models / "mslesion" / "README.md").read_text()
    assert "adapted without labels" in card and shipped["sha256"] in card and meta["sha256"] in card


def test_lesion_centring_gives_a_small_lesion_as_many_patches_as_a_large_one():
    tpl = _template()
    label = np.zeros(tpl["brain"].shape, np.float32)
    label[14:24, 14:24, 14:24] = 0.6  # 1000 voxels, soft: told apart from the small one in the target
    label[29, 20, 20] = 1.0           # one voxel, 6 voxels beyond the large lesion
    canvas = {"image": np.zeros(tpl["brain"].shape, np.float32), "label": label,
              "ignore": np.zeros(tpl["brain"].shape, bool)}
    hits = {}
    for mode in ("voxel", "lesion"):
        s = Sampler(tpl, [np.zeros_like(tpl["brain"])], [dict(canvas)], patch=8, real_fraction=1.0, seed=1,
                    centre_on=mode)
        n = 0
        for _ in range(300):
            (_, _), target, _ = s.sample()
            # centred on the small lesion: it sits at the patch centre (4, 4, 4), the large one is out
            n += bool(target[4, 4, 4] == 1.0 and not np.isclose(target, 0.6).any())
        hits[mode] = n
    assert hits["voxel"] <= 3          # 1 voxel in 1001: about 0.2 of 300 draws
    assert hits["lesion"] >= 60        # 0.7 of the draws centre on a lesion, half of them on this one
