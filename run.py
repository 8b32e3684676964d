#!/usr/bin/env python3
"""BIDS-Apps entry point: ``python run.py bids_dir output_dir {participant,group} [options]``."""
from bids_app.cli import main

raise SystemExit(main())
