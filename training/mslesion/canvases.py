"""Real FLAIR canvases: a subject FLAIR carried to the template grid (``(X, Y, Z)``, 1 mm, intensities
in brain IQR after ``(x - median) / IQR``), cached as ``.npy``, with its manual label (a soft target) or
the voxels of an unlabelled canvas that are left out of the loss; and the session's T1w beside it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from bids_app.imaging import templates
from bids_app.imaging.grid import resample_to
from bids_app.imaging.template_space import companion_to_template, to_template_space

LOGGER = logging.getLogger("training.mslesion")


def companion_path(flair: Path, suffix: str = "T1w") -> Path | None:
    """The same session's ``suffix`` image beside a FLAIR (``..._FLAIR.nii.gz`` -> ``..._T1w.nii.gz``)."""
    other = flair.parent / flair.name.replace("_FLAIR.", f"_{suffix}.")
    return other if other.is_file() and other != flair else None


#: An unlabelled canvas's white-matter voxels brighter than this (brain IQR) are left out of the loss.
IGNORE_ABOVE_IQR = 2.0


def ignore_threshold(img: np.ndarray, wm: np.ndarray, percentile: float | None = None) -> float:
    """Brightness (brain IQR) above which an unlabelled canvas's white matter may hold real lesions.

    :data:`IGNORE_ABOVE_IQR`, or with ``percentile`` the lower of that and the canvas's own
    ``percentile``-th percentile inside the template white matter (probability >= 0.9): a scan whose
    lesions are faint (a 1 mm 3D FLAIR, ~1 IQR above its white matter) then does not teach its own
    unlabelled lesions as background.
    """
    if percentile is None:
        return IGNORE_ABOVE_IQR
    return min(IGNORE_ABOVE_IQR, float(np.percentile(img[wm >= 0.9], percentile)))


def real_canvas(path: Path, tpl: dict, cache: Path, labels: list[Path] | None = None, t1w: bool = False,
                ignore_percentile: float | None = None) -> dict:
    """A real FLAIR in template space (cached) and either its manual label or the voxels left out of the loss.

    With ``t1w``, the session's T1w (when there is one, :func:`companion_path`) is co-registered to the
    FLAIR and carried to the template with it (:func:`bids_app.imaging.template_space.companion_to_template`)
    and returned as ``"t1w"``; a canvas without one has no ``"t1w"`` key.

    Unlabelled canvas: ``{"image", "ignore"}``; bright white matter (above :func:`ignore_threshold`,
    2 IQR unless ``ignore_percentile`` lowers it; template WM probability > 0.2, dilated by 2 voxels)
    may hold real, unlabelled lesions, so it is neither a positive nor a negative example. Labelled canvas (``labels`` given):
    ``{"image", "label", "ignore"}`` where ``label`` is the mean of the raters' masks carried to the
    template grid with the same affine (linear interpolation, so a soft target in [0, 1]: rater
    disagreement and partial volume both stay soft) and nothing is ignored.
    """
    cache.mkdir(parents=True, exist_ok=True)
    stem = path.name.replace(".nii.gz", "")
    f, fl, ft = cache / f"{stem}.npy", cache / f"{stem}_label.npy", cache / f"{stem}_T1w.npy"
    t1_path = companion_path(path) if t1w else None
    if not f.exists() or (labels and not fl.exists()) or (t1_path and not ft.exists()):
        tpl_img = sitk.ReadImage(str(templates.get_template_file("T1w")))
        flair = sitk.ReadImage(str(path))
        tsi = to_template_space(
            flair, tpl_img, sitk.ReadImage(str(templates.get_template_file("mask", desc="brain"))), threads=2)
        np.save(f, tsi.data)
        # The transform too, so that a map on the template grid can be scored on the native grid
        # later without registering again (cross-validation scores every case many times).
        sitk.WriteTransform(tsi.transform, str(cache / f"{stem}.tfm"))
        if t1_path:
            np.save(ft, companion_to_template(
                sitk.ReadImage(str(t1_path)), flair, tsi.transform, tpl_img,
                sitk.ReadImage(str(templates.get_template_file("mask", desc="brain"))), threads=2).data)
        if labels:
            soft = np.zeros(tsi.data.shape, np.float32)
            for lab in labels:
                m = sitk.Cast(sitk.ReadImage(str(lab)) > 0, sitk.sitkFloat32)
                m.CopyInformation(flair)  # labels share the FLAIR grid; headers may differ in float noise
                soft += np.transpose(sitk.GetArrayFromImage(
                    resample_to(m, tpl_img, tsi.transform, "linear")), (2, 1, 0))
            np.save(fl, np.clip(soft / len(labels), 0, 1))
    img = np.load(f)
    extra = {"t1w": np.load(ft)} if t1_path else {}
    if labels:
        return {"image": img, "label": np.load(fl), "ignore": np.zeros(img.shape, bool), **extra}
    above = ignore_threshold(img, tpl["wm"], ignore_percentile)
    ignore = ndimage.binary_dilation((img > above) & (tpl["wm"] > 0.2), iterations=2)
    LOGGER.info("%s: unlabelled, white matter above %.2f IQR left out of the loss (%d voxels)", path.name, above,
                int(ignore.sum()))
    return {"image": img, "ignore": ignore, **extra}
