"""The participant and group levels on a SLURM cluster, compared file by file with a local run.

    python benchmarks/slurm/run.py [--participants 10] [--folder DIR] [--result PATH] [--modes array graph]

Needs ``sbatch`` and a cluster whose nodes see this machine's folders (``setup_local_cluster.sh``
makes a one-node cluster of this machine; run as root, it is started when it is not up). On a
synthetic dataset (``--participants`` cord phantoms, the T2w only), in order:

- ``local``: ``neuroseg ... participant`` with MultiProc (``--nprocs 2``), then ``group``;
- ``array``: the same command line with ``--slurm-script`` (writes the scripts, runs nothing), then
  its ``_submit.sh``: an array job of one participant per task and the group level after it
  (``--dependency=afterok``); waits for the group job;
- ``graph``: the same command line with ``--nipype-plugin SLURMGraph`` (one job per Nipype node; the
  run waits for its jobs), then ``group`` locally.

Every file of each ``output_dir`` (``logs/`` aside) is compared with the local run's by sha256 (HTML reports
with the output folder they name replaced by a placeholder); JSON
files that differ are listed with the keys that differ. Prints a summary and writes it (JSON) to
``--result`` (default ``benchmarks/results/slurm_<date>.json``); exits 1 when an output differs or a
run fails.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bids_app.synthetic import make_dataset  # noqa: E402
from tests.helpers import app_env  # noqa: E402

APP = [sys.executable, "-m", "bids_app"]
SETUP = Path(__file__).resolve().parent / "setup_local_cluster.sh"


def cluster_up() -> bool:
    """Whether ``sinfo`` answers and shows at least one idle or mixed node."""
    if shutil.which("sinfo") is None:
        return False
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(s.strip().rstrip("*") in ("idle", "mixed", "allocated") for s in states.split())


def ensure_cluster() -> bool:
    """The cluster is up, or started now with ``setup_local_cluster.sh`` (as root, when sbatch exists)."""
    if cluster_up():
        return True
    if shutil.which("sbatch") is None or os.geteuid() != 0:
        return False
    subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=300)
    return cluster_up()


def _run(cmd: list[str], log: Path, timeout: float = 3600) -> tuple[int, float]:
    start = time.monotonic()
    with open(log, "w") as handle:
        code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=app_env(), timeout=timeout,
                              cwd=log.parent).returncode
    return code, round(time.monotonic() - start, 1)


def _jobs(ids: list[str]) -> dict[str, dict]:
    """State, start and end of jobs (array tasks included) from ``squeue -t all``."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%A|%T|%S|%e|%j|%r"], capture_output=True,
                         text=True).stdout
    found = {}
    for line in out.splitlines():
        job, raw, state, start, end, name, reason = line.split("|")
        if job.split("_")[0] in ids or raw in ids:
            found[job] = {"state": state, "start": start, "end": end, "name": name, "reason": reason}
    return found


def _wait(ids: list[str], timeout: float = 1800) -> dict[str, dict]:
    """Wait for ``ids`` to end; a job held by a dependency that can never be met (an array task
    failed: the group job) is cancelled, as is everything still queued at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = _jobs(ids)
        stuck = [k for k, j in jobs.items() if j["state"] == "PENDING" and "NeverSatisfied" in j["reason"]]
        if stuck:
            subprocess.run(["scancel", *stuck], capture_output=True)
        live = [k for k, j in jobs.items() if j["state"] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")]
        if jobs and not live:
            return jobs
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *ids], capture_output=True)
            raise TimeoutError(f"SLURM jobs {ids} still queued after {timeout} s; cancelled")
        time.sleep(1)


def _span(jobs: dict[str, dict]) -> float | None:
    """Seconds from the first start to the last end of ``jobs`` (SLURM's 1 s resolution)."""
    try:
        starts = [datetime.datetime.fromisoformat(j["start"]) for j in jobs.values()]
        ends = [datetime.datetime.fromisoformat(j["end"]) for j in jobs.values()]
    except ValueError:
        return None
    return (max(ends) - min(starts)).total_seconds()


def _digest(path: Path, out: Path) -> str:
    """sha256 of a file; of an HTML report with ``out`` (which it names) replaced by a placeholder."""
    data = path.read_bytes()
    if path.suffix == ".html":
        data = data.replace(str(out).encode(), b"OUTPUT_DIR")
    return hashlib.sha256(data).hexdigest()


def outputs(out: Path) -> dict[str, str]:
    """``{relative path: digest}`` of every file of ``out`` but ``logs/``."""
    return {str(p.relative_to(out)): _digest(p, out) for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] != "logs"}


def compare(reference: Path, other: Path) -> dict:
    """Files missing, extra and differing (for JSON: the top-level keys that differ)."""
    ref, new = outputs(reference), outputs(other)
    differing = {}
    for rel in sorted(set(ref) & set(new)):
        if ref[rel] == new[rel]:
            continue
        if rel.endswith(".json"):
            a, b = json.loads((reference / rel).read_text()), json.loads((other / rel).read_text())
            differing[rel] = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        else:
            differing[rel] = "bytes differ"
    return {"files": len(ref), "identical": sum(ref[r] == new.get(r) for r in ref),
            "missing": sorted(set(ref) - set(new)), "extra": sorted(set(new) - set(ref)), "differing": differing,
            "tables_and_images_identical": not any(r.endswith((".tsv", ".nii.gz")) for r in differing)
            and not any(r.endswith((".tsv", ".nii.gz")) for r in set(ref) ^ set(new))}


def run(folder: Path, n: int, modes: list[str]) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    bids = folder / "ds"
    if not (bids / "participants.tsv").is_file():
        make_dataset(bids, {f"{i:02d}": [None] for i in range(1, n + 1)})
    filters = folder / "filters.json"
    filters.write_text(json.dumps({"spinalcord": {"suffix": ["T2w"]}}))
    # One thread per process everywhere: torch's float32 sums depend on the thread count (a local run
    # with 2 threads and an array task with 1 differ by ~4e-7 in the soft segmentation).
    common = ["--bids-filter-file", str(filters), "--device", "cpu", "--omp-nthreads", "1"]
    result: dict = {"participants": n, "cpus": os.cpu_count(), "slurm": _version()}
    runs = {}
    for mode in ["local", *modes]:
        out, work, logs = folder / f"out_{mode}", folder / f"work_{mode}", folder / f"logs_{mode}"
        for path in (out, work, logs):
            shutil.rmtree(path, ignore_errors=True)
        logs.mkdir(parents=True)
        base = [*APP, str(bids), str(out), "participant", *common, "-w", str(work)]
        entry: dict = {}
        if mode == "local":
            entry["participant_exit"], entry["participant_s"] = _run([*base, "--nprocs", "2"], logs / "participant.log")
            entry["group_exit"], entry["group_s"] = _run([*APP, str(bids), str(out), "group"], logs / "group.log")
        elif mode == "array":
            script = folder / f"slurm_{mode}" / "neuroseg.sbatch"
            code, entry["generate_s"] = _run([*base, "--slurm-script", str(script), "--slurm-cpus", "1",
                                              "--slurm-mem", "2G", "--slurm-time", "00:30:00"], logs / "generate.log")
            entry["generate_exit"] = code
            start = time.monotonic()
            submitted = subprocess.run(["bash", str(script.with_name("neuroseg_submit.sh"))], capture_output=True,
                                       text=True, env=app_env(), check=True).stdout
            ids = [w.rstrip(";") for w in submitted.split() if w.rstrip(";").isdigit()][:2]
            jobs = _wait(ids)
            entry["submit_to_group_end_s"] = round(time.monotonic() - start, 1)
            tasks = {k: v for k, v in jobs.items() if k.startswith(f"{ids[0]}_")}
            entry["array_tasks"] = len(tasks)
            entry["array_states"] = sorted({v["state"] for v in tasks.values()})
            entry["array_span_s"] = _span(tasks)
            entry["group_state"] = jobs.get(ids[1], {}).get("state")
            entry["participants_file"] = script.with_name("neuroseg_participants.txt").read_text().split()
        elif mode == "graph":
            args = json.dumps({"sbatch_args": "--mem=2G --time=00:30:00"})
            entry["participant_exit"], entry["participant_s"] = _run(
                [*base, "--nipype-plugin", "SLURMGraph", "--nipype-plugin-args", args], logs / "participant.log")
            batch = list(work.glob("*/batch/batchscript_*.sh"))
            entry["node_jobs"] = len(batch)
            entry["group_exit"], entry["group_s"] = _run([*APP, str(bids), str(out), "group"], logs / "group.log")
        runs[mode] = entry
        print(mode, json.dumps(entry), flush=True)
    result["runs"] = runs
    result["comparison"] = {mode: compare(folder / "out_local", folder / f"out_{mode}") for mode in modes}
    return result


def _version() -> str:
    try:
        return subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "n/a"


def ok(result: dict) -> bool:
    runs = result["runs"]
    codes = [v for entry in runs.values() for k, v in entry.items() if k.endswith("_exit")]
    states = runs.get("array", {}).get("array_states", ["COMPLETED"]) + [runs.get("array", {}).get("group_state", "COMPLETED")]
    same = all(not c["missing"] and not c["extra"] and not c["differing"] for c in result["comparison"].values())
    return all(c == 0 for c in codes) and set(states) == {"COMPLETED"} and same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/neuroseg-slurm-bench"))
    parser.add_argument("--result", type=Path)
    parser.add_argument("--modes", nargs="+", choices=["array", "graph"], default=["array", "graph"])
    args = parser.parse_args()
    if not ensure_cluster():
        sys.exit("No SLURM cluster is up (sinfo shows no usable node); start one with "
                 f"{SETUP.relative_to(ROOT)} (as root).")
    start = time.monotonic()
    result = {"command": "slurm", "date": datetime.date.today().isoformat(), **run(args.folder, args.participants, args.modes)}
    result["total_s"] = round(time.monotonic() - start, 1)
    result["ok"] = ok(result)
    path = args.result or ROOT / "benchmarks" / "results" / f"slurm_{result['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["comparison"], indent=2))
    print(f"{'OK' if result['ok'] else 'FAILED'}: written to {path}")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
