"""Group level: reads only the participant-level derivatives and writes cohort tables and figures.

No model is loaded and the raw dataset is not read: the source of every row comes from the
``Sources`` field of the participant-level sidecars.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd

from bids_app.errors import NothingToAggregateError
from bids_app.measures import LEVEL_COLUMNS
from bids_app.outputs import atomic_write_bytes, write_json
from bids_app.tasks import get_task

LOGGER = logging.getLogger(__name__)

GROUP_CSA_COLUMNS = {
    "participant_id": {"Description": "Participant label (sub-<label>)"},
    "session_id": {"Description": "Session label (ses-<label>), n/a without sessions"},
    "source": {"Description": "BIDS URI of the segmented image"},
    "contrast": {"Description": "BIDS suffix of the segmented image (T1w, T2w, T2starw, PDw, MTS)"},
    **LEVEL_COLUMNS,
}
_ENTITY = re.compile(r"(sub|ses|desc)-([a-zA-Z0-9]+)")

#: Per task, the participant-level table each group row comes from (file-name glob; ``{label}`` is the task's label).
SOURCE_TABLES = {"spinalcord": "*_label-{label}_desc-*levels_morph.tsv",
                 "mslesion": "*_label-{label}_desc-*summary_morph.tsv"}


def collect_csa(output_dir: Path, label: str) -> pd.DataFrame:
    """Concatenate every per-level CSA table under ``output_dir`` into one cohort table."""
    frames = []
    for tsv in sorted(output_dir.glob("sub-*/**/" + SOURCE_TABLES["spinalcord"].format(label=label))):
        entities = dict(_ENTITY.findall(tsv.name))
        sidecar = json.loads(tsv.with_suffix(".json").read_text()) if tsv.with_suffix(".json").is_file() else {}
        table = pd.read_csv(tsv, sep="\t", dtype={"level": str})
        if table.empty:
            continue
        table.insert(0, "participant_id", f"sub-{entities['sub']}")
        table.insert(1, "session_id", f"ses-{entities['ses']}" if "ses" in entities else "n/a")
        table.insert(2, "source", (sidecar.get("Sources") or ["n/a"])[0])
        table.insert(3, "contrast", entities["desc"][: -len("levels")])
        frames.append(table)
    if not frames:
        raise NothingToAggregateError(
            f"No per-level CSA tables (*_label-{label}_desc-*levels_morph.tsv) under {output_dir}; "
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
    _save_figure(fig, path)


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


def aggregate_spinalcord(output_dir: Path) -> list[Path]:
    """``group_csa.tsv`` (+ sidecar) and ``figures/group_csa.png``."""
    task = get_task("spinalcord")
    table = collect_csa(output_dir, task.label)
    tsv = output_dir / task.group_table
    atomic_write_bytes(tsv, table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.4f").encode())
    write_json(tsv.with_suffix(".json"), GROUP_CSA_COLUMNS)
    figure = output_dir / "figures" / "group_csa.png"
    plot_csa(table, figure)
    LOGGER.info("group CSA: %d rows from %d images -> %s", len(table), table["source"].nunique(), tsv)
    return [tsv, figure]


# ------------------------------------------------------------------------------------------ lesions
def collect_lesions(output_dir: Path, label: str) -> pd.DataFrame:
    """One row per segmented FLAIR: its lesion summary table plus who and where it came from."""
    from bids_app.lesions import SUMMARY_COLUMNS

    frames = []
    for tsv in sorted(output_dir.glob("sub-*/**/" + SOURCE_TABLES["mslesion"].format(label=label))):
        entities = dict(_ENTITY.findall(tsv.name))
        sidecar = json.loads(tsv.with_suffix(".json").read_text()) if tsv.with_suffix(".json").is_file() else {}
        table = pd.read_csv(tsv, sep="\t")
        table.insert(0, "participant_id", f"sub-{entities['sub']}")
        table.insert(1, "session_id", f"ses-{entities['ses']}" if "ses" in entities else "n/a")
        table.insert(2, "source", (sidecar.get("Sources") or ["n/a"])[0])
        table.insert(3, "contrast", entities["desc"][: -len("summary")])
        frames.append(table)
    if not frames:
        raise NothingToAggregateError(
            f"No lesion summary tables (*_label-{label}_desc-*summary_morph.tsv) under {output_dir}; "
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

    from bids_app.lesions import DEEP_WHITE_MATTER, INFRATENTORIAL, JUXTACORTICAL, PERIVENTRICULAR, UNASSIGNED

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
    _save_figure(fig, load_path)

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
    _save_figure(fig, region_path)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    import io

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def aggregate_mslesion(output_dir: Path) -> list[Path]:
    """``group_lesions.tsv`` (+ sidecar), ``figures/group_lesions_load.png`` and ``figures/group_lesions_regions.png``."""
    from bids_app.lesions import SUMMARY_COLUMNS

    task = get_task("mslesion")
    table = collect_lesions(output_dir, task.label)
    tsv = output_dir / task.group_table
    atomic_write_bytes(tsv, table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.4f").encode())
    write_json(tsv.with_suffix(".json"), {**{k: v for k, v in GROUP_CSA_COLUMNS.items()
                                             if k in ("participant_id", "session_id", "source")},
                                          "contrast": {"Description": "BIDS suffix of the segmented image (FLAIR)"},
                                          **SUMMARY_COLUMNS})
    figures = [output_dir / "figures" / "group_lesions_load.png", output_dir / "figures" / "group_lesions_regions.png"]
    plot_lesions(table, *figures)
    LOGGER.info("group lesions: %d images -> %s", len(table), tsv)
    return [tsv, *figures]


#: Group-level aggregation per task.
AGGREGATORS = {"spinalcord": aggregate_spinalcord, "mslesion": aggregate_mslesion}


def participants_without_outputs(output_dir: Path, bids_dir: Path | None, tasks: tuple[str, ...]) -> dict[str, list[str]]:
    """``{task: [sub-<label>, ...]}``: participants of the raw dataset (its ``sub-*`` folders) with
    no group-table input under ``output_dir`` for that task (not run yet, or failed: see
    ``logs/failed.tsv``). Only folder names are read, not the images."""
    if bids_dir is None or not Path(bids_dir).is_dir():
        return {}
    everyone = sorted(p.name for p in Path(bids_dir).glob("sub-*") if p.is_dir())
    missing = {}
    for task in tasks:
        label = get_task(task).label
        done = {p for p in everyone if any((output_dir / p).glob("**/" + SOURCE_TABLES[task].format(label=label)))}
        missing[task] = [p for p in everyone if p not in done]
    return missing


def run_group(output_dir: Path, tasks: tuple[str, ...], bids_dir: Path | None = None) -> list[Path]:
    """Run every requested task's aggregation; fails if none had anything to aggregate.

    Participants of ``bids_dir`` without outputs are skipped, named in a warning and in the report.
    """
    written, errors = [], []
    for task in tasks:
        try:
            written += AGGREGATORS[task](output_dir)
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
    written.append(write_report(output_dir, written, missing))
    return written


def write_report(output_dir: Path, written: list[Path], missing: dict[str, list[str]] | None = None) -> Path:
    """``group_report.html``: every cohort table written by this run (as HTML tables) and its figures.

    Self-contained apart from the figures, which it links relative to ``output_dir`` so that the
    folder can be moved or shared as a whole.
    """
    import html

    from bids_app.config import get_version

    parts = [f"<h1>neuroseg {html.escape(get_version())}: group report</h1>",
             f"<p>Derivatives folder: <code>{html.escape(str(output_dir))}</code></p>"]
    for path in written:
        rel = html.escape(str(path.relative_to(output_dir)))
        if path.suffix == ".tsv":
            table = pd.read_csv(path, sep="\t", keep_default_na=False)
            parts.append(f"<h2>{rel}</h2><p>{len(table)} rows; column definitions in the .json sidecar.</p>")
            parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, classes="t"))
        elif path.suffix == ".png":
            parts.append(f"<h3>{rel}</h3><img src=\"{rel}\" alt=\"{rel}\">")
    for task, subjects in (missing or {}).items():
        if subjects:
            parts.append(f"<h2>{html.escape(task)}: {len(subjects)} participant(s) without outputs</h2>"
                         f"<p>{html.escape(' '.join(subjects))} (not run, or failed: see logs/failed.tsv)</p>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table.t{border-collapse:collapse;font-size:12px}"
             "table.t td,table.t th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}")
    report = output_dir / "group_report.html"
    atomic_write_bytes(report, (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>neuroseg group report"
                                f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n").encode())
    return report
