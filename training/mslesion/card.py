"""The lesion model card, ``<export_dir>/README.md``: written from ``metadata.json``, the run's evaluation
rows and the committed results of the fold runs the config's ``card`` names (held out, ablations,
transductive runs, the FLAIR-threshold baseline); no network is run."""

from __future__ import annotations

import json
from pathlib import Path

from bids_app.imaging import templates
from training.common.markdown import markdown_table
from training.common.paths import ROOT
from training.mslesion.baseline import BASELINE_GRID
from training.mslesion import RESULTS
from training.mslesion.canvases import companion_path


def _table(rows: list[dict], run: bool = False) -> str:
    """The scores of ``rows`` that have a Dice (one per manual label), with a ``run`` column if asked."""
    head = ["image / reference"] + (["run"] if run else []) + [
        "model", "seen in training", "Dice", "lesion F1", "lesion precision", "lesion recall",
        "volume ours / manual (mL)"]
    return markdown_table(head, [
        [r["case"]] + ([r["run"]] if run else []) + [
            r["model"], r.get("seen_in_training", "?"), f"{r['dice']:.3f}", f"{r['lesion_f1']:.3f}",
            f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['pred_ml']:.2f} / {r['truth_ml']:.2f}"]
        for r in rows if "dice" in r])


def run_metrics(config_path: str) -> list[dict]:
    """The evaluation rows of a run: its ``run_dir/metrics.json``, else the newest committed copy
    ``training/mslesion/results/<config stem>_<date>.json`` (run folders are not committed)."""
    cfg = json.loads((ROOT / config_path).read_text())
    live = ROOT / cfg["run_dir"] / "metrics.json"
    if live.is_file():
        return json.loads(live.read_text())
    copies = sorted(RESULTS.glob(f"{Path(config_path).stem}_20*.json"))
    if not copies:
        raise SystemExit(f"no metrics for {config_path}: run it with --evaluate first")
    return json.loads(copies[-1].read_text())


def _fold_rows(card: dict, key: str, seen: str = "none") -> list[dict]:
    """Rows of the runs listed under ``card[key]`` on the cases whose ``seen_in_training`` is ``seen``
    (``"none"``: held out; ``"image"``: the image was an unlabelled canvas, its labels never seen).
    A row's ``run`` is the name of the run's folder (``run_dir``, e.g. ``mslesion_foldA_t1``)."""
    rows = []
    for path in card.get(key, []):
        run = Path(json.loads((ROOT / path).read_text())["run_dir"]).name
        for r in run_metrics(path):
            if r.get("seen_in_training") == seen:
                rows.append({**r, "run": run})
    return rows


def _t1w_recipe(config: dict) -> str:
    """The card's line on the T1w channel (empty without one)."""
    if not config.get("t1w"):
        return ""
    images = list(config["real_canvases"]) + list(config.get("labelled_canvases", {}))
    with_t1 = [Path(c).name for c in images if companion_path(Path(config["bids_dir"]) / c)]
    return (f"- T1w channel: the real canvases with a T1w in their session ({', '.join(with_t1) or 'none'}) bring it, "
            "co-registered to their FLAIR; the others give zeros; synthetic canvases get a T1w from the template T1w "
            "with random CSF < GM < WM contrasts; pasted lesions are 0 to 1.5 IQR darker on the T1w; the channel is "
            f"zeroed in {int(100 * config.get('t1w_dropout', 0.3))} % of patches.\n")


def _baseline_section(card: dict) -> str:
    """The card's section on the FLAIR-threshold baseline (``card["baseline"]``: a results file of
    ``--baseline``); empty without one."""
    if not card.get("baseline"):
        return ""
    rows = json.loads((ROOT / card["baseline"]).read_text())["cross_validated"]
    grid = ", ".join(f"{k} {list(v)}" for k, v in BASELINE_GRID.items())
    return f"""### Baseline: a FLAIR threshold, cross-validated the same way

What any model must beat (`--baseline`, `{card['baseline']}`): the normalised FLAIR on the template grid,
smoothed by 0.5 mm, above a threshold (brain IQR) inside the template white matter, the two thresholds
chosen on the *other* labelled image (grid: {grid}), then resampled to the native grid and scored exactly
like the model.

{_table(rows)}

"""


def _transductive_section(card: dict) -> str:
    """The card's table of the runs under ``card["transductive"]``: the held-out case's labels never
    seen, its image an unlabelled canvas (semi-supervised adaptation to a scan); empty without any."""
    rows = _fold_rows(card, "transductive", seen="image")
    if not rows:
        return ""
    return f"""### Labels held out, image seen unlabelled (adaptation to a site's scans)

The same folds with the held-out image added as one more *unlabelled* canvas: real lesion shapes are
pasted into it and its bright white matter is left out of the loss, exactly as for `sub-mslong01`; its
manual labels are never read. This is what a user can do with their own unlabelled scans (README:
`python -m training.mslesion training/mslesion/configs/default.json --adapt BIDS_DIR ...` fine-tunes the shipped
model as `_adapt07_nolabels` does, 7-8 minutes on 2 CPU cores; `_ms07img` retrains from scratch, about
15 minutes); it is not a held-out number.

{_table(rows, run=True)}

"""


def write_card(config: dict, rows: list[dict]) -> Path:
    """``<export_dir>/README.md``: the model card, from the metadata, this run's rows and the held-out
    rows of the fold runs named in ``config["card"]`` (``held_out``, ``ablation``: config paths)."""
    out = ROOT / config["export_dir"]
    meta = json.loads((out / "metadata.json").read_text())
    card = config.get("card", {})
    held_out, ablation = _fold_rows(card, "held_out"), _fold_rows(card, "ablation")
    timing = [r for r in rows if "seconds" in r]
    volumes = [r for r in rows if "lesion_count" in r]
    labelled = list(config.get("labelled_canvases", {}))
    text = f"""# {meta['name']} {meta['version']}: MS white-matter lesions on FLAIR

sha256 of `model.safetensors`: `{meta['sha256']}` (checked by the app before loading; safetensors with
float16 storage, never unpickled).

## What it is
A DeepLesionBrain-style ensemble (Kamraoui et al., Medical Image Analysis 2022) of compact 3D MONAI
UNets (channels {config['channels']}, one residual unit per level, one output channel, sigmoid) on the 1 mm
{templates.TEMPLATE} grid. A generic whole-brain net was trained first; its weights initialised
{len(meta['ensemble']['boxes'])} specialists, one per overlapping sub-volume (grid {config['grid']}, overlap
{config['overlap']}) of the template brain box, each fine-tuned on patches centred in its sub-volume. The
specialists' maps are fused by a weighted mean with a cosine taper. The app runs the ensemble.

Inputs: the FLAIR after N4, affine registration to the template and `(x - median) / IQR` inside the
template brain mask{'; the T1w of the same session, rigidly co-registered to the FLAIR and normalised the same way (zeros when the session has none; in training zeros in ' + str(int(100 * config.get('t1w_dropout', 0.3))) + ' % of patches so that one model serves both)' if config.get('t1w') else ''}{'; the template white-matter mask (WM probability >= 0.5), the "global binary mask" prior (Hertel et al.)' if config['prior'] else ''}.
Channels, in order: {', '.join(meta['input']['channels'])}.
Output: lesion probability inside the template WM dilated by {config['search_dilation_mm']} mm, resampled to the FLAIR
grid, thresholded at {meta['output']['threshold']}; lesions smaller than {meta['output']['min_lesion_mm3']} mm^3 are dropped.

## Training data and recipe (`{meta['training']['config']}`)
`python -m training.mslesion {meta['training']['config']}` (resumable), then `--evaluate`, `--export`, `--card`.

- 28 real lesion masks (Lesjak et al. 2017) in MNI space, pasted (random subsets of their lesions, random
  left-right flip, kept inside template WM >= {config.get('lesion_wm', 0)}, plus small WM ellipsoids) with contrast
  {config.get('lesion_contrast', [0.6, 4.0])} IQR into:
  - unlabelled real FLAIRs ({', '.join(Path(c).name for c in config['real_canvases'])}); their bright white matter is left
    out of the loss;
  - labelled real FLAIRs ({', '.join(Path(c).name for c in labelled) or 'none'}): their manual lesions (mean of the raters,
    a soft target, carried to the template) are targets; half of their patches keep only the real lesions;
  - synthetic FLAIRs from the template tissue maps with random contrasts; {int(100 * config.get('synthetic_t1_fraction', 0))} % of them
    take their contrast from the template T1w (sharp 1 mm cortex).
{_t1w_recipe(config)}- Image-quality augmentation: blur, thick slices (2-6 mm), k-space ghosting and motion, noise, bias field, gamma.
- Loss BCE + soft Dice; patches {config['patch']}^3, batch {config['batch']}, AdamW lr {config['lr']} with cosine decay;
  generic {config['generic_iterations']} iterations, each specialist {config['special_iterations']} at 0.3x lr;
  {config.get('threads', 2)} CPU threads, no GPU.

## Metrics on real data, native FLAIR grid

Only two labelled real brains exist here (`sub-ms07`, `sub-isbi03`), so accuracy is measured by
**two-fold cross-validation**: the same recipe trained with one labelled case and evaluated on the
other, which that run never saw (neither image nor labels). These are the honest numbers.

### Held out (the fold that never saw the image)

{_table(held_out, run=True) if held_out else 'not measured'}

{_baseline_section(card)}{_transductive_section(card)}### Ablations: the same folds with one ingredient changed

The run name says which: `_noprior` without the prior channel, `_hyper` with normal white-matter
hyperintensities as negatives, `_t1w` with the session's T1w as an
extra channel (`sub-isbi03` has no T1w: that channel is zeros there), `_seed8` the same recipe with
another random seed (the noise floor of every comparison here), `_long` trained 2.4x longer, `_sulci`
with the template's closed sulci opened in synthetic canvases, `_warp` with synthetic patches warped
against the prior channel.

{_table(ablation, run=True) if ablation else 'not measured'}

{chr(10).join(chr(10) + n for n in card.get('notes', [])).strip()}

### The shipped model (trained with both labelled cases: in-sample, optimistic)

{_table(rows)}

"""
    if volumes:
        text += ("### Longitudinal consistency: sub-mslong01, two sessions, no manual label\n\n"
                 "ses-02 carries a large new periventricular lesion, bright on its FLAIR and absent at the same "
                 "template position in ses-01 (`training/mslesion/results/mslong01_sessions.png`), so equal volumes "
                 "are not expected; compare the lesion counts too.\n\n")
        text += markdown_table(["image", "model", "lesions", "volume (mL)"],
                               [[r["case"], r["model"], r["lesion_count"], f"{r['pred_ml']:.2f}"] for r in volumes]) + "\n"
        for model in ("generic", "ensemble"):
            v = [r["pred_ml"] for r in volumes if r["model"] == model]
            if len(v) == 2 and max(v) > 0:
                text += f"\n{model}: session difference {100 * abs(v[0] - v[1]) / max(v):.0f} % of the larger volume."
        text += "\n\n"
    if timing:
        text += "### Time per subject (2 CPU threads, seconds)\n\n" + markdown_table(
            ["image", *timing[0]["seconds"]], [[r["case"], *r["seconds"].values()] for r in timing]) + "\n"
    text += f"""
## Limits
Trained on CPU for minutes, with {len(labelled)} labelled real brain(s) and {len(config['real_canvases'])} unlabelled
FLAIRs. Read the held-out numbers above before trusting it on your data: on the clean 1 mm image it was
not trained on (`sub-ms07` in fold B) it over-segments several-fold and scores below a FLAIR threshold;
fine-tuning on your own unlabelled scans (`init_from`, README) is what helped there. Validate on your own labels (the app
writes Dice and lesion-wise F1 when manual labels exist under `derivatives/labels`). The regions'
infratentorial part is a geometric approximation. Data: Lesjak et al., Neuroinformatics 2018 (CC-BY); ISBI
2015 challenge data via the ms.lesion R package (GPL-2); bids-dev sources are listed in its README.
"""
    (out / "README.md").write_text(text)
    return out / "README.md"
