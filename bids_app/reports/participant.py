"""Participant reports: ``output_dir/sub-<label>.html``, one section per segmented image and task (as fMRIPrep's).

Built from the derivatives alone (tables, sidecars, the QC figures in ``sub-<label>/figures/``) and
the run logs, so a report can be rebuilt at any time without the raw data or a model. Each section
shows the task's figures and measures (the task's ``qc.section``), the model (name, version, sha256),
the inputs used (``Sources``: the segmented image and any companion, e.g. the T1w beside a FLAIR),
the warnings of the runs that mention the image, and the failures of ``logs/failed.tsv``.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

from bids_app.config import get_version
from bids_app.outputs import atomic_write_bytes
from bids_app.reports import html
from bids_app.reports.records import ImageRecord, image_records
from bids_app.tasks import get_task, load_function

LOGGER = logging.getLogger(__name__)

_WARNING = re.compile(r"^\S+ \S+ (WARNING|ERROR) (\S+): (.*)$")


def run_warnings(output_dir: Path) -> list[tuple[str, str]]:
    """``(level, message)`` of every WARNING/ERROR line of the participant-level run logs
    (``logs/neuroseg-participant-*.log``), oldest run first, without repeats."""
    seen, found = set(), []
    for log in sorted((output_dir / "logs").glob("neuroseg-participant-*.log")):
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            match = _WARNING.match(line)
            if match and match.group(3) not in seen:
                seen.add(match.group(3))
                found.append((match.group(1), match.group(3)))
    return found


def failures(output_dir: Path) -> list[dict[str, str]]:
    """Rows of ``logs/failed.tsv`` (empty when the last run had no failure)."""
    path = output_dir / "logs" / "failed.tsv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def anchor(record: ImageRecord) -> str:
    """The HTML id of an image's section (linked from the group report)."""
    return re.sub(r"[^0-9A-Za-z_-]", "_", record.prefix)


def _image_section(record: ImageRecord, warnings: list[tuple[str, str]]) -> str:
    task = get_task(record.task)
    model = record.sidecar.get("Model") or {}
    name = record.source.rsplit("/", 1)[-1]
    mine = [f"{level}: {message}" for level, message in warnings if name in message or record.prefix in message]
    parts = [f"<h2 id=\"{anchor(record)}\">{html.esc(record.task)}: {html.esc(name)}</h2>",
             html.warnings_list(mine),
             load_function(f"{task.qc}.section")(record),
             "<h4>Provenance</h4>",
             html.key_values([("segmented image", record.source),
                              *[("also used", other) for other in record.other_sources],
                              ("model", f"{model.get('Name', 'n/a')} {model.get('Version', '')}".strip()),
                              ("model sha256", model.get("SHA256", "n/a")),
                              ("neuroseg", (record.sidecar.get("GeneratedBy") or {}).get("Version", "n/a"))]),
             f"<p>QC rating: {html.rating(record.key, record.task, record.participant)}</p>"]
    return "".join(parts)


def write_participant_report(output_dir: Path, participant: str, records: list[ImageRecord] | None = None,
                             warnings: list[tuple[str, str]] | None = None,
                             failed: list[dict[str, str]] | None = None) -> Path:
    """``output_dir/<participant>.html`` (``participant`` is ``sub-<label>``)."""
    records = image_records(output_dir, participant) if records is None else records
    warnings = run_warnings(output_dir) if warnings is None else warnings
    failed = [row for row in (failures(output_dir) if failed is None else failed)
              if row.get("participant_id") == participant]
    toc = "".join(f"<li><a href=\"#{anchor(r)}\">{html.esc(r.task)}: {html.esc(r.source.rsplit('/', 1)[-1])}</a></li>"
                  for r in records)
    body = ["<nav><a href=\"group_report.html\">group report</a></nav>",
            f"<h1>neuroseg {html.esc(get_version())}: {html.esc(participant)}</h1>",
            f"<p class=\"muted\">{len(records)} segmented image(s). Figures: R on the left in axial views; "
            "yellow contour = mask; colour = probability. Ratings are kept in this browser and exported from "
            "the group report.</p>",
            f"<ul>{toc}</ul>" if toc else "<p>No segmented image.</p>"]
    if failed:
        body.append("<h2>Failed</h2>" + "".join(
            f"<div class=\"warn\">{html.esc(r.get('task', ''))} {html.esc(r.get('image', ''))}: "
            f"{html.esc(r.get('reason', ''))}</div>" for r in failed))
    body += [_image_section(record, warnings) for record in records]
    path = output_dir / f"{participant}.html"
    atomic_write_bytes(path, html.page(f"neuroseg: {participant}", "".join(body), str(output_dir)).encode())
    return path


def write_participant_reports(output_dir: Path, participants: list[str] | None = None) -> list[Path]:
    """A report for each of ``participants`` (``sub-<label>``; default: everyone with outputs)."""
    records = image_records(output_dir)
    by_participant: dict[str, list[ImageRecord]] = {}
    for record in records:
        by_participant.setdefault(record.participant, []).append(record)
    wanted = sorted(by_participant) if participants is None else sorted(set(participants))
    warnings, failed = run_warnings(output_dir), failures(output_dir)
    written = [write_participant_report(output_dir, p, by_participant.get(p, []), warnings, failed) for p in wanted]
    LOGGER.info("Wrote %d participant report(s) (sub-<label>.html) in %s", len(written), output_dir)
    return written
