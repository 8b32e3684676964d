"""The cross-validation's rows gathered into arms (:mod:`training.mslesion.crossval` writes them): rater
means per patient, each fold's threshold chosen on the other folds' patients, and per-patient rows of
every arm (the fold models at their chosen thresholds, the baseline, the shipped model)."""

from __future__ import annotations

import math

import numpy as np


def case_means(rows: list[dict]) -> list[dict]:
    """One row per (model, threshold, subject): numeric columns averaged over the raters (NaN-aware)."""
    keys = ("dice", "lesion_f1", "precision", "recall", "small_recall", "volume_error_percent", "pred_ml",
            "truth_ml", "nwmh_fraction")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["threshold"], r["subject"]), []).append(r)
    out = []
    for (model, t, subject), rs in groups.items():
        row = {k: rs[0][k] for k in ("subject", "site", "model", "threshold") if k in rs[0]}
        row.update({k: _nanmean([r[k] for r in rs]) for k in keys})
        for k in ("seen_in_training", "fold"):
            if k in rs[0]:
                row[k] = rs[0][k]
        out.append(row)
    return out


def _nanmean(xs) -> float:
    v = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def choose_thresholds(case_rows: list[dict], model: str) -> dict[str, float]:
    """For each fold, the threshold of ``model`` with the best mean Dice over the held-out patients
    of all *other* folds (each scored by its own fold's model): the fold's patients never choose it."""
    rows = [r for r in case_rows if r["model"] == model]
    folds = sorted({r["fold"] for r in rows})
    thresholds = sorted({r["threshold"] for r in rows})
    out = {}
    for f in folds:
        def score(t):
            return _nanmean([r["dice"] for r in rows if r["fold"] != f and r["threshold"] == t])
        out[f] = max(thresholds, key=score)
    return out


def held_out_rows(case_rows: list[dict], model: str) -> list[dict]:
    """The cross-validated result of a fold model: each patient at its fold's :func:`choose_thresholds`."""
    chosen = choose_thresholds(case_rows, model)
    return [r for r in case_rows if r["model"] == model and r["threshold"] == chosen[r["fold"]]]


def summary(rows: list[dict], name: str) -> dict[str, list[dict]]:
    """Per-patient rows of each arm: the fold models at their chosen thresholds, the baseline at its
    leave-one-patient-out grid point, the shipped model."""
    from training.mslesion.baseline import cross_validated_baseline

    base = [r for r in rows if "flair_iqr" in r]
    arms = {}
    if base:
        arms["baseline (FLAIR threshold, LOPO)"] = case_means(
            [{**r, "model": "baseline", "threshold": 0.5} for r in cross_validated_baseline(base)])
    cm = case_means([r for r in rows if "fold" in r])
    # The ensemble first, then the generic net, each followed by its inference-time arms (flip, hysteresis).
    models = sorted({r["model"] for r in cm if r["model"].startswith(f"{name} ")},
                    key=lambda m: (not m.startswith(f"{name} ensemble"), m))
    for model in models:
        arms[f"{model} (cross-validated)"] = held_out_rows(cm, model)
    arms.update({m: case_means([r for r in rows if r["model"] == m])
                 for m in sorted({r["model"] for r in rows if r["model"].startswith("shipped")})})
    return arms
