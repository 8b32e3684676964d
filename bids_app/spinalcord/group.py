"""Group level of the ``spinalcord`` task: ``group_csa.tsv`` and the CSA-per-level figure."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from bids_app.errors import NothingToAggregateError
from bids_app.group import ROW_COLUMNS, participant_tables, save_figure, write_table
from bids_app.spinalcord.measures import LEVEL_COLUMNS
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


def plot_csa(table: pd.DataFrame, path: Path) -> None:
    """Figure: CSA per vertebral level (or slab) for every image of the cohort, one line per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(table["level"].unique(), key=_level_key)
    position = {level: i for i, level in enumerate(levels)}
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(levels) + 3), 4), dpi=120)
    for (subject, session, source), rows in table.groupby(["participant_id", "session_id", "source"]):
        rows = rows.assign(x=rows["level"].map(position)).sort_values("x")
        name = f"{subject} {'' if session == 'n/a' else session + ' '}{rows['contrast'].iloc[0]}"
        ax.errorbar(rows["x"], rows["csa_mean_mm2"], yerr=rows["csa_std_mm2"], marker="o", capsize=2, label=name)
    ax.set_xticks(range(len(levels)), [_level_name(v) for v in levels], rotation=45 if len(levels) > 8 else 0)
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


def _level_name(level: str) -> str:
    """SCT numbering: 1..7 → C1..C7, 8..19 → T1..T12, 20.. → L1..; slab names are kept."""
    if not level.isdigit():
        return level
    n = int(level)
    if n <= 7:
        return f"C{n}"
    if n <= 19:
        return f"T{n - 7}"
    return f"L{n - 19}"


def aggregate(output_dir: Path) -> list[Path]:
    """``group_csa.tsv`` (+ sidecar) and ``figures/group_csa.png``."""
    table = collect_csa(output_dir)
    tsv = write_table(table, output_dir / get_task("spinalcord").group_table, GROUP_CSA_COLUMNS)
    figure = output_dir / "figures" / "group_csa.png"
    plot_csa(table, figure)
    LOGGER.info("group CSA: %d rows from %d images -> %s", len(table), table["source"].nunique(), tsv)
    return [tsv, figure]
