"""The group report, ``output_dir/group_report.html``: cohort figures, outliers, and one row per image.

Order: the cohort figures of every task; the images flagged as outliers, each with its reason; then per
task a sortable table with one row per image (thumbnail, link to its section of the participant report,
key measures, outlier flags, a pass / fail / uncertain rating kept in the browser and exported as TSV).
The full cohort tables stay in the ``group_*.tsv`` files, which the page links.

Outliers (robust z-score, Iglewicz and Hoaglin 1993)::

    z_i = (x_i - median(x)) / (1.4826 * MAD(x))       MAD = median |x_i - median(x)|

flagged when ``|z_i| > 3.5``, computed per task and measure (the task's ``qc.OUTLIER_MEASURES``) over
the cohort's images, with at least 5 images and MAD > 0 (otherwise nothing is flagged). The median and
MAD are hardly moved by the outliers themselves, unlike mean and SD.

A task's own cohort checks join them: when its qc module defines ``extra_flags(records) -> {record key:
[reason, ...]}``, those reasons are added to the images' flags (after the robust-z ones).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np

from bids_app.config import get_version
from bids_app.outputs import atomic_write_bytes
from bids_app.reports import html
from bids_app.reports.participant import anchor
from bids_app.reports.records import ImageRecord, image_records
from bids_app.tasks import REGISTRY, get_task, load_function

ROBUST_Z_LIMIT = 3.5
MIN_IMAGES_FOR_OUTLIERS = 5


def robust_z(values: dict[str, float]) -> dict[str, float]:
    """``{key: z}`` for the finite values (see the module docstring); ``{}`` when fewer than
    :data:`MIN_IMAGES_FOR_OUTLIERS` values or MAD = 0."""
    finite = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
    if len(finite) < MIN_IMAGES_FOR_OUTLIERS:
        return {}
    x = np.array(list(finite.values()))
    median = float(np.median(x))
    mad = float(np.median(np.abs(x - median)))
    if mad == 0:
        return {}
    return {k: (v - median) / (1.4826 * mad) for k, v in finite.items()}


def outliers(records: list[ImageRecord], summaries: dict[str, dict], measures: dict[str, str]) -> dict[str, list[str]]:
    """``{record key: [reason, ...]}`` of the images whose measures are outliers among ``records``."""
    flags: dict[str, list[str]] = {}
    for measure, name in measures.items():
        values = {r.key: summaries[r.key].get(measure) for r in records}
        median = float(np.median([v for v in values.values() if v is not None and math.isfinite(float(v))] or [math.nan]))
        for key, z in robust_z(values).items():
            if abs(z) > ROBUST_Z_LIMIT:
                flags.setdefault(key, []).append(f"{name} {float(values[key]):.3g} is {abs(z):.1f} robust SD "
                                                 f"{'above' if z > 0 else 'below'} the cohort median {median:.3g}")
    return flags


def task_flags(qc: str, records: list[ImageRecord], summaries: dict[str, dict]) -> dict[str, list[str]]:
    """Every flag of one task's images: :func:`outliers` on the qc module's ``OUTLIER_MEASURES``, then the
    reasons of its optional ``extra_flags(records)`` hook (see the module docstring)."""
    flags = outliers(records, summaries, load_function(f"{qc}.OUTLIER_MEASURES"))
    extra = getattr(importlib.import_module(qc), "extra_flags", None)
    for key, reasons in (extra(records) if extra else {}).items():
        flags.setdefault(key, []).extend(reasons)
    return flags


def _task_table(task: str, records: list[ImageRecord], summaries: dict[str, dict], flags: dict[str, list[str]]) -> str:
    columns = list(next(iter(summaries.values())).keys()) if summaries else []
    head = ["image", "participant", "session", "contrast", *columns, "flags", "rating"]
    rows = []
    for r in records:
        s = summaries[r.key]
        thumb = r.figure("thumb")
        picture = (f"<img class=\"thumb\" src=\"{html.esc(str(thumb))}\" alt=\"{html.esc(r.prefix)}\" loading=\"lazy\">"
                   if r.exists(thumb) else "")
        link = f"{r.participant}.html#{anchor(r)}"
        cells = [f"<td><a href=\"{html.esc(link)}\">{picture}</a></td>",
                 f"<td><a href=\"{html.esc(link)}\">{html.esc(r.participant)}</a></td>",
                 f"<td>{html.esc(r.session or 'n/a')}</td>", f"<td>{html.esc(r.contrast)}</td>",
                 *[f"<td>{html.number(s.get(c))}</td>" for c in columns],
                 f"<td class=\"flag\" data-sort=\"{len(flags.get(r.key, []))}\">"
                 f"{html.esc('; '.join(flags.get(r.key, [])))}</td>",
                 f"<td>{html.rating(r.key, task, r.participant)}</td>"]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th class=\"sortable\">{html.esc(c)}</th>" for c in head)
    return (f"<h2>{html.esc(task)}: {len(records)} image(s)</h2>"
            f"<table class=\"t\"><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def write_group_report(output_dir: Path, written: list[Path], missing: dict[str, list[str]] | None = None,
                       tasks: tuple[str, ...] | None = None) -> Path:
    """``group_report.html`` (see the module docstring); ``written``: the cohort tables and figures of
    this group run; ``missing``: participants without outputs, per task."""
    tasks = tasks or tuple(REGISTRY)
    records = image_records(output_dir, tasks=tasks)
    parts = [f"<h1>neuroseg {html.esc(get_version())}: group report</h1>",
             f"<p class=\"muted\">Derivatives folder: <code>{html.esc(output_dir)}</code>; "
             f"{len({r.participant for r in records})} participant(s), {len(records)} segmented image(s).</p>"]
    figures = [p for p in written if p.suffix == ".png"]
    if figures:
        parts.append("<h2>Cohort</h2><div class=\"figs\">" + "".join(
            html.figure(str(p.relative_to(output_dir)), p.stem.replace("_", " ")) for p in figures) + "</div>")
    tables, flagged = [], []
    for task in tasks:
        mine = [r for r in records if r.task == task]
        if not mine:
            continue
        qc = get_task(task).qc
        summaries = {r.key: load_function(f"{qc}.summary")(r) for r in mine}
        flags = task_flags(qc, mine, summaries)
        flagged += [(task, r, flags[r.key]) for r in mine if r.key in flags]
        tables.append(_task_table(task, mine, summaries, flags))
    parts.append(f"<h2>Outliers ({len(flagged)})</h2>")
    parts.append("".join(f"<div class=\"warn\"><a href=\"{html.esc(f'{r.participant}.html#{anchor(r)}')}\">"
                         f"{html.esc(r.participant)} {html.esc(task)} {html.esc(r.contrast)}</a>: "
                         f"{html.esc('; '.join(reasons))}</div>" for task, r, reasons in flagged)
                 or f"<p class=\"ok\">No image is more than {ROBUST_Z_LIMIT} robust SD from its cohort's median.</p>")
    parts.append("<p><button id=\"export-ratings\" type=\"button\">Export QC ratings (TSV)</button> "
                 "<span class=\"muted\">Ratings are stored in this browser only (localStorage).</span></p>")
    parts += tables
    for task, subjects in (missing or {}).items():
        if subjects:
            parts.append(f"<h2>{html.esc(task)}: {len(subjects)} participant(s) without outputs</h2>"
                         f"<p>{html.esc(' '.join(subjects))} (not run, or failed: see logs/failed.tsv)</p>")
    tsvs = [p for p in written if p.suffix == ".tsv"]
    if tsvs:
        parts.append("<h2>Cohort tables</h2><ul>" + "".join(
            f"<li><a href=\"{html.esc(str(p.relative_to(output_dir)))}\">{html.esc(p.name)}</a> "
            f"(column definitions in <a href=\"{html.esc(str(p.with_suffix('.json').relative_to(output_dir)))}\">"
            f"{html.esc(p.with_suffix('.json').name)}</a>)</li>" for p in tsvs) + "</ul>")
    report = output_dir / "group_report.html"
    atomic_write_bytes(report, html.page("neuroseg group report", "".join(parts), str(output_dir)).encode())
    return report
