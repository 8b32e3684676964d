"""Measure a cord model on real labelled images (``metrics.json``; the card: :mod:`.card`).

For every labelled image: the app's own inference (``bids_app.spinalcord.predict``) gives the soft cord; the
app's own measures give the binary mask (threshold and largest component from ``metadata.json``) and
the angle-corrected CSA. Compared with the manual mask on the same slices (those where the manual mask
has cord): Dice of the binary masks, mean CSA of our soft segmentation vs mean CSA of the manual mask
(both with the same formula, each with its own centreline).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app.models import load_model, read_metadata
from bids_app.spinalcord import measures, vertebrae
from bids_app.spinalcord.predict import predict_soft_cord
from training.spinalcord.card import write_card
from training.spinalcord.data import manual_label_path

LOGGER = logging.getLogger(__name__)


def segment_and_measure(bundle, image_path: Path) -> dict:
    """The app's result for one image, in RAS+: soft map, mask and the CSA tables (as written)."""
    img = nib.as_closest_canonical(nib.load(str(image_path)))
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    t0 = time.time()
    soft = predict_soft_cord(bundle, np.asarray(img.dataobj, dtype=np.float32), zooms)
    seconds = time.time() - t0
    out = bundle.metadata["output"]
    mask = measures.binarise(soft, out["threshold"], out["largest_component"])
    slices, _, summary = measures.csa_tables(soft, mask, zooms)
    return {"soft": soft, "mask": mask, "zooms": zooms, "csa": slices["csa_mm2"],
            "csa_binary": slices["csa_binary_mm2"], "seconds": seconds, "csa_mean_mm2": summary["CSAMeanMm2"]}


def session_levels(label_path: Path, image_path: Path) -> tuple[np.ndarray | None, str | None]:
    """Manual vertebral levels per RAS+ slice of ``image_path`` from the session's levelled mask or discs.

    Looks beside the manual mask ``label_path`` (same folder = same participant and session) for
    ``*_label-SC_desc-vertlevels_seg`` then ``*_label-disc_seg``, as the app does; ``(None, None)`` if none.
    """
    img = nib.as_closest_canonical(nib.load(str(image_path)))
    for pattern in ("*_label-SC_desc-vertlevels_seg.nii.gz", "*_label-disc_seg.nii.gz"):
        for path in sorted(label_path.parent.glob(pattern)):
            label = nib.load(str(path))
            _, levels = vertebrae.discs_and_levels(np.asarray(label.dataobj), label.affine, img.affine,
                                                   img.shape[2], float(img.header.get_zooms()[2]))
            if levels.any():
                return levels, path.name
    return None, None


def _error(ours: np.ndarray, ref: np.ndarray) -> float:
    return round(100 * (float(np.mean(ours)) / float(np.mean(ref)) - 1), 2)


def evaluate_image(bundle, image_path: Path, label_path: Path) -> dict:
    """Dice and CSA (soft and binary; per level and C2-C3 where manual levels exist) against the manual
    mask, on the slices where the manual mask has cord (canonical RAS grid)."""
    result = segment_and_measure(bundle, image_path)
    manual = np.asarray(nib.as_closest_canonical(nib.load(str(label_path))).dataobj) > 0.5
    ref = measures.csa_per_slice(manual.astype(np.float32), result["zooms"])
    binary = np.asarray(result["csa_binary"], dtype=float)
    same = ~np.isnan(ref.csa_mm2)
    ours_csa = np.nan_to_num(result["csa"][same].astype(float))
    ours_bin = np.nan_to_num(binary[same])
    row = {
        "image": image_path.name.replace(".nii.gz", ""),
        "dice": round(measures.dice(result["mask"], manual), 4),
        "csa_ours_mm2": round(float(np.mean(ours_csa)), 2),
        "csa_binary_mm2": round(float(np.mean(ours_bin)), 2),
        "csa_manual_mm2": round(float(np.mean(ref.csa_mm2[same])), 2),
        "csa_error_pct": _error(ours_csa, ref.csa_mm2[same]),
        "csa_binary_error_pct": _error(ours_bin, ref.csa_mm2[same]),
        "n_slices": int(same.sum()),
        "seconds": round(result["seconds"], 2),
        "per_slice_csa_ours": [round(float(v), 3) for v in ours_csa],
        "per_slice_csa_manual": [round(float(v), 3) for v in ref.csa_mm2[same]],
    }
    levels, source = session_levels(label_path, image_path)
    if levels is not None:
        row["level_source"], row["per_level"] = source, {}
        soft = np.nan_to_num(result["csa"].astype(float))
        for name, wanted in [(measures.level_name(str(n)), (n,)) for n in sorted(set(levels[same]) - {0})] + \
                [("C2-C3", (2, 3))]:
            where = same & np.isin(levels, wanted)
            if where.any():
                row["per_level"][name] = {"n_slices": int(where.sum()), "soft_mm2": round(float(soft[where].mean()), 2),
                                          "binary_mm2": round(float(np.nan_to_num(binary[where]).mean()), 2),
                                          "manual_mm2": round(float(ref.csa_mm2[where].mean()), 2),
                                          "soft_error_pct": _error(soft[where], ref.csa_mm2[where]),
                                          "binary_error_pct": _error(np.nan_to_num(binary[where]), ref.csa_mm2[where])}
    return row


def evaluate_bundle(bundle, bids_dir: Path, images: list[str]) -> list[dict]:
    """Evaluate a loaded model on ``images`` (paths relative to ``bids_dir``, with manual labels)."""
    rows = []
    for rel in images:
        rows.append(evaluate_image(bundle, bids_dir / rel, manual_label_path(bids_dir, rel)))
        LOGGER.info("%s dice %.3f csa %.1f (binary %.1f) vs %.1f (%+.1f%%, binary %+.1f%%)", rows[-1]["image"],
                    rows[-1]["dice"], rows[-1]["csa_ours_mm2"], rows[-1]["csa_binary_mm2"],
                    rows[-1]["csa_manual_mm2"], rows[-1]["csa_error_pct"], rows[-1]["csa_binary_error_pct"])
    return rows


def evaluate_folder(model_dir: Path, bids_dir: Path, images: list[str]) -> list[dict]:
    """Evaluate a model folder (sha256 checked) on ``images``."""
    return evaluate_bundle(load_model(model_dir, "cpu"), bids_dir, images)


def contrast_cv(rows: list[dict], prefix: str) -> float:
    """Coefficient of variation (%) of the mean CSA over the images whose name starts with ``prefix``."""
    values = np.array([r["csa_ours_mm2"] for r in rows if r["image"].startswith(prefix)])
    return float(100 * values.std(ddof=1) / values.mean()) if values.size > 1 else float("nan")


def evaluate(config: dict, root: Path) -> dict:
    """Evaluate the exported model of ``config`` on its evaluation images; write ``metrics.json``."""
    folder = root / config["output"]["export_dir"]
    images = config["evaluation"]["images"]
    rows = evaluate_folder(folder, root / config["data"]["bids_dir"], images)
    meta = read_metadata(folder)
    result = {"model": meta["name"], "sha256": meta["sha256"], "rows": rows,
              "cv_sub-unf01_pct": round(contrast_cv(rows, "sub-unf01"), 2)}
    holdout = None
    holdout_file = folder / "holdout_metrics.json"
    if holdout_file.is_file():  # written by --holdout, which trains without the held-out subject
        holdout = json.loads(holdout_file.read_text())
    (folder / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    LOGGER.info("CV across sub-unf01 contrasts: %.2f%%", result["cv_sub-unf01_pct"])
    write_card(config, root, result, holdout)
    return result
