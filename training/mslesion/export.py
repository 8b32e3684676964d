"""Export of a finished run into ``models/mslesion/`` (or ``export_dir``): the generic net and the
specialists as one float16 safetensors file, and ``metadata.json`` (architecture, input channels,
ensemble boxes on the template grid, output threshold and search region, training config, metrics)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from bids_app.imaging import templates
from bids_app.mslesion.measures import DEFAULT_MIN_VOLUME_MM3
from bids_app.mslesion.predict import architecture
from training.common.export import save_weights, write_metadata
from training.common.paths import ROOT
from training.mslesion.channels import input_channels
from training.mslesion.evaluate import load_nets

LOGGER = logging.getLogger("training.mslesion")


def export(config: dict, metrics: list[dict] | None = None) -> Path:
    """Write ``models/mslesion/`` (weights as safetensors, ``metadata.json``) from the run's checkpoints."""
    tpl, generic, nets, boxes = load_nets(config)
    if len(nets) != len(boxes):
        raise SystemExit(f"only {len(nets)} of {len(boxes)} specialists are trained; finish the run first")
    def half(v):  # float16 storage halves the download; inference casts back to float32
        return (v.to(torch.float16) if v.is_floating_point() else v).contiguous()

    tensors = {f"generic.{k}": half(v) for k, v in generic.state_dict().items()}
    for i, n in enumerate(nets):
        tensors.update({f"special.{i:02d}.{k}": half(v) for k, v in n.state_dict().items()})
    out = ROOT / config["export_dir"]
    out.mkdir(parents=True, exist_ok=True)
    sha256 = save_weights(tensors, out / "model.safetensors")
    meta = {
        "name": "neuroseg-mslesion", "version": config["version"], "task": "mslesion",
        "weights": "model.safetensors", "sha256": sha256,
        "weights_dtype": "float16 (stored; loaded into float32 networks)",
        "predictor": "lesion_ensemble",
        "architecture": architecture(len(input_channels(config)), config["channels"]),
        "input": {
            "space": templates.TEMPLATE, "resolution": 1, "orientation": "RAS",
            "channels": input_channels(config),
            "optional_channels": {"T1w": "zeros when the session has no T1w"} if config.get("t1w") else {},
            "normalisation": "(x - median) / IQR inside the template brain mask",
            "roi_size": [96, 96, 96],
        },
        "ensemble": {"grid": config["grid"], "overlap": config["overlap"],
                     "boxes": [[[s.start, s.stop] for s in box] for box in boxes],
                     "fusion": "weighted mean, separable cosine taper (floor 0.05)"},
        # Left-right flip averaging at inference (bids_app.mslesion.predict): a choice of the recipe,
        # measured in the cross-validation (crossval config key flip_lr), not of the weights.
        "inference": {"flip_lr": bool(config.get("flip_lr", False))},
        "output": {"activation": "sigmoid", "labels": {"lesion": 1}, "threshold": config["threshold"],
                   "search_region": {"template_wm_threshold": 0.5, "dilation_mm": config["search_dilation_mm"],
                                     "infratentorial": bool(config.get("search_infratentorial", False))},
                   "min_lesion_mm3": DEFAULT_MIN_VOLUME_MM3},
        "training": {"config": config.get("config_path", f"training/mslesion/configs/{config['name']}.json")},
    }
    if metrics is not None:
        meta["metrics"] = metrics
    write_metadata(out, meta)
    LOGGER.info("exported %s (sha256 %s)", out, meta["sha256"])
    return out
