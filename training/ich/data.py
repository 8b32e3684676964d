"""Head CTs on the model grid, cached once, for pre-training, fine-tuning and evaluation.

A *collection* is a folder of CTs in HU: a BIDS(-like) dataset (``sub-*/[ses-*/]ct/*_ct.nii.gz``, pixel
labels, when there are any, under ``derivatives/labels/`` as ``<stem>_label-ICH_dseg.nii.gz`` (types) or
``<stem>_label-ICH_mask.nii.gz`` (binary)) or any folder of ``*.nii.gz`` files (then without labels).
Scan-level weak labels ("contains a bleed", 1/0) may be given in a TSV ``weak_labels.tsv``
(``participant_id`` or ``image`` + ``bleed``) at the collection root; pixel labels imply them.

Each scan is put through the app's preprocessing (:mod:`bids_app.ich.preprocess`: HU check, air around
a skull-stripped brain, the model grid, the intracranial mask) and cached as ``<cache>/<stem>.npz``:
``hu`` float16 ``(X, Y, Z)``, ``label`` uint8 (255 = no pixel label), ``inside`` uint8, ``affine``
float64 4x4, ``weak`` int8 (-1 unknown). Arrays are axis-aligned RAS at ``spacing_mm``.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_app.ich import preprocess

LOG = logging.getLogger("training.ich.data")
NO_LABEL = 255


@dataclass
class Scan:
    """One cached scan (see the module docstring for the arrays)."""
    stem: str
    hu: np.ndarray
    label: np.ndarray | None
    inside: np.ndarray
    affine: np.ndarray
    weak: int

    @property
    def bleed_slices(self) -> np.ndarray:
        """Axial slice indices holding a labelled bleed voxel (empty without labels)."""
        if self.label is None:
            return np.zeros(0, int)
        return np.flatnonzero((self.label > 0).any(axis=(0, 1)))


def find_images(root: Path) -> list[Path]:
    """CT images of a collection: BIDS ``ct/*_ct.nii*`` when present, else every ``*.nii*`` (not in
    ``derivatives``)."""
    root = Path(root)
    bids = sorted(p for p in root.glob("sub-*/**/ct/*_ct.nii*") if "derivatives" not in p.parts)
    if bids:
        return bids
    return sorted(p for p in root.rglob("*.nii*") if "derivatives" not in p.relative_to(root).parts)


def _stem(path: Path) -> str:
    return path.name.split(".nii")[0]


def label_path(root: Path, image: Path) -> Path | None:
    """The pixel label of ``image`` under ``root/derivatives/labels`` (dseg preferred), or None."""
    rel = image.parent.relative_to(root)
    folder = Path(root) / "derivatives" / "labels" / rel
    for suffix in ("_label-ICH_dseg", "_label-ICH_mask"):
        for ext in (".nii.gz", ".nii"):
            candidate = folder / f"{_stem(image)}{suffix}{ext}"
            if candidate.is_file():
                return candidate
    return None


def weak_labels(root: Path) -> dict[str, int]:
    """``stem or participant_id -> 0/1`` from ``root/weak_labels.tsv`` (empty when there is none)."""
    path = Path(root) / "weak_labels.tsv"
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {(row.get("image") or row["participant_id"]): int(row["bleed"])
                for row in csv.DictReader(handle, delimiter="\t")}


def prepare(image: Path, label: Path | None, spacing_mm: float, in_plane: int) -> dict:
    """The cached arrays of one CT (module docstring); HU checked like the app does."""
    img = nib.load(str(image))
    data = np.asarray(img.dataobj, dtype=np.float32)
    kind = preprocess.check_hu(data, image.name)
    data = preprocess.with_air(data, kind)
    grid, shape = preprocess.model_grid(data, img.affine, spacing_mm, in_plane)
    hu = preprocess.resample(data, img.affine, grid, shape, order=1, cval=-1024.0)
    out = {"hu": hu.astype(np.float16), "inside": preprocess.intracranial_mask(hu, spacing_mm).astype(np.uint8),
           "affine": grid, "label": np.full(shape, NO_LABEL, np.uint8)}
    if label is not None:
        lab = np.asarray(nib.load(str(label)).dataobj).astype(np.uint8)
        out["label"] = preprocess.resample(lab, nib.load(str(label)).affine, grid, shape, order=0, cval=0)
    return out


def load_collection(root: Path, cache: Path, spacing_mm: float = 2.0, in_plane: int = 128,
                    pixel_labels: bool = True) -> list[Scan]:
    """Every scan of collection ``root``, prepared once into ``cache`` (reused when present).

    ``pixel_labels=False`` ignores pixel labels (an unlabelled pool); weak labels then come from
    ``weak_labels.tsv`` or, for a synthetic set, from the pixel labels' presence (recorded, but used only
    by the weakly supervised objective)."""
    root, cache = Path(root), Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    weak = weak_labels(root)
    scans = []
    for image in find_images(root):
        stem = _stem(image)
        path = cache / f"{stem}.npz"
        lab_path = label_path(root, image)
        if not path.is_file():
            arrays = prepare(image, lab_path, spacing_mm, in_plane)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, **arrays)
            tmp.replace(path)
        with np.load(path) as z:
            label = z["label"]
            has_label = lab_path is not None and pixel_labels
            known = weak.get(stem, weak.get(stem.split("_")[0], -1))
            if known < 0 and lab_path is not None:
                known = int((label > 0).any() and (label != NO_LABEL).all())
            scans.append(Scan(stem=stem, hu=z["hu"], label=label if has_label else None,
                              inside=z["inside"].astype(bool), affine=z["affine"], weak=int(known)))
    LOG.info("%d scans from %s (%d with pixel labels)", len(scans), root, sum(s.label is not None for s in scans))
    return scans
