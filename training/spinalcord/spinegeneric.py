"""Synthetic axial cord slices in the spine-generic labelling convention.

``spinegeneric-cord-masks`` holds manually corrected cord masks and manual CSF masks of ten people from
ten sites (0.5 x 0.5 mm in plane, 5 mm slices, no images). Each slice's cord and CSF are pasted into the
surrounding tissue classes of a PAM50 template slice (vertebra, muscles, fat, air), centred on the cord;
template cord/CSF pixels the real CSF does not cover become CSF, so the cord always sits in a CSF sac.
The cord channel is the real manual mask, so a network trained on these slices learns the community's
boundary convention (where a manual rater puts the cord/CSF edge), not that of one dev dataset.

Arrays follow :mod:`training.spinalcord.data`: crops ``(C, P, P)`` on the 0.5 mm grid, channel 0 cord,
channel 1 CSF, then the template's other classes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from bids_app.spinalcord.predict import to_fine
from training.spinalcord.data import SlicePool, _canonical, _crop_around, template_classes

LOGGER = logging.getLogger(__name__)


def subjects(mask_dir: Path, exclude: tuple[str, ...] = ()) -> list[str]:
    """Participants of the spine-generic mask folder that have a T2w cord and CSF mask, minus ``exclude``."""
    found = sorted(p.name for p in Path(mask_dir).glob("sub-*")
                   if (p / "anat" / f"{p.name}_T2w_csfseg-manual.nii.gz").is_file())
    return [s for s in found if s not in exclude]


def load_subject(mask_dir: Path, subject: str, spacing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cord and CSF masks of one participant on the ``spacing`` mm in-plane grid, ``(Z, X, Y)`` each."""
    anat = Path(mask_dir) / subject / "anat"
    cord, zooms = _canonical(anat / f"{subject}_T2w_seg-manual.nii.gz")
    csf, _ = _canonical(anat / f"{subject}_T2w_csfseg-manual.nii.gz")
    cord_f = to_fine(np.moveaxis((cord > 0.5).astype(np.float32), 2, 0), zooms[:2], spacing)[:, 0].clamp(0, 1)
    csf_f = to_fine(np.moveaxis((csf > 0.5).astype(np.float32), 2, 0), zooms[:2], spacing)[:, 0].clamp(0, 1)
    return cord_f, (csf_f * (1 - cord_f)).clamp(0, 1)


def paste_into_template(cord: torch.Tensor, csf: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Tissue fractions ``(..., C, X, Y)``: a real cord and CSF ``(..., X, Y)`` in the surroundings of template
    class crops ``background`` ``(..., C, X, Y)`` (channel 0 cord, 1 CSF, 2 air, then intensity classes).

    Template cord/CSF pixels the real CSF does not cover become CSF (the cord sits in a CSF sac); the
    other classes are rescaled to fill what is left, and where the template had only cord/CSF and the
    new anatomy has neither, the template's first soft-tissue class fills in.
    """
    sac = (background[..., 0, :, :] + background[..., 1, :, :]).clamp(0, 1)  # the template's own cord + CSF
    out = torch.zeros_like(background)
    out[..., 0, :, :] = cord
    out[..., 1, :, :] = torch.maximum(csf, sac * (1 - cord)).clamp(0, 1) * (1 - cord)
    rest = (1 - out[..., 0, :, :] - out[..., 1, :, :]).clamp(0, 1)
    others = background[..., 2:, :, :] * (1 - sac)[..., None, :, :]
    others[..., 1, :, :] += (rest - others.sum(-3)).clamp_min(0)
    out[..., 2:, :, :] = others / others.sum(-3, keepdim=True).clamp_min(1e-6) * rest[..., None, :, :]
    return out


def spinegeneric_pool(mask_dir: Path, template_dir: Path, spacing: float, size: int, n_classes: int,
                      exclude: tuple[str, ...] = (), seed: int = 0, rim_px: float = 0.0) -> SlicePool:
    """Tissue-fraction slices: real cord + CSF of each participant in PAM50 surroundings.

    Every participant weighs the same (sampling weights 1/n_slices). ``exclude``: participants left out
    (a held-out participant of the dev data must not be seen through its spine-generic masks either).
    ``rim_px``: largest rater's rim painted inside the mask (:func:`training.spinalcord.augment.rim_fade`).
    """
    rng = np.random.default_rng(seed)
    background = template_classes(template_dir, spacing, size, n_classes)  # (M, C, P, P), cervical slices
    fractions, weights = [], []
    names = subjects(mask_dir, exclude)
    for subject in names:
        cord, csf = load_subject(mask_dir, subject, spacing)
        kept = [k for k in range(cord.shape[0]) if cord[k].sum() >= 4]
        for k in kept:
            centre = ndimage.center_of_mass(cord[k].numpy())
            c = _crop_around(cord[k], centre, size)
            f = _crop_around(csf[k], centre, size)
            fractions.append(paste_into_template(c, f, background[int(rng.integers(len(background)))]))
            weights.append(1.0 / len(kept))
        LOGGER.info("spine-generic %s: %d slices", subject, len(kept))
    fr = torch.stack(fractions)
    return SlicePool(image=None, fractions=fr, target=fr[:, 0].clone(), weight=torch.tensor(weights), rim_px=rim_px)
