"""``python -m training.mslesion.synthesis CONFIG --figure PNG / --benchmark N``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.mslesion.synthesis.examples import benchmark, figure


def main(argv=None) -> int:
    from training.common.logs import setup_logging

    ap = argparse.ArgumentParser(prog="python -m training.mslesion.synthesis")
    ap.add_argument("config", type=Path, help="configs/synthesis.json or a training config with a 'synthesis' block")
    ap.add_argument("--figure", type=Path, help="write example canvases to this PNG")
    ap.add_argument("--n", type=int, default=8, help="canvases in the figure")
    ap.add_argument("--benchmark", type=int, metavar="N", help="time N canvases on the full grid (JSON to stdout)")
    args = ap.parse_args(argv)
    setup_logging()
    config = json.loads(args.config.read_text())
    if args.figure:
        figure(config, args.figure, args.n)
    if args.benchmark:
        import sys

        sys.stdout.write(json.dumps(benchmark(config, args.benchmark), indent=1) + "\n")
    if not (args.figure or args.benchmark):
        ap.error("nothing to do: give --figure PNG and/or --benchmark N")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
