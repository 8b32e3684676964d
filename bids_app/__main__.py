"""``python -m bids_app bids_dir output_dir {participant,group} [options]`` (same as ``neuroseg``)."""
from bids_app.cli import main

if __name__ == "__main__":  # the forkserver re-imports __main__ (see run.py)
    raise SystemExit(main())
