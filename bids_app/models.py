"""Model folders, shared by every task: metadata, sha256 and safetensors loading.

A model folder (``models/<task>/``) holds ``model.safetensors``, ``metadata.json`` and a model card
(``README.md``). ``metadata.json`` describes the network, its input grid, its intensity scaling and how
its output is turned into a mask; nothing about a model is hard-coded elsewhere. The sha256 of the
weights is verified before loading and the weights are read with ``safetensors`` (never unpickled).

The metadata functions import no torch (the workflows, sidecars and model checks run without it);
:func:`build_network` and :func:`load_model` import torch and MONAI when they are called, i.e. only in
the segmentation nodes and in training.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bids_app.errors import ModelError

if TYPE_CHECKING:  # torch is imported by the functions that need it, not by this module
    import torch


def read_metadata(folder: Path) -> dict:
    """Read ``metadata.json`` of a model folder (no weights are touched, torch is not imported)."""
    meta_path = Path(folder) / "metadata.json"
    if not meta_path.is_file():
        raise ModelError(f"No metadata.json in model folder {folder}; reinstall neuroseg or point "
                         "--models-dir at a folder holding <task>/metadata.json.")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{meta_path} cannot be read ({exc}); restore the model folder from the release.") from exc
    missing = [key for key in ("name", "version", "sha256") if key not in meta]
    if not isinstance(meta, dict) or missing:
        raise ModelError(f"{meta_path} lacks {', '.join(missing) or 'its fields'}; restore the model folder "
                         "from the release.")
    return meta


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_weights(folder: Path) -> tuple[dict, Path]:
    """``(metadata, weights path)`` of a model folder, after checking the weights' sha256 against
    ``metadata.json`` (ModelError, with how to fix it, when missing or different)."""
    folder = Path(folder)
    metadata = read_metadata(folder)
    weights = folder / metadata.get("weights", "model.safetensors")
    if not weights.is_file():
        raise ModelError(f"Model weights {weights} are missing; the model folder is incomplete.")
    actual = sha256_of(weights)
    if actual != metadata["sha256"]:
        raise ModelError(f"sha256 mismatch for {weights}: expected {metadata['sha256']}, found {actual}. "
                         "The file is corrupt or was replaced; restore it from the release.")
    return metadata, weights


def verify_model(folder: Path, task: str) -> dict:
    """Check, before any work starts, that ``folder`` holds the model of ``task`` with intact weights.

    A model folder of another task (folders swapped) or weights whose sha256 differs from
    ``metadata.json`` raise :class:`ModelError` (exit 4). Returns the metadata.
    """
    metadata, _ = verified_weights(folder)
    if metadata.get("task", task) != task:
        raise ModelError(f"The model in {folder} is for task '{metadata.get('task')}', not '{task}'; the model "
                         "folders were swapped: restore them or fix --models-dir.")
    return metadata


def model_reference(folder: Path) -> dict[str, str]:
    """Name, version and sha256 of a model, as written in every output's sidecar."""
    meta = read_metadata(folder)
    return {"Name": meta["name"], "Version": meta["version"], "SHA256": meta["sha256"]}


LOGGER = logging.getLogger(__name__)


def build_network(architecture: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the network named in ``metadata.json['architecture']``.

    Only MONAI networks are allowed, by name, so that a model folder cannot run arbitrary code.
    """
    from monai.networks import nets

    name = architecture["name"]
    if not hasattr(nets, name):
        raise ModelError(f"Unknown network '{name}' in model metadata; expected a monai.networks.nets class.")
    return getattr(nets, name)(**architecture["params"])


@dataclass(frozen=True)
class ModelBundle:
    """A loaded, verified model and its self-description."""

    folder: Path
    metadata: dict[str, Any]
    network: torch.nn.Module
    device: torch.device

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @property
    def sha256(self) -> str:
        return self.metadata["sha256"]


def load_model(folder: Path, device: str = "cpu") -> ModelBundle:
    """Load a model folder after checking the sha256 of its weights against ``metadata.json``."""
    import torch

    folder = Path(folder)
    metadata, weights = verified_weights(folder)
    from safetensors.torch import load_file

    network = build_network(metadata["architecture"])
    network.load_state_dict(load_file(str(weights)))
    torch_device = torch.device(device)
    network.to(torch_device).eval()
    LOGGER.debug("Loaded %s %s (sha256 %s) on %s", metadata["name"], metadata["version"], metadata["sha256"], device)
    return ModelBundle(folder=folder, metadata=metadata, network=network, device=torch_device)
