"""The naive baseline any lesion model must beat: a FLAIR threshold inside the template white matter,
measured on the labelled cases over a grid of thresholds and cross-validated between them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from bids_app.imaging import templates
from training.mslesion.scoring import case_in_template, native_rows
from training.mslesion.template import load_template


#: The naive baseline's grid: FLAIR thresholds (in brain IQR above the brain median, after the
#: app's normalisation) and template white-matter probability thresholds.
BASELINE_GRID = {"flair_iqr": (1.0, 1.25, 1.5, 1.75, 2.0, 2.5), "template_wm": (0.5, 0.8)}


def intensity_baseline(flair: np.ndarray, wm: np.ndarray, flair_iqr: float, template_wm: float,
                       sigma_mm: float = 0.5) -> np.ndarray:
    """The lesion mask any model must beat: a FLAIR threshold inside the template white matter.

    ``flair`` ``(X, Y, Z)`` is the normalised FLAIR on the 1 mm template grid (``(x - median) / IQR``
    in the template brain), smoothed by a Gaussian of ``sigma_mm`` against noise; a voxel is lesion
    when it is brighter than ``flair_iqr`` and the template WM probability ``wm`` exceeds
    ``template_wm``. Returns float32 0/1 (so that it resamples like a probability map).
    """
    return ((ndimage.gaussian_filter(flair, sigma_mm) > flair_iqr) & (wm > template_wm)).astype(np.float32)


def baseline_name(flair_iqr: float, template_wm: float) -> str:
    return f"threshold FLAIR>{flair_iqr} IQR, WM>{template_wm}"


def evaluate_baseline(cases: list[dict]) -> list[dict]:
    """Rows of :func:`~training.mslesion.scoring.native_rows` for every point of :data:`BASELINE_GRID` on every labelled case."""
    tpl = load_template()
    tpl_img = sitk.ReadImage(str(templates.get_template_file("T1w")))
    tpl_mask = sitk.ReadImage(str(templates.get_template_file("mask", desc="brain")))
    rows = []
    for case in (c for c in cases if c["labels"]):
        flair, tsi, _, _ = case_in_template(case, {}, tpl_img, tpl_mask)
        for t in BASELINE_GRID["flair_iqr"]:
            for w in BASELINE_GRID["template_wm"]:
                mask = intensity_baseline(tsi.data, tpl["wm"], t, w)
                for row in native_rows(baseline_name(t, w), mask, case, flair, tsi, tpl_img, 0.5):
                    rows.append({**row, "flair_iqr": t, "template_wm": w, "image": Path(case["flair"]).name})
    return rows


def cross_validated_baseline(rows: list[dict]) -> list[dict]:
    """The baseline's honest numbers: on each image, the grid point chosen on the *other* images.

    ``rows`` are :func:`evaluate_baseline` rows (keys ``image, flair_iqr, template_wm, dice, ...``).
    For every image the grid point with the highest mean Dice over all labels of all other images is
    chosen and that point's rows on the image are returned, with ``model`` naming the point and
    ``seen_in_training`` "none" (nothing of the image chose it). Ties go to the first grid point.
    """
    images = list(dict.fromkeys(r["image"] for r in rows))
    points = list(dict.fromkeys((r["flair_iqr"], r["template_wm"]) for r in rows))
    out = []
    for image in images:
        def score(point):
            d = [r["dice"] for r in rows if r["image"] != image and (r["flair_iqr"], r["template_wm"]) == point]
            return float(np.mean(d)) if d else -1.0
        best = max(points, key=score)  # max keeps the first of equal scores
        chosen_on = ", ".join(i for i in images if i != image)
        out += [{**r, "model": f"{r['model']} (chosen on {chosen_on})", "seen_in_training": "none"}
                for r in rows if r["image"] == image and (r["flair_iqr"], r["template_wm"]) == best]
    return out
