"""Group level of the ``spinalcord`` task: ``group_csa.tsv`` and the CSA-per-level figure."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from bids_app.errors import NothingToAggregateError
from bids_app.group import ROW_COLUMNS, participant_tables, save_figure, write_table
from bids_app.spinalcord.measures import LEVEL_COLUMNS, level_name
from bids_app.tasks import get_task

LOGGER = logging.getLogger(__name__)

GROUP_CSA_COLUMNS = {
    **ROW_COLUMNS,
    "contrast": {"Description": "BIDS suffix of the segmented image (T1w, T2w, T2starw, PDw, MTS)"},
    **LEVEL_COLUMNS,
}


def collect_csa(output_dir: Path) -> pd.DataFrame:
    """Concatenate every per-level CSA table under ``output_dir`` into one cohort table."""
    frames = participant_tables(output_dir, "spinalcord", dtype={"level": str}, keep_empty=False)
    if not frames:
        task = get_task("spinalcord")
        raise NothingToAggregateError(
            f"No per-level CSA tables ({task.participant_table.format(label=task.label)}) under {output_dir}; "
            "run the participant level first, with the same output_dir.")
    return pd.concat(frames, ignore_index=True)


def plot_csa(table: pd.DataFrame, path: Path, max_legend: int = 12) -> None:
    """Figure: CSA per vertebral level (or slab) for every image of the cohort.

    Up to ``max_legend`` images: one labelled line each, with the SD over the level's slices as error
    bars. More: one thin grey line per image, the cohort's median per level in black and its
    interquartile range shaded (a legend of hundreds of names helps nobody).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(table["level"].unique(), key=_level_key)
    position = {level: i for i, level in enumerate(levels)}
    groups = list(table.groupby(["participant_id", "session_id", "source", "contrast"]))
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(levels) + 3), 4), dpi=120)
    few = len(groups) <= max_legend
    for (subject, session, _, contrast), rows in groups:
        rows = rows.assign(x=rows["level"].map(position)).sort_values("x")
        if few:
            name = f"{subject} {'' if session == 'n/a' else session + ' '}{contrast}"
            ax.errorbar(rows["x"], rows["csa_mean_mm2"], yerr=rows["csa_std_mm2"], marker="o", capsize=2, label=name)
        else:
            ax.plot(rows["x"], rows["csa_mean_mm2"], color="0.6", linewidth=0.6, alpha=0.5)
    if not few:
        stats = table.assign(x=table["level"].map(position)).groupby("x")["csa_mean_mm2"].quantile([0.25, 0.5, 0.75])
        stats = stats.unstack()
        ax.fill_between(stats.index, stats[0.25], stats[0.75], color="tab:blue", alpha=0.25, label="cohort IQR")
        ax.plot(stats.index, stats[0.5], color="black", linewidth=2, label=f"cohort median ({len(groups)} images)")
    ax.set_xticks(range(len(levels)), [level_name(v) for v in levels], rotation=45 if len(levels) > 8 else 0)
    ax.set_xlabel("vertebral level")
    ax.set_ylabel("CSA (mm²)")
    ax.set_title("Spinal-cord cross-sectional area across the cohort")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, path)


def _level_key(level: str) -> tuple[int, float]:
    """Vertebral levels first (numerically), then slabs ``z<start>-<end>mm`` by their start."""
    if level.isdigit():
        return (0, float(level))
    slab = re.match(r"z(-?[\d.]+)-", level)
    return (1, float(slab.group(1))) if slab else (2, 0.0)


def aggregate(output_dir: Path) -> list[Path]:
    """``group_csa.tsv`` (+ sidecar) and ``figures/group_csa.png``."""
    table = collect_csa(output_dir)
    tsv = write_table(table, output_dir / get_task("spinalcord").group_table, GROUP_CSA_COLUMNS)
    figure = output_dir / "figures" / "group_csa.png"
    plot_csa(table, figure)
    LOGGER.info("group CSA: %d rows from %d images -> %s", len(table), table["source"].nunique(), tsv)
    return [tsv, figure]
