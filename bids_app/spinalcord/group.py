"""Group level of the ``spinalcord`` task: ``group_csa.tsv`` (with the cohort drift check), its figure, and
the CSA along the PAM50 template (``group_csa_pam50.tsv``, ``figures/group_csa_pam50.png``).

Cohort drift check (columns ``csa_drift_z``, ``csa_drift_flag`` of ``group_csa.tsv``)
------------------------------------------------------------------------------------
Per vertebral level (rows whose ``level`` is a number; 10 mm slabs are not comparable across people)
and participant, the participant's CSA ``x`` is the mean of ``csa_mean_mm2`` over its images at that level
(contrasts and sessions pooled), and::

    z = (x - mean(others)) / SD(others)        others = the other participants at that level, SD ddof=1

flagged when ``|z| > 3``; n/a with fewer than 4 other participants or when their SD is 0. The participant
is left out of the mean and SD it is compared with: included, the outlier inflates the SD that measures
it, and no value of ``n`` values can be more than ``(n - 1) / sqrt(n)`` sample SD from their mean (Shiffler
1988), which is under 3 for ``n <= 10``: the check could never fire in a small cohort.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pandas as pd

from bids_app.errors import NothingToAggregateError
from bids_app.group import IMAGE_COLUMNS, ROW_COLUMNS, image_columns, participant_tables, save_figure, write_table
from bids_app.spinalcord.measures import LEVEL_COLUMNS, level_name
from bids_app.spinalcord.vertebrae import PAM50_COLUMNS, PAM50_DISC_SLICES
from bids_app.tasks import get_task

LOGGER = logging.getLogger(__name__)

#: Drift check (module docstring): flag above this |z|, computed with at least this many other participants.
DRIFT_Z_LIMIT = 3.0
MIN_OTHERS_FOR_DRIFT = 4

CONTRAST_COLUMN = {"contrast": {"Description": "BIDS suffix of the segmented image (T1w, T2w, T2starw, PDw, MTS)"}}

GROUP_CSA_COLUMNS = {
    **ROW_COLUMNS,
    **CONTRAST_COLUMN,
    **LEVEL_COLUMNS,
    "csa_drift_z": {"Description": "Participant's CSA at this vertebral level (mean over its images) minus the "
                                   "mean of the other participants, in SD of the other participants (ddof=1); n/a "
                                   f"for slabs, with fewer than {MIN_OTHERS_FOR_DRIFT} other participants or when "
                                   "their SD is 0"},
    "csa_drift_flag": {"Description": f"1 when |csa_drift_z| > {DRIFT_Z_LIMIT:g} (the participant's CSA drifts "
                                      "from the cohort at this level), else 0",
                       "Levels": {"0": "not flagged", "1": "flagged"}},
}

GROUP_PAM50_COLUMNS = {**ROW_COLUMNS, **CONTRAST_COLUMN, **PAM50_COLUMNS}

_IMAGE = list(IMAGE_COLUMNS)


def collect_csa(output_dir: Path) -> pd.DataFrame:
    """Concatenate every per-level CSA table under ``output_dir`` into one cohort table."""
    frames = participant_tables(output_dir, "spinalcord", dtype={"level": str}, keep_empty=False)
    if not frames:
        task = get_task("spinalcord")
        raise NothingToAggregateError(
            f"No per-level CSA tables ({task.participant_table.format(label=task.label)}) under {output_dir}; "
            "run the participant level first, with the same output_dir.")
    return pd.concat(frames, ignore_index=True)


def csa_drift(table: pd.DataFrame) -> pd.DataFrame:
    """The drift check of the module docstring on a cohort table (:func:`collect_csa`): one row per
    participant and vertebral level with ``participant_id, level, csa_mm2, others_mean_mm2, others_sd_mm2,
    n_others, csa_drift_z`` (NaN when n/a) and ``csa_drift_flag`` (0/1)."""
    levels = table[table["level"].astype(str).str.fullmatch(r"\d+")]
    per = levels.groupby(["participant_id", "level"], as_index=False)["csa_mean_mm2"].mean()
    rows = []
    for level, group in per.groupby("level", sort=False):
        values = group.set_index("participant_id")["csa_mean_mm2"].astype(float)
        for participant, x in values.items():
            others = values.drop(participant).dropna().to_numpy()
            mean = float(others.mean()) if len(others) else math.nan
            sd = float(others.std(ddof=1)) if len(others) >= 2 else math.nan
            z = math.nan
            # an SD within rounding of 0 (identical others) would turn noise into huge z: n/a, as for MAD = 0
            if len(others) >= MIN_OTHERS_FOR_DRIFT and sd > 1e-9 * max(abs(mean), 1.0) and math.isfinite(x):
                z = (x - mean) / sd
            rows.append({"participant_id": participant, "level": level, "csa_mm2": x, "others_mean_mm2": mean,
                         "others_sd_mm2": sd, "n_others": len(others), "csa_drift_z": z,
                         "csa_drift_flag": int(abs(z) > DRIFT_Z_LIMIT) if math.isfinite(z) else 0})
    columns = ["participant_id", "level", "csa_mm2", "others_mean_mm2", "others_sd_mm2", "n_others",
               "csa_drift_z", "csa_drift_flag"]
    return pd.DataFrame(rows, columns=columns)


def drift_reason(row) -> str:
    """One flagged row of :func:`csa_drift` in words (the group report's reason, the warning's text)."""
    return (f"CSA at {level_name(str(row['level']))} is {abs(row['csa_drift_z']):.1f} SD from the other participants "
            f"({row['csa_mm2']:.1f} vs {row['others_mean_mm2']:.1f} ± {row['others_sd_mm2']:.1f} mm²)")


def add_drift(table: pd.DataFrame, log: bool = True) -> pd.DataFrame:
    """``table`` with the columns ``csa_drift_z`` and ``csa_drift_flag`` (slab rows: n/a and 0); a WARNING
    per flagged participant and level when ``log``."""
    drift = csa_drift(table)
    if log:
        for _, row in drift[drift["csa_drift_flag"] == 1].iterrows():
            LOGGER.warning("group CSA drift: %s: %s, z = %.2f (%d other participants)", row["participant_id"],
                           drift_reason(row), row["csa_drift_z"], row["n_others"])
    merged = table.merge(drift[["participant_id", "level", "csa_drift_z", "csa_drift_flag"]],
                         on=["participant_id", "level"], how="left", validate="many_to_one")
    merged["csa_drift_flag"] = merged["csa_drift_flag"].fillna(0).astype(int)
    return merged


def drift_flags(records: list) -> dict[str, list[str]]:
    """``{record key: [reason, ...]}``: the images (``ImageRecord`` of this task) of every participant and
    level flagged by :func:`csa_drift`, over the cohort of ``records``; used by the group report."""
    if not records:
        return {}
    keys = {image_columns(r): r.key for r in records}
    frames = participant_tables(records[0].output_dir, "spinalcord", dtype={"level": str}, keep_empty=False)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*_IMAGE, "level"])
    table = table[table.set_index(_IMAGE).index.isin(list(keys))]
    drift = csa_drift(table)
    flags: dict[str, list[str]] = {}
    for _, row in drift[drift["csa_drift_flag"] == 1].iterrows():
        images = table[(table["participant_id"] == row["participant_id"]) & (table["level"] == row["level"])]
        for image in dict.fromkeys(images[_IMAGE].itertuples(index=False, name=None)):
            flags.setdefault(keys[image], []).append(drift_reason(row))
    return flags


def collect_pam50(output_dir: Path) -> pd.DataFrame:
    """Every image's CSA per PAM50 template slice (``<prefix>pam50_morph.tsv`` beside its levels table,
    written only when vertebral levels are known), with the image columns first; empty when none."""
    frames = participant_tables(output_dir, "spinalcord", keep_empty=False, table=("pam50", "morph", ".tsv"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(GROUP_PAM50_COLUMNS))


def pam50_profile(table: pd.DataFrame) -> pd.DataFrame:
    """The cohort's CSA per PAM50 slice, over images (one value per image and slice): index ``pam50_slice``,
    columns ``n_images``, ``csa_mean_mm2``, ``csa_sd_mm2`` (ddof=1); only slices with at least 2 images."""
    stats = table.groupby("pam50_slice")["csa_mm2"].agg(n_images="count", csa_mean_mm2="mean", csa_sd_mm2="std")
    return stats[stats["n_images"] >= 2].sort_index()


def plot_pam50(table: pd.DataFrame, path: Path) -> None:
    """Figure: CSA against the PAM50 template slice, one thin line per image, the cohort's mean (black) with
    a ±1 SD band (:func:`pam50_profile`). Superior on the left, as SCT plots it; vertical lines at the PAM50
    discs (:data:`PAM50_DISC_SLICES`), the vertebral level named between its two discs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    groups = list(table.groupby(_IMAGE))
    for _, rows in groups:
        rows = rows.sort_values("pam50_slice")
        ax.plot(rows["pam50_slice"], rows["csa_mm2"], color="0.55", linewidth=0.6, alpha=0.6)
    profile = pam50_profile(table)
    if not profile.empty:
        ax.fill_between(profile.index, profile["csa_mean_mm2"] - profile["csa_sd_mm2"],
                        profile["csa_mean_mm2"] + profile["csa_sd_mm2"], color="tab:blue", alpha=0.25,
                        label="cohort ±1 SD")
        ax.plot(profile.index, profile["csa_mean_mm2"], color="black", linewidth=2,
                label=f"cohort mean ({len(groups)} images)")
    low, high = float(table["pam50_slice"].min()) - 1, float(table["pam50_slice"].max()) + 1
    discs = sorted(PAM50_DISC_SLICES.items())
    for _, z in discs:
        if low <= z <= high:
            ax.axvline(z, color="0.8", linewidth=0.8, zorder=0)
    middles = [((z + below) / 2, level_name(str(n))) for (n, z), (_, below) in zip(discs, discs[1:])
               if low <= (z + below) / 2 <= high]
    ax.set_xticks([m for m, _ in middles], [name for _, name in middles])
    ax.set_xlim(high, low)  # superior (high slice numbers) on the left
    ax.set_xlabel("vertebral level (PAM50 template, superior on the left; lines: discs)")
    ax.set_ylabel("CSA (mm²)")
    ax.set_title("Spinal-cord CSA along the PAM50 template")
    ax.grid(alpha=0.3, axis="y")
    if not profile.empty:
        ax.legend(fontsize=7, loc="best")
    save_figure(fig, path)


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
    groups = list(table.groupby(_IMAGE))
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
    """``group_csa.tsv`` (+ sidecar, drift columns) and ``figures/group_csa.png``; when any image has a PAM50
    table, ``group_csa_pam50.tsv`` (+ sidecar) and ``figures/group_csa_pam50.png`` too."""
    table = add_drift(collect_csa(output_dir))
    tsv = write_table(table, output_dir / get_task("spinalcord").group_table, GROUP_CSA_COLUMNS)
    figure = output_dir / "figures" / "group_csa.png"
    plot_csa(table, figure)
    LOGGER.info("group CSA: %d rows from %d images -> %s", len(table), table["source"].nunique(), tsv)
    written = [tsv, figure]
    pam50 = collect_pam50(output_dir)
    if not pam50.empty:
        written.append(write_table(pam50, output_dir / "group_csa_pam50.tsv", GROUP_PAM50_COLUMNS))
        written.append(output_dir / "figures" / "group_csa_pam50.png")
        plot_pam50(pam50, written[-1])
        LOGGER.info("group CSA along PAM50: %d rows from %d images -> %s", len(pam50),
                    pam50.groupby(_IMAGE).ngroups, written[-2])
    return written
