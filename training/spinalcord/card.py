"""The cord model card: ``<export_dir>/README.md`` from the config, ``metadata.json``, the measured
rows of :func:`training.spinalcord.evaluate.evaluate` and, when present, ``holdout_metrics.json``."""

from __future__ import annotations

from pathlib import Path

from bids_app.models import read_metadata
from training.common.markdown import markdown_table


def write_card(config: dict, root: Path, result: dict, holdout: dict | None = None) -> Path:
    """Write ``README.md`` (the model card) from the config, metadata and measured metrics."""
    folder = root / config["output"]["export_dir"]
    meta = read_metadata(folder)
    rows = result["rows"]
    table = markdown_table(
        ["image", "Dice", "CSA ours (mm²)", "CSA manual (mm²)", "CSA error", "slices", "seconds (CPU)"],
        [[r["image"], f"{r['dice']:.3f}", f"{r['csa_ours_mm2']:.1f}", f"{r['csa_manual_mm2']:.1f}",
          f"{r['csa_error_pct']:+.1f} %", r["n_slices"], f"{r['seconds']:.1f}"] for r in rows])
    held = ""
    if holdout:
        held_rows = markdown_table(
            ["image", "Dice", "CSA ours (mm²)", "CSA manual (mm²)", "CSA error"],
            [[r["image"], f"{r['dice']:.3f}", f"{r['csa_ours_mm2']:.1f}", f"{r['csa_manual_mm2']:.1f}",
              f"{r['csa_error_pct']:+.1f} %"] for r in holdout["rows"]])
        held = ("\n### Held-out check (images never seen in training)\n\n"
                f"{holdout['description']}\n\n" + held_rows + "\n")
    arch = meta["architecture"]
    text = f"""# {meta['name']} {meta['version']}: contrast-agnostic soft spinal-cord segmentation

- **Task**: `spinalcord` (neuroseg). Output: soft cord segmentation in [0, 1] (`probseg`), binary mask at
  threshold {meta['output']['threshold']} keeping the largest 3D component (`mask`), CSA from the soft map.
- **Weights**: `{meta['weights']}` (safetensors), sha256 `{meta['sha256']}`. The app refuses weights
  whose sha256 differs from `metadata.json`.
- **Architecture**: MONAI `{arch['name']}` ({', '.join(f'{k}={v}' for k, v in arch['params'].items())}),
  sigmoid output, one model for every contrast.
- **Input**: one axial slice at a time from the RAS+ reoriented image (slice axis = inferior-superior),
  resampled in plane to {meta['input']['spacing_mm']} mm (bilinear), intensities scaled per slice by the 0.5-99.5
  percentiles; sliding-window inference (MONAI, window {meta['input']['roi_size']}, Gaussian blending); a
  detection pass on a subset of slices crops every slice to {meta['input']['crop_mm']} mm around the cord. The soft
  output is area-averaged back onto the native in-plane grid (partial volume preserved).
- **Any MRI contrast** was the training goal (T1w, T2w, T2*w, PD/MT GRE seen in real data; random
  contrasts from synthetic tissue maps).

## Training data and recipe

Two stages, each `python -m training <config>` (train, export, calibrate), then `--evaluate` on the
last one writes this card:

1. `training/spinalcord/configs/default.json`: 8000 iterations from scratch, batch mix 55 % real / 20 %
   real-anatomy synthetic / 25 % template synthetic, loss 10 x MSE + 0.3 x soft Dice, LR 0.003.
2. `{meta['training']['config']}`: {meta['training']['iterations']} iterations initialised from stage 1
   (`{meta['training'].get('init_from')}`), mix {config['train']['mix']}, loss {config['train']['loss']},
   LR {config['train']['lr']}: pulls the boundary towards the manual masks' convention.

Seed {meta['training']['seed']}, batch {config['train']['batch_size']} of {config['train']['patch']}² patches,
AdamW + one-cycle LR schedule, 2 CPU threads (about 17 + 6 CPU-minutes here). After each stage a logit offset
is fitted so that the midrange (minimax) of the ratios of soft CSA to manual CSA over the labelled images
is 1, i.e. the worst per-image CSA error is smallest
(`training/spinalcord/calibrate.py`; stored as `output.logit_offset` = {meta['output'].get('logit_offset')}).

- **Real labelled slices** ("real" in the mixes above): the 8 labelled images of `bids-dev`
  (`sub-sct01`: T1w, T2w, T2starw, MToff/MTon PDw; `sub-unf01`: T1w, T2w, T2starw), every image weighted
  equally whatever its number of slices. Sources: Spinal Cord Toolbox testing data (MIT) and a
  spine-generic subject via ivadomed test data (MIT).
- **Synthetic slices from real anatomy** ("real_synth"): the same slices' cord mask plus intensity classes of the
  surrounding tissue, re-painted with random intensities per class (any contrast).
- **Synthetic slices from the PAM50 template** ("template"): cord, CSF and tissue classes of `PAM50_small`
  (SCT, MIT), with through-plane partial volume from averaging 1, 2 or 4 template slices (2-8 mm).
- **Soft ground truth**: binary masks resampled bilinearly to the 0.5 mm grid (edge = partial-volume
  fraction); co-registered contrasts of `sub-unf01` share one mask, hence one soft target.
- **Loss**: regression on the soft target, weighted MSE(sigmoid, target) plus a small soft-Dice term
  (weights in the stages above; no binarisation). A soft-Dice weight of 1 was measured to inflate the
  area by 7-17 %, hence its low weight.
- **Augmentation**: rotation ±25°, scale 0.75-1.35, shear, flips, translation up to ±{config['train'].get('max_shift_px', 10)} px (the
  cord may lie anywhere or outside the patch), inversion (30 %), gamma, bias field, blur, in-plane
  resolution loss up to 3x per axis, Gaussian or Rician noise.

## Metrics on real data (measured by `python -m training {meta['training']['config']} --evaluate`)

Dice of the binary mask vs the manual mask; mean CSA of our soft segmentation vs mean CSA of the manual
mask on the same slices (those where the manual mask has cord), both angle-corrected with the same
formula (`bids_app.spinalcord.measures.csa_per_slice`). CPU time is the model alone (2 threads).

**These images were also used in training**: they show fit and the consistency of CSA across
contrasts, not generalisation. The held-out check below is the honest estimate.

{table}

Coefficient of variation of the mean CSA across `sub-unf01` T1w/T2w/T2starw (same slices):
**{result['cv_sub-unf01_pct']:.2f} %**.
{held}
## Limitations

- Real labelled training data: two subjects. Expect lower Dice on unseen anatomy (compression,
  atrophy, lumbar cord) and on contrasts far from those listed; inspect the masks.
- The held-out rows show the two subjects' label conventions differ by about 10-20 % in CSA; the
  in-sample errors above stay within ±8 % only because both conventions were seen in training and the
  calibration balances them. On a new site, validate CSA against a few manual masks (the app reports
  Dice and manual CSA when `<stem>_label-SC_seg.nii.gz` exists under `derivatives/labels`).
- CSA follows the manual masks' convention of these two datasets (`sub-sct01`'s T2w mask is an
  automatic SCT segmentation).
- 2D axial model: images must have the inferior-superior axis close to a voxel axis (standard spine
  protocols); strongly oblique acquisitions are reoriented but not resampled.
"""
    (folder / "README.md").write_text(text)
    return folder / "README.md"
