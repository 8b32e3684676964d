"""Command line of the lesion model (also run by ``python -m training CONFIG`` for its configs).

    python -m training.mslesion training/mslesion/configs/default.json             train (resumable)
    python -m training.mslesion CONFIG --evaluate [--exported]                      measure on the real cases
    python -m training.mslesion CONFIG --export                                     write models/mslesion from the run
    python -m training.mslesion CONFIG --card                                       rewrite the model card (no network)
    python -m training.mslesion CONFIG --baseline                                   FLAIR-threshold baseline
    python -m training.mslesion CONFIG --adapt BIDS_DIR --lesion-masks DIR --models-dir DIR

Each option imports only what it needs (``--card`` and ``--baseline`` run without torch).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from training.common.configs import load_config
from training.common.logs import setup_logging
from training.common.paths import ROOT
from training.mslesion import RESULTS

LOGGER = logging.getLogger("training.mslesion")


def main(argv=None, prog: str = "python -m training.mslesion") -> int:
    ap = argparse.ArgumentParser(prog=prog)
    ap.add_argument("config", type=Path)
    ap.add_argument("--evaluate", action="store_true")
    ap.add_argument("--exported", action="store_true",
                    help="with --evaluate: evaluate the exported model (export_dir) and store the rows in its "
                         "metadata.json, for when the run folder is gone")
    ap.add_argument("--baseline", action="store_true",
                    help="measure the FLAIR-threshold baseline on the labelled cases (cross-validated between them) "
                         "into training/mslesion/results/baseline_<date>.json")
    ap.add_argument("--adapt", type=Path, metavar="BIDS_DIR",
                    help="fine-tune the config's exported model on the FLAIRs of this BIDS dataset, without labels "
                         "(needs --lesion-masks and --models-dir)")
    ap.add_argument("--lesion-masks", type=Path, help="with --adapt: the folder of MNI lesion masks (*_mask.nii.gz)")
    ap.add_argument("--models-dir", type=Path, help="with --adapt: where the adapted model folder mslesion/ is written")
    ap.add_argument("--participant-label", nargs="+", default=(), help="with --adapt: only these participants")
    ap.add_argument("--card", action="store_true", help="write the model card from metrics.json")
    ap.add_argument("--export", action="store_true", help="write models/mslesion from the run (with its metrics.json)")
    args = ap.parse_args(argv)
    setup_logging()
    config = load_config(args.config)  # a config may extend another ("base")
    if args.export:
        from training.mslesion.export import export

        metrics_file = ROOT / config["run_dir"] / "metrics.json"
        export(config, json.loads(metrics_file.read_text()) if metrics_file.exists() else None)
        return 0
    if args.adapt:
        if not (args.lesion_masks and args.models_dir):
            ap.error("--adapt needs --lesion-masks and --models-dir")
        from training.mslesion.adapt import adapt_config, write_adapted_card
        from training.mslesion.export import export
        from training.mslesion.train import run

        config = adapt_config(config, args.adapt, args.lesion_masks, args.models_dir,
                              tuple(p.removeprefix("sub-") for p in args.participant_label))
        config_file = Path(config["config_path"])  # what the exported metadata names as its training config
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(json.dumps(config, indent=2) + "\n")
        run(config)
        export(config)
        write_adapted_card(config)
        return 0
    if args.baseline:
        from training.mslesion.baseline import cross_validated_baseline, evaluate_baseline
        from training.mslesion.scoring import evaluation_cases

        rows = evaluate_baseline(evaluation_cases(Path(config["bids_dir"])))
        out = RESULTS / f"baseline_{time.strftime('%Y-%m-%d')}.json"
        out.write_text(json.dumps({"grid": rows, "cross_validated": cross_validated_baseline(rows)}, indent=1) + "\n")
        LOGGER.info("wrote %s", out)
        return 0
    if args.evaluate:
        from training.mslesion.evaluate import evaluate
        from training.mslesion.scoring import evaluation_cases

        d = Path(config["bids_dir"])
        cases = evaluation_cases(d)
        rows = evaluate(config, cases, exported=args.exported)
        for row in rows:  # what of each evaluation case the run saw: held out only when "none"
            if "dice" in row:
                image = next(c for c in cases if Path(c["flair"]).name.split("_")[0] == row["case"].split("_")[0])
                rel = str(Path(image["flair"]).relative_to(d))
                row["seen_in_training"] = ("image+labels" if rel in config.get("labelled_canvases", {})
                                           else "image" if rel in config["real_canvases"] else "none")
        if args.exported:  # the weights (and their sha256) stay as they are
            meta_file = ROOT / config["export_dir"] / "metadata.json"
            meta = json.loads(meta_file.read_text())
            meta["metrics"] = rows
            meta_file.write_text(json.dumps(meta, indent=2) + "\n")
            return 0
        out = ROOT / config["run_dir"] / "metrics.json"
        out.write_text(json.dumps(rows, indent=1))
        return 0
    if args.card and "crossval" in config.get("card", {}):  # a model measured by crossval.py
        from training.mslesion.cvcard import write_cv_card

        write_cv_card(config, config["card"]["final_arm"])
        return 0
    if args.card:
        from training.mslesion.card import write_card

        live = ROOT / config["run_dir"] / "metrics.json"
        # Without the run folder (not committed), the rows stored in the exported metadata at --export.
        rows = json.loads(live.read_text()) if live.is_file() else \
            json.loads((ROOT / config["export_dir"] / "metadata.json").read_text()).get("metrics", [])
        write_card(config, rows)
        return 0
    from training.mslesion.train import run

    run(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
