"""Export a trained cord checkpoint into a self-describing model folder (safetensors + metadata.json)."""

from __future__ import annotations

from pathlib import Path

import torch

from training.common.export import save_weights, write_metadata


def export(config: dict, root: Path) -> Path:
    """Write ``model.safetensors`` and ``metadata.json`` into ``config['output']['export_dir']``.

    The model card (``README.md``) is written by the evaluation step, which adds measured metrics.
    """
    out_cfg = config["output"]
    run_dir, folder = root / out_cfg["run_dir"], root / out_cfg["export_dir"]
    folder.mkdir(parents=True, exist_ok=True)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    weights = folder / "model.safetensors"
    sha256 = save_weights({k: v.contiguous() for k, v in state["network"].items()}, weights)
    weights.chmod(0o644)
    metadata = {
        "name": out_cfg["name"],
        "version": out_cfg["version"],
        "task": config["task"],
        "weights": weights.name,
        "sha256": sha256,
        "predictor": config["predictor"],
        "architecture": config["model"],
        "input": {"orientation": "RAS", "slice_axis": 2, "channels": ["any MRI contrast"],
                  "normalisation": "per-slice 0.5-99.5 percentile", **config["inference"]},
        "output": {"activation": "sigmoid", "labels": {"SC": 1}, "threshold": out_cfg["threshold"],
                   "largest_component": True},
        "training": {"config": config.get("config_path", f"training/{config['task']}/configs/default.json"),
                     "init_from": config["train"].get("init_from"), "iterations": int(state["iteration"]),
                     "seed": config["seed"]},
    }
    write_metadata(folder, metadata)
    return folder
