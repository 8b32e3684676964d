"""Export a trained checkpoint into a self-describing model folder (safetensors + metadata.json)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from bids_app.inference import sha256_of


def export(config: dict, root: Path) -> Path:
    """Write ``model.safetensors`` and ``metadata.json`` into ``config['output']['export_dir']``.

    The model card (``README.md``) is written by the evaluation step, which adds measured metrics.
    """
    out_cfg = config["output"]
    run_dir, folder = root / out_cfg["run_dir"], root / out_cfg["export_dir"]
    folder.mkdir(parents=True, exist_ok=True)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    weights = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state["network"].items()}, str(weights))
    weights.chmod(0o644)
    metadata = {
        "name": out_cfg["name"],
        "version": out_cfg["version"],
        "task": config["task"],
        "weights": weights.name,
        "sha256": sha256_of(weights),
        "predictor": config["predictor"],
        "architecture": config["model"],
        "input": {"orientation": "RAS", "slice_axis": 2, "channels": ["any MRI contrast"],
                  "normalisation": "per-slice 0.5-99.5 percentile", **config["inference"]},
        "output": {"activation": "sigmoid", "labels": {"SC": 1}, "threshold": out_cfg["threshold"],
                   "largest_component": True},
        "training": {"config": config.get("config_path", f"training/configs/{config['task']}.json"),
                     "init_from": config["train"].get("init_from"), "iterations": int(state["iteration"]),
                     "seed": config["seed"]},
    }
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return folder
