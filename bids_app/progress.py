"""Progress of a participant-level run: images and participants done, failed, time left.

Nipype's schedulers (Linear, MultiProc and the batch plugins derived from its distributed base, e.g.
SLURM) call ``plugin_args["status_callback"](node, status)`` in the main process with ``status``
``"start"``, ``"end"`` (also for a cached node, without a ``"start"``) or ``"exception"`` (the
node's dependents are then never run, so a failed node ends its image). :class:`Progress` is that
callback: it counts the finished nodes of each image workflow and shows

- on an interactive terminal, a tqdm bar ``images`` with the participants done and the failures;
- otherwise (CI, SLURM logs, ``-v``), an INFO line through this module's logger at most every
  ``interval_s`` seconds and at 25, 50, 75 and 100 %::

      progress: 12/200 images (7/100 participants) done, 1 failed, 4m12s elapsed, ~31m left

  never a carriage return. On a terminal the same lines go to the log file only (DEBUG).

The interval is ``NEUROSEG_PROGRESS_INTERVAL_S`` (default 30 s). Plugins that submit the whole
graph at once (``*Graph``, DAGMan, SomaFlow, Debug) have no callback: no progress is shown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TextIO

from bids_app.failures import Job

LOGGER = logging.getLogger(__name__)

#: Default seconds between two progress lines when not on a terminal.
DEFAULT_INTERVAL_S = 30.0
#: Fractions of the images at which a line is written whatever the interval.
MILESTONES = (0.25, 0.5, 0.75, 1.0)


def job_key(name: str, jobs: Mapping[str, object]) -> str | None:
    """The key of ``jobs`` (``single_subject_<s>_wf.<task>_<stem>_wf``) inside a node's dotted name."""
    parts = name.split(".")
    for i in range(len(parts) - 1):
        key = f"{parts[i]}.{parts[i + 1]}"
        if key in jobs:
            return key
    return None


def count_nodes(workflow, jobs: Mapping[str, Job]) -> dict[str, int]:
    """Nodes that Nipype will run for each image workflow of ``workflow`` (before it runs).

    Nipype drops non-join IdentityInterface nodes (inputnode/outputnode) from the graph it executes,
    so they never call back and are not counted; nodes with iterables (the app has none) would run
    once per value and are counted once.
    """
    from nipype.interfaces.utility import IdentityInterface
    from nipype.pipeline.engine import Workflow

    counts = dict.fromkeys(jobs, 0)

    def walk(wf, prefix: str) -> None:
        for node in wf._graph.nodes():
            name = f"{prefix}{node.name}"
            if isinstance(node, Workflow):
                walk(node, f"{name}.")
            elif not (isinstance(node.interface, IdentityInterface) and node.iterables is None
                      and not hasattr(node, "joinsource")):
                key = job_key(name, jobs)
                if key is not None:
                    counts[key] += 1

    walk(workflow, "")
    return counts


def supports_status_callback(plugin: str) -> bool:
    """Whether Nipype's plugin ``plugin`` (a name such as ``MultiProc``) calls ``status_callback``."""
    from nipype.pipeline import plugins
    from nipype.pipeline.plugins.base import DistributedPluginBase

    cls = getattr(plugins, f"{plugin}Plugin", None)
    return isinstance(cls, type) and (issubclass(cls, DistributedPluginBase) or cls is plugins.LinearPlugin)


def format_duration(seconds: float, coarse: bool = False) -> str:
    """``42s``, ``4m12s``, ``1h03m``; ``coarse`` drops the seconds above a minute (``31m``)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m" if coarse else f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Counts finished images from Nipype's status callbacks and shows them (see the module doc).

    ``jobs`` maps image-workflow names to :class:`Job`; ``nodes_per_job`` their node counts (an image
    is done when that many of its nodes ended, or failed at its first exception). ``stream`` is where
    the bar goes (default ``sys.stderr``); ``is_tty`` chooses bar or log lines; ``clock`` is
    injectable for tests. Call :meth:`close` once the run is over.
    """

    def __init__(self, jobs: Mapping[str, Job], nodes_per_job: Mapping[str, int], stream: TextIO | None = None,
                 is_tty: bool = False, interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger = LOGGER) -> None:
        self.jobs = dict(jobs)
        self.remaining = {key: max(int(nodes_per_job.get(key, 0)), 1) for key in self.jobs}
        self.is_tty = is_tty
        self.interval_s = interval_s
        self.clock = clock
        self.logger = logger
        self.started = clock()
        self.failed: set[str] = set()
        self.finished: set[str] = set()
        self._ended: set[str] = set()  # node names already counted
        self._images_of: dict[str, set[str]] = {}
        for key, job in self.jobs.items():
            self._images_of.setdefault(job.participant, set()).add(key)
        self._last_line = self.started
        self._milestone = 0  # index into MILESTONES of the next one to report
        self._closed = False
        self.bar = None
        if is_tty:
            from tqdm import tqdm

            self.bar = tqdm(total=len(self.jobs), desc="images", unit="image", file=stream or sys.stderr,
                            dynamic_ncols=True, leave=True, postfix=self._postfix())

    # -- counts --------------------------------------------------------------------------------
    @property
    def images_total(self) -> int:
        return len(self.jobs)

    @property
    def images_done(self) -> int:
        """Images finished or failed."""
        return len(self.finished | self.failed)

    @property
    def participants_total(self) -> int:
        return len(self._images_of)

    @property
    def participants_done(self) -> int:
        """Participants every image of which finished or failed."""
        over = self.finished | self.failed
        return sum(1 for keys in self._images_of.values() if keys <= over)

    def summary(self) -> str:
        """``progress: 12/200 images (7/100 participants) done, 1 failed, 4m12s elapsed, ~31m left``."""
        done, total = self.images_done, self.images_total
        elapsed = self.clock() - self.started
        line = (f"progress: {done}/{total} images ({self.participants_done}/{self.participants_total} "
                f"participants) done, {len(self.failed)} failed, {format_duration(elapsed)} elapsed")
        if 0 < done < total:
            line += f", ~{format_duration(elapsed / done * (total - done), coarse=True)} left"
        return line

    # -- callbacks -----------------------------------------------------------------------------
    def __call__(self, node, status: str) -> None:
        """Nipype's ``status_callback``: never lets an error of the display stop the scheduler."""
        try:
            self.update(node.fullname, status)
        except Exception:  # noqa: BLE001 - a progress display must not break a run
            LOGGER.debug("progress display failed", exc_info=True)

    def update(self, node_fullname: str, status: str) -> None:
        """One callback: ``status`` is ``start``, ``end`` or ``exception``."""
        if self._closed:
            return
        key = job_key(node_fullname, self.jobs)
        changed = False
        if key is not None and key not in self.finished and key not in self.failed:
            if status == "exception":
                self.failed.add(key)
                changed = True
            elif status == "end" and node_fullname not in self._ended:
                self._ended.add(node_fullname)
                self.remaining[key] -= 1
                if self.remaining[key] <= 0:
                    self.finished.add(key)
                    changed = True
        if changed and self.bar is not None:
            self._refresh_postfix()
            self.bar.update(self.images_done - self.bar.n)
        self._maybe_log()

    def close(self) -> None:
        """Write the final line (and close the bar); later callbacks are ignored."""
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self._refresh_postfix()
            self.bar.update(self.images_done - self.bar.n)
            self.bar.close()
        if self._milestone < len(MILESTONES) or self.images_done < self.images_total:
            self._log(self.summary())

    # -- display -------------------------------------------------------------------------------
    def _postfix(self) -> str:
        return f"participants {self.participants_done}/{self.participants_total}, failed {len(self.failed)}"

    def _refresh_postfix(self) -> None:
        self.bar.set_postfix_str(self._postfix(), refresh=False)

    def _log(self, line: str) -> None:
        self._last_line = self.clock()
        # On a terminal the bar shows it: the line goes to the log file (DEBUG) only.
        self.logger.log(logging.DEBUG if self.is_tty else logging.INFO, "%s", line)

    def _maybe_log(self) -> None:
        fraction = self.images_done / self.images_total if self.images_total else 1.0
        crossed = False
        while self._milestone < len(MILESTONES) and fraction >= MILESTONES[self._milestone] - 1e-9:
            self._milestone += 1
            crossed = True
        if crossed or self.clock() - self._last_line >= self.interval_s:
            self._log(self.summary())


def interval_from_env() -> float:
    """``NEUROSEG_PROGRESS_INTERVAL_S`` (seconds between lines when not on a terminal), default 30."""
    try:
        value = float(os.environ.get("NEUROSEG_PROGRESS_INTERVAL_S", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value >= 0 else DEFAULT_INTERVAL_S


@contextlib.contextmanager
def watch(workflow, jobs: Mapping[str, Job], plugin: str, plugin_args: dict,
          verbosity: int = 0) -> Iterator[Progress | None]:
    """Show the progress of ``workflow.run(plugin, plugin_args)`` run inside this block.

    Adds the callback to ``plugin_args`` (unless the plugin has none, or the user gave one). A bar on
    a terminal without ``-v`` (console log lines are then routed around the bar), log lines otherwise.
    """
    if not jobs or "status_callback" in plugin_args or not supports_status_callback(plugin):
        yield None
        return
    is_tty = sys.stderr.isatty() and not verbosity
    progress = Progress(jobs, count_nodes(workflow, jobs), stream=sys.stderr, is_tty=is_tty,
                        interval_s=interval_from_env())
    plugin_args["status_callback"] = progress
    try:
        if is_tty:
            with _console_through_tqdm():
                yield progress
        else:
            yield progress
    finally:
        progress.close()


@contextlib.contextmanager
def _console_through_tqdm() -> Iterator[None]:
    """Route the root logger's console handlers through ``tqdm.write`` (so a log line does not break
    the bar), keeping their level, formatter and filters (tqdm's own ``logging_redirect_tqdm`` drops
    the level: DEBUG lines meant for the log file reached the console)."""
    from tqdm import tqdm

    class TqdmHandler(logging.StreamHandler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                tqdm.write(self.format(record), file=self.stream)
            except Exception:  # noqa: BLE001 - as logging.Handler.emit does
                self.handleError(record)

    root = logging.getLogger()
    original = list(root.handlers)
    replaced = []
    for handler in original:
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout):
            new = TqdmHandler(handler.stream)
            new.setLevel(handler.level)
            new.setFormatter(handler.formatter)
            for log_filter in handler.filters:
                new.addFilter(log_filter)
            handler = new
        replaced.append(handler)
    root.handlers[:] = replaced
    try:
        yield
    finally:
        root.handlers[:] = original
