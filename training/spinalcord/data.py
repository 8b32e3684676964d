"""Pools of 2D cord slices on the fine (0.5 mm) in-plane grid, stored as fixed-size crops centred on
the cord: real labelled slices, synthetic-contrast slices from the same anatomy, and tissue-fraction
slices of the PAM50 template. Arrays are RAS+ with the slice axis (inferior-superior) first."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from bids_app.spinalcord.predict import to_fine

LOGGER = logging.getLogger(__name__)


@dataclass
class SlicePool:
    """``image``: (N, P, P) real intensities or ``None``; ``fractions``: (N, C, P, P) tissue fractions
    whose channel 0 is the cord; ``target``: (N, P, P) soft cord target; ``weight``: sampling weights;
    ``rim_px``: largest width (pool pixels) of the rater's rim (:func:`training.spinalcord.augment.rim_fade`)."""

    image: torch.Tensor | None
    fractions: torch.Tensor | None
    target: torch.Tensor
    weight: torch.Tensor
    rim_px: float = 0.0


def _canonical(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj, dtype=np.float32), tuple(float(z) for z in img.header.get_zooms()[:3])


def _crop_around(arr: torch.Tensor, centre: tuple[float, float], size: int) -> torch.Tensor:
    """Crop ``(..., X, Y)`` to ``size`` x ``size`` around ``centre`` with zero padding."""
    cx, cy = int(round(centre[0])), int(round(centre[1]))
    half = size // 2
    pad = (size, size, size, size)
    padded = F.pad(arr, pad)
    x0, y0 = cx - half + size, cy - half + size
    return padded[..., x0:x0 + size, y0:y0 + size]


def _quantile_classes(image: np.ndarray, exclude: np.ndarray, n_classes: int) -> np.ndarray:
    """Integer class map (1..n_classes) from intensity quantiles of the pixels outside ``exclude``."""
    values = image[~exclude]
    edges = np.quantile(values, np.linspace(0, 1, n_classes + 1)[1:-1]) if values.size else []
    return np.digitize(image, edges) + 1


def manual_label_path(bids_dir: Path, relpath: str) -> Path:
    """The manual cord mask of an image: ``derivatives/labels/<same folder>/<stem>_label-SC_seg.nii.gz``."""
    src = bids_dir / relpath
    return bids_dir / "derivatives" / "labels" / src.parent.relative_to(bids_dir) / \
        src.name.replace(".nii.gz", "_label-SC_seg.nii.gz")


def real_pools(bids_dir: Path, images: list[str], spacing: float, size: int,
               n_classes: int) -> tuple[SlicePool, SlicePool]:
    """Real labelled slices, and synthetic-contrast slices built from the same anatomy.

    ``images`` are paths relative to ``bids_dir`` of labelled images (labels: :func:`manual_label_path`).
    """
    imgs, reals_target, fracs, per_image = [], [], [], []
    for rel in images:
        data, zooms = _canonical(bids_dir / rel)
        mask, _ = _canonical(manual_label_path(bids_dir, rel))
        fine_img = to_fine(np.moveaxis(data, 2, 0), zooms[:2], spacing)[:, 0]
        fine_lab = to_fine(np.moveaxis((mask > 0.5).astype(np.float32), 2, 0), zooms[:2], spacing)[:, 0].clamp(0, 1)
        kept = 0
        for k in range(fine_img.shape[0]):
            if fine_lab[k].sum() < 4:
                continue
            centre = ndimage.center_of_mass(fine_lab[k].numpy())
            im = _crop_around(fine_img[k], centre, size)
            lab = _crop_around(fine_lab[k], centre, size)
            imgs.append(im)
            reals_target.append(lab)
            classes = _quantile_classes(im.numpy(), lab.numpy() > 0.5, n_classes - 1)
            onehot = np.stack([(classes == c).astype(np.float32) for c in range(1, n_classes)])
            onehot *= (1 - lab.numpy())[None]
            fracs.append(torch.cat([lab[None], torch.from_numpy(onehot)]))
            kept += 1
        LOGGER.info("real %s: %d slices", rel, kept)
        per_image.append(kept)
    target = torch.stack(reals_target)
    # Every image weighs the same whatever its number of slices (a 5-slice MT scan counts as much as
    # a 77-slice T1w), so that thick-slice contrasts are not drowned.
    weight = torch.cat([torch.full((n,), 1.0 / n) for n in per_image])
    real = SlicePool(image=torch.stack(imgs), fractions=None, target=target, weight=weight)
    synth = SlicePool(image=None, fractions=torch.stack(fracs), target=target.clone(), weight=weight.clone())
    return real, synth


def _template_onehot(template_dir: Path, n_classes: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """One-hot tissue classes of the PAM50 template ``(C, X, Y, Z)``: cord, CSF, air, then intensity classes."""
    t2, zooms = _canonical(template_dir / "PAM50_small_t2.nii.gz")
    cord, _ = _canonical(template_dir / "PAM50_small_cord.nii.gz")
    cord = cord > 0.5
    # CSF: bright T2 voxels close to the cord (within ~6 mm in plane), as in the T2 template.
    near = ndimage.binary_dilation(cord, structure=np.ones((13, 13, 1), bool))
    body = t2 > np.quantile(t2, 0.05)
    csf = near & ~cord & (t2 > np.quantile(t2[near & ~cord], 0.5))
    rest = _quantile_classes(t2, cord | csf | ~body, n_classes - 3)
    onehot = np.zeros((n_classes,) + t2.shape, np.float32)
    onehot[0] = cord
    onehot[1] = csf
    onehot[2] = ~body & ~cord & ~csf
    for c in range(1, n_classes - 2):
        onehot[2 + c] = (rest == c) & body & ~cord & ~csf
    return onehot, zooms


def _template_crop(slice_onehot: np.ndarray, zooms: tuple[float, ...], spacing: float, size: int) -> torch.Tensor:
    fine = to_fine(slice_onehot, zooms[:2], spacing)[:, 0]
    crop = _crop_around(fine, ndimage.center_of_mass(fine[0].numpy()), size)
    crop[2] += 1.0 - crop.sum(0).clamp(max=1.0)  # padding outside the template is air
    return crop


def template_classes(template_dir: Path, spacing: float, size: int, n_classes: int) -> torch.Tensor:
    """Thin (one template slice) tissue-class crops ``(M, C, P, P)`` of every template slice with cord."""
    onehot, zooms = _template_onehot(template_dir, n_classes)
    return torch.stack([_template_crop(onehot[:, :, :, k], zooms, spacing, size)
                        for k in range(onehot.shape[3]) if onehot[0, :, :, k].sum() >= 2])


def template_pool(template_dir: Path, spacing: float, size: int, n_classes: int,
                  thickness: tuple[int, ...]) -> SlicePool:
    """Tissue-fraction slices from the PAM50 template: cord, CSF and intensity classes of the rest.

    Thick slices are made by averaging the one-hot maps over ``t`` neighbouring template slices, so the
    cord channel becomes a through-plane partial-volume fraction.
    """
    onehot, zooms = _template_onehot(template_dir, n_classes)
    fractions, targets = [], []
    for t in thickness:
        kernel = np.ones(t) / t
        averaged = ndimage.convolve1d(onehot, kernel, axis=3, mode="nearest")
        step = max(1, t // 2)
        for k in range(0, onehot.shape[3], step):
            if averaged[0, :, :, k].sum() < 2:
                continue
            crop = _template_crop(averaged[:, :, :, k], zooms, spacing, size)
            fractions.append(crop)
            targets.append(crop[0])
    LOGGER.info("template: %d slices", len(fractions))
    fr = torch.stack(fractions)
    return SlicePool(image=None, fractions=fr, target=torch.stack(targets), weight=torch.ones(len(fr)))
