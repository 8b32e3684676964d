"""The demo dataset on the host and in the container image, outputs compared (issue 17; not a test).

    python benchmarks/container.py [--image neuroseg:0.1.0] [--engine podman] [--user 54321:54321]
                                   [--nprocs 2] [--keep DIR] [--json PATH] [--no-host-repeat]
                                   [--no-apptainer-equivalent]

One synthetic demo dataset (``python -m bids_app.synthetic``), then participant (spinalcord + mslesion)
and group levels in up to four ways, each into its own output folder:

``host``
    the ``neuroseg`` of this interpreter's venv (``make demo``'s commands).
``host_repeat``
    the same again: what differs between two host runs is run-specific, not the container's doing.
``container``
    ``ENGINE run --rm --read-only --network none --user U:G --tmpfs /tmp -v bids:/data:ro -v out:/out
    -v work:/work IMAGE /data /out ...`` (podman also ``--passwd=false``: no passwd entry for the uid,
    as under Docker). The host's NUMERIC_ENV variables (e.g. ``OPENBLAS_CORETYPE``) are passed in with
    ``--env``: they select other BLAS kernels, whose last bits differ.
``apptainer_equivalent``
    Apptainer is not needed: the same image and flags, with the ``%environment``, ``%test`` and
    ``%runscript`` sections of ``containers/neuroseg.def`` run by ``/bin/sh`` in it (what ``apptainer
    build`` / ``apptainer run --cleanenv`` would execute on top of the image).

Comparison with ``host``: the file sets must match; every TSV and NIfTI must have the same sha256;
JSON sidecars must be equal except for IGNORED_JSON_KEYS (the container marker and the raw dataset's
path); HTML reports must be equal once both runs' folders and timestamps are masked; other files
(PNG figures, README, .bidsignore) must be byte-identical; ``logs/`` (per-run configuration and logs)
is not compared. The result goes to ``benchmarks/results/container_<date>.json``; exit status 1
when anything differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFINITION = ROOT / "containers" / "neuroseg.def"
TASKS = ["spinalcord", "mslesion"]
#: JSON fields that legitimately differ between a host run and a container run.
IGNORED_JSON_KEYS = {
    "dataset_description.json": ["GeneratedBy[*].Container", "DatasetLinks.raw"],
}
#: Host variables that change numerical kernels (OpenBLAS core type and cache size, thread counts):
#: passed into the container so that both runs use the same ones (``--no-pass-env`` to not).
NUMERIC_ENV = re.compile(r"(OPENBLAS|GOTO|OMP|MKL|NUMEXPR|VECLIB|KMP)_\w+$")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2}| UTC)?")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def def_sections(path: Path = DEFINITION) -> dict[str, str]:
    """``{"environment": body, "runscript": ..., "test": ..., ...}`` of an Apptainer definition file."""
    sections: dict[str, list[str]] = {"header": []}
    current = "header"
    for line in path.read_text().splitlines():
        match = re.match(r"%(\w+)\s*$", line)
        if match:
            current = match.group(1)
            sections[current] = []
        else:
            sections[current].append(line)
    return {name: "\n".join(lines).strip() + "\n" for name, lines in sections.items()}


def timed(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` (output to ``log``); its wall-clock seconds. Raises on failure, with the log's tail."""
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "NIPYPE_NO_ET": "1"})
    seconds = time.perf_counter() - t0
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return round(seconds, 1)


def writable_dir(path: Path, user: str) -> Path:
    """An empty folder the container's ``--user`` can write (chown as root, else world-writable)."""
    path.mkdir(parents=True)
    if os.geteuid() == 0:
        uid, _, gid = user.partition(":")
        os.chown(path, int(uid), int(gid or uid))
    else:
        path.chmod(0o777)
    return path


def engine_base(args: argparse.Namespace, bids: Path, out: Path, work: Path) -> list[str]:
    cmd = [args.engine, "run", "--rm", "--read-only", "--network", "none", "--user", args.user,
           "--tmpfs", "/tmp", "-v", f"{bids}:/data:ro", "-v", f"{out}:/out", "-v", f"{work}:/work"]
    if Path(args.engine).name == "podman":
        cmd.append("--passwd=false")
    return cmd + [f"--env={name}={value}" for name, value in sorted(numeric_env(args).items())]


def numeric_env(args: argparse.Namespace) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if NUMERIC_ENV.match(k)} if args.pass_env else {}


def levels(args: argparse.Namespace) -> list[list[str]]:
    return [["participant", "--tasks", *TASKS, "--nprocs", str(args.nprocs)], ["group", "--tasks", *TASKS]]


def run_host(args: argparse.Namespace, bids: Path, root: Path, name: str) -> dict:
    neuroseg = str(Path(sys.executable).with_name("neuroseg"))
    out, work = root / name / "out", root / name / "work"
    times = {}
    for level in levels(args):
        extra = ["--work-dir", str(work)] if level[0] == "participant" else []
        times[f"{level[0]}_s"] = timed([neuroseg, str(bids), str(out), *level, *extra], root / f"{name}.log")
    return {"out": out, "aliases": {str(bids): "<bids>", str(out): "<out>", str(work): "<work>"}, **times}


def run_container(args: argparse.Namespace, bids: Path, root: Path, name: str) -> dict:
    out, work = writable_dir(root / name / "out", args.user), writable_dir(root / name / "work", args.user)
    base = engine_base(args, bids, out, work)
    log = root / f"{name}.log"
    result: dict = {"out": out, "aliases": {"/data": "<bids>", "/out": "<out>", "/work": "<work>"},
                    "command": " ".join([*base, args.image, "/data", "/out", *levels(args)[0]])}
    if name == "apptainer_equivalent":
        sec = def_sections()
        shell = [*base, "--entrypoint", "/bin/sh", args.image, "-c"]
        t0 = time.perf_counter()
        timed([*shell, "set -e\n" + sec["environment"] + sec["test"]], log)
        result["def_test_s"] = round(time.perf_counter() - t0, 1)
        prefix = [*shell, sec["environment"] + sec["runscript"], "neuroseg"]
        result["command"] = " ".join([*shell, "'<%environment + %runscript of containers/neuroseg.def>'"])
    else:
        prefix = [*base, args.image]
    for level in levels(args):
        result[f"{level[0]}_s"] = timed([*prefix, "/data", "/out", *level], log)
    return result


def _json_diff(a, b, path: str = "") -> list[str]:
    """Key paths (``a.b[*].c``) at which two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [p for key in sorted(set(a) | set(b))
                for p in (_json_diff(a.get(key), b.get(key), f"{path}.{key}" if path else key)
                          if key in a and key in b else [f"{path}.{key}" if path else key])]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for x, y in zip(a, b) for p in _json_diff(x, y, f"{path}[*]")]
    return [] if a == b else [path]


def _masked_text(path: Path, aliases: dict[str, str]) -> str:
    """The file's text with each run's own folders replaced by placeholders, and timestamps masked."""
    text = path.read_text(errors="replace")
    for folder in sorted(aliases, key=len, reverse=True):
        text = text.replace(folder, aliases[folder])
    return TIMESTAMP.sub("<time>", text)


def compare(ref: dict, other: dict) -> dict:
    """What differs between two runs' output folders (``logs/`` excluded)."""
    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and p.relative_to(root).parts[0] != "logs"}

    a, b = files(ref["out"]), files(other["out"])
    res: dict = {"only_in_host": sorted(a - b), "only_in_other": sorted(b - a), "sha256_identical": 0,
                 "sha256_differ": [], "json_equal": 0, "json_ignored_differences": {}, "json_differ": {},
                 "html_equal_masked": 0, "html_differ": [], "other_identical": 0, "other_differ": []}
    for rel in sorted(a & b):
        x, y = ref["out"] / rel, other["out"] / rel
        if rel.endswith((".tsv", ".nii", ".nii.gz")):
            same = sha256(x) == sha256(y)
            res["sha256_identical" if same else "sha256_differ"] += 1 if same else [rel]
        elif rel.endswith(".json"):
            diffs = _json_diff(json.loads(x.read_text()), json.loads(y.read_text()))
            keys = IGNORED_JSON_KEYS.get(rel, [])
            ignored = [d for d in diffs if any(d == k or d.startswith(k + ".") for k in keys)]
            if ignored:
                res["json_ignored_differences"][rel] = ignored
            if set(diffs) - set(ignored):
                res["json_differ"][rel] = sorted(set(diffs) - set(ignored))
            else:
                res["json_equal"] += 1
        elif rel.endswith(".html"):
            same = _masked_text(x, ref["aliases"]) == _masked_text(y, other["aliases"])
            res["html_equal_masked" if same else "html_differ"] += 1 if same else [rel]
        else:
            same = x.read_bytes() == y.read_bytes()
            res["other_identical" if same else "other_differ"] += 1 if same else [rel]
    res["identical"] = not (res["only_in_host"] or res["only_in_other"] or res["sha256_differ"]
                            or res["json_differ"] or res["html_differ"] or res["other_differ"])
    return res


DIGEST_CODE = """
import hashlib, pathlib, sys
root = pathlib.Path(sys.argv[1])
for p in sorted(root.rglob("*")):
    if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"):
        print(hashlib.sha256(p.read_bytes()).hexdigest(), p.relative_to(root))
"""


def tree_vs_image(args: argparse.Namespace) -> dict:
    """Files of ``bids_app/`` and ``models/`` that differ between the working tree and the image
    (an image older than the tree gives other outputs for a reason that is not the container)."""
    res = {}
    for name, inside in (("bids_app", "/opt/venv/lib/python3.11/site-packages/bids_app"),
                         ("models", "/opt/neuroseg/models")):
        host = subprocess.run([sys.executable, "-c", DIGEST_CODE, str(ROOT / name)], capture_output=True,
                              text=True, check=True).stdout.splitlines()
        image = subprocess.run([args.engine, "run", "--rm", "--network", "none", "--entrypoint", "python",
                                args.image, "-c", DIGEST_CODE, inside], capture_output=True, text=True,
                               check=True).stdout.splitlines()
        res[name] = sorted({line.split(maxsplit=1)[1] for line in set(host) ^ set(image)})
    return res


def image_info(args: argparse.Namespace) -> dict:
    out = subprocess.run([args.engine, "image", "inspect", args.image], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)[0]
    version = subprocess.run([args.engine, "--version"], capture_output=True, text=True).stdout.strip()
    return {"name": args.image, "id": info.get("Id", "")[:12], "size_bytes": info.get("Size"),
            "size_mb": round((info.get("Size") or 0) / 1e6), "created": info.get("Created"),
            "labels": (info.get("Config") or {}).get("Labels") or info.get("Labels"), "engine": version}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="neuroseg:" + (ROOT / "version").read_text().strip())
    parser.add_argument("--engine", default=os.environ.get("CONTAINER", "podman"))
    parser.add_argument("--user", default="54321:54321", help="uid:gid for the container (default 54321:54321)")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    parser.add_argument("--json", type=Path,
                        help=f"result file (default benchmarks/results/container_{date.today()}.json)")
    parser.add_argument("--no-host-repeat", dest="host_repeat", action="store_false")
    parser.add_argument("--no-apptainer-equivalent", dest="apptainer", action="store_false")
    parser.add_argument("--no-pass-env", dest="pass_env", action="store_false",
                        help="do not pass the host's OPENBLAS_*/OMP_*/MKL_* variables into the container")
    args = parser.parse_args(argv)
    if shutil.which(args.engine) is None:
        print(f"{args.engine} not found", file=sys.stderr)
        return 2

    stale = tree_vs_image(args)
    if any(stale.values()):
        print(f"warning: {args.image} was built from another tree (make image); differing files: {stale}",
              file=sys.stderr)
    root = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="neuroseg-container-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    try:
        bids = root / "bids"
        subprocess.run([sys.executable, "-m", "bids_app.synthetic", str(bids)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        for p in [bids, *bids.rglob("*")]:  # readable by any --user
            p.chmod(0o755 if p.is_dir() else 0o644)
        runs = {"host": run_host(args, bids, root, "host")}
        if args.host_repeat:
            runs["host_repeat"] = run_host(args, bids, root, "host_repeat")
        runs["container"] = run_container(args, bids, root, "container")
        if args.apptainer:
            runs["apptainer_equivalent"] = run_container(args, bids, root, "apptainer_equivalent")
        comparisons = {name: compare(runs["host"], run) for name, run in runs.items() if name != "host"}
        result = {
            "date": str(date.today()),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
            "image": image_info(args),
            "flags": "--read-only --network none --user " + args.user + " --tmpfs /tmp, input -v bids:/data:ro",
            "env_passed": numeric_env(args),
            "tree_files_not_in_image": stale,
            "runs": {name: {k: v for k, v in run.items() if k not in ("out", "aliases")}
                     for name, run in runs.items()},
            "comparisons": comparisons,
            "identical": all(c["identical"] for c in comparisons.values()),
            "image_matches_tree": not any(stale.values()),
        }
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    path = args.json or ROOT / "benchmarks" / "results" / f"container_{date.today()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    for name, run in result["runs"].items():
        same = comparisons.get(name, {}).get("identical", "reference")
        print(f"{name:22s} participant {run['participant_s']:7.1f} s  group {run['group_s']:6.1f} s  identical: {same}")
    print(f"image {result['image']['name']}: {result['image']['size_mb']} MB; result: {path}")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
