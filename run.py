#!/usr/bin/env python3
"""BIDS-Apps entry point: ``python run.py bids_dir output_dir {participant,group} [options]``.

The guard matters: Nipype's MultiProc workers start from a ``forkserver``, which re-imports the
main module; without it every worker would start the app again and the run would hang.
"""
from bids_app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
