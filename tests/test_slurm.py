"""SLURM: the array job written by ``--slurm-script`` (one participant per task, the same command line,
the group level after it) and the SLURMGraph wait; end to end on a real cluster in the slow test."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bids_app import slurm
from bids_app.cli import main, parse_config
from bids_app.config import Config
from bids_app.failures import Job
from bids_app.synthetic import make_dataset
from tests.helpers import app_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    bids = make_dataset(root / "ds", {"01": [None], "02": [None], "03": ["A", "B"], "04": [None]})
    filters = root / "filters.json"
    filters.write_text(json.dumps({"spinalcord": {"suffix": ["T2w"]}}))
    return bids, filters


def _write(dataset, tmp_path, *extra):
    bids, filters = dataset
    script = tmp_path / "jobs" / "neuroseg.sbatch"
    code = main([str(bids), str(tmp_path / "out"), "participant", "--bids_filter_file", str(filters), "-w",
                 str(tmp_path / "work"), "--device", "cuda", "--omp-nthreads", "1", "--slurm-script", str(script),
                 *extra])
    return code, script


def _exec_line(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("exec "))
    return shlex.split(line)[1:]


def test_array_job_one_participant_per_task(dataset, tmp_path):
    code, script = _write(dataset, tmp_path, "--slurm-cpus", "4", "--slurm-mem", "16G", "--slurm-time", "1-00:00:00",
                          "--slurm-partition", "short", "--slurm-max-parallel", "2")
    assert code == 0  # with --device cuda on a machine without a GPU: nothing is run or probed
    text = script.read_text()
    participants = script.with_name("neuroseg_participants.txt").read_text().split()
    assert participants == ["01", "02", "03", "04"]
    array = re.search(r"^#SBATCH --array=0-(\d+)%2$", text, re.M)
    assert array and int(array.group(1)) + 1 == len(participants)
    for line in ("--cpus-per-task=4", "--mem=16G", "--time=1-00:00:00", "--partition=short"):
        assert f"#SBATCH {line}\n" in text
    assert f"#SBATCH --output={tmp_path / 'out' / 'logs' / 'slurm'}/neuroseg_%A_%a.out" in text
    assert 'label=${participants[$SLURM_ARRAY_TASK_ID]}' in text
    args = _exec_line(text)
    assert args[:3] == [sys.executable, "-m", "bids_app"]  # called in-process: python -m bids_app
    assert args[3:6] == [str(dataset[0]), str(tmp_path / "out"), "participant"]
    assert not [a for a in args if a.startswith("--slurm")]
    # The user's options, the task's participant and work dir, the shared pybids index.
    joined = " ".join(args)
    assert f"--bids-filter-file {dataset[1]}" in joined and "--device cuda" in joined and "--omp-nthreads 1" in joined
    assert "--participant-label $label" in joined and f"--work-dir {tmp_path / 'work' / 'slurm'}/sub-$label" in joined
    assert f"--bids-database-dir {tmp_path / 'work' / 'pybids_db'}" in joined
    assert "--nprocs ${SLURM_CPUS_PER_TASK:-1}" in joined
    assert not list((tmp_path / "out").glob("sub-*")), "the generator ran something"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_group_job_and_dependency(dataset, tmp_path):
    code, script = _write(dataset, tmp_path)
    assert code == 0
    group = script.with_name("neuroseg_group.sbatch").read_text()
    args = _exec_line(group)
    assert args[3:6] == [str(dataset[0]), str(tmp_path / "out"), "group"]
    assert "--participant-label" not in args and "#SBATCH --array" not in group
    submit = script.with_name("neuroseg_submit.sh").read_text()
    assert re.search(r'array=\$\(sbatch --parsable "\$@" \S*neuroseg\.sbatch\)', submit)
    assert re.search(r'sbatch --parsable "\$@" --dependency=afterok:"\$\{array%%;\*\}" \S*neuroseg_group\.sbatch', submit)
    for path in (script, script.with_name("neuroseg_group.sbatch"), script.with_name("neuroseg_submit.sh")):
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_array_task_command_parses_to_the_same_configuration(dataset, tmp_path, monkeypatch):
    """Task 2 (sub-03) expanded by bash: the app parses it to the original config plus its label."""
    monkeypatch.setattr("bids_app.cli.cuda_available", lambda: True)  # the task runs on a GPU node
    code, script = _write(dataset, tmp_path, "--participant-label", "02", "03")
    assert code == 0
    assert script.with_name("neuroseg_participants.txt").read_text().split() == ["02", "03"]
    probe = script.read_text().replace("exec ", "printf '%s\\n' ")
    out = subprocess.run(["bash", "-c", probe], env={**app_env(), "SLURM_ARRAY_TASK_ID": "1",
                                                     "SLURM_CPUS_PER_TASK": "3"},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    config = parse_config(out[3:])
    assert config.participant_label == ("03",) and config.nprocs == 3 and config.omp_nthreads == 1
    assert config.work_dir == tmp_path / "work" / "slurm" / "sub-03" and config.device == "cuda"
    assert config.bids_filters == {"spinalcord": {"suffix": ["T2w"]}}


def test_participants_without_input_are_left_out(dataset, tmp_path):
    bids, _ = dataset
    only_t1 = tmp_path / "filters.json"
    only_t1.write_text(json.dumps({"spinalcord": {"suffix": ["T1w"], "session": "A"}}))
    script = tmp_path / "neuroseg.sbatch"
    assert main([str(bids), str(tmp_path / "out"), "participant", "--bids-filter-file", str(only_t1),
                 "--slurm-script", str(script)]) == 0
    assert script.with_name("neuroseg_participants.txt").read_text().split() == ["03"]
    assert "#SBATCH --array=0-0\n" in script.read_text()


@pytest.mark.parametrize("extra", [["--slurm-mem", "lots"], ["--slurm-time", "soon"], ["--slurm-cpus", "0"]])
def test_bad_slurm_options_exit_2(dataset, tmp_path, extra):
    assert _write(dataset, tmp_path, *extra)[0] == 2


def test_slurm_script_is_for_the_participant_level(dataset, tmp_path):
    bids, _ = dataset
    assert main([str(bids), str(tmp_path / "out"), "group", "--slurm-script", str(tmp_path / "x.sbatch")]) == 2


def test_graph_jobs_are_tagged_and_waited_for(monkeypatch, tmp_path):
    """SLURMGraph: every job gets the run's --comment; a job SLURM killed becomes its image's failure,
    a failed one with a crash file is left to the crash file, and other plugins wait for nothing."""
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant",
                    work_dir=tmp_path / "w", nipype_plugin="SLURMGraph")
    args = slurm.tag_graph_jobs(config, {"sbatch_args": "-p short"})
    assert args["sbatch_args"] == f"-p short --comment=neuroseg-{config.run_id}"
    multiproc = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant",
                       work_dir=tmp_path / "w")
    assert slurm.tag_graph_jobs(multiproc, {"n_procs": 2}) == {"n_procs": 2}
    assert slurm.wait_for_graph(multiproc, {}, tmp_path) == []
    jobs = {"single_subject_01_wf.spinalcord_sub_01_T2w_wf": Job("sub-01", "n/a", "sub-01/anat/sub-01_T2w.nii.gz",
                                                                 "spinalcord"),
            "single_subject_02_wf.spinalcord_sub_02_T2w_wf": Job("sub-02", "n/a", "sub-02/anat/sub-02_T2w.nii.gz",
                                                                 "spinalcord")}
    batch = "/w/neuroseg_wf/batch/batchscript_pyscript_20260101_000000_neuroseg_wf.{}_{}.sh"
    rounds = iter([
        {"1": ("RUNNING", "None", "j0", batch.format(*list(jobs)[:1], "segment")),
         "2": ("PENDING", "Dependency", "j1", batch.format(list(jobs)[1], "segment"))},
        {"1": ("TIMEOUT", "TimeLimit", "j0", batch.format(list(jobs)[0], "segment")),
         "2": ("COMPLETED", "None", "j1", batch.format(list(jobs)[1], "segment"))},
    ])
    monkeypatch.setattr(slurm, "_queue", lambda tag: next(rounds))
    found = slurm.wait_for_graph(config, jobs, tmp_path / "crash", poll_s=0)
    assert [(f.participant, f.crash_file) for f in found] == [("sub-01", "n/a")]
    assert "TIMEOUT" in found[0].reason and "SLURM job 1" in found[0].reason


# ------------------------------------------------------------------------------------ a real cluster
def _cluster_or_skip():
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch is not on PATH (benchmarks/slurm/setup_local_cluster.sh makes a one-node cluster)")
    sys.path.insert(0, str(ROOT / "benchmarks" / "slurm"))
    try:
        import run as bench
    finally:
        sys.path.pop(0)
    if not bench.ensure_cluster():
        pytest.skip("no SLURM cluster is up (sinfo shows no usable node); run "
                    "benchmarks/slurm/setup_local_cluster.sh as root")


@pytest.fixture
def private_tmp():
    """A folder of this test alone: pytest's basetemp rotation (keep the latest 3) removes a long test's
    tmp_path while another pytest session starts, and the array tasks would then find no dataset."""
    folder = Path(tempfile.mkdtemp(prefix="neuroseg-slurm-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_array_and_slurmgraph_outputs_equal_a_local_run(private_tmp):
    """benchmarks/slurm/run.py on 3 participants: local, array job + group job, SLURMGraph; every
    output file identical (the 10-participant run is the benchmark's, results/slurm_<date>.json)."""
    _cluster_or_skip()
    result_file = private_tmp / "result.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "slurm" / "run.py"), "--participants", "3",
                          "--folder", str(private_tmp / "bench"), "--result", str(result_file)],
                         capture_output=True, text=True, timeout=1800, env=app_env())
    assert result_file.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert result["runs"]["array"]["array_tasks"] == 3
    assert result["runs"]["array"]["participants_file"] == ["01", "02", "03"]
    for mode in ("array", "graph"):
        comparison = result["comparison"][mode]
        assert not comparison["missing"] and not comparison["extra"] and not comparison["differing"], comparison
    assert result["ok"] and run.returncode == 0, run.stdout[-3000:]
