"""Patient-level cross-validation of the lesion model over every labelled dev patient.

The protocol of issue 13: every FLAIR under ``bids_dir`` with a manual lesion mask in
``derivatives/labels`` is one patient (:func:`labelled_cases`); the config's ``folds`` put each patient
in exactly one fold; the model of fold ``F`` is trained on the labelled scans of all other folds
(plus the unlabelled canvases and synthesis of the base recipe) and scored only on the patients of
``F``, which it never saw (neither image nor labels). The same rows are written for

- the FLAIR-threshold baseline (:mod:`training.mslesion.baseline`), its two thresholds chosen
  leave-one-patient-out (on all other patients, :func:`~training.mslesion.baseline.cross_validated_baseline`);
- the shipped model (``models/mslesion``), marked with what of each patient it saw.

Every map is scored on the native FLAIR grid (:func:`score_map`): Dice, lesion-wise F1, recall of
small lesions (3-50 mm^3), volume error and, where a ``label-nWMH`` mask exists, the fraction of the
non-MS hyperintensity voxels labelled lesion. The fold model's probability threshold is chosen per
fold on the *other* folds' held-out patients (:func:`training.mslesion.cvrows.choose_thresholds`), never on its own.

    python -m training.mslesion.crossval CONFIG --prepare           register every scan once (cache)
    python -m training.mslesion.crossval CONFIG --train FOLD        train one fold (resumable)
    python -m training.mslesion.crossval CONFIG --evaluate          score folds, baseline, shipped model
                                                                    (a ``combine`` config: several arms' saved maps averaged)
    python -m training.mslesion.crossval CONFIG --merge PART ...    join partial (--folds) evaluations
    python -m training.mslesion.crossval CONFIG --table             the summary (markdown) from the rows
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from bids_app.imaging.grid import resample_to
from bids_app.mslesion import measures
from training.common.configs import load_config
from training.common.logs import setup_logging
from training.common.paths import ROOT
from training.mslesion import RESULTS
from training.mslesion.cvmaps import save_maps
from training.mslesion.cvrows import summary

LOGGER = logging.getLogger("training.mslesion")

def labelled_cases(d: Path) -> list[dict]:
    """Every labelled FLAIR under the BIDS root ``d``, one dict per patient, sorted by subject.

    Keys: ``subject`` (without ``sub-``), ``site`` (``participants.tsv`` column ``source``, else
    ``"unknown"``), ``flair`` (path str), ``labels`` (the raters' lesion masks, ``label-lesion``
    with or without ``desc-rater<N>``), ``nwmh`` (the ``label-nWMH`` mask of non-MS
    hyperintensities, or ``None``).
    """
    sites = {}
    tsv = d / "participants.tsv"
    if tsv.is_file():
        with tsv.open() as fh:
            sites = {r["participant_id"].removeprefix("sub-"): r.get("source", "unknown")
                     for r in csv.DictReader(fh, delimiter="\t")}
    cases = []
    for flair in sorted(d.glob("sub-*/**/anat/*_FLAIR.nii.gz")):
        rel = flair.relative_to(d)
        stem = flair.name.removesuffix(".nii.gz")
        lab_dir = d / "derivatives" / "labels" / rel.parent
        labels = sorted(lab_dir.glob(f"{stem}_label-lesion_*seg.nii.gz"))
        if not labels:
            continue
        nwmh = lab_dir / f"{stem}_label-nWMH_seg.nii.gz"
        subject = rel.parts[0].removeprefix("sub-")
        cases.append({"subject": subject, "site": sites.get(subject, "unknown"), "flair": str(flair),
                      "labels": [str(p) for p in labels], "nwmh": str(nwmh) if nwmh.is_file() else None})
    return cases


def fold_of(config: dict) -> dict[str, str]:
    """``{subject: fold}`` from ``config["folds"]`` (``{fold: [subjects]}``); a subject in two folds is an error."""
    out: dict[str, str] = {}
    for fold, subjects in config["folds"].items():
        for s in subjects:
            if s in out:
                raise SystemExit(f"{s} is in folds {out[s]} and {fold}: each patient must be in exactly one fold.")
            out[s] = fold
    return out


def unlabelled_subjects(config: dict) -> set[str]:
    """Subjects whose scans a fold model sees without labels: ``real_canvases`` and ``ssl.scans``."""
    paths = list(config.get("real_canvases", [])) + list(config.get("ssl", {}).get("scans", []))
    return {Path(p).parts[0].removeprefix("sub-") for p in paths}


def fold_config(config: dict, fold: str, cases: list[dict]) -> dict:
    """The training config of one fold: the base recipe with every labelled patient *not* in
    ``fold`` as a labelled canvas, its own ``run_dir`` and the shared ``cache_dir``."""
    folds = fold_of(config)
    missing = [c["subject"] for c in cases if c["subject"] not in folds]
    if missing:
        raise SystemExit(f"labelled patients {missing} are in no fold of {config['name']}: add them to 'folds'.")
    if fold not in config["folds"]:
        raise SystemExit(f"fold {fold!r} is not one of {sorted(config['folds'])}.")
    leaked = sorted(unlabelled_subjects(config) & set(folds))
    if leaked:
        # An unlabelled scan of a tested patient (in the canvases or the self-supervised pool) would
        # let its fold model see the test image: the protocol forbids it.
        raise SystemExit(f"{config['name']}: {leaked} are labelled patients of the cross-validation but their "
                         "scans are also in real_canvases or ssl.scans; use only scans of unlabelled subjects there.")
    d = Path(config["bids_dir"])
    train = {str(Path(c["flair"]).relative_to(d)): [str(Path(p).relative_to(d)) for p in c["labels"]]
             for c in cases if folds[c["subject"]] != fold}
    out = {k: v for k, v in config.items() if k not in ("folds", "card")}
    if not config.get("labels", True):
        # An arm without manual labels ("synthesis only"): one model, which no fold's patient
        # trained, serves every fold.
        out.update(name=f"{config['name']}_all", run_dir=f"{config['run_dir']}/all", labelled_canvases={})
        return out
    out.update(name=f"{config['name']}_fold-{fold}", run_dir=f"{config['run_dir']}/fold-{fold}",
               labelled_canvases=train, seed=config["seed"] + ord(fold[0]))
    return out


def registered(case: dict, config: dict, tpl: dict) -> tuple[np.ndarray, sitk.Transform]:
    """The case's FLAIR on the template grid and its transform, from the shared cache (registered
    and cached by :func:`training.mslesion.canvases.real_canvas` on first use)."""
    from training.mslesion.canvases import real_canvas

    cache = ROOT / config["cache_dir"]
    stem = Path(case["flair"]).name.removesuffix(".nii.gz")
    tfm = cache / f"{stem}.tfm"
    if not tfm.is_file():
        for f in cache.glob(f"{stem}*.npy"):  # cached before transforms were kept: register again
            f.unlink()
    canvas = real_canvas(Path(case["flair"]), tpl, cache, [Path(p) for p in case["labels"]])
    return canvas["image"], sitk.ReadTransform(str(tfm))


def score_map(prob: np.ndarray, case: dict, transform: sitk.Transform, tpl_img: sitk.Image,
              thresholds: list[float], model: str, wm: np.ndarray | None = None,
              min_mean_wm: float = 0.0, hysteresis: list[float] = ()) -> list[dict]:
    """Rows scoring a template-grid map ``prob`` ``(X, Y, Z)`` in [0, 1] on the native FLAIR grid.

    The map is resampled once (linear, the inverse of the case's template transform), then for
    every threshold and every rater one row: ``dice, lesion_f1, precision, recall`` (lesions of at
    least the app's 3 mm^3, 26-connected, :func:`bids_app.mslesion.measures.segmentation_metrics`),
    ``small_recall`` (fraction of manual lesions of :data:`~bids_app.mslesion.measures.SMALL_LESION_MM3`
    touched by the prediction; NaN without any), ``volume_error_percent`` (``100 (V_pred - V_manual) / V_manual``),
    ``nwmh_fraction`` (voxels of the non-MS hyperintensity mask labelled lesion / its voxels;
    NaN without one). With ``min_mean_wm`` > 0 and the template WM probability ``wm`` ``(X, Y, Z)``,
    predicted lesions whose mean WM probability (``wm`` carried to the native grid) is below it are
    dropped first (:func:`bids_app.mslesion.measures.white_matter_components`). Each ratio ``r`` of
    ``hysteresis`` adds the rows of model ``"<model> hyst<r>"``: at threshold ``t`` the lesions of
    ``native >= r t`` that reach ``t`` somewhere (:func:`bids_app.mslesion.measures.hysteresis_components`).
    """
    flair = sitk.ReadImage(case["flair"])
    def to_native(a: np.ndarray) -> np.ndarray:
        img = sitk.GetImageFromArray(np.transpose(a.astype(np.float32), (2, 1, 0)))
        img.CopyInformation(tpl_img)
        return np.transpose(sitk.GetArrayFromImage(resample_to(img, flair, transform.GetInverse(), "linear")), (2, 1, 0))

    native = to_native(prob)
    wm_native = None
    if min_mean_wm > 0:
        if wm is None:
            raise ValueError("min_mean_wm needs the template WM probability wm.")
        wm_native = to_native(wm)
    zooms = flair.GetSpacing()
    nwmh = np.asarray(nib.load(case["nwmh"]).dataobj) > 0 if case.get("nwmh") else None
    truths = [(Path(p).name, np.asarray(nib.load(p).dataobj) > 0) for p in case["labels"]]
    rows = []
    rules = [(model, None)] + [(f"{model} hyst{r:g}", r) for r in hysteresis]
    for (variant, ratio), t in ((v, t) for v in rules for t in thresholds):
        pred = native >= t if ratio is None else measures.hysteresis_components(native, ratio * t, t)
        if wm_native is not None:
            pred = measures.white_matter_components(pred, wm_native, min_mean_wm)
        for name, truth in truths:
            m = measures.segmentation_metrics(pred, truth, zooms)
            rows.append({
                "subject": case["subject"], "site": case["site"], "reference": name, "model": variant,
                "threshold": t, "dice": round(m["dice"], 4), "lesion_f1": round(m["lesion_f1"], 4),
                "precision": round(m["lesion_precision"], 4), "recall": round(m["lesion_recall"], 4),
                "small_recall": _round(measures.small_lesion_recall(pred, truth, zooms)),
                "volume_error_percent": _round(m["volume_error_percent"], 1),
                "pred_ml": round(m["pred_volume_ml"], 3), "truth_ml": round(m["truth_volume_ml"], 3),
                "nwmh_fraction": _round(float((pred & nwmh).sum() / max(nwmh.sum(), 1))) if nwmh is not None
                else math.nan})
    return rows


def config_region(config: dict, tpl: dict) -> np.ndarray:
    """The search region ``(X, Y, Z)`` bool of a config (:func:`bids_app.mslesion.predict.search_region`:
    ``search_dilation_mm``; ``search_infratentorial`` adds the template's brainstem and cerebellum),
    as the exported model's metadata gives it to the app."""
    from bids_app.mslesion.predict import search_region

    infra = tpl["infratentorial"] if config.get("search_infratentorial", False) else None
    return search_region(tpl["wm"], dilation_mm=config["search_dilation_mm"], infratentorial=infra)


def _round(x: float, n: int = 4) -> float:
    return x if math.isnan(x) else round(float(x), n)


def prepare(config: dict) -> None:
    """Register every labelled patient and unlabelled canvas once into the shared cache."""
    from training.mslesion.canvases import real_canvas
    from training.mslesion.template import load_template

    tpl = load_template()
    d = Path(config["bids_dir"])
    for case in labelled_cases(d):
        t0 = time.perf_counter()
        registered(case, config, tpl)
        LOGGER.info("%s in the cache (%.0f s)", case["subject"], time.perf_counter() - t0)
    for rel in config["real_canvases"]:
        real_canvas(d / rel, tpl, ROOT / config["cache_dir"])


def evaluate(config: dict, folds: list[str] | None = None) -> dict:
    """Rows of every trained fold (generic and ensemble) on its held-out patients, of the baseline
    grid on every patient and of the shipped model on every patient (``seen_in_training`` says what
    of the patient it saw). Writes ``RESULTS/<name>_<date>.json``.

    Inference-time arms on the same fold models, from the config: ``"flip_lr": true`` adds the members
    averaged with their maps of the left-right mirrored image (models ``"<name> <member> flip"``,
    :mod:`bids_app.mslesion.predict`), ``"hysteresis": [r, ...]`` the two-threshold rule of
    :func:`score_map` on every network map. Every fold model's maps are saved for later rules
    (:mod:`training.mslesion.cvmaps`; ``"save_maps": false`` turns that off)."""
    import torch

    from bids_app.imaging import templates
    from bids_app.mslesion.predict import (
        input_channel, lesion_probability, load_ensemble, predict_ensemble, predict_generic)
    from training.mslesion.baseline import BASELINE_GRID, baseline_name, intensity_baseline
    from training.mslesion.channels import input_channels
    from training.mslesion.evaluate import load_nets
    from training.mslesion.template import load_template

    torch.set_num_threads(config.get("threads", 2))
    tpl = load_template()
    tpl_img = sitk.ReadImage(str(templates.get_template_file("T1w")))
    d = Path(config["bids_dir"])
    cases = labelled_cases(d)
    assignment = fold_of(config)
    thresholds = config["thresholds"]
    region = config_region(config, tpl)
    # Post-processing of the networks' masks (not the baseline's): lesions mostly outside the WM dropped.
    min_wm = float(config.get("component_min_wm", 0.0))
    flips = [False, True] if config.get("flip_lr") else [False]
    hysteresis = [float(r) for r in config.get("hysteresis", [])]
    rows: list[dict] = []
    trained, loaded = {}, {}
    for f in folds or sorted(config["folds"]):
        fc = fold_config(config, f, cases)
        if (ROOT / fc["run_dir"] / "generic.pt").is_file():
            if fc["run_dir"] not in loaded:  # one model may serve every fold (an arm without labels)
                loaded[fc["run_dir"]] = load_nets(fc)
            trained[f] = (fc, loaded[fc["run_dir"]])
        else:
            LOGGER.warning("fold %s has no trained generic net in %s: left out", f, fc["run_dir"])
    shipped = load_ensemble(ROOT / config["shipped_model"]) if config.get("shipped_model") else None
    shipped_seen: dict[str, str] = {}
    if shipped:  # what of each patient the shipped model saw, from the config it was trained with
        sc = json.loads((ROOT / shipped[0]["training"]["config"]).read_text())
        shipped_seen.update({Path(p).parts[0].removeprefix("sub-"): "image" for p in sc.get("real_canvases", [])})
        shipped_seen.update({Path(p).parts[0].removeprefix("sub-"): "image+labels"
                             for p in sc.get("labelled_canvases", {})})
    if folds:  # a partial evaluation scores only those folds' patients
        cases = [c for c in cases if assignment[c["subject"]] in folds]
    for case in cases:
        image, transform = registered(case, config, tpl)
        f = assignment[case["subject"]]
        if f in trained:
            fc, (_, generic, nets, boxes) = trained[f]
            x = np.stack([input_channel(n, image, tpl["wm"], None) for n in input_channels(fc)])
            maps = {}
            for flip in flips:
                tag = " flip" if flip else ""
                maps["generic" + tag] = predict_generic(generic, x, tpl["brain"], flip=flip)
                if len(nets) == len(boxes):
                    maps["ensemble" + tag] = predict_ensemble(nets, boxes, x, tpl["brain"], flip=flip)
            if config.get("save_maps", True):
                save_maps(fc["run_dir"], case["subject"], maps)
            for member, prob in maps.items():
                rows += [{**r, "fold": f, "seen_in_training": "none"}
                         for r in score_map(prob * region, case, transform, tpl_img, thresholds,
                                            f"{config['name']} {member}", tpl["wm"], min_wm, hysteresis)]
        for t in BASELINE_GRID["flair_iqr"] if config.get("baseline", True) else ():
            for w in BASELINE_GRID["template_wm"]:
                mask = intensity_baseline(image, tpl["wm"], t, w)
                rows += [{**r, "image": case["subject"], "flair_iqr": t, "template_wm": w}
                         for r in score_map(mask, case, transform, tpl_img, [0.5], baseline_name(t, w))]
        if shipped:
            meta = shipped[0]
            prob = lesion_probability(shipped, image, tpl["wm"], tpl["brain"])  # what the app runs
            rows += [{**r, "seen_in_training": shipped_seen.get(case["subject"], "none")}
                     for r in score_map(prob, case, transform, tpl_img, [meta["output"]["threshold"]],
                                        f"shipped {meta['version']}")]
        LOGGER.info("%s scored (fold %s)", case["subject"], f)
    return _write(config, rows, "_folds-" + "".join(folds) if folds else "")


def _write(config: dict, rows: list[dict], suffix: str = "", **extra) -> dict:
    """``RESULTS/<name>_<date><suffix>.json`` with the rows (and ``extra`` keys); returns its content."""
    out = {"config": config["name"], "date": time.strftime("%Y-%m-%d"), "rows": rows, **extra}
    path = RESULTS / f"{config['name']}_{out['date']}{suffix}.json"
    path.write_text(json.dumps(out, indent=0) + "\n")
    LOGGER.info("wrote %s", path)
    return out


def merge(config: dict, paths: list[Path]) -> dict:
    """Partial ``--evaluate --folds`` results of one config (each fold once) joined into
    ``RESULTS/<name>_<date>.json``, as one ``--evaluate`` would write it: folds scored as they finish."""
    rows, seen = [], set()
    for path in paths:
        res = json.loads(path.read_text())
        if res["config"] != config["name"]:
            raise SystemExit(f"{path} holds results of {res['config']!r}, not {config['name']!r}: merge only one config's folds.")
        folds = {r["fold"] for r in res["rows"] if "fold" in r}
        if folds & seen:
            raise SystemExit(f"{path} scores fold(s) {sorted(folds & seen)} again: merge each fold once.")
        seen |= folds
        rows += res["rows"]
    return _write(config, rows, merged_from=[p.name for p in paths])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.mslesion.crossval")
    ap.add_argument("config", type=Path)
    ap.add_argument("--prepare", action="store_true")
    ap.add_argument("--train", metavar="FOLD")
    ap.add_argument("--evaluate", action="store_true")
    ap.add_argument("--folds", nargs="+", help="with --evaluate: only these folds")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="RESULT_JSON",
                    help="join partial --evaluate --folds results of this config into one result file")
    ap.add_argument("--table", type=Path, metavar="ROWS_JSON", help="print the summary of an --evaluate result")
    args = ap.parse_args(argv)
    setup_logging()
    config = load_config(args.config)
    if args.prepare:
        prepare(config)
    if args.train:
        from training.mslesion.train import run

        run(fold_config(config, args.train, labelled_cases(Path(config["bids_dir"]))))
    if args.evaluate and config.get("combine"):
        from training.mslesion.cvmaps import combine

        combine(config, args.config, args.folds)
    elif args.evaluate:
        evaluate(config, args.folds)
    if args.merge:
        merge(config, args.merge)
    if args.table:
        from training.mslesion.cvcard import markdown

        rows = json.loads(args.table.read_text())["rows"]
        text = markdown(summary(rows, config["name"]))
        (args.table.with_suffix(".md")).write_text(text)
        LOGGER.info("wrote %s\n%s", args.table.with_suffix(".md"), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
