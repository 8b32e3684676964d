"""The lesion network's input channels, as ``metadata.json`` names them (the app reads them)."""

from __future__ import annotations


PRIOR_CHANNEL = "prior:WM probseg >= 0.5"


def input_channels(config: dict) -> list[str]:
    """The network's input channels, in order, as ``metadata.json`` names them (the app reads them)."""
    return ["FLAIR"] + (["T1w"] if config.get("t1w") else []) + ([PRIOR_CHANNEL] if config["prior"] else [])
