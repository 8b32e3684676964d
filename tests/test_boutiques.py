"""The Boutiques descriptor is the parser's: regenerated equal to the committed file, one input per
option, valid for ``bosh validate``, and ``bosh exec simulate`` turns the example invocations into
the command lines the app parses back to the same values."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bids_app.cli import build_parser
from bids_app.config import get_version

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "boutiques"
BOSH = Path(sys.executable).parent / "bosh"
EXPECTED = {
    "participant": "neuroseg /data/bids /data/bids/derivatives/neuroseg participant --participant-label 01 02 "
                   "--tasks spinalcord mslesion --skip-bids-validation --nprocs 4 --omp-nthreads 2 --device cpu "
                   "--work-dir /scratch/work",
    "group": "neuroseg /data/bids /data/bids/derivatives/neuroseg group --tasks spinalcord mslesion",
}


def _generator():
    spec = importlib.util.spec_from_file_location("neuroseg_boutiques_generate", FOLDER / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _descriptor() -> dict:
    return json.loads((FOLDER / "neuroseg.json").read_text())


def test_committed_descriptor_is_the_generated_one():
    assert (FOLDER / "neuroseg.json").read_text() == _generator().render(), \
        "boutiques/neuroseg.json is out of date: run python boutiques/generate.py"


def test_descriptor_flags_are_the_parsers():
    parser = build_parser()
    options = [a for a in parser._actions if a.option_strings
               and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]
    inputs = {i["id"]: i for i in _descriptor()["inputs"]}
    flags = {i["command-line-flag"] for i in inputs.values() if "command-line-flag" in i}
    assert flags == {next(o for o in a.option_strings if o.startswith("--")) for a in options}
    positional = [i["id"] for i in inputs.values() if not i["optional"]]
    assert positional == ["bids_dir", "output_dir", "analysis_level"]
    for action in options:
        entry = inputs[action.dest]
        assert entry["type"] == ("Flag" if action.nargs == 0 else "Number" if action.type is int else entry["type"])
        assert entry.get("list", False) == (action.nargs == "+")
        for alias in action.option_strings[1:]:  # aliases are named in the description
            assert alias in entry["description"] or alias == entry["command-line-flag"]
    assert _descriptor()["container-image"] == {"type": "docker", "image": f"neuroseg:{get_version()}",
                                                "entrypoint": True}
    assert [e["code"] for e in _descriptor()["error-codes"]] == [1, 2, 3, 4, 5, 6]


def test_bosh_validate():
    pytest.importorskip("boutiques")
    result = subprocess.run([str(BOSH), "validate", str(FOLDER / "neuroseg.json")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stdout + result.stderr


@pytest.mark.parametrize("level", sorted(EXPECTED))
def test_bosh_simulate_gives_the_expected_command_line(level, tmp_path):
    pytest.importorskip("boutiques")
    invocation = FOLDER / f"invocation_{level}.json"
    result = subprocess.run([str(BOSH), "exec", "simulate", "-i", str(invocation), str(FOLDER / "neuroseg.json")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    command = result.stdout.strip().splitlines()[-1]
    assert command == EXPECTED[level]
    # The app parses it back to the invocation's values.
    args = vars(build_parser().parse_args(shlex.split(command)[1:]))
    for key, value in json.loads(invocation.read_text()).items():
        assert args[key] == (Path(value) if isinstance(args[key], Path) else value), key
