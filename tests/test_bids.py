"""The pybids walker on a synthetic dataset with and without sessions."""

from __future__ import annotations

import json

import pytest

from bids_app import bids
from bids_app.errors import ConfigError, DatasetError
from bids_app.tasks import get_task

TASK = get_task("spinalcord")


@pytest.fixture(scope="module")
def layout(synthetic_bids, tmp_path_factory):
    return bids.load_layout(synthetic_bids, tmp_path_factory.mktemp("db"))


def test_participants_all_and_selected(layout):
    assert bids.participants(layout) == ["01", "02"]
    assert bids.participants(layout, ("02",)) == ["02"]
    with pytest.raises(DatasetError, match="sub-03"):
        bids.participants(layout, ("03",))


def test_inputs_with_sessions(layout):
    images = bids.collect_inputs(layout, TASK, "02")
    assert len(images) == 6
    assert {i.entities["session"] for i in images} == {"A", "B"}
    assert {i.entities["suffix"] for i in images} == {"T1w", "T2w", "T2starw"}
    assert images[0].relpath.startswith("sub-02/ses-")
    only_b = bids.collect_inputs(layout, TASK, "02", sessions=("B",))
    assert len(only_b) == 3 and all("ses-B" in i.relpath for i in only_b)


def test_inputs_without_sessions_and_filters(layout):
    assert len(bids.collect_inputs(layout, TASK, "01")) == 3
    t2w = bids.collect_inputs(layout, TASK, "01", filters={"suffix": "T2w"})
    assert [i.path.name for i in t2w] == ["sub-01_T2w.nii.gz"]


def test_filters_may_name_subjects_and_sessions(layout):
    """A filter with ``subject`` (found on bids-dev: it crashed the run with a pybids TypeError) keeps
    the task to those participants; a filter's sessions and --session-label must both admit a session."""
    assert bids.collect_inputs(layout, TASK, "01", filters={"subject": ["02"]}) == []
    assert len(bids.collect_inputs(layout, TASK, "02", filters={"subject": ["02"]})) == 6
    assert len(bids.collect_inputs(layout, TASK, "02", filters={"subject": "02", "suffix": "T2w"})) == 2
    only_a = bids.collect_inputs(layout, TASK, "02", sessions=("A", "B"), filters={"session": ["A"]})
    assert len(only_a) == 3 and all("ses-A" in i.relpath for i in only_a)
    assert bids.collect_inputs(layout, TASK, "02", sessions=("B",), filters={"session": "A"}) == []


def test_filter_file(tmp_path):
    good = tmp_path / "f.json"
    good.write_text(json.dumps({"spinalcord": {"suffix": ["T2w"]}}))
    filters = bids.read_filter_file(good)
    assert bids.task_filters(filters, "spinalcord") == {"suffix": ["T2w"]}
    assert bids.task_filters({"all": {"session": "A"}}, "spinalcord") == {"session": "A"}
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must map task names"):
        bids.read_filter_file(bad)


def test_find_label_same_stem_then_same_session(layout, synthetic_bids):
    labels = synthetic_bids / "derivatives" / "labels"
    images = {i.path.name: i for i in bids.collect_inputs(layout, TASK, "01")}
    exact = bids.find_label(labels, images["sub-01_T2w.nii.gz"], "label-disc_seg")
    assert exact.name == "sub-01_T2w_label-disc_seg.nii.gz"
    # the T1w has no disc labels of its own: the T2w's (same session) serve it
    shared = bids.find_label(labels, images["sub-01_T1w.nii.gz"], "label-disc_seg")
    assert shared == exact
    assert bids.find_label(labels, images["sub-01_T1w.nii.gz"], "label-SC_seg") is None
    assert bids.find_label(None, images["sub-01_T1w.nii.gz"], "label-disc_seg") is None


def test_not_a_bids_dataset(tmp_path):
    with pytest.raises(DatasetError, match="dataset_description.json"):
        bids.load_layout(tmp_path)


def test_validator_accepts_synthetic_dataset(synthetic_bids):
    bids.validate_dataset(synthetic_bids)  # raises DatasetError on validator errors


def test_validator_rejects_broken_dataset(tmp_path, synthetic_bids):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(synthetic_bids, broken)
    (broken / "sub-01" / "anat" / "sub-01_T2w.nii.gz").write_bytes(b"not a nifti")
    (broken / "sub-01" / "anat" / "sub-01_bogus-file.txt").write_text("x")
    # Errors inside a participant's folder skip just those files ...
    assert bids.validate_dataset(broken) == {"sub-01/anat/sub-01_T2w.nii.gz": ["NIFTI_HEADER_UNREADABLE"],
                                             "sub-01/anat/sub-01_bogus-file.txt": ["NOT_INCLUDED"]}
    # ... an error at the dataset level refuses the dataset.
    (broken / "bogus.txt").write_text("x")
    with pytest.raises(DatasetError, match="BIDS validator.*bogus.txt"):
        bids.validate_dataset(broken)


def test_stale_index_is_rebuilt(tmp_path, synthetic_bids, caplog):
    """A participant added after the index was built is found (the index is keyed by a fingerprint)."""
    import logging
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(synthetic_bids, ds)
    db = tmp_path / "db"
    assert bids.load_layout(ds, db).get_subjects() == ["01", "02"]
    assert sorted(bids.load_layout(ds, db).get_subjects()) == ["01", "02"]  # reused, still right
    shutil.copytree(ds / "sub-01", ds / "sub-03")
    for f in (ds / "sub-03").rglob("*.nii.gz"):
        f.rename(f.with_name(f.name.replace("sub-01", "sub-03")))
    with caplog.at_level(logging.INFO, logger="bids_app.bids"):
        assert sorted(bids.load_layout(ds, db).get_subjects()) == ["01", "02", "03"]
    assert "re-indexing" in caplog.text


def test_find_companion_same_session_without_contrast_agent(tmp_path):
    """The T1w beside a FLAIR: same participant and session, not the gadolinium-enhanced one."""
    (tmp_path / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    files = ["sub-a/ses-1/anat/sub-a_ses-1_FLAIR.nii.gz", "sub-a/ses-1/anat/sub-a_ses-1_T1w.nii.gz",
             "sub-a/ses-1/anat/sub-a_ses-1_ce-gadolinium_T1w.nii.gz", "sub-a/ses-2/anat/sub-a_ses-2_FLAIR.nii.gz",
             "sub-a/ses-2/anat/sub-a_ses-2_ce-gadolinium_T1w.nii.gz", "sub-b/anat/sub-b_FLAIR.nii.gz",
             "sub-b/anat/sub-b_T1w.nii.gz"]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"")
    layout = bids.load_layout(tmp_path)
    task = get_task("mslesion")
    found = {}
    for subject in ("a", "b"):
        for image in bids.collect_inputs(layout, task, subject):
            companion = bids.find_companion(layout, image, task.companions["T1w"])
            found[image.relpath] = companion.relpath if companion else None
    assert found == {"sub-a/ses-1/anat/sub-a_ses-1_FLAIR.nii.gz": "sub-a/ses-1/anat/sub-a_ses-1_T1w.nii.gz",
                     "sub-a/ses-2/anat/sub-a_ses-2_FLAIR.nii.gz": None,  # only an enhanced T1w there
                     "sub-b/anat/sub-b_FLAIR.nii.gz": "sub-b/anat/sub-b_T1w.nii.gz"}
