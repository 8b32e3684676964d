"""What the participant level reports for one lesion mask: the three tables and their column definitions.

:func:`lesion_report` combines :mod:`bids_app.mslesion.measures` (lesions, load, agreement with manual
labels) and :mod:`bids_app.mslesion.regions` (region of each lesion, load per region); the column
dictionaries are the BIDS sidecars of the tables.
"""

from __future__ import annotations

import numpy as np

from bids_app.mslesion.measures import (
    DEFAULT_MIN_VOLUME_MM3,
    label_lesions,
    lesion_load,
    lesion_table,
    segmentation_metrics,
)
from bids_app.mslesion.regions import (
    DEEP_WHITE_MATTER,
    INFRATENTORIAL,
    JUXTACORTICAL,
    PERIVENTRICULAR,
    UNASSIGNED,
    assign_region,
    regional_load,
)

# ---------------------------------------------------------------------------- participant report
#: Column descriptions (BIDS tabular sidecars) of the per-lesion table written by the app.
LESION_COLUMNS = {
    "lesion_id": {"Description": "Lesion number, 1 = largest (26-connected component of the mask)"},
    "volume_mm3": {"Description": "Lesion volume", "Units": "mm^3"},
    "volume_ml": {"Description": "Lesion volume", "Units": "mL"},
    "centroid_i": {"Description": "Centroid, first voxel index of the source image grid (0-based)"},
    "centroid_j": {"Description": "Centroid, second voxel index (0-based)"},
    "centroid_k": {"Description": "Centroid, third voxel index (0-based)"},
    "x_mm": {"Description": "Centroid in the source image's world space (NIfTI RAS+)", "Units": "mm"},
    "y_mm": {"Description": "Centroid in the source image's world space (NIfTI RAS+)", "Units": "mm"},
    "z_mm": {"Description": "Centroid in the source image's world space (NIfTI RAS+)", "Units": "mm"},
    "region": {"Description": "Region holding most of the lesion's voxels (template regions warped to the "
                              "subject; ties: infratentorial > periventricular > juxtacortical > deep white matter)",
               "Levels": {INFRATENTORIAL: "below the tentorium (geometric approximation in MNI space)",
                          PERIVENTRICULAR: "within 5 mm of the lateral and third ventricles",
                          JUXTACORTICAL: "white matter within 3 mm of the cortex",
                          DEEP_WHITE_MATTER: "other supratentorial white matter",
                          UNASSIGNED: "outside all four regions"}},
}


#: Column descriptions of the one-row summary table.
SUMMARY_COLUMNS = {
    "lesion_count": {"Description": "Number of lesions (connected components of at least min_lesion_mm3)"},
    "total_volume_ml": {"Description": "Total lesion volume", "Units": "mL"},
    "mean_volume_ml": {"Description": "Mean lesion volume (n/a without lesions)", "Units": "mL"},
    "median_volume_ml": {"Description": "Median lesion volume (n/a without lesions)", "Units": "mL"},
    **{f"{region}_{what}": {"Description": f"{text} ({region.replace('_', ' ')})", **units}
       for region in (PERIVENTRICULAR, JUXTACORTICAL, INFRATENTORIAL, DEEP_WHITE_MATTER, UNASSIGNED)
       for what, text, units in (("count", "Lesions assigned to the region", {}),
                                 ("volume_ml", "Volume of the lesions assigned to the region", {"Units": "mL"}))},
    "min_lesion_mm3": {"Description": "Smallest lesion counted", "Units": "mm^3"},
}


#: Column descriptions of the validation table (one row per manual label found for the image).
VALIDATION_COLUMNS = {
    "reference": {"Description": "File name of the manual label (derivatives/labels)"},
    "dice": {"Description": "Dice of the lesion mask with the manual label, lesions >= min_lesion_mm3 in both"},
    "lesion_precision": {"Description": "Predicted lesions overlapping a manual lesion / predicted lesions"},
    "lesion_recall": {"Description": "Manual lesions overlapped by a predicted lesion / manual lesions"},
    "lesion_f1": {"Description": "Harmonic mean of lesion precision and recall"},
    "n_pred": {"Description": "Predicted lesions"},
    "n_truth": {"Description": "Manual lesions"},
    "pred_volume_ml": {"Description": "Predicted lesion volume", "Units": "mL"},
    "truth_volume_ml": {"Description": "Manual lesion volume", "Units": "mL"},
    "volume_error_percent": {"Description": "100 (predicted - manual) / manual volume", "Units": "%"},
}


def lesion_report(mask: np.ndarray, zooms, affine: np.ndarray, regions: dict[str, np.ndarray],
                  references: dict[str, np.ndarray] | None = None,
                  min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3) -> tuple[list[dict], dict, list[dict]]:
    """Everything the participant level reports for one lesion mask ``(X, Y, Z)`` on the source grid.

    ``regions``: the four template regions warped to the same grid (see :func:`template_regions`);
    ``references``: manual masks on the same grid, keyed by a name (e.g. the file name).
    Returns ``(lesion_rows, summary, validation_rows)`` with the columns of :data:`LESION_COLUMNS`,
    :data:`SUMMARY_COLUMNS` and :data:`VALIDATION_COLUMNS`.
    """
    labels, _ = label_lesions(mask, zooms, min_volume_mm3)
    where = assign_region(labels, regions)
    rows = []
    for row in lesion_table(labels, zooms, affine):
        index = row.pop("index")
        row.pop("n_voxels")
        rows.append({"lesion_id": index, **row, "region": where[index]})
    summary = {f"lesion_{k}" if k == "count" else k: v for k, v in lesion_load(labels, zooms).items()}
    for region, load in regional_load(labels, regions, zooms).items():
        summary[f"{region}_count"] = load["n_lesions"]
        summary[f"{region}_volume_ml"] = load["assigned_volume_ml"]
    summary["min_lesion_mm3"] = float(min_volume_mm3)
    validation = []
    for name, truth in (references or {}).items():
        m = segmentation_metrics(labels > 0, truth, zooms, min_volume_mm3)
        validation.append({"reference": name, **{k: m[k] for k in VALIDATION_COLUMNS if k in m}})
    return rows, summary, validation
