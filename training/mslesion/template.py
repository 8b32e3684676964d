"""The MNI152NLin2009aSym template on its 1 mm grid (RAS, 197 x 233 x 189, numpy order ``(X, Y, Z)``):
T1w image, tissue probabilities, brain mask and prior; its closed sulci; the real lesion masks carried
onto it."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_app.imaging import templates
from bids_app.mslesion.regions import infratentorial_mask


def load_template() -> dict:
    """Template arrays ``(X, Y, Z)``: T1w image, WM/GM probabilities, brain mask, prior, affine, the
    infratentorial brain (:func:`bids_app.mslesion.regions.infratentorial_mask`)."""
    def arr(path):
        img = nib.load(str(path))
        return np.asarray(img.dataobj, dtype=np.float32), img.affine

    t1, affine = arr(templates.get_template_file("T1w"))
    wm, _ = arr(templates.get_template_file("probseg", label="WM"))
    gm, _ = arr(templates.get_template_file("probseg", label="GM"))
    brain, _ = arr(templates.get_template_file("mask", desc="brain"))
    brain = brain > 0
    # T1w intensity of pure CSF, GM and WM (medians where a tissue probability is >= 0.9).
    csf = brain & (1 - wm - gm >= 0.9)
    knots = tuple(float(np.median(t1[m])) for m in (csf, brain & (gm >= 0.9), brain & (wm >= 0.9)))
    return {"t1": t1, "wm": wm, "gm": gm, "brain": brain, "prior": (wm >= 0.5).astype(np.float32),
            "affine": affine, "t1_knots": knots, "infratentorial": infratentorial_mask(brain, affine)}


def sulcal_ridges(wm: np.ndarray, gm: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Boolean ``(X, Y, Z)`` mask of the template's closed sulci (1 mm grid).

    Inside grey matter (probability > 0.3) a closed sulcus is where the Euclidean distance to white
    matter (probability >= 0.5) stops growing: a voxel is kept when it is at least 1.5 mm from white
    matter and no 26-neighbour is more than 0.5 mm farther. The distance keeps growing past the
    outer brain surface (it is computed on the whole grid), so the pial surface is not a ridge.
    """
    dist = ndimage.distance_transform_edt(wm < 0.5).astype(np.float32)
    return (dist >= ndimage.maximum_filter(dist, 3) - 0.5) & (dist >= 1.5) & (gm > 0.3) & brain


def lesion_masks_in_template(folder: Path, tpl: dict) -> list[np.ndarray]:
    """The real lesion masks resampled (nearest) onto the template grid through world coordinates."""
    out = []
    for path in sorted(folder.glob("*_mask.nii.gz")):
        img = nib.load(str(path))
        vox = np.linalg.inv(img.affine) @ tpl["affine"]
        data = np.asarray(img.dataobj) > 0
        m = ndimage.affine_transform(data.astype(np.uint8), vox[:3, :3], vox[:3, 3],
                                     output_shape=tpl["brain"].shape, order=0)
        out.append((m > 0) & tpl["brain"])
    return out
