"""``--adapt``: fine-tune an exported lesion model on a BIDS dataset's FLAIRs without labels, and the
short model card of the adapted model."""

from __future__ import annotations

import json
from pathlib import Path

from training.common.paths import ROOT


#: The adaptation schedule of ``--adapt``, as measured in the model card
#: (``training/mslesion/configs/foldB_t1_adapt07_nolabels.json``).
ADAPT_SCHEDULE = {"generic_iterations": 600, "special_iterations": 150, "lr": 0.0005}


def adapt_config(config: dict, bids_dir: Path, lesion_masks: Path, models_dir: Path,
                 participant_labels: tuple[str, ...] = ()) -> dict:
    """The config that adapts the model of ``config`` (its ``export_dir``) to a dataset's FLAIRs.

    The FLAIRs are what the app would segment (the ``mslesion`` registry query, pybids) for all or
    the given participants (labels without ``sub-``); they become unlabelled canvases, no labelled
    canvas is used, training starts from the model (``init_from``) on :data:`ADAPT_SCHEDULE`, and the
    result is exported to ``models_dir/mslesion`` (run the app with ``--models-dir models_dir``); the
    checkpoints (resumable) go to ``models_dir/<name>_run``.
    """
    from bids_app.bids import collect_inputs, load_layout, participants
    from bids_app.tasks import get_task

    layout = load_layout(Path(bids_dir))
    task = get_task("mslesion")
    flairs = [image.relpath for subject in participants(layout, tuple(participant_labels))
              for image in collect_inputs(layout, task, subject)]
    if not flairs:
        raise SystemExit(f"{bids_dir} has no FLAIR (anat/*_FLAIR.nii[.gz]) to adapt to.")
    name = f"mslesion_adapt_{Path(bids_dir).resolve().name}"
    export_dir = Path(models_dir).resolve() / "mslesion"
    return {**config, **ADAPT_SCHEDULE, "name": name, "bids_dir": str(Path(bids_dir).resolve()),
            "lesion_masks": str(Path(lesion_masks).resolve()), "real_canvases": flairs, "labelled_canvases": {},
            "init_from": config["export_dir"], "run_dir": str(export_dir.parent / f"{name}_run"), "export_dir": str(export_dir),
            "config_path": str(export_dir / "training_config.json"), "card": {},
            # The shared dev cache is keyed by file name; a user's dataset gets the run's own cache.
            "cache_dir": None}


def write_adapted_card(config: dict) -> Path:
    """A short model card for a model adapted by ``--adapt`` (no labels were seen, so no metrics)."""
    out = Path(config["export_dir"])
    meta = json.loads((out / "metadata.json").read_text())
    start = json.loads((ROOT / config["init_from"] / "metadata.json").read_text())
    text = f"""# {meta['name']} {meta['version']}, adapted without labels

sha256 of `model.safetensors`: `{meta['sha256']}`.

Fine-tuned from `{config['init_from']}` (sha256 `{start['sha256']}`; see its card for the architecture,
recipe and measured accuracy) by `python -m training.mslesion ... --adapt {config['bids_dir']}`: its generic
net trained {config['generic_iterations']} more iterations (lr {config['lr']}) and {len(meta['ensemble']['boxes'])} specialists grown from it
({config['special_iterations']} iterations each), on real lesion shapes ({config['lesion_masks']}) pasted into the
{len(config['real_canvases'])} unlabelled FLAIRs of that dataset (their bright white matter left out of the loss) and into
synthetic brains. The full config is `training_config.json` beside this card.

No labels were used, so this folder carries no accuracy of its own. The shipped card's table "labels held
out, image seen unlabelled" measures what this kind of adaptation changed on the scans we could check.
Validate on a few of your own labelled scans (the app writes Dice and lesion-wise F1 when manual labels
exist under `derivatives/labels`) before relying on it.
"""
    (out / "README.md").write_text(text)
    return out / "README.md"
