"""Every documented way to start the app runs the participant and group levels for real.

Each entry point runs as a subprocess, as a user types it, with the default MultiProc plugin
(forkserver workers) and ``--nprocs 2``, under a hard timeout: ``python run.py`` without its
``__main__`` guard hung forever here, because the forkserver re-imports the main module.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from bids_app.synthetic import make_dataset
from tests.helpers import ENTRY_POINTS, assert_clean_console, assert_no_partial_files, run_app


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("entry")
    bids = make_dataset(root / "ds", {"01": [None]})
    filters = root / "filters.json"
    filters.write_text(json.dumps({"spinalcord": {"suffix": ["T2w"]}}))
    return bids, filters


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_entry_point_runs_participant_and_group(entry, dataset, tmp_path):
    bids, filters = dataset
    out, work = tmp_path / "out", tmp_path / "work"
    participant = run_app(ENTRY_POINTS[entry], [bids, out, "participant", "--nprocs", "2", "--device", "cpu",
                                                "-w", work, "--bids-filter-file", filters], cwd=tmp_path)
    assert participant.returncode == 0, participant.stderr[-3000:]
    assert_clean_console(participant)
    assert (out / "sub-01" / "anat" / "sub-01_label-SC_desc-T2w_mask.nii.gz").is_file()
    group = run_app(ENTRY_POINTS[entry], [bids, out, "group"], cwd=tmp_path)
    assert group.returncode == 0, group.stderr[-3000:]
    table = pd.read_csv(out / "group_csa.tsv", sep="\t")
    assert table["participant_id"].unique().tolist() == ["sub-01"]
    assert_no_partial_files(out)


def test_stale_index_sees_a_new_participant(dataset, tmp_path):
    """Add a participant, rerun with the same work dir: the new participant is processed."""
    bids, filters = dataset
    ds = tmp_path / "ds"
    shutil.copytree(bids, ds)
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--nprocs", "2", "--device", "cpu", "-w", work, "--bids-filter-file", filters]
    first = run_app(ENTRY_POINTS["python run.py"], [ds, out, "participant", *args])
    assert first.returncode == 0, first.stderr[-3000:]
    make_dataset(tmp_path / "extra", {"01": [None], "07": [None]})
    shutil.copytree(tmp_path / "extra" / "sub-07", ds / "sub-07")
    shutil.copy(tmp_path / "extra" / "participants.tsv", ds / "participants.tsv")
    second = run_app(ENTRY_POINTS["python run.py"], [ds, out, "participant", "--participant-label", "07", *args])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "re-indexing" in second.stderr
    assert (out / "sub-07" / "anat" / "sub-07_label-SC_desc-T2w_mask.nii.gz").is_file()
    # The first participant's outputs were complete and current: skipped, not redone.
    third = run_app(ENTRY_POINTS["python run.py"], [ds, out, "participant", *args])
    assert third.returncode == 0 and "nothing to do" in third.stderr, third.stderr[-3000:]
