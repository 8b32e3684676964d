"""Group level: reads only the participant-level derivatives and writes cohort tables, figures and a report.

No model is loaded and the raw dataset is not read: the source of every row comes from the
``Sources`` field of the participant-level sidecars. Each task's aggregation lives in its package
(``bids_app/<task>/group.py``, named by the registry's ``aggregate``); this module holds what they
share (reading the per-image tables, writing tables and figures) and the report.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from bids_app.errors import NothingToAggregateError
from bids_app.outputs import atomic_write_bytes, write_json
from bids_app.tasks import get_task, load_function

LOGGER = logging.getLogger(__name__)

#: The columns that say where a group row comes from (first in every cohort table).
ROW_COLUMNS = {
    "participant_id": {"Description": "Participant label (sub-<label>)"},
    "session_id": {"Description": "Session label (ses-<label>), n/a without sessions"},
    "source": {"Description": "BIDS URI of the segmented image"},
}
#: The columns that name one image in every cohort table (:func:`image_columns`).
IMAGE_COLUMNS = ("participant_id", "session_id", "source", "contrast")


def image_columns(record) -> tuple[str, str, str, str]:
    """The :data:`IMAGE_COLUMNS` values of one ``ImageRecord``: participant, session (``n/a``), the first
    ``Sources`` entry of its sidecar, contrast."""
    return (record.participant, record.session or "n/a", (record.sidecar.get("Sources") or ["n/a"])[0],
            record.contrast)


def participant_tables(output_dir: Path, task: str, dtype: dict | None = None, keep_empty: bool = True,
                       table: tuple[str, str, str] | None = None) -> list[pd.DataFrame]:
    """Every per-image table of ``task`` under ``output_dir`` (the registry's ``participant_table``, found by
    :func:`~bids_app.reports.records.image_records`), each with ``participant_id``, ``session_id``,
    ``source`` and ``contrast`` inserted first.

    ``table``: ``(desc_extra, suffix, extension)`` of another per-image table beside it (e.g.
    ``("pam50", "morph", ".tsv")``) to read instead; images without one are skipped.

    ``contrast`` is the ``desc`` entity without the table's own suffix (``desc-T2wlevels`` -> ``T2w``);
    ``source`` is the first ``Sources`` entry of the table's sidecar. Empty tables are dropped unless
    ``keep_empty``. Raises nothing: an empty list means nothing to aggregate.
    """
    from bids_app.reports.records import image_records

    frames = []
    for record in image_records(output_dir, tasks=(task,)):
        path = output_dir / (record.output(*table) if table else record.table)
        if table and not path.is_file():
            continue
        frame = pd.read_csv(path, sep="\t", dtype=dtype)
        if frame.empty and not keep_empty:
            continue
        for i, (column, value) in enumerate(zip(IMAGE_COLUMNS, image_columns(record))):
            frame.insert(i, column, value)
        frames.append(frame)
    return frames


def write_table(table: pd.DataFrame, path: Path, columns: dict) -> Path:
    """A cohort table as BIDS TSV (``n/a`` for missing values, 4 decimals) with its JSON sidecar."""
    atomic_write_bytes(path, table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.4f").encode())
    write_json(path.with_suffix(".json"), columns)
    return path


def save_figure(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def participants_without_outputs(output_dir: Path, bids_dir: Path | None, tasks: tuple[str, ...]) -> dict[str, list[str]]:
    """``{task: [sub-<label>, ...]}``: participants of the raw dataset (its ``sub-*`` folders) with
    no group-table input under ``output_dir`` for that task (not run yet, or failed: see
    ``logs/failed.tsv``). Only folder names are read, not the images."""
    if bids_dir is None or not Path(bids_dir).is_dir():
        return {}
    everyone = sorted(p.name for p in Path(bids_dir).glob("sub-*") if p.is_dir())
    missing = {}
    for task in tasks:
        spec = get_task(task)
        pattern = spec.participant_table.format(label=spec.label)
        done = {p for p in everyone if any((output_dir / p).glob("**/" + pattern))}
        missing[task] = [p for p in everyone if p not in done]
    return missing


def run_group(output_dir: Path, tasks: tuple[str, ...], bids_dir: Path | None = None) -> list[Path]:
    """Run every requested task's aggregation; fails if none had anything to aggregate.

    Participants of ``bids_dir`` without outputs are skipped, named in a warning and in the report.
    """
    written, errors = [], []
    for task in tasks:
        try:
            written += load_function(get_task(task).aggregate)(output_dir)
        except NothingToAggregateError as exc:
            errors.append(exc)
    if not written:
        raise errors[0] if errors else NothingToAggregateError(f"Nothing to aggregate in {output_dir}.")
    missing = participants_without_outputs(output_dir, bids_dir, tasks)
    for task, subjects in missing.items():
        if subjects:
            LOGGER.warning("group %s: %d participant(s) have no outputs and are left out: %s (see "
                           "logs/failed.tsv)", task, len(subjects), " ".join(subjects[:20]) +
                           (" ..." if len(subjects) > 20 else ""))
    written.append(write_report(output_dir, written, missing, tuple(tasks)))
    return written


def write_report(output_dir: Path, written: list[Path], missing: dict[str, list[str]] | None = None,
                 tasks: tuple[str, ...] | None = None) -> Path:
    """``group_report.html``: see :mod:`bids_app.reports.group_page`."""
    from bids_app.reports.group_page import write_group_report

    return write_group_report(output_dir, written, missing, tasks)
