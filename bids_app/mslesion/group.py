"""Group level of the ``mslesion`` task: ``group_lesions.tsv`` and the lesion-load figures."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from bids_app.errors import NothingToAggregateError
from bids_app.group import ROW_COLUMNS, participant_tables, save_figure, write_table
from bids_app.mslesion.regions import DEEP_WHITE_MATTER, INFRATENTORIAL, JUXTACORTICAL, PERIVENTRICULAR, UNASSIGNED
from bids_app.mslesion.report import SUMMARY_COLUMNS
from bids_app.tasks import get_task

LOGGER = logging.getLogger(__name__)

GROUP_LESION_COLUMNS = {
    **ROW_COLUMNS,
    "contrast": {"Description": "BIDS suffix of the segmented image (FLAIR)"},
    **SUMMARY_COLUMNS,
}


def collect_lesions(output_dir: Path) -> pd.DataFrame:
    """One row per segmented FLAIR: its lesion summary table plus who and where it came from."""
    frames = participant_tables(output_dir, "mslesion")
    if not frames:
        task = get_task("mslesion")
        raise NothingToAggregateError(
            f"No lesion summary tables ({task.participant_table.format(label=task.label)}) under {output_dir}; "
            "run the participant level with --tasks mslesion first, with the same output_dir.")
    table = pd.concat(frames, ignore_index=True)
    columns = ["participant_id", "session_id", "source", "contrast"] + [c for c in SUMMARY_COLUMNS if c in table]
    return table[columns]


def plot_lesions(table: pd.DataFrame, load_path: Path, region_path: Path) -> None:
    """Two figures: total lesion volume across the cohort (strip plot over a box plot) and the
    volume per region for every image (stacked bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [f"{s}{'' if t == 'n/a' else ' ' + t}" for s, t in zip(table["participant_id"], table["session_id"])]
    fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
    volumes = table["total_volume_ml"].to_numpy(float)
    ax.boxplot(volumes, widths=0.5, showfliers=False)
    jitter = 1 + 0.08 * np.random.default_rng(0).uniform(-1, 1, len(volumes))
    ax.scatter(jitter, volumes, s=18, zorder=3)
    ax.set_xticks([1], [f"{len(volumes)} images"])
    ax.set_ylabel("total lesion volume (mL)")
    ax.set_title("Lesion load across the cohort")
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, load_path)

    regions = [PERIVENTRICULAR, JUXTACORTICAL, INFRATENTORIAL, DEEP_WHITE_MATTER, UNASSIGNED]
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(table) + 3), 4), dpi=120)
    bottom = np.zeros(len(table))
    for region in regions:
        values = table[f"{region}_volume_ml"].fillna(0).to_numpy(float)
        ax.bar(range(len(table)), values, bottom=bottom, label=region.replace("_", " "))
        bottom += values
    ax.set_xticks(range(len(table)), names, rotation=45 if len(table) > 4 else 0, ha="right" if len(table) > 4 else "center")
    ax.set_ylabel("lesion volume (mL)")
    ax.set_title("Lesion load per region")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, region_path)


def aggregate(output_dir: Path) -> list[Path]:
    """``group_lesions.tsv`` (+ sidecar), ``figures/group_lesions_load.png`` and ``figures/group_lesions_regions.png``."""
    table = collect_lesions(output_dir)
    tsv = write_table(table, output_dir / get_task("mslesion").group_table, GROUP_LESION_COLUMNS)
    figures = [output_dir / "figures" / "group_lesions_load.png", output_dir / "figures" / "group_lesions_regions.png"]
    plot_lesions(table, *figures)
    LOGGER.info("group lesions: %d images -> %s", len(table), tsv)
    return [tsv, *figures]
