"""The real evaluation cases and how a template-grid map is scored on them: each FLAIR (and T1w) carried
to the template as the app does, and a map ``(X, Y, Z)`` on the 1 mm template grid resampled back to
the native FLAIR grid and compared with the manual labels (Dice, lesion-wise F1, volumes in mL)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from bids_app.imaging.grid import resample_to
from bids_app.imaging.template_space import companion_to_template, to_template_space
from bids_app.mslesion import measures
from training.mslesion.canvases import companion_path


def evaluation_cases(d: Path) -> list[dict]:
    """The real evaluation cases under the bids-dev root ``d``: ``{"flair", "labels"}`` (paths as str);
    sub-mslong01's two sessions have no labels (volumes only)."""
    return [
        {"flair": str(d / "sub-ms07/anat/sub-ms07_FLAIR.nii.gz"),
         "labels": [str(d / "derivatives/labels/sub-ms07/anat/sub-ms07_FLAIR_label-lesion_seg.nii.gz")]},
        {"flair": str(d / "sub-isbi03/anat/sub-isbi03_FLAIR.nii.gz"),
         "labels": [str(d / f"derivatives/labels/sub-isbi03/anat/sub-isbi03_FLAIR_label-lesion_desc-rater{r}_seg.nii.gz")
                    for r in (1, 2)]},
    ] + [{"flair": str(d / f"sub-mslong01/ses-0{s}/anat/sub-mslong01_ses-0{s}_FLAIR.nii.gz"), "labels": []}
         for s in (1, 2)]


def case_in_template(case: dict, config: dict, tpl_img, tpl_mask) -> tuple:
    """``(flair, tsi, t1, seconds)`` of one evaluation case: the FLAIR (SimpleITK), its
    :func:`bids_app.imaging.template_space.to_template_space` result, the session's T1w in template space when
    the config has a T1w channel (else ``None``: that channel is zeros, as in training and in the app)
    and the stage seconds."""
    flair = sitk.ReadImage(case["flair"])
    tsi = to_template_space(flair, tpl_img, tpl_mask, threads=2)
    seconds = {k: round(v, 1) for k, v in tsi.seconds.items()}
    t1, t1_path = None, companion_path(Path(case["flair"])) if config.get("t1w") else None
    if t1_path:
        ct = companion_to_template(sitk.ReadImage(str(t1_path)), flair, tsi.transform,
                                                 tpl_img, tpl_mask, threads=2)
        t1 = ct.data
        seconds["t1w_n4"] = round(ct.seconds["n4"], 1)
        seconds["t1w_coregistration"] = round(ct.seconds["coregistration"], 1)
    return flair, tsi, t1, seconds


def native_rows(model: str, prob: np.ndarray, case: dict, flair, tsi, tpl_img, threshold: float) -> list[dict]:
    """Scores of a template-grid map ``prob`` ``(X, Y, Z)`` for one case, on the native FLAIR grid:
    the map is resampled back (linear) and thresholded at ``threshold``; one row per manual label
    (Dice, lesion-wise F1, volumes), or one volume row when the case has none."""
    img = sitk.GetImageFromArray(np.transpose(prob, (2, 1, 0)))
    img.CopyInformation(tpl_img)
    native = resample_to(img, flair, tsi.transform.GetInverse(), "linear")
    pred = np.transpose(sitk.GetArrayFromImage(native), (2, 1, 0)) >= threshold
    if not case["labels"]:  # no manual label: the volume, for the longitudinal consistency check
        load = measures.lesion_load(pred, flair.GetSpacing())
        return [{"case": Path(case["flair"]).name, "model": model, "lesion_count": load["count"],
                 "pred_ml": round(load["total_volume_ml"], 2)}]
    rows = []
    for label in case["labels"]:
        lab = nib.load(label)
        m = measures.segmentation_metrics(pred, np.asarray(lab.dataobj) > 0, lab.header.get_zooms()[:3])
        rows.append({"case": Path(label).name, "model": model, "dice": round(m["dice"], 3),
                     "lesion_f1": round(m["lesion_f1"], 3), "precision": round(m["lesion_precision"], 3),
                     "recall": round(m["lesion_recall"], 3), "pred_ml": round(m["pred_volume_ml"], 2),
                     "truth_ml": round(m["truth_volume_ml"], 2)})
    return rows
