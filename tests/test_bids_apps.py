"""BIDS-Apps conventions: positional ``bids_dir output_dir analysis_level``, ``--version``, the exit
codes, the underscore spellings older tooling sends (``--participant_label``, ``--work_dir``, ...) as
aliases of the hyphenated options, and derivatives the official validator accepts (``.bidsignore``
lists every file that is not BIDS)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bids_app.bids import validate_dataset
from bids_app.cli import build_parser
from bids_app.config import get_version
from bids_app.synthetic import make_dataset
from tests.helpers import ENTRY_POINTS, assert_clean_console, run_app

NEUROSEG = ENTRY_POINTS["neuroseg"]
#: (underscore alias, hyphenated option, arguments): the conventional names of fMRIPrep, MRIQC and the
#: BIDS-Apps example, each parsed to the same value as the primary spelling.
ALIASES = [
    ("--participant_label", "--participant-label", ["01", "02"]),
    ("--session_label", "--session-label", ["A"]),
    ("--bids_filter_file", "--bids-filter-file", ["f.json"]),
    ("--skip_bids_validation", "--skip-bids-validation", []),
    ("--work_dir", "--work-dir", ["/scratch/w"]),
    ("--n_cpus", "--nprocs", ["3"]),
    ("--n-cpus", "--nprocs", ["3"]),
    ("--nthreads", "--nprocs", ["3"]),
]


def _parse(*args: str) -> dict:
    return vars(build_parser().parse_args(["ds", "out", "participant", *args]))


def test_positional_arguments():
    positional = [a for a in build_parser()._actions if not a.option_strings]
    assert [a.dest for a in positional] == ["bids_dir", "output_dir", "analysis_level"]
    assert list(positional[2].choices) == ["participant", "group"]


@pytest.mark.parametrize("alias, primary, values", ALIASES, ids=[a[0] for a in ALIASES])
def test_underscore_alias_is_the_option(alias, primary, values):
    assert _parse(alias, *values) == _parse(primary, *values)
    assert _parse(alias, *values) != _parse()


def test_help_lists_aliases_once_beside_the_option():
    text = build_parser().format_help()
    assert "--participant-label, --participant_label LABEL [LABEL ...]" in text
    assert "-w, --work-dir, --work_dir PATH" in text
    for alias, _, _ in ALIASES:
        assert text.count(f"{alias} ") + text.count(f"{alias}\n") + text.count(f"{alias},") >= 1, alias
    usage = build_parser().format_usage()
    assert "--participant_label" not in usage and "--work_dir" not in usage  # primary spellings only


def test_version_and_usage_errors_as_subprocesses():
    version = run_app(NEUROSEG, ["--version"])
    assert version.returncode == 0 and version.stdout.strip() == f"neuroseg {get_version()}"
    assert run_app(NEUROSEG, ["ds"]).returncode == 2  # missing positionals
    assert run_app(NEUROSEG, ["ds", "out", "everything"]).returncode == 2  # not an analysis level
    bad = run_app(NEUROSEG, ["ds", "out", "participant", "--no-such-option"])
    assert bad.returncode == 2 and "unrecognized arguments" in bad.stderr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bidsapps")
    bids = make_dataset(root / "ds", {"01": [None], "02": [None]})
    filters = root / "filters.json"
    filters.write_text(json.dumps({"spinalcord": {"suffix": ["T2w"]}}))
    return bids, filters


def test_unknown_participant_by_underscore_label_exits_3(dataset, tmp_path):
    bids, filters = dataset
    result = run_app(NEUROSEG, [bids, tmp_path / "out", "participant", "--participant_label", "99",
                                "--skip_bids_validation", "--device", "cpu", "--work_dir", tmp_path / "w"])
    assert result.returncode == 3 and "sub-99" in result.stderr, result.stderr[-2000:]
    assert_clean_console(result)


def _check_derivatives(out: Path) -> None:
    """The official validator accepts the derivatives (:func:`validate_dataset` raises on any error), and
    ``.bidsignore`` lists only what is there to hide."""
    assert validate_dataset(out) == {}  # errors inside sub-*/ come back per file
    ignored = (out / ".bidsignore").read_text().split()
    assert {"logs/", "group_*", "*_morph.tsv", "*_morph.json", "figures"} <= set(ignored)


def test_participant_and_group_with_the_underscore_options(dataset, tmp_path):
    """What older BIDS-Apps tooling sends, as a subprocess: both levels run, the derivatives validate."""
    bids, filters = dataset
    out, work = tmp_path / "out", tmp_path / "work"
    participant = run_app(NEUROSEG, [bids, out, "participant", "--participant_label", "sub-01", "--n_cpus", "2",
                                     "--work_dir", work, "--bids_filter_file", filters, "--device", "cpu"])
    assert participant.returncode == 0, participant.stderr[-3000:]
    assert_clean_console(participant)
    assert (out / "sub-01" / "anat" / "sub-01_label-SC_desc-T2w_mask.nii.gz").is_file()
    assert not (out / "sub-02").exists() and (work / "pybids_db").is_dir()
    group = run_app(NEUROSEG, [bids, out, "group", "--work_dir", work])
    assert group.returncode == 0, group.stderr[-3000:]
    _check_derivatives(out)


@pytest.mark.slow
def test_derivatives_of_both_tasks_validate(tmp_path):
    """Cord and lesion outputs, both levels (tables, figures, reports, logs): nothing the validator flags."""
    bids = make_dataset(tmp_path / "ds", {"01": [None]}, flair=True)
    out = tmp_path / "out"
    participant = run_app(NEUROSEG, [bids, out, "participant", "--tasks", "spinalcord", "mslesion", "--n_cpus", "2",
                                     "--work_dir", tmp_path / "work", "--device", "cpu"], timeout=900)
    assert participant.returncode == 0, participant.stderr[-3000:]
    group = run_app(NEUROSEG, [bids, out, "group", "--tasks", "spinalcord", "mslesion"])
    assert group.returncode == 0, group.stderr[-3000:]
    assert (out / "group_lesions.tsv").is_file() and (out / "group_csa.tsv").is_file()
    _check_derivatives(out)
