"""Shared fixtures: small synthetic BIDS datasets with known answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bids_app.synthetic import make_dataset

os.environ.setdefault("NIPYPE_NO_ET", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NEUROSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def synthetic_bids(tmp_path_factory) -> Path:
    """Two participants (``01`` without sessions, ``02`` with sessions A and B), three contrasts each."""
    return make_dataset(tmp_path_factory.mktemp("bids") / "ds")


@pytest.fixture(scope="session")
def small_bids(tmp_path_factory) -> Path:
    """One participant, no session: the smallest dataset the whole app can run on."""
    return make_dataset(tmp_path_factory.mktemp("small") / "ds", {"01": [None]})


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The demo (``make demo``): both tasks on the synthetic spine + FLAIR dataset, participant then group
    level; returns the derivatives folder (the dataset is beside it, in ``bids``)."""
    from bids_app.cli import main

    root = tmp_path_factory.mktemp("demo")
    bids = make_dataset(root / "bids", flair=True)
    out = root / "out"
    for level in ("participant", "group"):
        extra = ["-w", str(root / "work"), "--nprocs", "2"] if level == "participant" else []
        assert main([str(bids), str(out), level, "--tasks", "spinalcord", "mslesion", *extra]) == 0
    return out
