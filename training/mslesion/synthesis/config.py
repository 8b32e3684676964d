"""The synthesis settings: the defaults of every knob in ``configs/synthesis.json`` (its ``"synthesis"``
block), with a training config's own block merged over them (:func:`settings`)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from training.mslesion.synthesis.anatomy import TISSUES

#: The defaults of every knob (the ``"synthesis"`` block); a training config's block is merged over it.
DEFAULTS_FILE = Path(__file__).resolve().parents[1] / "configs" / "synthesis.json"


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def settings(config: dict | None = None) -> dict:
    """The synthesis settings: :data:`DEFAULTS_FILE`'s ``"synthesis"`` block with ``config["synthesis"]``
    (a training config, or ``configs/synthesis.json`` itself) merged over it, nested dicts key by key."""
    base = json.loads(DEFAULTS_FILE.read_text())["synthesis"]
    out = _merge(base, (config or {}).get("synthesis", {}))
    probs = out["contrast"]
    if min(probs.values()) < 0 or sum(probs.values()) <= 0:
        raise ValueError(f"synthesis.contrast probabilities must be >= 0 with a positive sum, got {probs}")
    for ct, p in probs.items():
        if p > 0:
            missing = set(TISSUES) - set(out["tissue_mean"].get(ct, {}))
            if missing:
                raise ValueError(f"synthesis.tissue_mean.{ct} lacks the classes {sorted(missing)}")
    return out
