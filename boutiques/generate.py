"""The Boutiques descriptor ``boutiques/neuroseg.json``, generated from the command line's parser.

    python boutiques/generate.py           # (re)write boutiques/neuroseg.json
    python boutiques/generate.py --check   # exit 1 if the committed file differs from the parser

Everything comes from :func:`bids_app.cli.build_parser` (one input per option, its primary spelling
as the flag, its help as the description, list/choices/integer from nargs/choices/type), the exit
codes from :mod:`bids_app.errors`, the version from ``version``; so the descriptor cannot drift from
the app (``tests/test_boutiques.py`` regenerates it and compares). Defaults are left to the app (no
``default-value``: ``bosh exec`` would otherwise add every default to the command line) and only
named in the descriptions; ``--nprocs``'s default is this machine's CPU count, so it is not named.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bids_app import errors  # noqa: E402
from bids_app.cli import build_parser  # noqa: E402
from bids_app.config import get_version  # noqa: E402

DESCRIPTOR = Path(__file__).resolve().parent / "neuroseg.json"
#: Path options whose file or folder must exist (Boutiques type File, mounted by ``bosh exec launch``).
EXISTING_PATHS = {"bids_dir", "bids_filter_file", "labels_dir", "models_dir"}
#: Defaults that depend on the machine the descriptor was generated on.
MACHINE_DEPENDENT = {"nprocs"}
SKIP = (argparse._HelpAction, argparse._VersionAction)


def _flag(action: argparse.Action) -> str:
    """The primary spelling: the first long option (``--work-dir`` for ``-w, --work-dir, --work_dir``)."""
    return next(o for o in action.option_strings if o.startswith("--"))


def _description(action: argparse.Action) -> str:
    text = (action.help or "").strip()
    aliases = [o for o in action.option_strings if o != _flag(action)]
    default = action.default
    if action.option_strings and action.dest not in MACHINE_DEPENDENT and default is not None \
            and default is not False and default != [] and default != {}:
        text += f" (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"
    if aliases:
        text += f"; also {', '.join(aliases)}"
    return text[:1].upper() + text[1:] + "."


def _input(action: argparse.Action) -> dict:
    entry = {"id": action.dest, "name": action.dest.replace("_", " "), "description": _description(action),
             "value-key": f"[{action.dest.upper()}]", "optional": bool(action.option_strings)}
    if isinstance(action, (argparse._StoreTrueAction, argparse._CountAction)):
        entry["type"] = "Flag"
    elif action.type is int:
        entry.update(type="Number", integer=True)
    elif action.type is Path and action.dest in EXISTING_PATHS:
        entry["type"] = "File"
    else:
        entry["type"] = "String"
    if action.option_strings:
        entry["command-line-flag"] = _flag(action)
    if action.nargs in ("+", "*"):
        entry["list"] = True
        if action.nargs == "+":
            entry["min-list-entries"] = 1
    if action.choices:
        entry["value-choices"] = list(action.choices)
    return entry


def _error_codes() -> list[dict]:
    """The exit-code table of :mod:`bids_app.errors` (``| code | meaning |`` rows), 0 aside."""
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", errors.__doc__, re.M)
    return [{"code": int(code), "description": text.replace("``", "")} for code, text in rows if code != "0"]


def descriptor() -> dict:
    parser = build_parser()
    actions = [a for a in parser._actions if not isinstance(a, SKIP)]
    version = get_version()
    groups = []
    for group in parser._action_groups:
        members = [a.dest for a in group._group_actions if not isinstance(a, SKIP) and a.option_strings]
        if members and group.title not in ("options", "optional arguments"):
            groups.append({"id": re.sub(r"\W+", "_", group.title.lower()).strip("_"), "name": group.title,
                           "description": group.description or group.title, "members": members})
    return {
        "name": "neuroseg",
        "tool-version": version,
        "description": parser.description,
        "schema-version": "0.5",
        "command-line": " ".join(["neuroseg", *(f"[{a.dest.upper()}]" for a in actions)]),
        "container-image": {"type": "docker", "image": f"neuroseg:{version}", "entrypoint": True},
        "inputs": [_input(a) for a in actions],
        "groups": groups,
        "output-files": [{"id": "derivatives", "name": "derivatives", "path-template": "[OUTPUT_DIR]",
                          "optional": False,
                          "description": "BIDS-Derivatives folder: segmentations, morphometry tables, logs/ "
                                         "(participant level); cohort tables, figures and report (group level)."}],
        "error-codes": _error_codes(),
        "suggested-resources": {"cpu-cores": 2, "ram": 8},
        "tags": {"domain": ["neuroimaging", "bids-app", "spinal-cord", "multiple-sclerosis"]},
    }


def render() -> str:
    return json.dumps(descriptor(), indent=2) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file, write nothing")
    args = parser.parse_args()
    text = render()
    if args.check:
        same = DESCRIPTOR.is_file() and DESCRIPTOR.read_text() == text
        print(f"{DESCRIPTOR} is {'current' if same else 'out of date: run python boutiques/generate.py'}")
        sys.exit(0 if same else 1)
    DESCRIPTOR.write_text(text)
    print(f"wrote {DESCRIPTOR}")


if __name__ == "__main__":
    main()
