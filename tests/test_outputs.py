"""Derivative names, sidecars and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

from bids_app import outputs


def test_names_keep_source_entities_and_tell_contrasts_apart():
    mt = {"subject": "01", "session": "A", "acquisition": "MToff", "suffix": "PDw", "datatype": "anat",
          "extension": ".nii.gz"}
    path = outputs.derivative_relpath(mt, "SC", "probseg", ".nii.gz")
    assert path == Path("sub-01/ses-A/anat/sub-01_ses-A_acq-MToff_label-SC_desc-PDw_probseg.nii.gz")
    t2 = {"subject": "01", "suffix": "T2w", "datatype": "anat", "run": 2}
    assert outputs.derivative_relpath(t2, "SC", "morph", ".tsv", "levels") == \
        Path("sub-01/anat/sub-01_run-2_label-SC_desc-T2wlevels_morph.tsv")


def test_write_output_with_sidecar(tmp_path):
    src = tmp_path / "in.tsv"
    src.write_text("a\tb\n1\t2\n")
    rel = Path("sub-01/anat/sub-01_label-SC_desc-T2wslices_morph.tsv")
    content = outputs.sidecar("sub-01/anat/sub-01_T2w.nii.gz", {"Name": "m", "Version": "1", "SHA256": "x"}, "0.1.0",
                              Threshold=0.5)
    dst = outputs.write_output(tmp_path / "out", src, rel, content)
    assert dst.read_text() == src.read_text()
    meta = json.loads(dst.with_suffix(".json").read_text())
    assert meta["Sources"] == ["bids:raw:sub-01/anat/sub-01_T2w.nii.gz"]
    assert meta["Model"]["SHA256"] == "x" and meta["GeneratedBy"]["Version"] == "0.1.0"
    assert meta["Threshold"] == 0.5
    assert not list(dst.parent.glob(".*tmp"))  # no temporary file left behind


def test_dataset_description(tmp_path):
    outputs.write_dataset_description(tmp_path, Path("/data/raw"), "0.1.0", {"SC": "spinal cord"})
    desc = json.loads((tmp_path / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0] == {"Name": "neuroseg", "Version": "0.1.0"}
    assert desc["DatasetLinks"]["raw"] == "/data/raw"
    assert (tmp_path / "desc-labels_dseg.tsv").read_text().splitlines()[1] == "1\tspinal cord\tSC"


def test_outputs_are_readable_by_others_under_the_usual_umask(tmp_path):
    """mkstemp makes 0600 files; a derivative gets 0666 less the umask (0644 under umask 022)."""
    import os

    from bids_app.outputs import _FILE_MODE, atomic_write_bytes

    atomic_write_bytes(tmp_path / "a.txt", b"x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == _FILE_MODE
    mask = os.umask(0o022)
    os.umask(mask)
    assert _FILE_MODE == 0o666 & ~mask and _FILE_MODE & 0o044 == 0o044 & ~mask


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    """A temporary of a killed writer (dead pid, this host) goes; a live writer's stays."""
    import os
    import socket
    import subprocess

    from bids_app.outputs import remove_stale_temporaries

    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    folder = tmp_path / "sub-01" / "anat"
    folder.mkdir(parents=True)
    stale = folder / f".x_mask.nii.gz.neuroseg-{host}-{dead.pid}-abc123.tmp"
    live = folder / f".x_probseg.nii.gz.neuroseg-{host}-{os.getpid()}-def456.tmp"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and live.exists()
