"""Reliability at scale, run as a user runs the app (``python run.py``, MultiProc, subprocesses).

    python benchmarks/robustness.py resume [--participants 20] [--kills 3] [--seed 0] [--folder DIR]
    python benchmarks/robustness.py scale  [--participants 200] [--lesion 20] [--folder DIR]

``resume``: one uninterrupted participant-level run of a synthetic dataset (T2w cord phantoms), then
the same run killed with SIGKILL (the whole process group: main process, forkserver and workers, as
a scheduler's ``scancel`` or the OOM killer would) at ``--kills`` random moments, restarted after each
kill, and finally run to completion. After every kill no visible output may be partial (every
derivative has its sidecar and reads completely); at the end every file of the interrupted run's
``output_dir`` (``logs/`` aside) must be byte-identical to the uninterrupted run's.

``scale``: a dataset of ``--participants`` participants (the cord task on every T2w, ``mslesion`` on
the FLAIR of ``--lesion`` of them, one participant's T2w deliberately truncated), run at the
participant level with ``--nprocs 2`` and at the group level. Expected: the broken participant is the
only row of ``logs/failed.tsv``, the run exits 5, the others finish; reports wall time and the
peak RSS of the main process.

Each prints a summary and writes it (JSON) to ``benchmarks/results/<command>_<date>.json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bids_app.synthetic import _write_flair, make_dataset  # noqa: E402
from tests.helpers import app_env, assert_no_partial_files  # noqa: E402

RUN = [sys.executable, str(ROOT / "run.py")]


def _dataset(folder: Path, n: int, lesion: int = 0) -> Path:
    bids = folder / "ds"
    if not (bids / "participants.tsv").is_file():
        make_dataset(bids, {f"{i:03d}": [None] for i in range(1, n + 1)})
        for i in range(1, lesion + 1):
            _write_flair(bids, f"{i:03d}", None, t1w=False)
    return bids


def _participant(bids: Path, out: Path, work: Path, filters: Path, tasks: list[str]) -> list[str]:
    return [*RUN, str(bids), str(out), "participant", "--tasks", *tasks, "--nprocs", "2", "--device", "cpu",
            "-w", str(work), "--bids-filter-file", str(filters)]


def _peak_rss_mb(pid: int, stop: threading.Event, peak: list[float]) -> None:
    """VmHWM (the kernel's high-water mark of resident memory) of ``pid``, polled until it exits."""
    while not stop.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]) / 1024.0)
        except OSError:
            return
        time.sleep(0.5)


def _written(out: Path) -> int:
    return sum(1 for _ in out.glob("sub-*/anat/*")) if out.exists() else 0


def _run(cmd: list[str], log: Path, kill_after: float | None = None, kill_at_files: int | None = None,
         out: Path | None = None) -> tuple[int, float, float]:
    """``(exit code, seconds, peak RSS MB of the main process)``. The whole process group gets SIGKILL
    ``kill_after`` seconds in, or as soon as ``out`` holds ``kill_at_files`` participant-level files
    (a moment inside the writing of some participant's outputs)."""
    start = time.monotonic()
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=app_env(), start_new_session=True)
        stop, peak = threading.Event(), [0.0]
        watcher = threading.Thread(target=_peak_rss_mb, args=(proc.pid, stop, peak), daemon=True)
        watcher.start()
        while proc.poll() is None:
            late = kill_after is not None and time.monotonic() - start >= kill_after
            far = kill_at_files is not None and _written(out) >= kill_at_files
            if late or far:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                time.sleep(1.0)  # let the kernel reap the group
                break
            time.sleep(0.02)
        code = proc.returncode
        stop.set()
    return code, time.monotonic() - start, peak[0]


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] != "logs"}


def resume(args) -> dict:
    folder = Path(args.folder)
    bids = _dataset(folder, args.participants)
    filters = folder / "filters.json"
    filters.write_text(json.dumps({"spinalcord": {"suffix": ["T2w"]}}))
    for name in ("ref", "killed"):
        shutil.rmtree(folder / name, ignore_errors=True)
    ref_code, ref_s, _ = _run(_participant(bids, folder / "ref" / "out", folder / "ref" / "work", filters,
                                           ["spinalcord"]), folder / "ref.log")
    rng = random.Random(args.seed)
    kills = []
    cmd = _participant(bids, folder / "killed" / "out", folder / "killed" / "work", filters, ["spinalcord"])
    out = folder / "killed" / "out"
    total = _written(folder / "ref" / "out")
    # The first kill at a random moment of the computing phase; the others at random points of the
    # writing phase (counted in files written), where a kill could leave a half-written file.
    targets = sorted(rng.sample(range(1, total), args.kills - 1))
    for k in range(args.kills):
        moment = rng.uniform(3.0, 0.6 * ref_s) if k == 0 else None
        code, seconds, _ = _run(cmd, folder / f"killed-{k}.log", kill_after=moment,
                                kill_at_files=None if k == 0 else targets[k - 1], out=out)
        partial = "none"
        try:
            assert_no_partial_files(out) if out.exists() else None
        except AssertionError as exc:  # hidden temporaries of the killed writer are reported here
            partial = str(exc)[:300]
        done = len(list(out.glob("sub-*/anat/*_mask.nii.gz"))) if out.exists() else 0
        kills.append({"killed_after_s": round(seconds, 1), "target": f"{moment:.1f} s" if k == 0 else
                      f"{targets[k - 1]} of {total} files", "exit": code, "files_written": _written(out),
                      "masks_done": done, "partial_files": partial})
    final_code, final_s, _ = _run(cmd, folder / "final.log")
    ref_files, got = _files(folder / "ref" / "out"), _files(folder / "killed" / "out")
    differ = sorted(k for k in set(ref_files) | set(got) if ref_files.get(k) != got.get(k))
    return {"participants": args.participants, "reference": {"exit": ref_code, "seconds": round(ref_s, 1)},
            "kills": kills, "final": {"exit": final_code, "seconds": round(final_s, 1)},
            "files_compared": len(ref_files), "files_differing": differ,
            "leftover_temporaries_after_final": [str(p) for p in (folder / "killed" / "out").rglob("*.tmp")]}


def scale(args) -> dict:
    folder = Path(args.folder)
    t0 = time.monotonic()
    bids = _dataset(folder, args.participants, args.lesion)
    broken = bids / "sub-001" / "anat" / "sub-001_T2w.nii.gz"
    raw = broken.read_bytes()
    if len(raw) > 5000:
        broken.write_bytes(raw[: len(raw) // 2])  # truncated: header fine, data cut short
    made_s = time.monotonic() - t0
    filters = folder / "filters.json"
    filters.write_text(json.dumps({"spinalcord": {"suffix": ["T2w"]}}))
    out, work = folder / "out", folder / "work"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    code, seconds, peak = _run(_participant(bids, out, work, filters, ["spinalcord", "mslesion"]),
                               folder / "participant.log")
    with open(out / "logs" / "failed.tsv") as handle:
        failed = list(csv.DictReader(handle, delimiter="\t"))
    g_code, g_seconds, g_peak = _run([*RUN, str(bids), str(out), "group", "--tasks", "spinalcord", "mslesion"],
                                     folder / "group.log")
    import pandas as pd

    csa = pd.read_csv(out / "group_csa.tsv", sep="\t")
    lesions = pd.read_csv(out / "group_lesions.tsv", sep="\t")
    finished = {p.name for p in out.glob("sub-*") if list(p.glob("anat/*_desc-T2wlevels_morph.tsv"))}
    return {"participants": args.participants, "lesion_participants": args.lesion, "dataset_seconds": round(made_s),
            "participant_level": {"exit": code, "seconds": round(seconds, 1), "peak_rss_main_mb": round(peak, 1),
                                  "failed": [{k: r[k] for k in ("participant_id", "image", "task", "reason")}
                                             for r in failed],
                                  "cord_finished": len(finished)},
            "group_level": {"exit": g_code, "seconds": round(g_seconds, 1), "peak_rss_main_mb": round(g_peak, 1),
                            "csa_participants": int(csa["participant_id"].nunique()),
                            "lesion_rows": len(lesions)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("resume")
    r.add_argument("--participants", type=int, default=20)
    r.add_argument("--kills", type=int, default=3)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--folder", default="/tmp/neuroseg-resume")
    s = sub.add_parser("scale")
    s.add_argument("--participants", type=int, default=200)
    s.add_argument("--lesion", type=int, default=20)
    s.add_argument("--folder", default="/tmp/neuroseg-scale")
    args = parser.parse_args()
    Path(args.folder).mkdir(parents=True, exist_ok=True)
    result = {"command": args.command, "date": datetime.date.today().isoformat(), "cpus": os.cpu_count(),
              **(resume(args) if args.command == "resume" else scale(args))}
    text = json.dumps(result, indent=2)
    print(text)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / f"{args.command}_{result['date']}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
