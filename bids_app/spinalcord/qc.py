"""Visual QC of the ``spinalcord`` task: its figures, its section of the participant report, its group row.

Figures (PNG, written through the derivatives writer by the workflow's ``figures`` node):
``axial`` (a mosaic of axial slices evenly spaced along the cord, cropped 20 mm around it, mask contour
in yellow, soft segmentation in colour), ``sagittal`` (the sagittal plane through the cord's median
left-right position, whole field of view) and ``thumb`` (one axial slice at mid-cord, for the group
page).
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from bids_app.reports import html
from bids_app.reports.records import ImageRecord
from bids_app.spinalcord.measures import level_name

#: Figure views, in the order they appear in the report.
VIEWS = ("sagittal", "axial", "thumb")

#: Per-image values the group page screens for outliers (robust z-score), with their names.
OUTLIER_MEASURES = {"csa_mean_mm2": "mean CSA (mm²)"}


def extra_flags(records: list[ImageRecord]) -> dict[str, list[str]]:
    """The group page's hook: the images of participants whose CSA at a vertebral level drifts from the
    other participants' (:func:`bids_app.spinalcord.group.drift_flags`), with the reason."""
    from bids_app.spinalcord.group import drift_flags

    return drift_flags(records)


def render(image_file: str, soft_file: str, mask_file: str) -> dict[str, bytes]:
    """The three QC figures of one cord segmentation, all on the image's native grid shown in RAS+."""
    import nibabel as nib

    from bids_app.reports import mosaic

    image = nib.as_closest_canonical(nib.load(image_file))
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    data = np.asarray(image.dataobj, dtype=np.float32)
    soft = np.asarray(nib.as_closest_canonical(nib.load(soft_file)).dataobj, dtype=np.float32)
    mask = np.asarray(nib.as_closest_canonical(nib.load(mask_file)).dataobj) > 0
    slices = mosaic.pick_slices(mask, 12)
    box = mosaic.crop_box(mask, zooms, 20.0)
    i = int(np.median(np.argwhere(mask)[:, 0])) if mask.any() else data.shape[0] // 2
    mid = slices[len(slices) // 2]
    return {
        "axial": mosaic.axial_mosaic(data, zooms, slices, mask=mask, prob=soft, box=box,
                                     title="axial slices along the cord (R on the left)"),
        "sagittal": mosaic.sagittal_view(data, zooms, i, mask=mask, prob=soft,
                                         title=f"sagittal, x={i} (anterior to the right)"),
        "thumb": mosaic.thumbnail(data, zooms, mid, mask=mask, box=box),
    }


def _levels(record: ImageRecord) -> pd.DataFrame | None:
    path = record.output_dir / record.output("levels", "morph", ".tsv")
    if not path.is_file():
        return None
    table = pd.read_csv(path, sep="\t", dtype={"level": str})
    table.insert(0, "name", table["level"].map(level_name))
    return table


def summary(record: ImageRecord) -> dict[str, object]:
    """The values the group page lists for this image (and screens with :data:`OUTLIER_MEASURES`)."""
    side = record.sidecar
    c2c3 = None
    levels = _levels(record)
    if levels is not None:
        rows = levels[levels["level"].isin(["2", "3"])]
        if len(rows) == 2 and rows["n_slices"].sum() > 0:
            c2c3 = float(np.average(rows["csa_mean_mm2"], weights=rows["n_slices"]))
    return {"csa_mean_mm2": side.get("CSAMeanMm2"), "csa_c2c3_mm2": c2c3, "slices_with_cord": side.get("SlicesWithCord"),
            "levels_from": side.get("LevelSource") or "10 mm slabs (no disc labels)"}


def section(record: ImageRecord) -> str:
    """The participant report's section of one cord image: figures, CSA per level, validation."""
    values = summary(record)
    parts = ["<div class=\"figs\">"]
    for view, caption in (("sagittal", "Sagittal plane through the cord: mask contour (yellow), soft segmentation"),
                          ("axial", "Axial slices evenly spaced along the cord (cropped 20 mm around it)")):
        if record.exists(record.figure(view)):
            parts.append(html.figure(str(record.figure(view)), caption))
    parts.append("</div>")
    parts.append(html.key_values([("mean CSA (mm², soft, angle-corrected)", values["csa_mean_mm2"]),
                                  ("mean CSA at C2-C3 (mm²)", values["csa_c2c3_mm2"]),
                                  ("slices with cord", values["slices_with_cord"]),
                                  ("levels from", values["levels_from"])]))
    levels = _levels(record)
    if levels is not None:
        parts.append("<h4>CSA per level</h4>" + html.table(levels.drop(columns=["level"]), digits=1))
    side = record.sidecar
    if "ManualDice" in side:
        parts.append("<h4>Agreement with the manual mask</h4>" + html.key_values([
            ("Dice", side.get("ManualDice")), ("manual mean CSA (mm²)", side.get("ManualCSAMeanMm2")),
            ("predicted mean CSA on the same slices (mm²)", side.get("CSAMeanSameSlicesMm2"))], digits=3))
    return "".join(parts)

