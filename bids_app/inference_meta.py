"""Model metadata without torch: what the workflows and sidecars need to know about a model folder."""

from __future__ import annotations

import json
from pathlib import Path

from bids_app.errors import ModelError


def read_metadata(folder: Path) -> dict:
    """Read ``metadata.json`` of a model folder (no weights are touched, torch is not imported)."""
    meta_path = Path(folder) / "metadata.json"
    if not meta_path.is_file():
        raise ModelError(f"No metadata.json in model folder {folder}; reinstall neuroseg or point "
                         "--models-dir at a folder holding <task>/metadata.json.")
    return json.loads(meta_path.read_text())


def model_reference(folder: Path) -> dict[str, str]:
    """Name, version and sha256 of a model, as written in every output's sidecar."""
    meta = read_metadata(folder)
    return {"Name": meta["name"], "Version": meta["version"], "SHA256": meta["sha256"]}
