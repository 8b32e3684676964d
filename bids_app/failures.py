"""Failures of a participant-level run: traced from Nipype's crash files to images, listed in one table.

``output_dir/logs/failed.tsv`` has one row per failed image (columns :data:`FAILED_COLUMNS`):
the participant, session, image (path in the raw dataset), task, a one-line reason and the crash
file (``n/a`` when the image was refused before running). It is rewritten by every participant-level
run, with just the header when nothing failed, so it always describes the latest run.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from bids_app.outputs import atomic_write_bytes

LOGGER = logging.getLogger(__name__)

FAILED_COLUMNS = ("participant_id", "session_id", "image", "task", "reason", "crash_file")

#: ``module.Class: message`` at the end of a traceback; our own errors are shown without the class.
_EXCEPTION_LINE = re.compile(r"^(?P<cls>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)?): (?P<msg>.+)$")
_OWN_ERRORS = ("bids_app.", "InputImageError", "NeurosegError")


@dataclass(frozen=True)
class Job:
    """One image processed by one task."""

    participant: str
    session: str
    image: str
    task: str

    def failed(self, reason: str, crash_file: str = "n/a") -> "Failure":
        return Failure(**self.__dict__, reason=reason, crash_file=crash_file)


@dataclass(frozen=True)
class Failure(Job):
    reason: str = ""
    crash_file: str = "n/a"


def reason_from_traceback(text: str) -> str:
    """The last exception line of a traceback, on one line (our own error classes without their name)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line)
        if match and not line.startswith(("File ", "During handling")):
            cls, msg = match.group("cls"), match.group("msg")
            return msg if cls.startswith(_OWN_ERRORS) or cls.split(".")[-1] in _OWN_ERRORS else f"{cls}: {msg}"
    return lines[-1] if lines else "unknown error (see the log file)"


def from_crash_dir(crash_dir: Path, jobs: dict[str, Job]) -> list[Failure]:
    """One :class:`Failure` per image with a crash file in ``crash_dir`` (the first crash of each).

    A crash file names its node (``Node: <workflow>.single_subject_<s>_wf.<task>_<stem>_wf.<node>``);
    the image workflow's part of that name is the key of ``jobs``.
    """
    failures: dict[str, Failure] = {}
    for crash in sorted(Path(crash_dir).glob("crash-*.txt"), key=lambda p: p.stat().st_mtime):
        text = crash.read_text(errors="replace")
        node = next((line[len("Node: "):].strip() for line in text.splitlines() if line.startswith("Node: ")), "")
        parts = node.split(".")
        job = next((jobs[".".join(parts[i:i + 2])] for i in range(len(parts) - 1)
                    if ".".join(parts[i:i + 2]) in jobs), None)
        if job is None:
            job = Job(participant="n/a", session="n/a", image="n/a", task="n/a")
            LOGGER.warning("Crash file %s names no known image (node %r).", crash, node)
        key = f"{job.image}|{job.task}|{node if job.image == 'n/a' else ''}"
        if key not in failures:
            failures[key] = job.failed(f"{parts[-1] if parts else 'node'}: {reason_from_traceback(text)}", str(crash))
    return list(failures.values())


def write_failed_tsv(output_dir: Path, failures: list[Failure]) -> Path:
    """``output_dir/logs/failed.tsv`` (header only when nothing failed); returns its path."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(FAILED_COLUMNS)
    for f in sorted(failures, key=lambda f: (f.participant, f.session, f.image, f.task)):
        one_line = replace(f, reason=" ".join(f.reason.split()))
        writer.writerow([one_line.participant, one_line.session, one_line.image, one_line.task,
                         one_line.reason, one_line.crash_file])
    path = output_dir / "logs" / "failed.tsv"
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path
