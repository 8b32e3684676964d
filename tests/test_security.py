"""Security acceptance: a run opens no network connection and writes only to output_dir and the work dir.

The app runs as real subprocesses with ``tests/sandbox`` on ``PYTHONPATH``: its ``sitecustomize``
installs an audit hook in every Python process of the run (main process, forkserver, workers)
that refuses network access and records every write outside the allowed folders. The hook cannot
see non-Python programs the app starts (it records that they were started), so the test also
checks that the read-only folders it hands the app (HOME, TMPDIR, cwd, the dataset) are unchanged
afterwards (we run as root in CI, where ``chmod a-w`` alone stops nothing) and, where strace
works, that no process of the run made an IPv4/IPv6 connection or sent a datagram.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from bids_app.synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]
SANDBOX = ROOT / "tests" / "sandbox"

# Variables that would point the app's libraries at caches or homes of the machine running the
# tests, instead of the empty HOME and TMPDIR this test provides (or that would quiet the app's
# tools, e.g. DENO_NO_UPDATE_CHECK: the app itself has to set those).
_DROP_PREFIXES = ("XDG_", "NEUROSEG_SANDBOX_", "TEMPLATEFLOW_", "PYTHON", "DENO_", "MPL")
_DROP = {"HOME", "TMPDIR", "TEMP", "TMP", "TORCH_HOME", "NIPYPE_NO_ET"}


def _sandbox_env(tmp: Path, writable: list[Path]) -> tuple[dict, Path, dict[str, Path]]:
    """Environment for a sandboxed run, its violation log, and the read-only folders it is given."""
    readonly = {name: tmp / name for name in ("cwd", "home", "tmpdir")}
    for folder in readonly.values():
        folder.mkdir()
    log_dir = tmp / "sandbox-log"
    log_dir.mkdir()
    log = log_dir / "violations.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in _DROP and not k.startswith(_DROP_PREFIXES)}
    env.update({
        "HOME": str(readonly["home"]),
        "TMPDIR": str(readonly["tmpdir"]),
        "PYTHONPATH": os.pathsep.join([str(SANDBOX), str(ROOT)]),
        # Bytecode caches are the interpreter's, written into the installation (prebuilt and
        # read-only in the image), not something the app does at run time.
        "PYTHONDONTWRITEBYTECODE": "1",
        "NIPYPE_NO_ET": "1",
        "NEUROSEG_SANDBOX_LOG": str(log),
        "NEUROSEG_SANDBOX_WRITABLE": os.pathsep.join(str(p) for p in [*writable, log_dir]),
    })
    return env, log, readonly


def _entries(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _describe(entry: dict, frames: int = 6) -> str:
    """One violation: what, which process, and the nearest frames of the Python stack."""
    if entry["event"] == "exec":
        head = f"exec {' '.join(entry['argv'])[:150]}"
    else:
        head = f"{entry['event']} {entry.get('path') or entry.get('address')}"
    head += f"    [pid {entry['pid']}, ppid {entry['ppid']}: {entry['cmdline'][:50]}]"
    return "\n".join([head, *("        " + frame[:220] for frame in entry["stack"][-frames:])])


def _tree(folder: Path) -> list[tuple]:
    """Every entry under ``folder`` with what a write would change."""
    return sorted((str(p.relative_to(folder)), p.is_dir(), p.stat().st_size if p.is_file() else 0,
                   p.stat().st_mtime_ns) for p in folder.rglob("*"))


def _make_readonly(*folders: Path) -> None:
    for folder in folders:
        subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)


# execve and clone only to name the program behind each thread.
_STRACE = ["strace", "-f", "-qq", "--seccomp-bpf", "-e",
           "trace=execve,clone,clone3,fork,vfork,connect,sendto,sendmsg,sendmmsg"]


def _strace_usable() -> bool:
    """strace with seccomp filtering (cheap: only the listed syscalls stop), and ptrace allowed."""
    if shutil.which("strace") is None:
        return False
    return subprocess.run([*_STRACE, "-o", os.devnull, "true"], capture_output=True).returncode == 0


def _inet_syscalls(trace: Path) -> list[str]:
    """Connections and datagrams to IPv4/IPv6 addresses, each with the program that made it.

    The audit hook refuses these in Python processes before the system call, so what is left here
    comes from programs the hook cannot see (the BIDS validator's deno, for instance).
    """
    program, found = {}, []
    for line in trace.read_text().splitlines():
        pid, _, call = line.partition(" ")
        call = re.sub(r"\s+", " ", call.strip())
        if call.startswith("execve(") and "= -1" not in call:  # PATH lookups fail before the real one
            program[pid] = call.split('"')[1]
        elif (child := re.search(r"(?:clone3?|v?fork)\b.*= (\d+)$", call)) and pid in program:
            program.setdefault(child.group(1), program[pid])  # a new thread or process of the same program
        elif "sa_family=AF_INET" in call:  # AF_INET6 too
            found.append(f"{program.get(pid, 'pid ' + pid)}: {call[:200]}")
    return found


@pytest.fixture
def sandbox_tmp(tmp_path):
    yield tmp_path
    subprocess.run(["chmod", "-R", "u+w", str(tmp_path)], check=False)  # let pytest clean up


def test_app_opens_no_network_and_writes_only_to_output_and_work(sandbox_tmp):
    tmp = sandbox_tmp
    bids = make_dataset(tmp / "ds", {"01": [None]})
    bids_filter = tmp / "filter.json"
    bids_filter.write_text(json.dumps({"spinalcord": {"suffix": ["T2w"]}}))
    out, work = tmp / "out", tmp / "work"
    env, log, readonly = _sandbox_env(tmp, [out, work])
    _make_readonly(bids, bids_filter, *readonly.values())
    before = {name: _tree(folder) for name, folder in {**readonly, "dataset": bids}.items()}

    # The audit hook cannot see non-Python programs; where strace works, it records their network use.
    tracing = _strace_usable()
    if not tracing:
        warnings.warn("strace unusable here: network use by non-Python programs the app starts is unchecked")
    runs, traces = {}, []
    for level in ("participant", "group"):
        cmd = [sys.executable, str(ROOT / "run.py"), str(bids), str(out), level, "--tasks", "spinalcord",
               "--nprocs", "2", "--device", "cpu", "-w", str(work), "--bids-filter-file", str(bids_filter)]
        if tracing:
            traces.append(log.parent / f"strace-{level}.txt")
            cmd = [*_STRACE, "-o", str(traces[-1]), *cmd]
        runs[level] = subprocess.run(cmd, cwd=readonly["cwd"], env=env, capture_output=True, text=True,
                                     timeout=300)

    entries = _entries(log)
    violations = [e for e in entries if e["event"] != "exec"]
    unaudited = [e for e in entries if e["event"] == "exec"]
    changed = {name: sorted({entry[0] for entry in set(_tree(folder)) ^ set(before[name])})
               for name, folder in {**readonly, "dataset": bids}.items()}
    changed = {name: paths for name, paths in changed.items() if paths}
    programs = sorted({" ".join(e["argv"])[:150] for e in unaudited})
    native_network = [call for trace in traces for call in _inet_syscalls(trace)]
    report = "\n".join(
        [f"{level}: exit {run.returncode}\n{run.stderr[-3000:]}" for level, run in runs.items()]
        + ["", f"{len(violations)} sandbox violation(s):", *map(_describe, violations)]
        + ["", "IPv4/IPv6 system calls seen by strace (from programs the hook cannot see):",
           *(f"    {call}" for call in native_network)]
        + ["", "read-only folders changed (by any process, Python or not):",
           *(f"    {name}/{path}" for name, paths in changed.items() for path in paths)]
        + ["", "non-Python programs started (their own file and network use is invisible to the hook):",
           *(f"    {program}" for program in programs)])

    assert all(run.returncode == 0 for run in runs.values()), report
    anat = out / "sub-01" / "anat"
    assert (anat / "sub-01_label-SC_desc-T2w_mask.nii.gz").is_file(), report
    assert (anat / "sub-01_label-SC_desc-T2wlevels_morph.tsv").is_file(), report
    assert (out / "group_csa.tsv").is_file() and (out / "figures" / "group_csa.png").is_file(), report
    assert "neuroseg-sandbox:" not in runs["participant"].stderr + runs["group"].stderr, report
    assert not violations, report
    assert not native_network, report
    assert not changed, report


def test_the_sandbox_blocks_network_and_records_outside_writes(sandbox_tmp):
    """Without this, an empty violation log above could just mean a hook that never fires."""
    inside, outside = sandbox_tmp / "inside", sandbox_tmp / "outside"
    inside.mkdir()
    outside.mkdir()
    env, log, _ = _sandbox_env(sandbox_tmp, [inside])
    env["TMPDIR"] = str(inside)  # the forkserver's socket folder is not what this test is about
    script = textwrap.dedent(f"""
        import multiprocessing, os, socket
        try:
            socket.create_connection(("127.0.0.1", 9), timeout=2)
        except PermissionError:
            print("blocked: create_connection")
        try:
            socket.socket().connect(("127.0.0.1", 9))
        except PermissionError:
            print("blocked: connect")
        a, b = socket.socketpair()  # AF_UNIX: multiprocessing needs it
        a.sendall(b"x")
        print("unix ok" if b.recv(1) == b"x" else "unix broken")
        open({str(outside / "written.txt")!r}, "w").write("x")
        open({str(inside / "allowed.txt")!r}, "w").write("x")
        # A forkserver worker, as the app's MultiProc plugin starts them.
        worker = multiprocessing.get_context("forkserver").Process(
            target=os.mkdir, args=({str(outside / "by-worker")!r},))
        worker.start()
        worker.join()
        print("worker exit", worker.exitcode)
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=sandbox_tmp, env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:4] == ["blocked: create_connection", "blocked: connect", "unix ok",
                                          "worker exit 0"], run.stdout + run.stderr
    entries = _entries(log)
    found = {(e["event"], e.get("path") or json.dumps(e.get("address"))) for e in entries}
    assert found == {
        ("socket.getaddrinfo", json.dumps(["127.0.0.1", 9, 0, 1, 0])),
        ("socket.connect", json.dumps(["127.0.0.1", 9])),
        ("open", str(outside / "written.txt")),
        ("os.mkdir", str(outside / "by-worker")),
    }, "\n".join(map(_describe, entries))
    (main_pid,) = {e["pid"] for e in entries if e["event"] == "open"}
    (worker_pid,) = {e["pid"] for e in entries if e["event"] == "os.mkdir"}
    assert worker_pid != main_pid  # the hook reached a forked worker of the forkserver
