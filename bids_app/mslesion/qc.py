"""Visual QC of the ``mslesion`` task: its figures, its section of the participant report, its group row.

Figures (PNG, written through the derivatives writer by the workflow's ``figures`` node):
``axial`` (the axial slices of the FLAIR holding the most lesion voxels, up to 12, each lesion outlined
in yellow and numbered in magenta with its ``lesion_id`` of the per-lesion table, the lesion
probability in colour), ``overview`` (evenly spaced axial slices through the whole brain, so that
missed lesions show too) and ``thumb`` (the slice with the most lesion voxels).
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from bids_app.mslesion.regions import DEEP_WHITE_MATTER, INFRATENTORIAL, JUXTACORTICAL, PERIVENTRICULAR, UNASSIGNED
from bids_app.reports import html
from bids_app.reports.records import ImageRecord

VIEWS = ("axial", "overview", "thumb")
REGIONS = (PERIVENTRICULAR, JUXTACORTICAL, INFRATENTORIAL, DEEP_WHITE_MATTER, UNASSIGNED)

#: Per-image values the group page screens for outliers (robust z-score), with their names.
OUTLIER_MEASURES = {"total_volume_ml": "total lesion volume (mL)", "lesion_count": "lesion count"}


def render(image_file: str, prob_file: str, mask_file: str, min_lesion_mm3: float) -> dict[str, bytes]:
    """The QC figures of one lesion segmentation, on the FLAIR's native grid shown in RAS+.

    Lesions are numbered as in the per-lesion table: :func:`~bids_app.mslesion.measures.label_lesions`
    of the mask with the same minimum volume (1 = largest).
    """
    import nibabel as nib

    from bids_app.mslesion.measures import label_lesions
    from bids_app.reports import mosaic

    native = nib.load(mask_file)
    labels, _ = label_lesions(np.asarray(native.dataobj) > 0, native.header.get_zooms()[:3], min_lesion_mm3)
    labels = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(labels.astype(np.int32), native.affine)).dataobj)
    image = nib.as_closest_canonical(nib.load(image_file))
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    data = np.asarray(image.dataobj, dtype=np.float32)
    prob = np.asarray(nib.as_closest_canonical(nib.load(prob_file)).dataobj, dtype=np.float32)
    head = data > np.percentile(data, 60)
    box = mosaic.crop_box(head, zooms, 5.0)
    lesion = labels > 0
    busiest = mosaic.pick_slices(lesion, 12, by_content=True) if lesion.any() else mosaic.pick_slices(head, 6)
    n = int(labels.max()) if lesion.any() else 0
    return {
        "axial": mosaic.axial_mosaic(data, zooms, busiest, mask=lesion, prob=prob, labels=labels, box=box,
                                     title=f"{n} lesion(s): slices with the most lesion voxels (R on the left)"),
        "overview": mosaic.axial_mosaic(data, zooms, mosaic.pick_slices(head, 12), mask=lesion, box=box,
                                        title="evenly spaced axial slices through the brain"),
        "thumb": mosaic.thumbnail(data, zooms, busiest[0] if lesion.any() else busiest[len(busiest) // 2],
                                  mask=lesion, box=box),
    }


def _table(record: ImageRecord, extra: str) -> pd.DataFrame | None:
    path = record.output_dir / record.output(extra, "morph", ".tsv")
    return pd.read_csv(path, sep="\t") if path.is_file() else None


def summary(record: ImageRecord) -> dict[str, object]:
    """The values the group page lists for this image (and screens with :data:`OUTLIER_MEASURES`)."""
    table = _table(record, "summary")
    row = table.iloc[0].to_dict() if table is not None and len(table) else {}
    return {"lesion_count": row.get("lesion_count"), "total_volume_ml": row.get("total_volume_ml"),
            "periventricular_count": row.get(f"{PERIVENTRICULAR}_count"),
            "juxtacortical_count": row.get(f"{JUXTACORTICAL}_count"),
            "infratentorial_count": row.get(f"{INFRATENTORIAL}_count")}


def section(record: ImageRecord) -> str:
    """The participant report's section of one FLAIR: figures, lesion load, regions, lesions, validation."""
    parts = ["<div class=\"figs\">"]
    for view, caption in (("axial", "Lesions outlined (yellow) and numbered as in the lesion table; probability "
                                    "in colour"),
                          ("overview", "Evenly spaced slices through the brain (outlines of the detected lesions)")):
        if record.exists(record.figure(view)):
            parts.append(html.figure(str(record.figure(view)), caption))
    parts.append("</div>")
    load = _table(record, "summary")
    if load is not None and len(load):
        row = load.iloc[0]
        parts.append(html.key_values([("lesions", row.get("lesion_count")),
                                      ("total volume (mL)", row.get("total_volume_ml")),
                                      ("smallest lesion counted (mm³)", row.get("min_lesion_mm3"))], digits=3))
        regions = pd.DataFrame({"region": [r.replace("_", " ") for r in REGIONS],
                                "lesions": [row.get(f"{r}_count") for r in REGIONS],
                                "volume (mL)": [row.get(f"{r}_volume_ml") for r in REGIONS]})
        parts.append("<h4>Per region</h4>" + html.table(regions, digits=3))
    lesions = _table(record, "lesions")
    if lesions is not None and len(lesions):
        shown = lesions[["lesion_id", "volume_mm3", "region", "x_mm", "y_mm", "z_mm"]]
        parts.append("<h4>Lesions (numbers as in the figure)</h4>" + html.table(shown, digits=1, max_rows=40))
    validation = _table(record, "validation")
    if validation is not None and len(validation):
        parts.append("<h4>Agreement with manual labels</h4>" + html.table(validation, digits=3))
    return "".join(parts)

