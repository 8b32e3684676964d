"""Command line of the cord model (also run by ``python -m training CONFIG``).

    python -m training.spinalcord training/spinalcord/configs/default.json              train (resumes), export, calibrate
    python -m training.spinalcord training/spinalcord/configs/default.json --export     export and calibrate the last checkpoint
    python -m training.spinalcord training/spinalcord/configs/finetune.json --evaluate  measure on real data, write the card
    python -m training.spinalcord training/spinalcord/configs/default.json --holdout sub-unf01 [--iterations 4000]
        train the same recipe without that subject's labelled images, measure on them, and record the
        result in the shipped model folder (holdout_metrics.json) for the model card
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from training.common.logs import setup_logging
from training.common.paths import ROOT


def holdout_config(config: dict, subject: str, iterations: int | None) -> tuple[dict, list[str]]:
    """The config without ``subject``'s images (own run and export folders), and those images."""
    held = copy.deepcopy(config)
    images = config["data"]["train_images"]
    excluded = [image for image in images if image.startswith(f"{subject}/")]
    held["data"]["train_images"] = [image for image in images if image not in excluded]
    # The same person may also be in the spine-generic masks (sub-unf01 is): leave those out too.
    held["data"]["spinegeneric_exclude"] = sorted({*config["data"].get("spinegeneric_exclude", ()), subject})
    held["output"]["run_dir"] = f"{config['output']['run_dir']}_holdout-{subject}"
    held["output"]["export_dir"] = f"{held['output']['run_dir']}/model"
    if iterations:
        held["train"]["iterations"] = iterations
    return held, excluded


def main(argv: list[str] | None = None, prog: str = "python -m training.spinalcord") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="training config (JSON); paths inside are relative to the repository root")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--export", action="store_true", help="only export the last checkpoint into models/<task>/")
    parser.add_argument("--evaluate", action="store_true", help="only evaluate the exported model and write the card")
    parser.add_argument("--holdout", help="participant (e.g. sub-unf01) left out of training and evaluated")
    parser.add_argument("--iterations", type=int, help="override the number of iterations (with --holdout)")
    args = parser.parse_args(argv)
    setup_logging()
    config = json.loads(args.config.read_text())
    config.setdefault("config_path", str(args.config.resolve().relative_to(ROOT)))
    from training.spinalcord import calibrate, evaluate, export, train

    bids_dir = ROOT / config["data"]["bids_dir"]

    if args.evaluate:
        evaluate.evaluate(config, ROOT)
        return 0
    if args.holdout:
        held, excluded = holdout_config(config, args.holdout, args.iterations)
        train.train(held, ROOT, resume=not args.no_resume)
        folder = export.export(held, ROOT)
        calibrate.calibrate_from_config(held, folder, bids_dir)
        rows = evaluate.evaluate_folder(folder, bids_dir, excluded)
        record = ROOT / config["output"]["export_dir"] / "holdout_metrics.json"
        previous = json.loads(record.read_text()) if record.is_file() else {"rows": []}
        kept = [r for r in previous["rows"] if not r["image"].startswith(args.holdout)]
        record.write_text(json.dumps({
            "description": "Each row: a model trained with the same recipe and config but without any image of "
                           "that row's participant (iterations: " + str(held["train"]["iterations"]) + "), "
                           "evaluated on that participant's images.",
            "rows": kept + rows}, indent=1) + "\n")
        return 0
    if not args.export:
        train.train(config, ROOT, resume=not args.no_resume)
    folder = export.export(config, ROOT)
    calibrate.calibrate_from_config(config, folder, bids_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
