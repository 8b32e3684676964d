"""Command-line errors and their documented exit codes."""

from __future__ import annotations

import json
import shutil

import pytest

from bids_app.cli import build_parser, main, parse_config
from bids_app.errors import ConfigError


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("neuroseg ")


def test_labels_are_stripped_and_paths_absolute(small_bids, tmp_path):
    config = parse_config([str(small_bids), str(tmp_path / "out"), "group", "--participant-label", "sub-01", "02",
                           "--session-label", "ses-A"])
    assert config.participant_label == ("01", "02")
    assert config.session_label == ("A",)
    assert config.output_dir.is_absolute() and config.work_dir == (tmp_path / "work").resolve()
    assert config.tasks == ("spinalcord",)


def test_output_equal_to_input_is_refused(small_bids):
    with pytest.raises(ConfigError, match="must differ"):
        parse_config([str(small_bids), str(small_bids), "participant", "--device", "cpu"])
    assert main([str(small_bids), str(small_bids), "participant", "--device", "cpu"]) == 2


def test_output_inside_input_only_under_derivatives(small_bids):
    with pytest.raises(ConfigError, match="derivatives"):
        parse_config([str(small_bids), str(small_bids / "sub-01" / "out"), "group"])
    config = parse_config([str(small_bids), str(small_bids / "derivatives" / "neuroseg"), "group"])
    assert config.output_dir == (small_bids / "derivatives" / "neuroseg").resolve()


def test_work_dir_inside_input_is_refused(small_bids, tmp_path):
    with pytest.raises(ConfigError, match="work"):
        parse_config([str(small_bids), str(tmp_path / "out"), "group", "-w", str(small_bids / "work")])


def test_missing_bids_dir_and_unknown_task(tmp_path):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out"), "group"]) == 2
    assert main([str(tmp_path), str(tmp_path / "out"), "group", "--tasks", "nosuchtask"]) == 2


def test_task_choices_come_from_the_registry():
    from bids_app.tasks import REGISTRY

    action = next(a for a in build_parser()._actions if a.dest == "tasks")
    assert sorted(action.choices) == sorted(REGISTRY)


def test_unknown_participant_exits_3(small_bids, tmp_path):
    code = main([str(small_bids), str(tmp_path / "out"), "participant", "--participant-label", "99",
                 "--device", "cpu", "--skip-bids-validation", "-w", str(tmp_path / "w")])
    assert code == 3


def test_no_matching_input_exits_3(small_bids, tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"spinalcord": {"suffix": "FLAIR"}}))
    code = main([str(small_bids), str(tmp_path / "out"), "participant", "--bids-filter-file", str(filters),
                 "--device", "cpu", "--skip-bids-validation", "-w", str(tmp_path / "w")])
    assert code == 3


def test_missing_model_exits_4(small_bids, tmp_path):
    (tmp_path / "models").mkdir()
    code = main([str(small_bids), str(tmp_path / "out"), "participant", "--models-dir", str(tmp_path / "models"),
                 "--device", "cpu", "--skip-bids-validation", "-w", str(tmp_path / "w")])
    assert code == 4


def test_invalid_dataset_exits_3(small_bids, tmp_path):
    """An error the validator places outside any participant's folder condemns the dataset."""
    broken = tmp_path / "broken"
    shutil.copytree(small_bids, broken)
    (broken / "nonsense.txt").write_text("x")
    code = main([str(broken), str(tmp_path / "out"), "participant", "--device", "cpu", "-w", str(tmp_path / "w")])
    assert code == 3


def test_group_with_nothing_to_aggregate_exits_6(small_bids, tmp_path):
    assert main([str(small_bids), str(tmp_path / "empty"), "group"]) == 6


def test_config_is_saved_with_every_run(small_bids, tmp_path):
    main([str(small_bids), str(tmp_path / "out"), "group"])
    saved = list((tmp_path / "out" / "logs").glob("config-*.json"))
    assert len(saved) == 1
    assert json.loads(saved[0].read_text())["analysis_level"] == "group"
