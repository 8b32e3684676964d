"""Visual QC of the ``ich`` task: its figures, its section of the participant report, its group row.

Figures (PNG, written through the derivatives writer by the workflow's ``figures`` node): ``axial`` (the
axial slices of the CT holding the most haemorrhage voxels, up to 12, or evenly spaced slices through the
head when nothing was found, in the model's brain window, the mask outlined in yellow and the
probability in colour) and ``thumb`` (the slice with the most haemorrhage, for the group page).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from bids_app.reports import html
from bids_app.reports.records import ImageRecord

VIEWS = ("axial", "thumb")

#: Per-image values the group page screens for outliers (robust z-score), with their names.
OUTLIER_MEASURES = {"total_volume_ml": "total haemorrhage volume (mL)",
                    "intracranial_volume_ml": "intracranial volume (mL)"}

#: Shown when the model names no brain window (HU).
DEFAULT_BRAIN_WINDOW = (0.0, 80.0)


def brain_window(input_meta: dict) -> list[float]:
    """The HU window ``[lo, hi]`` named ``brain`` in the model's ``input.windows`` (else its first window)."""
    windows = input_meta.get("windows") or [DEFAULT_BRAIN_WINDOW]
    names = list(input_meta.get("window_names") or [])
    return [float(v) for v in windows[names.index("brain") if "brain" in names else 0]]


def render(image_file: str, prob_file: str, mask_file: str, window: Sequence[float] = DEFAULT_BRAIN_WINDOW
           ) -> dict[str, bytes]:
    """The QC figures of one haemorrhage segmentation, on the CT's native grid shown in RAS+; the CT is
    clipped to ``window`` (HU) so that the grey scale is that window."""
    import nibabel as nib

    from bids_app.reports import mosaic

    image = nib.as_closest_canonical(nib.load(image_file))
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    hu = np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3])
    prob = np.asarray(nib.as_closest_canonical(nib.load(prob_file)).dataobj, dtype=np.float32)
    mask = np.asarray(nib.as_closest_canonical(nib.load(mask_file)).dataobj) > 0
    lo, hi = float(window[0]), float(window[1])
    shown = np.clip(hu, lo, hi)  # air and bone at the window's ends: the mosaic's percentile scale is the window
    head = hu > -300
    box = mosaic.crop_box(head, zooms, 5.0) if head.any() else None
    slices = mosaic.pick_slices(mask, 12, by_content=True) if mask.any() else mosaic.pick_slices(head, 12)
    from bids_app.ich.measures import effective_zooms, volume_ml

    volume = volume_ml(mask, effective_zooms(image.affine))
    title = (f"{volume:.1f} mL: slices with the most haemorrhage" if mask.any() else "no haemorrhage found") + \
        f" (window {lo:g} to {hi:g} HU, R on the left)"
    return {
        "axial": mosaic.axial_mosaic(shown, zooms, slices, mask=mask, prob=prob, box=box, title=title),
        "thumb": mosaic.thumbnail(shown, zooms, slices[0] if mask.any() else slices[len(slices) // 2], mask=mask,
                                  box=box),
    }


def volumes(record: ImageRecord) -> pd.DataFrame | None:
    """The image's per-image volume table (one row), or ``None``."""
    path = record.output_dir / record.table
    return pd.read_csv(path, sep="\t") if path.is_file() else None


def summary(record: ImageRecord) -> dict[str, object]:
    """The values the group page lists for this image (and screens with :data:`OUTLIER_MEASURES`)."""
    table = volumes(record)
    row = table.iloc[0].to_dict() if table is not None and len(table) else {}
    types = {k: v for k, v in row.items() if k.endswith("_volume_ml") and k not in ("total_volume_ml",
                                                                                      "intracranial_volume_ml")}
    largest = max(types, key=lambda k: types[k]) if types and max(types.values()) > 0 else None
    return {"total_volume_ml": row.get("total_volume_ml"), "component_count": row.get("component_count"),
            "main_type": largest[: -len("_volume_ml")] if largest else "none",
            "intracranial_volume_ml": row.get("intracranial_volume_ml")}


def section(record: ImageRecord) -> str:
    """The participant report's section of one CT: figure, volumes in total and per type."""
    parts = ["<div class=\"figs\">"]
    if record.exists(record.figure("axial")):
        parts.append(html.figure(str(record.figure("axial")),
                                 "Haemorrhage outlined (yellow), probability in colour; CT in the brain window"))
    parts.append("</div>")
    table = volumes(record)
    if table is not None and len(table):
        row = table.iloc[0]
        parts.append(html.key_values([("total haemorrhage (mL)", row.get("total_volume_ml")),
                                      ("components", row.get("component_count")),
                                      ("intracranial volume (mL)", row.get("intracranial_volume_ml")),
                                      ("haemorrhage (% of intracranial volume)", row.get("haemorrhage_percent")),
                                      ("threshold", row.get("threshold")),
                                      ("smallest component kept (mL)", row.get("min_component_ml")),
                                      ("input", row.get("input_kind"))], digits=3))
        types = [c for c in table.columns if c.endswith("_volume_ml") and c not in ("total_volume_ml",
                                                                                     "intracranial_volume_ml")]
        per_type = pd.DataFrame({"type": [c[: -len("_volume_ml")] for c in types],
                                 "volume (mL)": [row[c] for c in types]})
        parts.append("<h4>Per type</h4>" + html.table(per_type, digits=3))
    return "".join(parts)
