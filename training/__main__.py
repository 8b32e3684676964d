"""Command line: ``python -m training training/configs/spinalcord.json [--no-resume] [--export]``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("config", type=Path, help="training config (JSON); paths inside are relative to the repository root")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--export", action="store_true", help="only export the last checkpoint into models/<task>/")
    parser.add_argument("--evaluate", action="store_true", help="only evaluate the exported model on real data and write the model card")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = json.loads(args.config.read_text())
    from training import export, spinalcord

    if args.evaluate:
        from training import evaluate

        evaluate.evaluate(config, ROOT)
        return 0
    if not args.export:
        spinalcord.train(config, ROOT, resume=not args.no_resume)
    export.export(config, ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
