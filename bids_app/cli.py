"""The BIDS-Apps command line: ``neuroseg bids_dir output_dir {participant,group} [options]``.

Exit codes are listed in :mod:`bids_app.errors` (0 success, 2 usage/config, 3 dataset, 4 model or
device, 5 workflow failure, 6 nothing to aggregate, 1 unexpected).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bids_app import slurm
from bids_app.config import Config, default_models_dir, get_version
from bids_app.errors import ConfigError, ModelError, NeurosegError, WorkflowError
from bids_app.tasks import REGISTRY

LOGGER = logging.getLogger("neuroseg")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):  # aliases once: "-w, --work-dir, --work_dir PATH"
    def _format_action_invocation(self, action):
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        return ", ".join(action.option_strings) + " " + self._format_args(action, action.dest.upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuroseg",
        description="neuroseg: spinal-cord (and more) segmentation and morphometry as a BIDS App.",
        formatter_class=_HelpFormatter,
        epilog="Exit codes: 0 ok, 1 internal error, 2 usage/config, 3 dataset, 4 model/device, "
               "5 workflow failure, 6 nothing to aggregate.",
    )
    parser.add_argument("bids_dir", type=Path, help="root of the BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="derivatives folder (e.g. bids_dir/derivatives/neuroseg)")
    parser.add_argument("analysis_level", choices=["participant", "group"], help="processing stage")
    parser.add_argument("--version", action="version", version=f"neuroseg {get_version()}")
    sel = parser.add_argument_group("selecting data")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", default=[], metavar="LABEL",
                     help="participant labels, with or without 'sub-' (default: all)")
    sel.add_argument("--session-label", "--session_label", nargs="+", default=[], metavar="LABEL",
                     help="session labels, with or without 'ses-'")
    sel.add_argument("--tasks", nargs="+", choices=sorted(REGISTRY), default=["spinalcord"], help="tasks to run")
    sel.add_argument("--bids-filter-file", "--bids_filter_file", type=Path, metavar="FILE",
                     help="JSON mapping task names (or 'all') to pybids filters refining each task's inputs")
    sel.add_argument("--labels-dir", type=Path,
                     help="folder of user labels (disc labels, manual masks); default bids_dir/derivatives/labels")
    sel.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                     help="do not run the BIDS validator")
    sel.add_argument("--bids-database-dir", type=Path,
                     help="folder of the pybids index, to share one across runs on a large dataset (default: "
                          "work_dir/pybids_db); an index is reused only while the dataset is unchanged")
    perf = parser.add_argument_group("performance")
    perf.add_argument("--nprocs", "--n-cpus", "--n_cpus", "--nthreads", type=int, default=len(os.sched_getaffinity(0)),
                      help="parallel processes (default: the CPUs this process may use)")
    perf.add_argument("--omp-nthreads", type=int, default=0, help="threads per process (0: nprocs, at most 8)")
    perf.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                      help="where the networks run; auto uses a GPU when torch sees one")
    perf.add_argument("--nipype-plugin", default="MultiProc",
                      help="Nipype plugin (MultiProc, Linear, SLURM, SLURMGraph, SGE, ...)")
    perf.add_argument("--nipype-plugin-args", type=json.loads, default={},
                      help='JSON of plugin arguments, e.g. \'{"sbatch_args": "-p short"}\'')
    other = parser.add_argument_group("other")
    other.add_argument("-w", "--work-dir", "--work_dir", type=Path, metavar="PATH",
                       help="Nipype work folder (default output_dir/../work)")
    other.add_argument("--models-dir", type=Path, default=None, help="folder of model folders (default: shipped)")
    other.add_argument("--overwrite", action="store_true",
                       help="reprocess images whose outputs are already complete and current (same inputs, "
                            "model sha256 and app version); by default those are skipped")
    other.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    slurm.add_arguments(parser)
    return parser


#: BIDS label rule: letters and digits only (no "-", "_", "/", "." — nothing that can build a path).
_BIDS_LABEL = re.compile(r"[0-9a-zA-Z]+")


def _strip(labels: list[str], prefix: str, option: str) -> tuple[str, ...]:
    """Labels without ``prefix``, each checked against the BIDS label rule before any path is built."""
    stripped = tuple(label[len(prefix):] if label.startswith(prefix) else label for label in labels)
    for label in stripped:
        if not _BIDS_LABEL.fullmatch(label):
            raise ConfigError(f"{option} {label!r} is not a BIDS label (letters and digits only, e.g. "
                              f"{prefix}01 or 01); fix the label.")
    return stripped


def _check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and prove it writable with a probe file (root ignores mode bits,
    a read-only mount does not), so that a run fails now rather than after hours of work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".neuroseg-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"Cannot write to {what} {folder} ({reason}); choose a folder you can write to "
                          "or fix its permissions.") from exc


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU, asked in a subprocess so that this process never imports torch."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def resolve_device(requested: str) -> str:
    """Decide once where the networks run: ``auto`` gives ``cuda`` when a GPU is visible, else ``cpu``."""
    if requested == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if requested == "cuda":
        raise ModelError("--device cuda was requested but torch sees no CUDA GPU; use --device cpu or auto.")
    return "cpu"


def parse_config(argv: list[str] | None = None) -> Config:
    """Parse arguments into a :class:`Config`, refusing unsafe folder combinations."""
    args = build_parser().parse_args(argv)
    bids_dir = args.bids_dir.resolve()
    output_dir = args.output_dir.resolve()
    if not bids_dir.is_dir():
        raise ConfigError(f"bids_dir {bids_dir} does not exist or is not a folder; give the root of a BIDS dataset.")
    if not os.access(bids_dir, os.R_OK | os.X_OK):
        raise ConfigError(f"bids_dir {bids_dir} cannot be read; fix its permissions.")
    participant_label = _strip(args.participant_label, "sub-", "--participant-label")
    session_label = _strip(args.session_label, "ses-", "--session-label")
    if output_dir == bids_dir:
        raise ConfigError("output_dir must differ from bids_dir; use e.g. bids_dir/derivatives/neuroseg.")
    if _inside(output_dir, bids_dir) and not _inside(output_dir, bids_dir / "derivatives"):
        raise ConfigError(f"output_dir {output_dir} is inside bids_dir but not under its derivatives/ folder; "
                          "write derivatives outside the dataset or under bids_dir/derivatives/.")
    work_dir = (args.work_dir or output_dir.parent / "work").resolve()
    if _inside(work_dir, bids_dir) and not _inside(work_dir, bids_dir / "derivatives"):
        raise ConfigError(f"--work-dir {work_dir} is inside bids_dir; put the work folder elsewhere "
                          "(it holds large temporary files).")
    if args.nprocs < 1 or args.omp_nthreads < 0:
        raise ConfigError("--nprocs must be at least 1 and --omp-nthreads at least 0.")
    if _inside(bids_dir, output_dir):
        raise ConfigError(f"output_dir {output_dir} contains bids_dir; choose a folder outside the dataset "
                          "or bids_dir/derivatives/<name>.")
    database_dir = (args.bids_database_dir or work_dir / "pybids_db").resolve()
    if _inside(database_dir, bids_dir) and not _inside(database_dir, bids_dir / "derivatives"):
        raise ConfigError(f"--bids-database-dir {database_dir} is inside bids_dir; put it elsewhere.")
    _check_writable(output_dir, "output_dir")
    try:
        _check_writable(work_dir, "--work-dir")
    except ConfigError:
        if args.analysis_level == "participant":
            raise
        # The group level needs the work dir only for library caches; where the default
        # (output_dir/../work) is not writable, e.g. on a platform, they go to output_dir/logs.
        work_dir = output_dir / "logs" / "work"
    filters = {}
    if args.bids_filter_file is not None:
        from bids_app.bids import read_filter_file

        filters = read_filter_file(args.bids_filter_file)
    labels_dir = (args.labels_dir or bids_dir / "derivatives" / "labels").resolve()
    models_dir = (args.models_dir or default_models_dir()).resolve()
    device = args.device
    if args.analysis_level == "participant" and args.slurm_script is None:  # the jobs decide where they run
        device = resolve_device(args.device)
    return Config(
        bids_dir=bids_dir, output_dir=output_dir, analysis_level=args.analysis_level, work_dir=work_dir,
        participant_label=participant_label, session_label=session_label, bids_database_dir=database_dir,
        overwrite=args.overwrite,
        tasks=tuple(dict.fromkeys(args.tasks)), bids_filters=filters,
        labels_dir=labels_dir if labels_dir.is_dir() else None, device=device, nprocs=args.nprocs,
        omp_nthreads=args.omp_nthreads or min(args.nprocs, 8), nipype_plugin=args.nipype_plugin,
        nipype_plugin_args=args.nipype_plugin_args, models_dir=models_dir,
        skip_bids_validation=args.skip_bids_validation, verbosity=args.verbose,
    )


def setup_logging(verbosity: int, log_file: Path | None = None) -> None:
    """Console: neuroseg at INFO (DEBUG with -v), Nipype only with -v (its crash reports carry
    tracebacks, which belong in the log file, not on the user's console). ``log_file`` gets
    everything at DEBUG, Nipype included, with tracebacks."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    # A log file on a full or vanished disk must not print logging's own tracebacks on the console
    # (the run reports the disk problem in one sentence).
    logging.raiseExceptions = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    console.setLevel(logging.DEBUG if verbosity else logging.INFO)
    root = logging.getLogger()
    root.handlers[:] = [console]
    root.setLevel(logging.DEBUG)
    handlers = [console]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file, delay=True)
        to_file.setFormatter(fmt)
        to_file.setLevel(logging.DEBUG)
        root.addHandler(to_file)
        handlers.append(to_file)
    nipype_level = ("WARNING", "INFO", "DEBUG")[min(verbosity, 2)]
    # Read by the workers (bids_app.interfaces): level, log file, console or not.
    os.environ["NEUROSEG_NIPYPE_LOG_LEVEL"] = nipype_level
    os.environ["NEUROSEG_NIPYPE_CONSOLE"] = "1" if verbosity else "0"
    if log_file is not None:
        os.environ["NEUROSEG_LOG_FILE"] = str(log_file)
    nipype_config.update_config({"logging": {"workflow_level": nipype_level, "interface_level": nipype_level,
                                             "utils_level": nipype_level}})
    nipype_logging.update_logging(nipype_config)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logger = logging.getLogger(name)
        logger.propagate = False
        logger.handlers[:] = [h for h in handlers if h is not console or verbosity]
    # Third-party chatter (pybids' schema notice) stays in the log file.
    for name in ("bidsschematools", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_participant(config: Config) -> None:
    """Build and run the participant-level workflow, isolating failures per image.

    Images whose outputs are complete and current are skipped (unless ``--overwrite``); images that
    fail the header checks, the validator or any node are listed in ``output_dir/logs/failed.tsv``
    and the others finish; then :class:`WorkflowError` (exit 5) is raised if anything failed.
    """
    from bids_app import bids, failures, outputs, progress
    from bids_app.models import verify_model
    from bids_app.workflows import init_bids_app_wf

    for task in config.tasks:
        verify_model(config.models_dir / REGISTRY[task].model, task)  # fail early: missing, corrupt, swapped
    invalid = {} if config.skip_bids_validation else bids.validate_dataset(config.bids_dir)
    layout = bids.load_layout(config.bids_dir, config.bids_database_dir)
    outputs.remove_stale_temporaries(config.output_dir)
    plan = init_bids_app_wf(config, layout, invalid)
    outputs.write_dataset_description(config.output_dir, config.bids_dir, config.version,
                                      {REGISTRY[t].label: REGISTRY[t].description for t in config.tasks},
                                      [pattern for t in config.tasks for pattern in REGISTRY[t].bidsignore])
    crash_dir = config.output_dir / "logs" / "crash" / config.run_id
    found = list(plan.failures)
    if plan.workflow is not None:
        workflow = plan.workflow
        workflow.config["execution"].update({"crashdump_dir": str(crash_dir), "crashfile_format": "txt",
                                             "remove_unnecessary_outputs": False,
                                             "stop_on_first_crash": False,
                                             # Nipype's scheduler sleeps this long between rounds and
                                             # submits only as many nodes per round as slots are free:
                                             # at its default (2 s) a 20-image run sat idle most of
                                             # its 150 s (benchmarks/robustness.py).
                                             "poll_sleep_duration": POLL_SLEEP_S})
        plugin_args = dict(config.nipype_plugin_args)
        if config.nipype_plugin == "MultiProc":
            plugin_args.setdefault("n_procs", config.nprocs)
            # Nipype refuses use_gpu nodes without GPU slots; one model on the GPU at a time.
            plugin_args.setdefault("n_gpu_procs", 1 if config.device == "cuda" else 0)
            plugin_args.setdefault("raise_insufficient", False)
            # Workers forked from a process whose torch/OpenMP/ITK thread pools are already running can
            # deadlock; a fork server starts them from a clean process (hence the __main__ guards).
            plugin_args.setdefault("mp_context", "forkserver")
        plugin_args = slurm.tag_graph_jobs(config, plugin_args)  # SLURMGraph: mark its jobs, waited for below
        LOGGER.info("Running %d image workflow(s) with %s.", len(plan.jobs), config.nipype_plugin)
        # A bar on a terminal, periodic "progress:" lines otherwise (bids_app.progress).
        with progress.watch(workflow, plan.jobs, config.nipype_plugin, plugin_args, config.verbosity):
            try:
                workflow.run(plugin=config.nipype_plugin, plugin_args=plugin_args)
            except RuntimeError as exc:  # some node failed; which ones is read from the crash files
                LOGGER.debug("Nipype: %s", exc)
        found += slurm.wait_for_graph(config, plan.jobs, crash_dir)  # SLURMGraph returns once it submitted
        found += failures.from_crash_dir(crash_dir, plan.jobs)
    table = failures.write_failed_tsv(config.output_dir, found)
    _write_participant_reports(config)
    if found:
        for failure in found:
            LOGGER.error("FAILED %s: %s", failure.image, failure.reason)
        done = len(plan.jobs) - len({f.image for f in found if f.crash_file != "n/a"})
        raise WorkflowError(f"{len(found)} image(s) failed and {max(done, 0)} finished; the failures are listed in "
                            f"{table} (one line each, with the reason; crash reports in {crash_dir}).")
    if not plan.jobs:
        LOGGER.info("Every requested image already has complete, current outputs in %s; nothing to do "
                    "(pass --overwrite to reprocess).", config.output_dir)


def _write_participant_reports(config: Config) -> None:
    """``sub-<label>.html`` of the run's participants (every ``sub-*`` of the dataset when none was
    named; one without segmented images gets a page that says so and lists its failures). A report
    that cannot be built is logged, not fatal: the derivatives are complete without it and the next run
    rebuilds it."""
    from bids_app.reports.participant import write_participant_reports

    wanted = [f"sub-{p}" for p in config.participant_label] or sorted(
        p.name for p in config.bids_dir.glob("sub-*") if p.is_dir())
    try:
        write_participant_reports(config.output_dir, wanted)
    except Exception as exc:  # noqa: BLE001 (the segmentations are written; a report bug must not hide them)
        LOGGER.error("Could not write the participant reports (%s: %s); details in the log file.",
                     type(exc).__name__, exc)
        LOGGER.debug("report traceback", exc_info=True)


#: Seconds between two rounds of Nipype's scheduler (see run_participant).
POLL_SLEEP_S = 0.05

_OS_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied"}


def contain_side_files(work_dir: Path) -> None:
    """Send every library's scratch and cache files into ``work_dir`` and keep them offline.

    Without this a run writes outside ``output_dir`` and the work dir: the multiprocessing
    forkserver's socket folder in ``$TMPDIR``, matplotlib's font cache in ``~/.cache`` (imported by
    MONAI), the BIDS validator's (deno) caches in ``~/.cache/deno`` — and deno checks online for
    updates. Children (workers, the validator) inherit the environment.
    """
    cache = work_dir / ".cache"
    folders = {"TMPDIR": work_dir / "tmp", "XDG_CACHE_HOME": cache, "MPLCONFIGDIR": cache / "matplotlib",
               "DENO_DIR": cache / "deno"}
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder)
    os.environ["DENO_NO_UPDATE_CHECK"] = "1"
    os.environ["NIPYPE_NO_ET"] = "1"  # Nipype's version check online (etelemetry)
    tempfile.tempdir = None  # re-read TMPDIR


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code. No traceback reaches the console: it goes to the log file."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    try:
        config = parse_config(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or usage errors (2)
        return int(exc.code or 0)
    except NeurosegError as exc:
        logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
        LOGGER.error("%s", exc)
        return exc.exit_code
    log_file = config.output_dir / "logs" / f"neuroseg-{config.analysis_level}-{config.run_id}.log"
    try:
        contain_side_files(config.work_dir)
        setup_logging(config.verbosity, log_file)
    except OSError as exc:
        logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
        LOGGER.error("Cannot write the log file %s (%s); free space or fix the permissions of output_dir.",
                     log_file, exc.strerror or exc)
        return ConfigError.exit_code
    if slurm.script_requested(argv):  # --slurm-script: write the array job and its group job, run nothing
        return slurm.main(config, argv)
    if config.analysis_level == "participant":
        LOGGER.log(logging.WARNING if config.device == "cpu" else logging.INFO,
                   "Networks run on %s%s.", config.device,
                   " (no GPU visible to torch; expect slower inference)" if config.device == "cpu" else "")
    try:
        config.save()
        if config.analysis_level == "participant":
            run_participant(config)
        else:
            from bids_app.group import run_group

            run_group(config.output_dir, config.tasks, config.bids_dir)
    except NeurosegError as exc:
        LOGGER.error("%s", exc)
        LOGGER.debug("details", exc_info=True)
        return exc.exit_code
    except OSError as exc:
        if exc.errno in _OS_ERRORS:
            LOGGER.error("Cannot write %s: %s; free space or fix the permissions, then rerun (finished images "
                         "are kept).", exc.filename or "an output", _OS_ERRORS[exc.errno])
            LOGGER.debug("details", exc_info=True)
            return ConfigError.exit_code
        return _internal_error(exc, log_file)
    except Exception as exc:  # a bug: the traceback goes to the log file for the report
        return _internal_error(exc, log_file)
    LOGGER.info("neuroseg %s finished the %s level.", config.version, config.analysis_level)
    return 0


def _internal_error(exc: Exception, log_file: Path) -> int:
    logging.getLogger("neuroseg.traceback").debug("Unexpected error", exc_info=True)
    LOGGER.error("Unexpected error (%s: %s); this is a bug: please report it with the log %s.",
                 type(exc).__name__, exc, log_file)
    return 1
