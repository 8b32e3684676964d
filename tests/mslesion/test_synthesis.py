"""SynthSeg-style canvases on real anatomy (training/mslesion/synthesis/), on a small synthetic head with
known answers; the registration of a real label map needs ../shared/data and is slow-marked."""

import numpy as np
import pytest

from tests.conftest import SHARED_DATA
from training.mslesion import synthesis
from training.mslesion.sampler import Sampler

N = 40
WM_LABELS = synthesis.TISSUES["wm"]


def _head(n=N):
    """A 40^3 head: scalp (511), skull (515), outer CSF (24), cortex (3/42 by X half), WM (2/41), two
    lateral ventricles (4/43) elongated along Y; the 'template' brain mask r <= 15; a 5 mm lesion in WM."""
    g = np.indices((n, n, n)).astype(np.float32) - (n - 1) / 2
    x, y, z = g
    r = np.sqrt((g ** 2).sum(0))
    lab = np.zeros((n, n, n), np.uint16)
    lab[r <= 19] = 511
    lab[r <= 17] = 515
    lab[r <= 15.5] = 24
    lab[r <= 14.5] = np.where(x[r <= 14.5] < 0, 3, 42)
    lab[r <= 11.5] = np.where(x[r <= 11.5] < 0, 2, 41)
    for side, v in ((-4, 4), (4, 43)):
        lab[((x - side) / 2) ** 2 + (y / 7) ** 2 + (z / 2.5) ** 2 <= 1] = v
    brain = r <= 15
    lesion = ((x - 7) ** 2 + y ** 2 + (z - 5) ** 2) <= 2.5 ** 2
    return lab, brain, lesion


def _cfg(**over):
    """Settings with the given blocks merged over the defaults (contrast given as one type)."""
    c = over.pop("contrast", None)
    base = {} if c is None else {"contrast": {k: float(k == c) for k in ("flair", "t2", "pd", "t1", "random")}}
    return synthesis.settings({"synthesis": synthesis._merge(base, over)})


NO_NEGATIVES = {k: {"probability": 0.0} for k in ("periventricular", "csf_partial_volume", "punctate", "flow")}
ALL_NEGATIVES = {k: {"probability": 1.0} for k in NO_NEGATIVES}


def _wm(c):
    return np.isin(c["labels"], WM_LABELS)


def test_defaults_come_from_the_config_file_and_merge_key_by_key():
    cfg = synthesis.settings({"synthesis": {"noise": {"std": [0.0, 0.0]}}})
    assert cfg["noise"]["std"] == [0.0, 0.0] and cfg["noise"]["rician_probability"] == 0.7  # sibling kept
    assert set(cfg["tissue_mean"]["flair"]) == set(synthesis.TISSUES)
    with pytest.raises(ValueError, match="lacks the classes"):
        synthesis.settings({"synthesis": {"contrast": {"weird": 1.0}}})


@pytest.mark.parametrize("contrast, brighter", [("flair", True), ("t2", True), ("pd", True), ("t1", False)])
def test_lesions_are_hyperintense_except_on_t1(contrast, brighter):
    lab, brain, lesion = _head()
    # 1 mm acquisitions: a 7 mm slice would average this 5 mm lesion away (that is the point of thick slices).
    cfg = _cfg(contrast=contrast, lesions={"faint_fraction": 0.0}, hard_negatives=NO_NEGATIVES,
               resolution={"thick_probability": 0.0})
    for seed in range(3):
        c = synthesis.render_canvas(lab, brain, lesion, cfg, seed)
        assert c["meta"]["contrast"] == contrast
        inside = c["label"] >= 0.5
        wm_only = _wm(c) & (c["label"] < 0.01)
        assert inside.sum() > 20
        diff = c["image"][inside].mean() - c["image"][wm_only].mean()
        assert (diff > 0.1) if brighter else (diff < -0.1), (seed, diff, c["meta"])


def test_tissue_order_of_each_contrast():
    lab, brain, _ = _head()
    cfg = _cfg(hard_negatives=NO_NEGATIVES, resolution={"thick_probability": 0.0})
    for contrast, order in (("flair", ("csf", "wm", "gm")), ("t2", ("wm", "gm", "csf")), ("t1", ("csf", "gm", "wm"))):
        c = synthesis.render_canvas(lab, brain, None, cfg, 0, contrast=contrast)
        img, labels = c["image"], c["labels"]
        means = {k: img[np.isin(labels, synthesis.TISSUES[k]) & brain].mean() for k in ("csf", "wm", "gm")}
        assert means[order[0]] < means[order[1]] < means[order[2]], (contrast, means)


def test_hard_negatives_change_the_image_but_not_the_target():
    lab, brain, lesion = _head()
    off = synthesis.render_canvas(lab, brain, lesion, _cfg(contrast="flair", hard_negatives=NO_NEGATIVES), 5)
    on = synthesis.render_canvas(lab, brain, lesion, _cfg(contrast="flair", hard_negatives=ALL_NEGATIVES), 5)
    assert np.array_equal(off["label"], on["label"]) and off["label"].max() > 0.5
    assert off["meta"]["negatives"] == [] and {"periventricular", "csf_partial_volume"} <= set(on["meta"]["negatives"])
    assert np.abs(on["image"] - off["image"]).max() > 0.3
    # The rims and caps brighten the white matter beside the ventricles (same seed, so same anatomy).
    assert np.array_equal(on["labels"], off["labels"])
    vent = np.isin(on["labels"], synthesis.LATERAL_VENTRICLES)
    from scipy import ndimage

    beside = ndimage.binary_dilation(vent, iterations=1) & ~vent & _wm(on) & (on["label"] < 0.01)
    assert (on["image"] - off["image"])[beside].mean() > 0.1


def test_hard_negative_maps_are_where_they_belong():
    lab, _, _ = _head()
    rng = np.random.default_rng(0)
    cfg = synthesis.settings()["hard_negatives"]
    peri = synthesis.periventricular(lab, 1.0, rng, cfg["periventricular"] | {"cap_probability": 1.0})
    assert peri.max() > 0 and (peri[~np.isin(lab, WM_LABELS)] == 0).all()
    dots = synthesis.punctate(lab, 1.0, 3, rng, cfg["punctate"] | {"count": [5, 5]})
    assert 0 < (dots > 0.5 * dots.max()).sum() <= 2 * 4  # at most 2 dots (n_lesions - 1), each a few voxels
    flow = synthesis.flow_artefacts(lab, 1.0, 1, rng, cfg["flow"] | {"csf_probability": 0.0})
    assert flow is not None and flow.max() > 0


def _hf_fraction(v, axis):
    """Fraction of the spectral power above 0.25 cycles/voxel along ``axis``."""
    p = np.abs(np.fft.fftn(v - v.mean())) ** 2
    f = np.abs(np.fft.fftfreq(v.shape[axis])).reshape([-1 if a == axis else 1 for a in range(3)])
    return float((p * (f > 0.25)).sum() / p.sum())


def test_thick_slices_remove_high_frequencies_along_their_axis_only():
    rng = np.random.default_rng(0)
    from scipy import ndimage

    v = ndimage.gaussian_filter(rng.standard_normal((48, 48, 48)).astype(np.float32), 0.7)
    out = synthesis.upsample_slices(synthesis.thick_slices(v, 2, 5.0, 5.0, 1.3), 2, 48, 5.0, 1.3)
    assert out.shape == v.shape
    ref = [_hf_fraction(v, a) for a in range(3)]
    new = [_hf_fraction(out, a) for a in range(3)]
    assert new[2] < 0.2 * ref[2]  # what is left: kinks of the linear interpolation
    for a in (0, 1):
        assert abs(new[a] - ref[a]) < 0.1 * ref[a], (ref, new)
    low = synthesis.thick_slices(v, 2, 5.0, 5.0, 1.3)
    assert low.shape == (48, 48, 10)


def test_normalised_like_the_app_median_0_iqr_1_in_the_brain():
    lab, brain, lesion = _head()
    for seed in range(3):
        img = synthesis.render_canvas(lab, brain, lesion, synthesis.settings(), seed)["image"]
        q25, q50, q75 = np.percentile(img[brain].astype(np.float64), [25, 50, 75])
        assert abs(q50) < 1e-5 and abs(q75 - q25 - 1) < 1e-4
        assert img.dtype == np.float32 and np.isfinite(img).all()


def test_same_seed_same_canvas_other_seed_other_canvas():
    lab, brain, lesion = _head()
    cfg = synthesis.settings()
    a, b = (synthesis.render_canvas(lab, brain, lesion, cfg, (3, 1)) for _ in range(2))
    c = synthesis.render_canvas(lab, brain, lesion, cfg, (3, 2))
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"]) and a["meta"] == b["meta"]
    assert not np.array_equal(a["image"], c["image"])


def test_deformation_moves_labels_and_lesions_together():
    lab, brain, lesion = _head()
    still = {"rotation_deg": 0.0, "scale": 0.0, "shear": 0.0, "translation_mm": 0.0, "nonlinear_probability": 0.0}
    moving = {"rotation_deg": 10.0, "translation_mm": 3.0, "nonlinear_probability": 1.0, "nonlinear_rms_mm": [2.5, 2.5],
              "nonlinear_spacing_mm": 10.0}
    a = synthesis.render_canvas(lab, brain, lesion, _cfg(spatial=still), 0)
    assert np.array_equal(np.isin(a["labels"], WM_LABELS), np.isin(lab, WM_LABELS))  # identity: nothing moved
    b = synthesis.render_canvas(lab, brain, lesion, _cfg(spatial=moving), 0)
    assert (b["labels"] != lab).mean() > 0.02  # the anatomy moved
    inside = b["label"] >= 0.5
    assert inside.sum() > 5 and not np.array_equal(inside, a["label"] >= 0.5)  # the lesion moved (and changed size)
    assert _wm(b)[inside].mean() >= 0.97  # ... with the white matter it lies in
    assert b["lesion"].any() and _wm(b)[b["lesion"]].all()


def test_lesions_outside_white_matter_are_dropped_and_masks_drawn_with_flips():
    lab, brain, _ = _head()
    in_csf = np.isin(lab, (24,))
    c = synthesis.render_canvas(lab, brain, in_csf, synthesis.settings(), 0)
    assert c["label"].max() == 0
    cfg = synthesis.settings()["lesions"] | {"none_probability": 0.0, "components_kept": [1.0, 1.0],
                                             "masks_per_canvas": [1, 1], "flip_probability": 1.0}
    m = np.zeros((N, N, N), bool)
    m[5:8, 20, 20] = True
    out = synthesis.draw_lesion_mask([m], np.random.default_rng(0), cfg)
    assert out[N - 8:N - 5, 20, 20].all() and out.sum() == 3  # flipped along X
    extra = [np.where(m, 0.9, 0.0)]
    out = synthesis.draw_lesion_mask([np.zeros_like(m)], np.random.default_rng(0),
                                     cfg | {"extra_probability": 1.0, "flip_probability": 0.0}, extra)
    assert np.array_equal(out, m)


def test_synthetic_canvases_are_cached_and_feed_the_sampler(tmp_path, monkeypatch):
    lab, brain, lesion = _head()
    tpl = {"brain": brain, "wm": np.isin(lab, WM_LABELS).astype(np.float32),
           "gm": np.isin(lab, (3, 42)).astype(np.float32), "affine": np.eye(4)}
    tpl["prior"] = (tpl["wm"] >= 0.5).astype(np.float32)
    maps = {"a": lab, "b": lab[::-1].copy()}
    config = {"seed": 4, "synthesis": {"lesions": {"none_probability": 0.0}}}
    first = synthesis.synthetic_canvases(config, tpl, [lesion], tmp_path, n=3, label_maps=maps)
    assert len(first) == 3 and {c["meta"]["anatomy"] for c in first} == {"a", "b"}
    for c in first:
        assert c["image"].dtype == c["label"].dtype == np.float32 and c["image"].shape == brain.shape
        assert 0 <= c["label"].min() and c["label"].max() <= 1 and not c["ignore"].any()
    assert first[0]["label"].max() > 0.5

    def fail(*a, **k):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(synthesis.canvases, "render_canvas", fail)  # the name synthetic_canvases calls
    again = synthesis.synthetic_canvases(config, tpl, [lesion], tmp_path, n=3, label_maps=maps)
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(first, again))
    s = Sampler(tpl, [lesion], again, patch=16, real_fraction=1.0, seed=0)
    for _ in range(4):
        (img, prior), target, weight = s.sample()
        assert img.shape == target.shape == (16, 16, 16) and np.isfinite(img).all() and (weight == 1).all()


@pytest.mark.slow
def test_a_real_label_map_lands_on_the_template_brain(tmp_path):
    folder = SHARED_DATA / "synthseg-label-maps"
    if not (folder / "training_seg_01.nii.gz").exists():
        pytest.skip("needs ../shared/data/synthseg-label-maps")
    from training.mslesion.template import load_template

    tpl = load_template()
    lab = synthesis.register_label_map(folder / "training_seg_01.nii.gz", tmp_path)
    assert lab.shape == tpl["brain"].shape and lab.dtype == np.uint16
    brain = np.isin(lab, [v for c in synthesis.BRAIN_CLASSES for v in synthesis.TISSUES[c]])
    dice = 2 * (brain & tpl["brain"]).sum() / (brain.sum() + tpl["brain"].sum())
    assert dice > 0.9, dice
    wm = np.isin(lab, (2, 41))
    # The subject's WM on the template's WM (affine only: 0.58 measured for this map), well above the
    # template WM probability of a brain voxel at random.
    chance = tpl["wm"][tpl["brain"]].mean()
    assert tpl["wm"][wm].mean() > max(0.5, chance + 0.15), (tpl["wm"][wm].mean(), chance)
