"""What the template registration's metric sampling costs and changes, on every labelled dev FLAIR.

Two settings of :data:`bids_app.imaging.template_space.OUTLINE_SAMPLING` / ``INNER_SAMPLING`` are
compared: the reference ``(0.5, 0.5, 0.5)`` for both stages (the setting until 2026-12-03) and the
current defaults. Per case: registration seconds (one thread, as the app runs it), the distance
between the two template -> subject transforms over the template brain (mean and max, mm; each
setting's own seed-to-seed spread is printed for comparison with ``--seeds``), and the shipped
model's Dice, lesion-wise F1 and lesion volume after each (its own threshold, on the native grid).

    python benchmarks/registration.py [--bids ../shared/data/bids-dev] [--seeds] [--out FILE.json]

The reference transforms may come from a cross-validation cache made with the reference setting
(``--cache training_runs/mslesion/cache``), which halves the run time.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bids_app.imaging import template_space, templates  # noqa: E402

REFERENCE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _brain_points(mask: sitk.Image, step: int = 500) -> list[tuple[float, ...]]:
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[::step]  # (z, y, x)
    return [mask.TransformIndexToPhysicalPoint([int(i[2]), int(i[1]), int(i[0])]) for i in idx]


def distance_mm(a: sitk.Transform, b: sitk.Transform, points) -> tuple[float, float]:
    """Mean and max distance (mm) between where ``a`` and ``b`` send each of ``points``."""
    d = np.array([np.linalg.norm(np.subtract(a.TransformPoint(p), b.TransformPoint(p))) for p in points])
    return float(d.mean()), float(d.max())


def register(image: sitk.Image, tpl: sitk.Image, mask: sitk.Image, sampling, seed: int | None = None):
    """``to_template_space`` with the given ``(outline, inner)`` sampling (and registration seed)."""
    from bids_app.imaging import registration

    saved = (template_space.OUTLINE_SAMPLING, template_space.INNER_SAMPLING,
             template_space.affine_register, template_space.rigid_register)
    template_space.OUTLINE_SAMPLING, template_space.INNER_SAMPLING = sampling
    if seed is not None:
        template_space.affine_register = functools.partial(registration.affine_register, seed=seed)
        template_space.rigid_register = functools.partial(registration.rigid_register, seed=seed)
    try:
        return template_space.to_template_space(image, tpl, mask, threads=1)
    finally:
        (template_space.OUTLINE_SAMPLING, template_space.INNER_SAMPLING,
         template_space.affine_register, template_space.rigid_register) = saved


def main(argv=None) -> int:
    from bids_app.config import default_models_dir
    from bids_app.mslesion.predict import lesion_probability, load_ensemble
    from training.mslesion.crossval import labelled_cases, score_map
    from training.mslesion.template import load_template

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bids", type=Path, default=ROOT.parent / "shared/data/bids-dev")
    p.add_argument("--cache", type=Path, help="cross-validation cache registered with the reference setting")
    p.add_argument("--seeds", action="store_true", help="also each setting's spread over two other seeds")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tpl_img = sitk.ReadImage(str(templates.get_template_file("T1w")))
    tpl_mask = sitk.ReadImage(str(templates.get_template_file("mask", desc="brain")))
    points = _brain_points(tpl_mask)
    tpl = load_template()
    model = load_ensemble(default_models_dir() / "mslesion")
    threshold = model[0]["output"]["threshold"]
    current = (template_space.OUTLINE_SAMPLING, template_space.INNER_SAMPLING)
    rows = []
    for case in labelled_cases(args.bids):
        image = sitk.ReadImage(case["flair"])
        stem = Path(case["flair"]).name.removesuffix(".nii.gz")
        row = {"subject": case["subject"]}
        results = {}
        for name, sampling in (("reference", REFERENCE), ("current", current)):
            cached = args.cache / f"{stem}.tfm" if args.cache else None
            if name == "reference" and cached and cached.is_file():
                data, tfm = np.load(args.cache / f"{stem}.npy"), sitk.ReadTransform(str(cached))
            else:
                tsi = register(image, tpl_img, tpl_mask, sampling)
                row[f"{name}_registration_s"] = round(tsi.seconds["registration"], 1)
                data, tfm = tsi.data, tsi.transform
            prob = lesion_probability(model, data, tpl["wm"], tpl["brain"])
            raters = score_map(prob, case, tfm, tpl_img, [threshold], name)  # one row per rater
            scores = {k: float(np.mean([r[k] for r in raters]))
                      for k in ("dice", "lesion_f1", "pred_ml", "truth_ml", "nwmh_fraction")}
            row.update({f"{name}_{k}": round(scores[k], 3) for k in ("dice", "lesion_f1", "pred_ml", "nwmh_fraction")
                        if not np.isnan(scores[k])})
            results[name] = tfm
            if args.seeds:
                spread = [distance_mm(register(image, tpl_img, tpl_mask, sampling, s).transform, tfm, points)[0]
                          for s in (1, 2)]
                row[f"{name}_seed_spread_mm"] = round(float(np.mean(spread)), 2)
        row["truth_ml"] = round(scores["truth_ml"], 3)
        row["shift_mean_mm"], row["shift_max_mm"] = (round(v, 2) for v in distance_mm(
            results["reference"], results["current"], points))
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k != "subject"]
    means = {k: round(float(np.nanmean([r[k] for r in rows if k in r])), 3) for k in keys}
    print("mean", json.dumps(means))
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "current": current,
                                        "reference": REFERENCE, "rows": rows, "mean": means}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
