"""Group level of the cord task on hand-made derivatives: the cohort drift check (leave-one-out z per
vertebral level), its place in the group report, and the CSA along the PAM50 template."""

from __future__ import annotations

import json
import logging
import math

import pandas as pd
import pytest

from bids_app import group, outputs
from bids_app.reports import group_page
from bids_app.reports.records import image_records
from bids_app.spinalcord import group as cord_group
from bids_app.spinalcord import qc

ROW = dict(n_slices=5, csa_std_mm2=1.0, csa_min_mm2=60.0, csa_max_mm2=90.0, csa_binary_mean_mm2=70.0)
#: Level-3 CSA of the six ordinary participants: mean 75, SD (ddof=1) sqrt(2.5 / 5) = 0.7071.
NORMAL_C3 = (74.0, 75.0, 76.0, 75.0, 74.5, 75.5)


def _write(out, subject, suffix, desc_extra, rows):
    entities = {"subject": subject, "suffix": suffix}
    path = out / outputs.derivative_relpath(entities, "SC", "morph", ".tsv", desc_extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    source = f"sub-{subject}/anat/sub-{subject}_{suffix}.nii.gz"
    outputs.write_json(path.with_suffix(".json"), outputs.sidecar(source, None, "0.1.0"))


def _levels(out, subject, suffix, csa_by_level):
    _write(out, subject, suffix, "levels", [dict(level=level, csa_mean_mm2=csa, **ROW) for level, csa in csa_by_level.items()])


@pytest.fixture
def cohort(tmp_path):
    """sub-01..06 ordinary at C2 and C3; sub-07 at C3 = 55 (two images, 54 and 56, pooled); C4 known for
    four participants only (sub-04 far off); sub-08..12 with slabs only (sub-12 far off)."""
    for i, c3 in enumerate(NORMAL_C3, start=1):
        extra = {"4": 20.0 if i == 4 else 70.0} if i <= 4 else {}
        _levels(tmp_path, f"{i:02d}", "T2w", {"2": 76.0 + (i % 3) * 0.5, "3": c3, **extra})
    _levels(tmp_path, "07", "T1w", {"2": 76.5, "3": 54.0})
    _levels(tmp_path, "07", "T2w", {"2": 76.5, "3": 56.0})
    for i, slab in zip(range(8, 13), (75.0, 75.5, 74.5, 75.0, 20.0)):
        _levels(tmp_path, f"{i:02d}", "T2w", {"z0-10mm": slab})
    return tmp_path


def test_drift_flags_exactly_the_outlier_and_level(cohort, caplog):
    table = cord_group.collect_csa(cohort)
    drift = cord_group.csa_drift(table).set_index(["participant_id", "level"])
    flagged = drift[drift["csa_drift_flag"] == 1]
    assert flagged.index.tolist() == [("sub-07", "3")]
    expected = (55.0 - 75.0) / math.sqrt(2.5 / 5)  # others: mean 75, SD over the six ordinary values
    row = drift.loc[("sub-07", "3")]
    assert row["csa_mm2"] == pytest.approx(55.0) and row["n_others"] == 6
    assert row["csa_drift_z"] == pytest.approx(expected) and row["csa_drift_z"] == pytest.approx(-28.284, abs=1e-3)
    # sub-01 at C3 against the other five ordinary participants and sub-07
    others = [75.0, 76.0, 75.0, 74.5, 75.5, 55.0]
    mean = sum(others) / 6
    sd = math.sqrt(sum((v - mean) ** 2 for v in others) / 5)
    assert drift.loc[("sub-01", "3"), "csa_drift_z"] == pytest.approx((74.0 - mean) / sd)
    # C4: 3 other participants only -> n/a, sub-04's 20 mm² included
    assert drift.xs("4", level="level")["csa_drift_z"].isna().all()
    assert (drift.xs("4", level="level")["csa_drift_flag"] == 0).all()
    assert not any(str(level).startswith("z") for _, level in drift.index)  # slabs are never compared

    with caplog.at_level(logging.WARNING, logger="bids_app.spinalcord.group"):
        written = group.run_group(cohort, ("spinalcord",))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == cord_group.__name__]
    assert len(warnings) == 1
    assert "sub-07" in warnings[0] and "CSA at C3 is 28.3 SD" in warnings[0] and "55.0 vs 75.0 ± 0.7" in warnings[0]

    out = pd.read_csv(cohort / "group_csa.tsv", sep="\t", dtype={"level": str})
    assert (cohort / "group_csa.tsv") in written
    hits = out[out["csa_drift_flag"] == 1]
    assert sorted(zip(hits["participant_id"], hits["contrast"], hits["level"])) == [
        ("sub-07", "T1w", "3"), ("sub-07", "T2w", "3")]  # both images of the participant carry its z
    assert hits["csa_drift_z"].tolist() == pytest.approx([expected] * 2, abs=1e-4)
    slabs = out[out["level"].str.startswith("z")]
    assert len(slabs) == 5 and slabs["csa_drift_z"].isna().all() and (slabs["csa_drift_flag"] == 0).all()
    assert out.loc[out["level"] == "4", "csa_drift_z"].isna().all()
    assert out["csa_drift_flag"].isin([0, 1]).all() and out["csa_drift_flag"].sum() == 2
    columns = json.loads((cohort / "group_csa.json").read_text())
    assert set(columns) == set(out.columns)
    assert "other participants" in columns["csa_drift_z"]["Description"]


def test_identical_others_give_no_z(tmp_path):
    """SD 0 among the others (copies of one participant): n/a, as the robust z does with MAD = 0."""
    for i in range(1, 7):
        _levels(tmp_path, f"{i:02d}", "T2w", {"3": 75.1234 if i < 6 else 40.0})
    drift = cord_group.csa_drift(cord_group.collect_csa(tmp_path)).set_index("participant_id")
    assert math.isnan(drift.loc["sub-06", "csa_drift_z"]) and drift["csa_drift_flag"].sum() == 0
    others = [75.1234] * 4 + [40.0]  # sub-01 against sub-02..05 and sub-06
    mean = sum(others) / 5
    sd = math.sqrt(sum((v - mean) ** 2 for v in others) / 4)
    assert drift.loc["sub-01", "csa_drift_z"] == pytest.approx((75.1234 - mean) / sd)


def test_report_lists_the_drifting_images_with_their_reason(cohort):
    records = image_records(cohort, tasks=("spinalcord",))
    summaries = {r.key: qc.summary(r) for r in records}
    flags = group_page.task_flags(qc.__name__, records, summaries)
    reason = "CSA at C3 is 28.3 SD from the other participants (55.0 vs 75.0 ± 0.7 mm²)"
    by_image = {(r.participant, r.contrast): flags.get(r.key) for r in records}
    assert by_image[("sub-07", "T1w")] == [reason] and by_image[("sub-07", "T2w")] == [reason]
    assert [k for k, v in by_image.items() if v] == [("sub-07", "T1w"), ("sub-07", "T2w")]
    group.run_group(cohort, ("spinalcord",))
    page = (cohort / "group_report.html").read_text()
    assert "Outliers (2)" in page
    assert f"sub-07 spinalcord T1w</a>: {reason}" in page and f"sub-07 spinalcord T2w</a>: {reason}" in page


def _pam50(out, subject, slices, csa):
    rows = [dict(pam50_slice=s, pam50_z_mm=2.0 * s, vertlevel=2 if s >= 227 else 3, n_slices=2, csa_mm2=c,
                 csa_binary_mm2=c + 1.0) for s, c in zip(slices, csa)]
    _write(out, subject, "T2w", "pam50", rows)


def test_csa_along_pam50_table_profile_and_figure(tmp_path, monkeypatch):
    for subject in ("01", "02"):
        _levels(tmp_path, subject, "T2w", {"2": 75.0, "3": 74.0})
    _pam50(tmp_path, "01", range(220, 231), [70.0 + k for k in range(11)])  # 70 .. 80 on slices 220 .. 230
    _pam50(tmp_path, "02", range(224, 235), [60.0 + 2 * k for k in range(11)])  # 60 .. 80 on slices 224 .. 234
    seen = {}
    real_save = cord_group.save_figure

    def spy(fig, path):
        ax = fig.axes[0]
        seen[path.name] = (ax.get_xlim(), [float(t) for t in ax.get_xticks()],
                           [t.get_text() for t in ax.get_xticklabels()])
        real_save(fig, path)

    monkeypatch.setattr(cord_group, "save_figure", spy)
    written = group.run_group(tmp_path, ("spinalcord",))
    tsv, png = tmp_path / "group_csa_pam50.tsv", tmp_path / "figures" / "group_csa_pam50.png"
    assert tsv in written and png in written
    table = pd.read_csv(tsv, sep="\t")
    assert len(table) == 22 and table.columns[:4].tolist() == ["participant_id", "session_id", "source", "contrast"]
    assert table["participant_id"].value_counts().to_dict() == {"sub-01": 11, "sub-02": 11}
    assert table["source"].str.startswith("bids:raw:sub-0").all() and set(table["contrast"]) == {"T2w"}
    assert set(json.loads(tsv.with_suffix(".json").read_text())) == set(table.columns)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    profile = cord_group.pam50_profile(table)
    assert profile.index.tolist() == list(range(224, 231))  # slices with both images only
    # slice 227: sub-01 77 (70 + 7), sub-02 66 (60 + 2 * 3)
    assert profile.loc[227, "csa_mean_mm2"] == pytest.approx((77.0 + 66.0) / 2)
    assert profile.loc[227, "csa_sd_mm2"] == pytest.approx(abs(77.0 - 66.0) / math.sqrt(2))
    assert (profile["n_images"] == 2).all()
    xlim, ticks, labels = seen["group_csa_pam50.png"]
    assert xlim[0] > xlim[1]  # superior on the left
    assert ticks == [231.0, 222.5] and labels == ["C2", "C3"]  # vertebrae C2 (235-227) and C3 (227-218)


def test_no_pam50_tables_no_pam50_outputs(cohort):
    written = group.run_group(cohort, ("spinalcord",))
    assert not (cohort / "group_csa_pam50.tsv").exists() and not (cohort / "figures" / "group_csa_pam50.png").exists()
    assert [p.name for p in written] == ["group_csa.tsv", "group_csa.png", "group_report.html"]
    assert cord_group.collect_pam50(cohort).empty


def test_pam50_disc_slices_are_the_template_discs():
    discs = cord_group.PAM50_DISC_SLICES
    assert (discs[2], discs[3], discs[9]) == (235, 227, 173) and list(discs) == list(range(2, 20))
    assert all(a > b for a, b in zip(list(discs.values()), list(discs.values())[1:]))  # superior first
