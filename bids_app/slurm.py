"""SLURM: the participant level as an array job (one participant per task) and waiting for SLURMGraph.

``neuroseg bids_dir output_dir participant --slurm-script PATH [--slurm-cpus 2] [--slurm-mem 8G]
[--slurm-time 02:00:00] [--slurm-partition P] [--slurm-max-parallel N] [other options]`` runs nothing:
it lists the participants with at least one input for the requested tasks (the queries a run makes:
:func:`bids_app.bids.participants` and :func:`bids_app.bids.collect_inputs`), and writes

- ``PATH``: the array job; task ``i`` runs participant line ``i`` (from 0) of
  ``<stem>_participants.txt`` with the command line given, its own work dir
  (``work_dir/slurm/sub-<label>``), the shared pybids index (built now, in ``--bids-database-dir``)
  and ``--nprocs $SLURM_CPUS_PER_TASK`` unless ``--nprocs`` was given;
- ``<stem>_group.sbatch``: the group level;
- ``<stem>_submit.sh [sbatch options]``: submits the array, then the group level with
  ``--dependency=afterok:<array id>`` (it runs once every array task succeeded).

Array task logs go to ``output_dir/logs/slurm/``. With ``--nipype-plugin SLURMGraph`` a run submits
one job per node; :func:`tag_graph_jobs` marks them with the run's id and :func:`wait_for_graph` waits
for them, so the run ends when its outputs exist and reports jobs SLURM killed (time, memory).
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bids_app.config import Config
from bids_app.errors import ConfigError
from bids_app.failures import Failure, Job

LOGGER = logging.getLogger(__name__)

#: Options of the generator itself, never passed on to the jobs.
SLURM_DESTS = ("slurm_script", "slurm_cpus", "slurm_mem", "slurm_time", "slurm_partition", "slurm_max_parallel")
#: Options each array task sets itself.
PER_TASK_DESTS = ("participant_label", "work_dir", "bids_database_dir")
_MEM = re.compile(r"[0-9]+[KMGT]?")
_TIME = re.compile(r"([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--slurm-*`` options (their own group of the parser)."""
    group = parser.add_argument_group(
        "SLURM array job", "write an array job (one participant per task) and its group-level job, then exit "
                           "without running anything (bids_app/slurm.py)")
    group.add_argument("--slurm-script", type=Path, metavar="PATH",
                       help="write the array job here (and <stem>_participants.txt, <stem>_group.sbatch, "
                            "<stem>_submit.sh beside it); participant level only")
    group.add_argument("--slurm-cpus", type=int, default=2, metavar="N", help="#SBATCH --cpus-per-task")
    group.add_argument("--slurm-mem", default="8G", metavar="MEM", help="#SBATCH --mem (per task)")
    group.add_argument("--slurm-time", default="02:00:00", metavar="TIME", help="#SBATCH --time (per task)")
    group.add_argument("--slurm-partition", metavar="NAME", help="#SBATCH --partition (default: the cluster's)")
    group.add_argument("--slurm-max-parallel", type=int, metavar="N",
                       help="at most N array tasks at once (--array=0-K%%N)")


def script_requested(argv: list[str] | None) -> bool:
    from bids_app.cli import build_parser

    return build_parser().parse_args(sys.argv[1:] if argv is None else argv).slurm_script is not None


def explicit_options(argv: list[str] | None) -> dict:
    """The options given on the command line (abbreviations and aliases resolved), without defaults."""
    from bids_app.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if action.option_strings:
            action.default = argparse.SUPPRESS
    return vars(parser.parse_args(sys.argv[1:] if argv is None else argv))


def option_args(options: dict, drop: tuple[str, ...] = ()) -> list[str]:
    """``options`` (dest -> value) back as command-line arguments, in the parser's order, paths absolute."""
    from bids_app.cli import build_parser

    args: list[str] = []
    for action in build_parser()._actions:
        dest = action.dest
        if not action.option_strings or dest not in options or dest in drop or dest in SLURM_DESTS:
            continue
        flag = next(o for o in action.option_strings if o.startswith("--"))
        value = options[dest]
        if isinstance(action, argparse._StoreTrueAction):
            args += [flag] if value else []
        elif isinstance(action, argparse._CountAction):
            args += [flag] * int(value)
        elif isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        elif isinstance(value, dict):
            import json

            args += [flag, json.dumps(value, sort_keys=True)]
        elif isinstance(value, Path):
            args += [flag, str(value.resolve())]
        else:
            args += [flag, str(value)]
    return args


def entry_command() -> list[str]:
    """The entry point this process was started with (``run.py``, ``neuroseg``, ``bids_app`` or
    ``python -m bids_app``); ``python -m bids_app`` when called in-process (tests)."""
    argv0 = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else Path()
    if argv0.name == "run.py" and argv0.is_file():
        return [sys.executable, str(argv0)]
    if argv0.name in ("neuroseg", "bids_app") and argv0.is_file():
        return [str(argv0)]
    return [sys.executable, "-m", "bids_app"]


def array_participants(config: Config) -> tuple[list[str], list[str]]:
    """``(participants with at least one input for the tasks, participants without any)``."""
    from bids_app import bids
    from bids_app.tasks import get_task

    layout = bids.load_layout(config.bids_dir, config.bids_database_dir)
    with_input, without = [], []
    for subject in bids.participants(layout, config.participant_label):
        has = any(bids.collect_inputs(layout, get_task(t), subject, config.session_label,
                                      bids.task_filters(config.bids_filters, t)) for t in config.tasks)
        (with_input if has else without).append(subject)
    return with_input, without


def _sbatch_lines(name: str, cpus: int, settings: dict, log: Path) -> list[str]:
    lines = [f"#SBATCH --job-name={name}", f"#SBATCH --cpus-per-task={cpus}",
             f"#SBATCH --mem={settings['slurm_mem']}", f"#SBATCH --time={settings['slurm_time']}"]
    if settings["slurm_partition"]:
        lines.append(f"#SBATCH --partition={settings['slurm_partition']}")
    return [*lines, f"#SBATCH --output={log}"]


def _settings(argv: list[str] | None) -> dict:
    """The ``--slurm-*`` values (defaults included), checked."""
    from bids_app.cli import build_parser

    settings = {k: v for k, v in vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv)).items()
                if k in SLURM_DESTS}
    if settings["slurm_cpus"] < 1 or (settings["slurm_max_parallel"] or 1) < 1:
        raise ConfigError("--slurm-cpus and --slurm-max-parallel must be at least 1.")
    if not _MEM.fullmatch(settings["slurm_mem"]):
        raise ConfigError(f"--slurm-mem {settings['slurm_mem']!r} is not a SLURM memory size (e.g. 8G, 16000M).")
    if not _TIME.fullmatch(settings["slurm_time"]):
        raise ConfigError(f"--slurm-time {settings['slurm_time']!r} is not a SLURM time (e.g. 02:00:00, 1-00:00:00).")
    if settings["slurm_partition"] is not None and not re.fullmatch(r"[\w.,-]+", settings["slurm_partition"]):
        raise ConfigError(f"--slurm-partition {settings['slurm_partition']!r} is not a partition name.")
    return settings


def write_scripts(config: Config, argv: list[str] | None) -> dict[str, Path]:
    """Write the array job, its participants file, the group-level job and the submit script."""
    options, settings = explicit_options(argv), _settings(argv)
    if config.analysis_level != "participant":
        raise ConfigError("--slurm-script writes the participant level's array job (and the group level's job "
                          "beside it); use it with the participant level.")
    labels, without = array_participants(config)
    if not labels:
        raise ConfigError("No participant has input for the requested tasks; no array job to write.")
    if without:
        LOGGER.info("Left out of the array (no input for %s): %s", ", ".join(config.tasks),
                    ", ".join(f"sub-{s}" for s in without))
    if len(labels) > 1000:  # SLURM's default MaxArraySize is 1001 (indices 0-1000)
        LOGGER.warning("%d participants: more array tasks than SLURM's default MaxArraySize allows; check "
                       "`scontrol show config | grep MaxArraySize`, or split with --participant-label.", len(labels))
    script = settings["slurm_script"].resolve()
    stem = script.name.split(".")[0]
    paths = {"array": script, "participants": script.with_name(f"{stem}_participants.txt"),
             "group": script.with_name(f"{stem}_group.sbatch"), "submit": script.with_name(f"{stem}_submit.sh")}
    logs = config.output_dir / "logs" / "slurm"
    cmd = entry_command()
    user = option_args(options, drop=PER_TASK_DESTS)
    nprocs = [] if "nprocs" in options else ["--nprocs", "${SLURM_CPUS_PER_TASK:-1}"]
    array = f"0-{len(labels) - 1}" + (f"%{settings['slurm_max_parallel']}" if settings["slurm_max_parallel"] else "")
    positional = [str(config.bids_dir), str(config.output_dir)]
    task_cmd = " ".join([*map(shlex.quote, [*cmd, *positional, "participant"]), '--participant-label "$label"',
                         f'--work-dir {shlex.quote(str(config.work_dir / "slurm"))}/"sub-$label"',
                         "--bids-database-dir", shlex.quote(str(config.bids_database_dir)),
                         *[f'"{a}"' if a.startswith("${") else shlex.quote(a) for a in nprocs + user]])
    header = f"# neuroseg {config.version}: written by --slurm-script; submit with {paths['submit']}"
    texts = {
        "participants": "".join(f"{label}\n" for label in labels),
        "array": "\n".join([
            "#!/bin/bash", header,
            f"# The participant level, one participant per array task ({len(labels)}; {paths['participants'].name}).",
            *_sbatch_lines("neuroseg", settings["slurm_cpus"], settings, logs / "neuroseg_%A_%a.out"),
            f"#SBATCH --array={array}", "set -euo pipefail",
            f"mapfile -t participants < {shlex.quote(str(paths['participants']))}",
            'label=${participants[$SLURM_ARRAY_TASK_ID]}', "exec " + task_cmd, ""]),
        "group": "\n".join([
            "#!/bin/bash", header, "# The group level, once every participant of the array has finished.",
            *_sbatch_lines("neuroseg-group", 1, settings, logs / "neuroseg-group_%j.out"), "set -euo pipefail",
            "exec " + " ".join(map(shlex.quote, [*cmd, *positional, "group",
                                                 *option_args(options, drop=("participant_label",))])), ""]),
        "submit": "\n".join([
            "#!/bin/bash", header, "# Arguments are passed to both sbatch calls (e.g. --account=lab --qos=normal).",
            "set -euo pipefail",
            f"array=$(sbatch --parsable \"$@\" {shlex.quote(str(paths['array']))})",
            f'group=$(sbatch --parsable "$@" --dependency=afterok:"${{array%%;*}}" {shlex.quote(str(paths["group"]))})',
            'echo "participant array job ${array%%;*}; group-level job ${group%%;*} (runs after every array task '
            'succeeded)"', ""]),
    }
    from bids_app.outputs import atomic_write_bytes

    try:
        logs.mkdir(parents=True, exist_ok=True)
        for key, text in texts.items():
            atomic_write_bytes(paths[key], text.encode())
            paths[key].chmod(0o755 if key != "participants" else 0o644)
    except OSError as exc:
        raise ConfigError(f"Cannot write the SLURM scripts beside {script} ({exc.strerror or exc}); "
                          "choose a folder you can write to.") from exc
    return paths


def main(config: Config, argv: list[str] | None) -> int:
    """``--slurm-script``: write the scripts, say how to submit them; returns the exit code."""
    from bids_app.errors import NeurosegError

    try:
        paths = write_scripts(config, argv)
    except NeurosegError as exc:
        LOGGER.error("%s", exc)
        return exc.exit_code
    except Exception as exc:  # a bug: the traceback goes to the log file, as in bids_app.cli.main
        LOGGER.error("Unexpected error (%s: %s) while writing the SLURM scripts; this is a bug: please report it "
                     "with the log in output_dir/logs.", type(exc).__name__, exc)
        LOGGER.debug("details", exc_info=True)
        return 1
    n = len(paths["participants"].read_text().split())
    print(f"Wrote the SLURM array job {paths['array']} ({n} participants, one per array task, listed in "
          f"{paths['participants'].name}) and the group-level job {paths['group'].name}. Submit both, the group "
          f"level after every array task succeeded:\n"
          f"  array=$(sbatch --parsable {shlex.quote(str(paths['array']))}) && "
          f"sbatch --dependency=afterok:${{array%%;*}} {shlex.quote(str(paths['group']))}\n"
          f"or run {paths['submit']}.")
    return 0


# --------------------------------------------------------------------------------------- SLURMGraph
_DONE = {"COMPLETED"}
_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
             "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


def graph_tag(run_id: str) -> str:
    return f"neuroseg-{run_id}"


def tag_graph_jobs(config: Config, plugin_args: dict) -> dict:
    """With SLURMGraph, plugin arguments whose ``sbatch_args`` mark every job of this run (``--comment``)."""
    if config.nipype_plugin != "SLURMGraph":
        return plugin_args
    args = dict(plugin_args)
    args["sbatch_args"] = f"{args.get('sbatch_args', '')} --comment={graph_tag(config.run_id)}".strip()
    return args


def _queue(tag: str) -> dict[str, tuple[str, str, str, str]]:
    """``{job id: (state, reason, name, batch script)}`` of this run's jobs, finished ones included."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%r|%j|%k|%o"], capture_output=True,
                         text=True, check=True).stdout
    jobs = {}
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) == 6 and fields[4] == tag:
            jobs[fields[0]] = (fields[1], fields[2], fields[3], fields[5])
    return jobs


def wait_for_graph(config: Config, jobs: dict[str, Job], crash_dir: Path, poll_s: float = 1.0) -> list[Failure]:
    """With SLURMGraph, wait until every job submitted for this run has ended; return the images whose
    jobs SLURM ended without a crash file of their own (time limit, memory, node failure, cancelled).
    Other plugins return at the end of the run: nothing to wait for.

    Jobs left pending on a dependency that can never be satisfied (an upstream node failed, on a
    cluster without ``kill_invalid_depend``) are cancelled.
    """
    from bids_app import failures

    if config.nipype_plugin != "SLURMGraph":
        return []
    tag, seen, last_log = graph_tag(config.run_id), {}, time.monotonic()
    while True:
        queue = _queue(tag)
        seen.update(queue)
        stuck = [j for j, (state, reason, *_) in queue.items() if state == "PENDING" and "NeverSatisfied" in reason]
        if stuck:
            subprocess.run(["scancel", *stuck], capture_output=True)
        live = [j for j, (state, *_) in queue.items() if state not in _TERMINAL]
        if not live:
            break
        if time.monotonic() - last_log > 30:
            LOGGER.info("SLURMGraph: %d of %d job(s) ended.", len(seen) - len(live), len(seen))
            last_log = time.monotonic()
        time.sleep(poll_s)
    LOGGER.info("SLURMGraph: all %d job(s) of this run ended.", len(seen))
    crashed = {f.image for f in failures.from_crash_dir(crash_dir, jobs)}
    found: dict[str, Failure] = {}
    for job_id, (state, reason, name, script) in sorted(seen.items()):
        if state in _DONE:
            continue
        job = next((j for key, j in jobs.items() if re.search(rf"\.{re.escape(key)}[._]", Path(script).name)), None) \
            or Job(participant="n/a", session="n/a", image="n/a", task="n/a")
        if job.image in crashed or job.image in found and job.image != "n/a":
            continue
        err = Path(f"{script}.e")
        found[job.image if job.image != "n/a" else job_id] = job.failed(
            f"SLURM job {job_id} ({name}) ended {state} ({reason})", str(err) if err.is_file() else "n/a")
    return list(found.values())
