"""Fixtures of the ich tests: a model folder with random weights (plumbing only) and synthetic head CTs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

#: The keys the real ``models/ich/metadata.json`` will have (the app reads these and nothing else).
ICH_METADATA = {
    "name": "neuroseg-ich", "version": "0.1.0", "task": "ich", "weights": "model.safetensors", "sha256": "",
    "predictor": "ich_slices",
    "architecture": {"name": "UNet", "params": {"spatial_dims": 2, "in_channels": 9, "out_channels": 6,
                                                "channels": [16, 32, 64, 128], "strides": [2, 2, 2],
                                                "num_res_units": 1}},
    "input": {"modality": "CT", "units": "HU", "orientation": "RAS", "spacing_mm": 2.0, "in_plane": 128,
              "windows": [[0, 80], [-20, 180], [-800, 2000]], "window_names": ["brain", "subdural", "bone"],
              "context": 1, "intracranial_margin_mm": 4.0},
    "output": {"activation": "softmax", "classes": {"0": "background", "1": "IPH", "2": "SDH", "3": "EDH",
                                                    "4": "SAH", "5": "IVH"},
               "probability": "1 - p(background)", "threshold": 0.5, "min_component_ml": 0.0},
}


def make_model(folder: Path, seed: int = 0, output: dict | None = None) -> Path:
    """``folder`` (created) as an ich model folder: a randomly initialised MONAI UNet of :data:`ICH_METADATA`
    saved with safetensors, and its metadata with the weights' sha256; ``output`` overrides output keys."""
    import torch
    from monai.networks import nets

    from training.common.export import save_weights, write_metadata

    meta = copy.deepcopy(ICH_METADATA)
    meta["output"].update(output or {})
    torch.manual_seed(seed)
    net = nets.UNet(**meta["architecture"]["params"])
    folder.mkdir(parents=True, exist_ok=True)
    meta["sha256"] = save_weights({k: v.contiguous() for k, v in net.state_dict().items()},
                                  folder / meta["weights"])
    write_metadata(folder, meta)
    return folder


@pytest.fixture(scope="session")
def ich_models(tmp_path_factory) -> Path:
    """A ``--models-dir`` holding ``ich/`` with random weights."""
    root = tmp_path_factory.mktemp("ich_models")
    make_model(root / "ich")
    return root


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
