"""``models/ich`` from the run, and the acceptance figures measured the way the app segments.

:func:`export` writes ``model.safetensors`` (float32 tensors), ``metadata.json`` (network, input, output,
sha256, training summary) and the card. :func:`evaluate` loads a model folder exactly like the app
(sha256 verified) and runs the app's own nodes (:func:`bids_app.ich.interfaces.run_in_process`) on
every native test CT (and the real normal head CT ``sub-ct01`` when ``../shared/data`` is there); Dice
and volumes are on each scan's native grid against its synthetic dseg -> ``evaluation.json`` in the
model folder (read by the card).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from training.common.export import save_weights, write_metadata
from training.common.paths import ROOT
from training.ich.data import find_images, label_path

LOG = logging.getLogger("training.ich.export")
REAL_NORMAL_CT = ROOT.parent / "shared" / "data" / "bids-dev" / "sub-ct01" / "ct" / "sub-ct01_ct.nii.gz"


def _path(value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else ROOT / p


def metadata_for(config: dict, sha256: str) -> dict:
    inp = config["input"]
    net = config["network"]
    return {
        "name": "neuroseg-ich", "version": config["version"], "task": "ich", "weights": "model.safetensors",
        "sha256": sha256, "predictor": "ich_slices",
        **({"status": config["status"], "status_reason": config.get("status_reason", "")} if "status" in config else {}),
        "architecture": {"name": "UNet", "params": {
            "spatial_dims": 2, "in_channels": len(inp["windows"]) * (2 * inp["context"] + 1),
            "out_channels": net["n_classes"], "channels": net["channels"],
            "strides": [2] * (len(net["channels"]) - 1), "num_res_units": 1}},
        "input": {"modality": "CT", "units": "HU", "orientation": "RAS", **inp},
        "output": {"activation": "softmax", "classes": config["classes"], "probability": "1 - p(background)",
                   "threshold": config["threshold"], "min_component_ml": config.get("min_component_ml", 0.0)},
        "training": {"config": f"training/ich/configs/{config['name']}.json",
                     "data": "synthetic head CT only (training.ich.synth from SynthSeg label maps); no real "
                             "haemorrhage scan was used for training or testing"},
    }


def export(config: dict) -> Path:
    from safetensors.torch import load_file

    run = _path(config["run_dir"])
    folder = _path(config["export_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    state = load_file(str(run / "final.safetensors"))
    sha = save_weights({k: v.float().contiguous() for k, v in state.items()}, folder / "model.safetensors")
    meta = metadata_for(config, sha)
    final = json.loads((run / "final.json").read_text())
    meta["training"].update({"init": final["init"], "labelled_scans": final["labelled"],
                             "iterations": final["iterations"], "seconds": final["seconds"]})
    write_metadata(folder, meta)
    LOG.info("exported %s (sha256 %s)", folder, sha)
    return folder


def _scan_row(model_dir: Path, path: Path, label: Path | None, classes: dict, threads: int) -> dict:
    """One CT through the app's nodes (:func:`bids_app.ich.interfaces.run_in_process`): the app's own
    volumes, and Dice against ``label`` on the native grid."""
    import tempfile

    from bids_app.ich.interfaces import run_in_process

    with tempfile.TemporaryDirectory() as tmp:
        outputs, seconds = run_in_process(path, model_dir, Path(tmp), threads)
        mask = np.asarray(nib.load(outputs["binarise"].mask_file).dataobj) > 0
        summary = outputs["measure"].summary
        row = {"image": path.name, "pred_ml": float(summary["total_volume_ml"]),
               "seconds": {k: round(v, 2) for k, v in seconds.items()}}
        if label is not None:
            img = nib.load(str(label))
            truth = np.asarray(img.dataobj).astype(np.uint8)
            voxel_ml = float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0
            inter = float((mask & (truth > 0)).sum())
            denom = float(mask.sum() + (truth > 0).sum())
            row.update({"true_ml": float((truth > 0).sum() * voxel_ml), "dice": 2 * inter / denom if denom else 1.0,
                        "overlap_ml": inter * voxel_ml})
            row["true_types_ml"] = {classes[str(k)]: float((truth == k).sum() * voxel_ml) for k in range(1, len(classes))}
            row["pred_types_ml"] = {classes[str(k)]: float(summary[f"{classes[str(k)]}_volume_ml"])
                                    for k in range(1, len(classes))}
    return row


def evaluate(config: dict, exported: bool = True) -> dict:
    """Acceptance figures of the model in ``export_dir`` (see the module docstring)."""
    import torch

    from bids_app.models import verify_model
    from training.ich.learn import summarise

    folder = _path(config["export_dir"])
    metadata = verify_model(folder, "ich")
    classes = metadata["output"]["classes"]
    threads = torch.get_num_threads()
    result: dict = {"model_sha256": metadata["sha256"], "threads": threads}
    for name in ("test", "test_normal"):
        root = _path(config["synthesis"][name]["out"])
        rows = [_scan_row(folder, p, label_path(root, p), classes, threads) for p in find_images(root)]
        LOG.info("%s: %d scans", name, len(rows))
        result[name] = rows
    result["summary"] = summarise(result["test"], result["test_normal"])
    by_type = {}
    for kind in list(classes.values())[1:]:
        scans = [r for r in result["test"] if r["true_types_ml"][kind] >= 1]
        if scans:
            by_type[kind] = {"scans": len(scans),
                             "detected": float(np.mean([r["pred_types_ml"][kind] > 0 for r in scans])),
                             "median_true_ml": float(np.median([r["true_types_ml"][kind] for r in scans])),
                             "median_pred_ml": float(np.median([r["pred_types_ml"][kind] for r in scans]))}
    result["by_type"] = by_type
    if REAL_NORMAL_CT.is_file():
        result["sub-ct01"] = _scan_row(folder, REAL_NORMAL_CT, None, classes, threads)
    (folder / "evaluation.json").write_text(json.dumps(result, indent=1) + "\n")
    LOG.info("summary %s", result["summary"])
    return result
