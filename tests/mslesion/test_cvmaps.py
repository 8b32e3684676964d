"""Saved held-out maps of the cross-validation and the multi-model (deep-ensemble) arm built from them."""

import json

import numpy as np
import pytest

from training.mslesion import cvmaps


def test_saved_maps_come_back_with_their_member_names_to_float16_precision(tmp_path, monkeypatch):
    monkeypatch.setattr(cvmaps, "ROOT", tmp_path)
    rng = np.random.default_rng(0)
    maps = {"ensemble": rng.random((6, 5, 4)), "ensemble flip": rng.random((6, 5, 4))}
    path = cvmaps.save_maps("runs/cv/fold-A", "x", maps)
    assert path == tmp_path / "runs/cv/fold-A/maps/sub-x.npz"
    back = cvmaps.load_maps("runs/cv/fold-A", "x")
    assert sorted(back) == ["ensemble", "ensemble flip"] and back["ensemble"].dtype == np.float32
    for k in maps:  # float16 keeps a probability to within 2^-11 relative
        np.testing.assert_allclose(back[k], maps[k], rtol=2 ** -11, atol=1e-6)
    with pytest.raises(SystemExit, match="--evaluate"):
        cvmaps.load_maps("runs/cv/fold-B", "x")


def test_the_mean_is_member_by_member_over_the_members_every_model_has():
    a = {"generic": np.full((2, 2, 2), 0.2), "ensemble": np.full((2, 2, 2), 0.4), "ensemble flip": np.ones((2, 2, 2))}
    b = {"generic": np.full((2, 2, 2), 0.6), "ensemble": np.full((2, 2, 2), 0.8)}
    out = cvmaps.mean_maps([a, b])
    assert sorted(out) == ["ensemble", "generic"]  # "ensemble flip": b has none
    np.testing.assert_allclose(out["generic"], 0.4)
    np.testing.assert_allclose(out["ensemble"], 0.6)
    with pytest.raises(ValueError):
        cvmaps.mean_maps([])


def test_a_combined_arm_refuses_arms_with_other_folds(tmp_path):
    # Another fold split would let one arm's model score a patient that it trained on.
    (tmp_path / "a.json").write_text(json.dumps({"folds": {"A": ["p1"], "B": ["p2"]}}))
    (tmp_path / "b.json").write_text(json.dumps({"folds": {"A": ["p2"], "B": ["p1"]}}))
    config = {"name": "ab", "folds": {"A": ["p1"], "B": ["p2"]}, "combine": ["a.json", "b.json"]}
    with pytest.raises(SystemExit, match="same patient-level folds"):
        cvmaps.combine(config, tmp_path / "ab.json")
