"""Group level of the ``ich`` task: ``group_ich.tsv`` and the haemorrhage-volume figure."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from bids_app.errors import NothingToAggregateError
from bids_app.group import IMAGE_COLUMNS, ROW_COLUMNS, participant_tables, save_figure, write_table
from bids_app.tasks import get_task

LOGGER = logging.getLogger(__name__)

#: Columns every row starts with; the volume columns follow, described from the images' own sidecars.
GROUP_ICH_COLUMNS = {
    **ROW_COLUMNS,
    "contrast": {"Description": "BIDS suffix of the segmented image (ct)"},
}


def type_columns(table: pd.DataFrame) -> list[str]:
    """The per-type volume columns of ``table`` (``<type>_volume_ml``), in table order."""
    return [c for c in table.columns if c.endswith("_volume_ml") and c not in ("total_volume_ml",
                                                                                 "intracranial_volume_ml")]


def collect_ich(output_dir: Path) -> tuple[pd.DataFrame, dict]:
    """``(table, column descriptions)``: one row per segmented CT, its volume table plus who and where it
    came from; the descriptions are those of the first image's table sidecar."""
    import json

    from bids_app.reports.records import image_records

    frames = participant_tables(output_dir, "ich")
    if not frames:
        task = get_task("ich")
        raise NothingToAggregateError(
            f"No haemorrhage volume tables ({task.participant_table.format(label=task.label)}) under {output_dir}; "
            "run the participant level with --tasks ich first, with the same output_dir.")
    table = pd.concat(frames, ignore_index=True)
    columns = dict(GROUP_ICH_COLUMNS)
    for record in image_records(output_dir, tasks=("ich",)):
        side = output_dir / record.table.with_suffix(".json")
        described = json.loads(side.read_text()) if side.is_file() else {}
        columns.update({c: described[c] for c in table.columns if c in described and c not in columns})
    ordered = list(IMAGE_COLUMNS) + [c for c in table.columns if c not in IMAGE_COLUMNS]
    return table[ordered], {c: columns[c] for c in ordered if c in columns}


def plot_volumes(table: pd.DataFrame, path: Path) -> None:
    """Total haemorrhage volume of every image, stacked by type (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [f"{s}{'' if t == 'n/a' else ' ' + t}" for s, t in zip(table["participant_id"], table["session_id"])]
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(table) + 3), 4), dpi=120)
    bottom = np.zeros(len(table))
    for column in type_columns(table):
        values = pd.to_numeric(table[column], errors="coerce").fillna(0).to_numpy(float)
        ax.bar(range(len(table)), values, bottom=bottom, label=column[: -len("_volume_ml")])
        bottom += values
    ax.set_xticks(range(len(table)), names, rotation=45 if len(table) > 4 else 0,
                  ha="right" if len(table) > 4 else "center")
    ax.set_ylabel("haemorrhage volume (mL)")
    ax.set_title("Intracranial haemorrhage per image, by type")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)


def aggregate(output_dir: Path) -> list[Path]:
    """``group_ich.tsv`` (+ sidecar) and ``figures/group_ich.png``."""
    table, columns = collect_ich(output_dir)
    tsv = write_table(table, output_dir / get_task("ich").group_table, columns)
    figure = output_dir / "figures" / "group_ich.png"
    plot_volumes(table, figure)
    LOGGER.info("group ich: %d images -> %s", len(table), tsv)
    return [tsv, figure]
