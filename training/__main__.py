"""``python -m training CONFIG [options]``: run the command line of the task that CONFIG belongs to.

The task is the config's ``"task"`` key, else the task folder it lies in
(``training/<task>/configs/``); without either (or with only ``--help``) the cord command line runs,
as ``python -m training`` always did. Options are those of ``python -m training.spinalcord``, ``python -m training.ich`` or
``python -m training.mslesion``.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

TASKS = ("spinalcord", "mslesion", "ich")
DEFAULT_TASK = "spinalcord"
#: Configs that are not training configs but have their own command line: file name -> command.
OTHER_COMMANDS = {"synth.json": "python -m training.ich.synth --config CONFIG"}


def task_of(config: Path) -> str:
    """The task a config file belongs to (``DEFAULT_TASK`` when it does not say)."""
    try:
        task = json.loads(config.read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        task = None
    if task in TASKS:
        return task
    folder = config.resolve().parent
    if folder.name == "configs" and folder.parent.name in TASKS:
        return folder.parent.name
    return DEFAULT_TASK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config = next((a for a in argv if not a.startswith("-")), None)
    task = task_of(Path(config)) if config else DEFAULT_TASK
    if config and Path(config).name in OTHER_COMMANDS:
        sys.stderr.write(f"{config} is not a training config; run "
                         f"{OTHER_COMMANDS[Path(config).name].replace('CONFIG', config)}\n")
        return 2
    cli = importlib.import_module(f"training.{task}.__main__")
    return cli.main(argv, prog="python -m training")


if __name__ == "__main__":
    raise SystemExit(main())
