"""Training configs that extend one another (``"base"``), shared by every task's command line."""

from __future__ import annotations

import json
from pathlib import Path


def load_config(path: Path) -> dict:
    """A training config; ``"base": "OTHER.json"`` (beside it) names the config it extends:
    the base's keys, recursively resolved, with this file's keys over them. A block (a JSON object,
    e.g. ``"ssl"``) is merged key by key, so a seed repeat can move ``ssl.run_dir`` alone; any other
    value replaces the base's. ``name`` defaults to the file's stem, never inherited."""
    own = json.loads(path.read_text())
    own.setdefault("name", path.stem)
    if "base" not in own:
        return own
    return _merged(load_config(path.parent / own.pop("base")), own)


def _merged(base: dict, own: dict) -> dict:
    out = dict(base)
    for key, value in own.items():
        out[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out
