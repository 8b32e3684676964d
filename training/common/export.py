"""Writing a self-describing model folder: ``model.safetensors`` (tensors only, never pickled) and
``metadata.json``, whose ``sha256`` the app checks before loading the weights."""

from __future__ import annotations

import json
from pathlib import Path

from bids_app.models import sha256_of


def save_weights(tensors: dict, path: Path) -> str:
    """Save ``tensors`` (name -> torch tensor, contiguous) as safetensors at ``path``; return its sha256."""
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return sha256_of(path)


def write_metadata(folder: Path, metadata: dict) -> Path:
    """Write ``folder/metadata.json`` (indented JSON, trailing newline)."""
    path = Path(folder) / "metadata.json"
    path.write_text(json.dumps(metadata, indent=2) + "\n")
    return path
