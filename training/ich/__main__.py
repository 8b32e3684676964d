"""Command line of the ``ich`` model (also run by ``python -m training CONFIG`` for its configs).

    python -m training.ich training/ich/configs/v1.json --synthesise      the synthetic train/test sets
    python -m training.ich CONFIG --pretrain [--objectives inpaint weak]   self-/weakly supervised networks
    python -m training.ich CONFIG --experiment [--budgets 5 10] [--inits scratch weak]
    python -m training.ich CONFIG --table                                   experiment.json + experiment.png
    python -m training.ich CONFIG --final                                   the shipped model's training
    python -m training.ich CONFIG --export                                  write models/ich from the run
    python -m training.ich CONFIG --evaluate [--exported]                   acceptance figures, native grid
    python -m training.ich CONFIG --card                                    rewrite the model card

Every stage is resumable: what is finished in ``run_dir`` is not redone (delete a file to redo it), so
the commands can be split across processes (e.g. two ``--experiment`` with different ``--budgets``).
Stages run in the order listed when several are given.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from training.common.logs import setup_logging

LOGGER = logging.getLogger("training.ich")


def synthesise(config: dict) -> None:
    """Run ``python -m training.ich.synth`` for the config's train, test and normal-test sets (skipped
    when a set's ``participants.tsv`` exists)."""
    from training.common.paths import ROOT

    syn = config["synthesis"]
    for name in ("train", "test", "test_normal"):
        spec = syn[name]
        out = ROOT / spec["out"]
        if (out / "participants.tsv").is_file():
            continue
        cmd = [sys.executable, "-m", "training.ich.synth", "--config", str(ROOT / syn["config"]), "--maps",
               str((ROOT / syn["maps"]).resolve()), "--out", str(out), "--n", str(spec["n"]), "--seed", str(spec["seed"])]
        if name == "train":
            cmd += ["--hold-out-maps", *syn["held_out_maps"]]
        else:
            cmd += ["--use-maps", *syn["held_out_maps"], "--normal-fraction", str(spec["normal_fraction"])]
        LOGGER.info("%s", " ".join(cmd))
        subprocess.run(cmd, check=True, cwd=ROOT)


def main(argv=None, prog: str = "python -m training.ich") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    for stage in ("synthesise", "pretrain", "experiment", "table", "final", "export", "evaluate", "card"):
        ap.add_argument(f"--{stage}", action="store_true")
    ap.add_argument("--objectives", nargs="*", help="with --pretrain: only these objectives")
    ap.add_argument("--budgets", nargs="*", type=int, help="with --experiment: only these label budgets")
    ap.add_argument("--inits", nargs="*", help="with --experiment: only these inits")
    ap.add_argument("--exported", action="store_true", help="with --evaluate: the model in export_dir")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    setup_logging()
    config = json.loads(args.config.read_text())
    if "pretrain" not in config:
        ap.error(f"{args.config} is not an ich training config (no 'pretrain'); a generator config runs with "
                 "python -m training.ich.synth --config CONFIG")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.synthesise:
        synthesise(config)
    if args.table:
        from training.ich.experiment import table

        table(config)
    if args.card:
        from training.ich.card import write_card

        write_card(config)
        return 0
    if args.evaluate or args.export:
        from training.ich.export import evaluate, export

        if args.export:
            export(config)
        if args.evaluate:
            evaluate(config, exported=args.exported)
        return 0
    if not (args.pretrain or args.experiment or args.final):
        return 0
    from training.ich import experiment

    data = experiment.collections(config)
    if args.pretrain:
        experiment.pretrain(config, data, args.objectives)
    if args.experiment:
        experiment.finetune_and_evaluate(config, data, args.budgets, args.inits)
        experiment.table(config)
    if args.final:
        experiment.final(config, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
