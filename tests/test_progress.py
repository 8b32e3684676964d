"""Progress display: counts from synthetic status callbacks (known answers), the 25 % lines, no carriage
return off a terminal, a tqdm bar on one, and a real MultiProc run whose log shows the final count."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from bids_app import progress
from bids_app.failures import Job
from bids_app.synthetic import make_dataset
from tests.helpers import ENTRY_POINTS, app_env, run_app

#: 4 participants; sub-02 has two images; every image workflow has 3 nodes.
JOBS = {f"single_subject_{s}_wf.spinalcord_sub-{s}_{c}_wf": Job(f"sub-{s}", "n/a", f"sub-{s}/anat/sub-{s}_{c}.nii.gz",
                                                               "spinalcord")
        for s, c in [("01", "T2w"), ("02", "T2w"), ("02", "T1w"), ("03", "T2w"), ("04", "T2w")]}
NODES = ("reorient", "segment", "ds_mask")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _identity(x):
    return x


def _fullname(key: str, node: str) -> str:
    return f"neuroseg_1_0_wf.{key}.{node}"


def _finish(p: progress.Progress, key: str, clock: Clock | None = None, step_s: float = 0.0) -> None:
    for node in NODES:
        p.update(_fullname(key, node), "start")
        if clock is not None:
            clock.now += step_s
        p.update(_fullname(key, node), "end")


@pytest.fixture
def records():
    """INFO/DEBUG records of the progress logger, whatever the root configuration."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    handler = Keep(level=logging.DEBUG)
    progress.LOGGER.addHandler(handler)
    old = progress.LOGGER.level
    progress.LOGGER.setLevel(logging.DEBUG)
    yield seen
    progress.LOGGER.removeHandler(handler)
    progress.LOGGER.setLevel(old)


def _lines(records, level=logging.INFO) -> list[str]:
    return [r.getMessage() for r in records if r.levelno == level]


def test_job_key_and_node_counts():
    from nipype.interfaces.utility import Function, IdentityInterface
    from nipype.pipeline import engine as pe

    assert progress.job_key(_fullname(next(iter(JOBS)), "segment"), JOBS) == next(iter(JOBS))
    assert progress.job_key("neuroseg_1_0_wf.other_wf.node", JOBS) is None
    top = pe.Workflow(name="neuroseg_1_0_wf")
    subjects: dict[str, pe.Workflow] = {}
    for key in JOBS:
        subject_name, image_name = key.split(".")
        subject = subjects.setdefault(subject_name, pe.Workflow(name=subject_name))
        image = pe.Workflow(name=image_name)
        inputnode = pe.Node(IdentityInterface(fields=["x"]), name="inputnode")  # dropped by Nipype: not counted
        nodes = [pe.Node(Function(function=_identity, input_names=["x"], output_names=["x"]), name=n) for n in NODES]
        image.connect([(inputnode, nodes[0], [("x", "x")]), (nodes[0], nodes[1], [("x", "x")]),
                       (nodes[1], nodes[2], [("x", "x")])])
        subject.add_nodes([image])
    top.add_nodes(list(subjects.values()))
    assert progress.count_nodes(top, JOBS) == dict.fromkeys(JOBS, 3)


def test_counts_failures_and_participants(records):
    clock = Clock()
    p = progress.Progress(JOBS, dict.fromkeys(JOBS, 3), is_tty=False, interval_s=1e9, clock=clock)
    keys = list(JOBS)
    _finish(p, keys[0])
    assert (p.images_done, p.participants_done, len(p.failed)) == (1, 1, 0)
    _finish(p, keys[1])  # sub-02 has one of its two images done
    assert (p.images_done, p.participants_done) == (2, 1)
    # sub-02's second image fails on its second node; its dependents never run (or come as "end" later)
    p.update(_fullname(keys[2], "reorient"), "end")
    p.update(_fullname(keys[2], "segment"), "exception")
    p.update(_fullname(keys[2], "segment"), "end")  # MultiProc: a node run in the main process
    p.update(_fullname(keys[2], "ds_mask"), "end")
    assert (p.images_done, p.participants_done, len(p.failed)) == (3, 2, 1)
    # a cached node ends without a start; a repeated end is counted once
    p.update(_fullname(keys[3], "reorient"), "end")
    p.update(_fullname(keys[3], "reorient"), "end")
    p.update(_fullname(keys[3], "segment"), "end")
    assert p.images_done == 3
    p.update(_fullname(keys[3], "ds_mask"), "end")
    p.update("neuroseg_1_0_wf.unrelated_wf.node", "end")  # names no job: ignored
    assert (p.images_done, p.participants_done) == (4, 3)
    _finish(p, keys[4])
    p.close()
    assert p.summary().startswith("progress: 5/5 images (4/4 participants) done, 1 failed")


def test_lines_at_each_quarter(records):
    jobs = {f"single_subject_{i:02d}_wf.spinalcord_sub-{i:02d}_T2w_wf": Job(f"sub-{i:02d}", "n/a", f"i{i}", "spinalcord")
            for i in range(8)}
    clock = Clock()
    p = progress.Progress(jobs, dict.fromkeys(jobs, 3), is_tty=False, interval_s=1e9, clock=clock)
    for key in jobs:
        _finish(p, key, clock, step_s=5)  # 15 s per image
    p.close()
    lines = _lines(records)
    done = [int(re.match(r"progress: (\d+)/8 images", line).group(1)) for line in lines]
    assert done == [2, 4, 6, 8], lines  # 25, 50, 75, 100 %; close() adds no duplicate
    assert lines[0] == "progress: 2/8 images (2/8 participants) done, 0 failed, 30s elapsed, ~1m left"
    assert lines[-1] == "progress: 8/8 images (8/8 participants) done, 0 failed, 2m00s elapsed"
    assert not _lines(records, logging.DEBUG)


def test_interval_caps_the_rate(records):
    clock = Clock()
    p = progress.Progress(JOBS, dict.fromkeys(JOBS, 1000), is_tty=False, interval_s=30, clock=clock)
    key = next(iter(JOBS))
    for i in range(610):  # 610 node ends in 61 s, no image finished
        clock.now += 0.1
        p.update(_fullname(key, f"n{i}"), "end")
    lines = _lines(records)
    assert len(lines) == 2, lines  # at 30 s and 60 s
    assert lines[0].startswith("progress: 0/5 images (0/4 participants) done, 0 failed, 30s elapsed")


def test_no_carriage_return_off_a_terminal(records):
    stream = io.StringIO()
    p = progress.Progress(JOBS, dict.fromkeys(JOBS, 3), stream=stream, is_tty=False, interval_s=0)
    for key in JOBS:
        _finish(p, key)
    p.close()
    assert stream.getvalue() == ""  # nothing written to the stream: log lines only
    assert records and not any("\r" in r.getMessage() for r in records)


def test_bar_on_a_terminal(records):
    stream = io.StringIO()
    p = progress.Progress(JOBS, dict.fromkeys(JOBS, 3), stream=stream, is_tty=True, interval_s=0)
    keys = list(JOBS)
    for key in keys[:-1]:
        _finish(p, key)
    p.update(_fullname(keys[-1], "segment"), "exception")
    p.close()
    text = stream.getvalue()
    assert "\r" in text and "images" in text
    final = text.split("\r")[-1]
    assert "5/5" in final and "participants 4/4" in final and "failed 1" in final, text
    # the lines go to the log file only (DEBUG), not to the console (INFO)
    assert not _lines(records) and _lines(records, logging.DEBUG)


def test_plugins_with_and_without_callback():
    assert progress.supports_status_callback("MultiProc")
    assert progress.supports_status_callback("Linear")
    assert progress.supports_status_callback("SLURM")
    assert not progress.supports_status_callback("SLURMGraph")
    assert not progress.supports_status_callback("NoSuchPlugin")


def test_run_logs_the_final_count(tmp_path):
    """A real run (MultiProc, 2 processes): the console and the log file show the final count."""
    bids = make_dataset(tmp_path / "ds", {"01": [None]})
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"spinalcord": {"suffix": ["T2w"]}}))
    out = tmp_path / "out"
    result = run_app(ENTRY_POINTS["python run.py"],
                     [bids, out, "participant", "--nprocs", "2", "--device", "cpu", "-w", tmp_path / "work",
                      "--bids-filter-file", filters, "--skip-bids-validation"],
                     env=app_env(NEUROSEG_PROGRESS_INTERVAL_S="30"), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert "progress: 1/1 images (1/1 participants) done, 0 failed" in console, console[-3000:]
    assert "\r" not in console
    log = next((out / "logs").glob("neuroseg-participant-*.log")).read_text()
    assert "progress: 1/1 images (1/1 participants) done, 0 failed" in log
    assert "\r" not in log
