"""The lesion model card from the patient-level cross-validation (:mod:`training.mslesion.crossval`):
``<export_dir>/README.md`` with a summary table first, then the strategy table, every patient, the
recipe and the limits. Written from ``metadata.json`` and the committed result files the config's
``card`` names; no network is run.

``config["card"]`` keys: ``crossval`` (result files of ``crossval --evaluate``, the first one with
the baseline and the shipped model), ``arm_names`` (``{arm: text}`` shown instead of the internal
arm name), ``seed_repeats`` (``[[arm, the same arm with another seed], ...]``, shown as the seed
noise; optional), ``timing`` (a participant benchmark text file, optional), ``notes`` (paragraphs),
``crossval_config`` (the cross-validation config of the final arm, quoted in the recipe; default cv2.json),
``hide_arms`` (internal arm names left out of the tables, e.g. combinations measured but not worth a
row; their numbers stay in the result files), ``patient_arms`` (shown arm names of the per-patient
table, in order; default: every arm).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bids_app.imaging import templates
from training.common.markdown import markdown_table
from training.common.paths import ROOT
from training.mslesion.cvrows import summary

#: The issue-13 acceptance targets, in the card's words.
TARGETS = {"dice_1mm": 0.65, "dice_ms3seg": 0.60, "lesion_f1": 0.55, "nwmh": 0.15}


def _mean(xs) -> float:
    v = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(v) / len(v) if v else math.nan


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def arm_stats(rows: list[dict]) -> dict:
    """Means of one arm's per-patient rows (only patients the arm never saw)."""
    rows = [r for r in rows if r.get("seen_in_training", "none") == "none"]
    return {
        "n": len(rows),
        "dice_1mm": _mean([r["dice"] for r in rows if r["site"] in ("Lesjak", "MSLesSeg")]),
        "dice_ms3seg": _mean([r["dice"] for r in rows if r["site"].startswith("MS3SEG")]),
        "dice_isbi": _mean([r["dice"] for r in rows if r["site"] == "ISBI2015"]),
        "dice": _mean([r["dice"] for r in rows]),
        "lesion_f1": _mean([r["lesion_f1"] for r in rows]),
        "small_recall": _mean([r["small_recall"] for r in rows]),
        "abs_volume_error": _mean([abs(r["volume_error_percent"]) for r in rows]),
        "nwmh": [r["nwmh_fraction"] for r in rows if not math.isnan(r["nwmh_fraction"])],
    }


def load_arms(card: dict) -> dict[str, list[dict]]:
    """``{arm: per-patient rows}`` over the card's cross-validation result files, in file order."""
    arms: dict[str, list[dict]] = {}
    for i, path in enumerate(card["crossval"]):
        res = json.loads((ROOT / path).read_text())
        for arm, rows in summary(res["rows"], res["config"]).items():
            if (i and arm.startswith("baseline")) or arm in card.get("hide_arms", ()):
                continue  # one baseline, from the first file
            arms[card.get("arm_names", {}).get(arm, arm)] = rows
    return arms


def strategy_table(arms: dict[str, list[dict]]) -> str:
    rows = []
    for arm, rs in arms.items():
        s = arm_stats(rs)
        rows.append([arm, s["n"], _f(s["dice_1mm"]), _f(s["dice_ms3seg"]), _f(s["dice_isbi"]), _f(s["dice"]),
                     _f(s["lesion_f1"]), _f(s["small_recall"]),
                     ", ".join(f"{x:.2f}" for x in s["nwmh"]) or "n/a", _f(s["abs_volume_error"], 0)])
    return markdown_table(["arm", "patients held out", "Dice 1 mm (3)", "Dice 1.5T MS3SEG (10)", "Dice ISBI (1)",
                           "Dice all", "lesion F1 all", "recall 3-50 mm^3", "nWMH labelled lesion",
                           "mean abs volume error %"], rows)


def seed_table(arms: dict[str, list[dict]], repeats: list[list[str]]) -> str:
    """One row per recipe trained with two seeds (``repeats``: ``[[arm, arm with the other seed], ...]``,
    card arm names): each mean for both seeds and their difference, the seed noise of the table."""
    keys = [("dice_1mm", "Dice 1 mm"), ("dice_ms3seg", "Dice MS3SEG"), ("dice", "Dice all"),
            ("lesion_f1", "lesion F1"), ("small_recall", "recall 3-50 mm^3")]
    rows = []
    for a, b in repeats:
        sa, sb = arm_stats(arms[a]), arm_stats(arms[b])
        rows.append([a] + [f"{_f(sa[k])} / {_f(sb[k])} ({_f(sb[k] - sa[k], 3)})" for k, _ in keys])
    return markdown_table(["recipe (first seed / second seed (difference))", *(n for _, n in keys)], rows)


def patient_table(arms: dict[str, list[dict]]) -> str:
    subjects = sorted({r["subject"] for rs in arms.values() for r in rs})
    rows = []
    for s in subjects:
        site = next(r["site"] for rs in arms.values() for r in rs if r["subject"] == s)
        cells = []
        for rs in arms.values():
            r = next((r for r in rs if r["subject"] == s), None)
            cells.append("" if r is None else f"{r['dice']:.2f} / {r['lesion_f1']:.2f} / {r['pred_ml']:.1f}"
                         + ("" if r.get("seen_in_training", "none") == "none" else " (seen)"))
        truth = next(r["truth_ml"] for rs in arms.values() for r in rs if r["subject"] == s)
        rows.append([f"sub-{s}", site, f"{truth:.1f}", *cells])
    return markdown_table(["patient", "site", "manual mL", *arms], rows)


def above_baseline(arms: dict[str, list[dict]], arm: str) -> tuple[int, int, list[str]]:
    """``(cases above, cases, subjects not above)``: the arm's Dice against the baseline's, per patient."""
    base = {r["subject"]: r["dice"] for r in next(rs for a, rs in arms.items() if a.startswith("baseline"))}
    mine = [r for r in arms[arm] if r.get("seen_in_training", "none") == "none"]
    below = [r["subject"] for r in mine if r["dice"] <= base.get(r["subject"], -1)]
    return len(mine) - len(below), len(mine), below


def markdown(arms: dict[str, list[dict]]) -> str:
    """The strategy table and the per-patient table (``crossval --table``)."""
    return (strategy_table(arms) + "\n\n" + patient_table(arms)
            + "\n\nCells: Dice / lesion-wise F1 / predicted mL on the native FLAIR grid (mean of raters).\n")


def _infra_recipe(config: dict) -> str:
    p = config.get("infratentorial_lesions", 0.0)
    return ("" if not p else f"\n- Infratentorial patches: {int(round(100 * p))} % of the patches not centred on a real lesion are "
            "centred in the template's brainstem or cerebellum, with 1-3 ellipsoid lesions (1-5 mm semi-axes) there.")


def _patient_arms(arms: dict[str, list[dict]], card: dict) -> dict[str, list[dict]]:
    """The arms of the per-patient table: ``card["patient_arms"]`` (shown names, in that order) or all."""
    names = card.get("patient_arms")
    if not names:
        return arms
    missing = [n for n in names if n not in arms]
    if missing:
        raise SystemExit(f"card.patient_arms names arms that no result file gives: {missing}")
    return {n: arms[n] for n in names}


def _patient_scope(card: dict) -> str:
    return "; the arms that matter here (every arm's rows are in its result file)" if card.get("patient_arms") else ""


def _seed_section(arms: dict[str, list[dict]], card: dict) -> str:
    if not card.get("seed_repeats"):
        return ""
    return ("\n**Seed noise.** The same recipe, folds and cache trained again with another seed (sampling, "
            "initialisation, augmentation and, where there is one, the pre-training all change):\n\n"
            + seed_table(arms, card["seed_repeats"]) + "\n")


def _not_in_model(config: dict) -> str:
    """The card's sentence on the strategies that were measured as arms but are not in this model."""
    missing = [what for key, what in (("ssl", "self-supervised pre-training"),
                                      ("mean_teacher", "mean-teacher semi-supervised fine-tuning"),
                                      ("synthseg_canvases", "synthesis on the 39 real anatomies"))
               if not config.get(key)]
    if not missing:
        return ""
    return (f"{', '.join(missing[:-1]) + ' and ' if len(missing) > 1 else ''}{missing[-1]} "
            f"{'are' if len(missing) > 1 else 'is'} measured in the strategy table but not in this model.").capitalize()


def _inputs(config: dict) -> str:
    """The card's words on the input channels (with or without the global-binary-mask prior)."""
    if config.get("prior", True):
        return "FLAIR + global-binary-mask prior"
    return "FLAIR alone (no global-binary-mask prior channel)"


def _ssl_recipe(config: dict) -> str:
    """The card's recipe line on the self-supervised pre-training (empty without one)."""
    ssl = config.get("ssl")
    if not ssl:
        return ""
    scans = ", ".join(Path(s).name.removesuffix(".nii.gz") for s in ssl["scans"])
    tasks = ", ".join(k for k, w in ssl.get("weights", {}).items() if w)
    return (f"- Self-supervised pre-training of the generic net first ({tasks}; {ssl['iterations']} iterations, "
            f"batch {ssl['batch']}) on unlabelled real scans of any contrast ({scans}) and template synthesis "
            f"({int(100 * ssl.get('synthetic_fraction', 0.3))} % of patches); no labelled patient is in it.\n")


def write_cv_card(config: dict, final_arm: str) -> Path:
    """``<export_dir>/README.md`` for a model whose accuracy is the cross-validated arm ``final_arm``."""
    out = ROOT / config["export_dir"]
    meta = json.loads((out / "metadata.json").read_text())
    # As bids_app.mslesion.predict.flip_lr reads it (that module imports torch; --card runs without it).
    flip = bool(meta.get("inference", {}).get("flip_lr", False))
    card = config["card"]
    arms = load_arms(card)
    s = arm_stats(arms[final_arm])
    n_above, n_cases, below = above_baseline(arms, final_arm)
    met = {
        f"mean Dice >= {TARGETS['dice_1mm']} over the 1 mm brains": s["dice_1mm"] >= TARGETS["dice_1mm"],
        f"mean Dice >= {TARGETS['dice_ms3seg']} over the ten 1.5T patients": s["dice_ms3seg"] >= TARGETS["dice_ms3seg"],
        f"mean lesion-wise F1 >= {TARGETS['lesion_f1']} over all": s["lesion_f1"] >= TARGETS["lesion_f1"],
        "every case above its FLAIR-threshold baseline": not below,
        f"non-MS hyperintensities labelled lesion <= {int(100 * TARGETS['nwmh'])} %":
            bool(s["nwmh"]) and max(s["nwmh"]) <= TARGETS["nwmh"],
    }
    labelled = list(config.get("labelled_canvases", {}))
    timing = (f"`{card['timing']}` (`python benchmarks/participant.py --task mslesion`):\n\n```\n"
              + (ROOT / card["timing"]).read_text().strip() + "\n```") if card.get("timing") else "not measured"
    summary_rows = [
        ["what", f"DeepLesionBrain-style ensemble: a generic 3D UNet and {len(meta['ensemble']['boxes'])} sub-volume "
                 "specialists grown from it, fused"
                 + ("; each net also run on the left-right mirrored FLAIR" if flip else "")
                 + "; " + _inputs(config)],
        ["trained on", f"{len(labelled)} labelled real patients, {len(config['real_canvases'])} unlabelled FLAIRs, "
                       "real lesion shapes pasted into real and synthetic canvases"],
        ["status", meta.get("status", "experimental") + ": " + ("all acceptance targets met" if all(met.values())
                                                                 else "acceptance targets not met (below)")],
        ["Dice, patients never seen: 1 mm / 1.5T clinical / all", f"{_f(s['dice_1mm'])} / {_f(s['dice_ms3seg'])} / {_f(s['dice'])}"],
        ["lesion-wise F1 (all) / recall of 3-50 mm^3 lesions", f"{_f(s['lesion_f1'])} / {_f(s['small_recall'])}"],
        ["above the FLAIR-threshold baseline", f"{n_above} of {n_cases} patients"],
        ["non-MS hyperintensities labelled lesion (2 patients)", ", ".join(f"{100 * x:.0f} %" for x in s["nwmh"])],
        ["threshold / minimum lesion", f"{meta['output']['threshold']} / {meta['output']['min_lesion_mm3']} mm^3"],
        ["sha256 of model.safetensors", f"`{meta['sha256']}`"],
        ["version", meta["version"]],
    ]
    text = f"""# {meta['name']} {meta['version']}: MS white-matter lesions on FLAIR

{markdown_table(['', ''], summary_rows)}

All numbers: patient-level cross-validation over every labelled dev patient (14 patients, 4 folds; a
fold's model never saw its patients' images or labels), scored on the native FLAIR grid against the
manual masks (mean of the raters where there are two). The weights are checked against the sha256
before loading (safetensors, float16 storage, never unpickled).

## Acceptance (issue 13)

{markdown_table(['target', 'met'], [[k, 'yes' if v else 'no'] for k, v in met.items()])}

Patients at or below their baseline: {', '.join('sub-' + b for b in below) or 'none'}.

## Strategies, same folds

Each arm is a recipe trained per fold (or once, when it uses no labels) and scored on the patients its
model never saw; a fold's probability threshold is chosen on the other folds' patients
(`choose_thresholds`), the baseline's two thresholds on all other patients (leave one patient out).
The shipped 0.1.0 model is scored on the patients it never saw (it trained on `sub-ms07` and `sub-isbi03`).

{strategy_table(arms)}
{_seed_section(arms, card)}
## Every patient

Cells: Dice / lesion-wise F1 / predicted mL{_patient_scope(card)}.

{patient_table(_patient_arms(arms, card))}

## What it is
Compact 3D MONAI UNets (channels {config['channels']}, one residual unit per level, one output channel,
sigmoid) on the 1 mm {templates.TEMPLATE} grid (Kamraoui et al., Medical Image Analysis 2022): the generic
whole-brain net is trained first; its weights initialise one specialist per overlapping sub-volume
(grid {config['grid']}, overlap {config['overlap']}), each fine-tuned on patches centred in its
sub-volume; their maps are fused by a weighted mean with a cosine taper. The app also writes the
members' spread as an uncertainty map.

Inputs: the FLAIR after N4, affine registration to the template and `(x - median) / IQR` inside the
template brain mask{'; the template white-matter mask (probability >= 0.5) as the global-binary-mask prior (Hertel et al.)' if config.get('prior', True) else ' (no prior channel; the template WM still bounds the search region)'}.
Channels: {', '.join(meta['input']['channels'])}.
Output: lesion probability inside the template WM dilated by {config['search_dilation_mm']} mm{" and the template's brainstem and cerebellum (`regions.infratentorial_mask`)" if config.get('search_infratentorial') else ""}{" (every net also runs on the left-right mirrored FLAIR; its map, mirrored back, joins the ensemble's members)" if flip else ""}, resampled
to the FLAIR grid, thresholded at {meta['output']['threshold']} (the threshold with the best mean
cross-validated Dice over all folds); lesions under {meta['output']['min_lesion_mm3']} mm^3 are dropped.

## Training data and recipe (`{meta['training']['config']}`)
`python -m training.mslesion {meta['training']['config']}` (resumable), then `--export`; the
cross-validation: `python -m training.mslesion.crossval {card.get('crossval_config', 'training/mslesion/configs/cv2.json')} --prepare`,
`--train A` ... `--train D`, `--evaluate`, `--table RESULT_JSON`.

{_ssl_recipe(config)}- Labelled real scans ({len(labelled)}): {', '.join(Path(c).name.removesuffix('_FLAIR.nii.gz') for c in labelled)}; their
  manual lesions (mean of the raters, carried to the template: a soft target) are the targets; 70 % of
  their patches are centred on a lesion ({config.get('centre_on', 'voxel')} sampling); half keep only the real lesions.
- Unlabelled real FLAIRs ({', '.join(Path(c).name for c in config['real_canvases'])}): real lesion shapes
  pasted in, their bright white matter left out of the loss.
- Synthetic FLAIRs from the template tissue maps with random contrasts ({int(100 * config.get('synthetic_t1_fraction', 0))} % from the
  template T1w), with the 28 real lesion masks of Lesjak et al. (random subsets, flips, contrast
  {config.get('lesion_contrast')} IQR) pasted in.{_infra_recipe(config)}
- Image-quality augmentation: blur, thick slices (2-6 mm), k-space ghosting and motion, noise, bias field, gamma.
- Loss BCE + soft Dice; patches {config['patch']}^3, batch {config['batch']}, AdamW lr {config['lr']}, cosine decay;
  generic {config['generic_iterations']} iterations, each specialist {config['special_iterations']} at 0.3x lr;
  {config.get('threads', 2)} CPU thread(s), no GPU.

## Time per FLAIR (CPU)

{timing}

{chr(10).join(chr(10) + n for n in card.get('notes', [])).strip()}

## Limits
Trained for minutes on CPU with {len(labelled)} labelled patients from four sources; read the per-patient
table before trusting it on your data and validate on your own labels (the app writes Dice and
lesion-wise F1 when manual labels exist under `derivatives/labels`). {_not_in_model(config)} Data:
Lesjak et al., Neuroinformatics 2018 (CC-BY); ISBI 2015 (ms.lesion R package, GPL-2); MSLesSeg; MS3SEG;
sources in the bids-dev README. The 0.1.0 model's two-fold experiments (prior, T1w, negatives, sulci,
warps, adaptation without labels) are kept in `training/mslesion/results/` with their configs.
"""
    (out / "README.md").write_text(text)
    return out / "README.md"
