"""Calibrate a cord model's soft output to the manual masks' area convention (a logit offset).

Synthetic training slices put the cord boundary at the intensity edge, while manual masks of real
images are drawn slightly inside it; the network learns a compromise that over-estimates the area of
the manual convention. A single logit offset ``b`` (Platt scaling with the slope fixed to 1) is fitted
so that the midrange (mean of the smallest and largest) over the calibration images of
``mean soft CSA / mean manual CSA`` (same slices) is 1: the minimax choice, which keeps the worst
relative CSA error over the images smallest. The labelled images follow several conventions (an
automatic SCT mask, per-contrast masks, one manual mask shared by co-registered contrasts); a median
would side with whichever convention has the most images. The offset is stored in
``metadata.json['output']['logit_offset']`` and applied before the sigmoid.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bids_app.models import load_model
from training.common.export import write_metadata
from training.spinalcord.evaluate import evaluate_bundle

LOGGER = logging.getLogger(__name__)


def _midrange_ratio(bundle, bids_dir: Path, images: list[str], offset: float) -> float:
    bundle.metadata["output"]["logit_offset"] = offset
    ratios = [row["csa_ours_mm2"] / row["csa_manual_mm2"] for row in evaluate_bundle(bundle, bids_dir, images)]
    return float((min(ratios) + max(ratios)) / 2)


def calibrate(folder: Path, bids_dir: Path, images: list[str], low: float = -3.0, high: float = 3.0,
              steps: int = 9) -> float:
    """Bisect the logit offset in [low, high]; write it into the model folder's metadata; return it."""
    bundle = load_model(folder, "cpu")
    for _ in range(steps):
        middle = (low + high) / 2
        ratio = _midrange_ratio(bundle, bids_dir, images, middle)
        LOGGER.info("logit offset %+.3f: midrange CSA ratio %.4f", middle, ratio)
        # A larger offset raises every soft value, hence the area.
        low, high = (low, middle) if ratio > 1 else (middle, high)
    offset = round((low + high) / 2, 4)
    meta_path = Path(folder) / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["output"]["logit_offset"] = offset
    meta["output"]["calibration"] = {"method": "logit offset, midrange (minimax) of CSA ratios to manual masks = 1",
                                     "images": images}
    write_metadata(folder, meta)
    return offset


def calibrate_from_config(config: dict, folder: Path, bids_dir: Path) -> float:
    """Apply the config's calibration rule (``calibration``: ``"midrange"``, the default, or ``"none"``).

    ``"none"`` keeps the raw sigmoid (offset 0): the MSE-trained soft map is left as the network learned
    it from the mix of conventions in the training data.
    """
    rule = config.get("calibration", "midrange")
    if rule == "none":
        meta = json.loads((Path(folder) / "metadata.json").read_text())
        meta["output"]["logit_offset"] = 0.0
        meta["output"]["calibration"] = {"method": "none (raw sigmoid of the MSE-trained network)"}
        write_metadata(folder, meta)
        return 0.0
    return calibrate(folder, bids_dir, config["data"]["train_images"])
