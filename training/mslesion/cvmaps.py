"""Held-out probability maps of the cross-validation, kept so that rules applied after the networks
(several independently trained models averaged, other thresholds) are scored without running them again.

:func:`training.mslesion.crossval.evaluate` writes every fold model's maps of each held-out patient
(:func:`save_maps`): ``<fold run_dir>/maps/sub-<subject>.npz``, one ``(X, Y, Z)`` float16 array per
member (``generic``, ``ensemble``, and ``generic_flip``, ``ensemble_flip`` with flip averaging) on the
1 mm MNI152NLin2009aSym grid (RAS), probabilities in [0, 1], before the search-region mask. float16
keeps a probability to 2^-11 relative: one model's saved maps scored again (``"combine"`` with that
arm alone) moved Dice by at most 0.0007 and one lesion-wise F1 by 0.009 against its float32 scores
(cv2_fixed fold D, 2026-12-08), so a multi-model arm is compared with its members scored the same way.

A config with ``"combine": ["ARM.json", ...]`` (configs beside it, same folds) is a multi-model arm:
:func:`combine` averages, for each held-out patient, the maps of every listed arm's model of that
patient's fold -- all of which never saw the patient -- member by member, and scores the mean as
``"<name> <member>"`` exactly as ``evaluate`` scores one model (:func:`training.mslesion.crossval.score_map`).
This is the deep-ensemble rule: ``p(x) = (1 / M) sum_m p_m(x)`` over ``M`` trainings of the recipe.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from training.common.configs import load_config
from training.common.paths import ROOT

LOGGER = logging.getLogger("training.mslesion")


def map_path(fold_run_dir: str | Path, subject: str) -> Path:
    return ROOT / fold_run_dir / "maps" / f"sub-{subject}.npz"


def save_maps(fold_run_dir: str | Path, subject: str, maps: dict[str, np.ndarray]) -> Path:
    """Write ``maps`` (member name -> template-grid map) for one held-out patient; spaces in member
    names become underscores (``"ensemble flip"`` -> ``ensemble_flip``)."""
    path = map_path(fold_run_dir, subject)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **{k.replace(" ", "_"): np.asarray(v, np.float16) for k, v in maps.items()})
    return path


def load_maps(fold_run_dir: str | Path, subject: str) -> dict[str, np.ndarray]:
    """The saved maps of one held-out patient as float32, member names with spaces restored."""
    path = map_path(fold_run_dir, subject)
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `python -m training.mslesion.crossval ARM.json --evaluate` "
                         "for that arm first (it saves its held-out maps).")
    with np.load(path) as z:  # plain arrays only: allow_pickle stays False
        return {k.replace("_", " "): z[k].astype(np.float32) for k in z.files}


def mean_maps(per_model: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Member-wise mean over models of the members every model has: ``(1 / M) sum_m p_m``."""
    if not per_model:
        raise ValueError("no maps to average")
    members = set(per_model[0]).intersection(*per_model[1:])
    return {k: np.mean([m[k] for m in per_model], axis=0, dtype=np.float32) for k in sorted(members)}


def combine(config: dict, config_path: Path, folds: list[str] | None = None) -> dict:
    """Rows of the multi-model arm ``config["combine"]`` (arm configs, relative to ``config_path``'s
    folder) on every held-out patient of ``folds`` (default: all), written like an ``--evaluate``
    result (``RESULTS/<name>_<date>.json``)."""
    from bids_app.imaging import templates
    from training.mslesion.crossval import (
        _write, config_region, fold_config, fold_of, labelled_cases, registered, score_map)
    from training.mslesion.template import load_template
    import SimpleITK as sitk

    arms = [load_config(config_path.parent / a) for a in config["combine"]]
    for arm in arms:
        if arm["folds"] != config["folds"]:
            raise SystemExit(f"{arm['name']} has other folds than {config['name']}: a combined arm needs "
                             "the same patient-level folds, or a model would score a patient it saw.")
    tpl = load_template()
    tpl_img = sitk.ReadImage(str(templates.get_template_file("T1w")))
    cases = labelled_cases(Path(config["bids_dir"]))
    assignment = fold_of(config)
    region = config_region(config, tpl)
    rows: list[dict] = []
    for case in cases:
        f = assignment[case["subject"]]
        if folds and f not in folds:
            continue
        per_model = [load_maps(fold_config(arm, f, cases)["run_dir"], case["subject"]) for arm in arms]
        _, transform = registered(case, config, tpl)
        for member, prob in mean_maps(per_model).items():
            rows += [{**r, "fold": f, "seen_in_training": "none"}
                     for r in score_map(prob * region, case, transform, tpl_img, config["thresholds"],
                                        f"{config['name']} {member}")]
        LOGGER.info("%s scored (fold %s, %d models)", case["subject"], f, len(per_model))
    return _write(config, rows, "_folds-" + "".join(folds) if folds else "",
                  combined=[a["name"] for a in arms])
