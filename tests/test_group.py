"""Group level on hand-made derivatives: levels and slabs mixed, sessions, nothing to aggregate."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bids_app import group, outputs
from bids_app.errors import NothingToAggregateError
from bids_app.spinalcord import group as cord_group
from bids_app.spinalcord.measures import level_name


def _write_levels(out, entities, rows):
    rel = outputs.derivative_relpath(entities, "SC", "morph", ".tsv", "levels")
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    source = f"sub-{entities['subject']}/anat/sub-{entities['subject']}_{entities['suffix']}.nii.gz"
    outputs.write_json(path.with_suffix(".json"), outputs.sidecar(source, None, "0.1.0"))


def test_group_table_mixes_levels_and_slabs(tmp_path):
    row = dict(n_slices=3, csa_mean_mm2=70.0, csa_std_mm2=1.0, csa_min_mm2=69.0, csa_max_mm2=71.0)
    _write_levels(tmp_path, {"subject": "01", "suffix": "T2w"}, [dict(level="3", **row), dict(level="2", **row)])
    _write_levels(tmp_path, {"subject": "02", "session": "A", "suffix": "T1w"},
                  [dict(level="z10-20mm", **row), dict(level="z0-10mm", **row)])
    written = group.run_group(tmp_path, ("spinalcord",))
    table = pd.read_csv(tmp_path / "group_csa.tsv", sep="\t", dtype={"level": str})
    assert len(table) == 4
    assert table.loc[table["participant_id"] == "sub-02", "session_id"].tolist() == ["ses-A", "ses-A"]
    assert set(table["contrast"]) == {"T1w", "T2w"}
    assert table["source"].str.startswith("bids:raw:").all()
    assert (tmp_path / "figures" / "group_csa.png") in written
    assert set(json.loads((tmp_path / "group_csa.json").read_text())) >= set(table.columns)
    order = sorted(["z10-20mm", "3", "z0-10mm", "2"], key=cord_group._level_key)
    assert order == ["2", "3", "z0-10mm", "z10-20mm"]


def test_level_names():
    assert [level_name(v) for v in ("2", "7", "8", "19", "20", "z0-10mm")] == \
        ["C2", "C7", "T1", "T12", "L1", "z0-10mm"]


def test_nothing_to_aggregate(tmp_path):
    with pytest.raises(NothingToAggregateError, match="participant level first"):
        group.run_group(tmp_path, ("spinalcord",))


def _write_summary(out, entities, row):
    rel = outputs.derivative_relpath(entities, "lesion", "morph", ".tsv", "summary")
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([row]).to_csv(path, sep="\t", index=False)
    source = f"sub-{entities['subject']}/anat/sub-{entities['subject']}_{entities['suffix']}.nii.gz"
    outputs.write_json(path.with_suffix(".json"), outputs.sidecar(source, None, "0.1.0"))


def test_group_lesion_table_and_figures(tmp_path):
    base = {"lesion_count": 3, "total_volume_ml": 4.5, "mean_volume_ml": 1.5, "median_volume_ml": 1.0,
            "periventricular_count": 2, "periventricular_volume_ml": 4.0, "juxtacortical_count": 1,
            "juxtacortical_volume_ml": 0.5, "infratentorial_count": 0, "infratentorial_volume_ml": 0.0,
            "deep_white_matter_count": 0, "deep_white_matter_volume_ml": 0.0, "unassigned_count": 0,
            "unassigned_volume_ml": 0.0, "min_lesion_mm3": 3.0}
    _write_summary(tmp_path, {"subject": "01", "suffix": "FLAIR"}, base)
    _write_summary(tmp_path, {"subject": "02", "session": "B", "suffix": "FLAIR"}, {**base, "total_volume_ml": 9.0})
    written = group.run_group(tmp_path, ("mslesion",))
    table = pd.read_csv(tmp_path / "group_lesions.tsv", sep="\t", keep_default_na=False)
    assert table["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert table["session_id"].tolist() == ["n/a", "ses-B"] and set(table["contrast"]) == {"FLAIR"}
    assert table["total_volume_ml"].tolist() == [4.5, 9.0]
    assert set(json.loads((tmp_path / "group_lesions.json").read_text())) >= set(table.columns)
    for name in ("group_lesions_load.png", "group_lesions_regions.png"):
        assert (tmp_path / "figures" / name) in written and (tmp_path / "figures" / name).stat().st_size > 1000
    report = (tmp_path / "group_report.html").read_text()
    assert (tmp_path / "group_report.html") in written and '<a href="group_lesions.tsv">' in report
    assert '<img src="figures/group_lesions_regions.png"' in report and "ses-B" in report
    assert "mslesion: 2 image(s)" in report and report.count('class="rating"') == 2
    with pytest.raises(NothingToAggregateError, match="--tasks mslesion"):
        group.run_group(tmp_path / "empty", ("mslesion",))


def test_participants_without_outputs_are_named(tmp_path):
    """The group level leaves out (and names) participants of the dataset that have no outputs."""
    from bids_app.group import participants_without_outputs

    for subject in ("01", "02", "03"):
        (tmp_path / "ds" / f"sub-{subject}" / "anat").mkdir(parents=True)
    done = tmp_path / "out" / "sub-02" / "anat" / "sub-02_label-SC_desc-T2wlevels_morph.tsv"
    done.parent.mkdir(parents=True)
    done.write_text("level\tcsa_mean_mm2\n2\t70\n")
    missing = participants_without_outputs(tmp_path / "out", tmp_path / "ds", ("spinalcord", "mslesion"))
    assert missing == {"spinalcord": ["sub-01", "sub-03"], "mslesion": ["sub-01", "sub-02", "sub-03"]}
    assert participants_without_outputs(tmp_path / "out", None, ("spinalcord",)) == {}
