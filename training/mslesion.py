"""MS lesion model: DeepLesionBrain-style hierarchical specialisation with a global-binary-mask prior.

Everything happens on the 1 mm grid of the MNI152NLin2009aSym template (RAS, 197 x 233 x 189),
arrays in numpy order ``(X, Y, Z)``. Inputs are the subject FLAIR after
:func:`bids_app.preprocessing.to_template_space` (``(x - median) / IQR`` inside the template brain)
and, when ``prior`` is on, a second channel: the template white-matter mask (WM probability >= 0.5),
the "global binary mask" that tells a compact, patch-based network where in the brain it is.

Recipe (``python -m training.mslesion CONFIG``; resumable, checkpoints in ``run_dir``):

1. **Training data, synthesised on the fly** (labels are scarce on purpose). Real lesion shapes from
   ``lesion-masks-mni`` (28 patients, resampled to the template through world coordinates, random
   left-right flip on the symmetric template, each lesion kept with a random probability so that
   both light and heavy loads occur, plus small ellipsoids of 3-60 mm^3 in white matter because
   the real masks are dominated by large confluent lesions) are pasted into

   * real FLAIR canvases (unlabelled clinical scans; voxels that are already hyperintense in white
     matter are left out of the loss, since they may be real, unlabelled lesions), and
   * synthetic FLAIRs built from the template tissue maps with random GM/WM/CSF contrasts.

   A lesion adds ``contrast * soft_mask`` with ``contrast ~ U(0.6, 4)`` IQRs (faint lesions too) and
   the mask softened by a 0.6 voxel Gaussian (partial volume).
2. **Image-quality augmentation** on every patch: Gaussian blur, thick-slice simulation (block
   averaging along a random axis, 2-6 mm), ghosting and motion in k-space, Rician-like noise,
   smooth multiplicative bias field and gamma contrast.
3. **Generic net**: one compact 3D UNet trained on patches anywhere in the brain.
4. **Specialised nets**: the brain bounding box is split into ``grid`` overlapping sub-volumes; one
   copy of the generic net per sub-volume, initialised from it and fine-tuned on patches centred in
   that sub-volume. At inference each net sees its whole sub-volume; the maps are fused by a
   weighted mean with a separable cosine taper so that seams do not show.
5. **Adaptation without labels** (``init_from``: an exported model folder): the generic net starts
   from that model's generic net instead of from scratch, and the specialists are grown from it
   again; with a site's unlabelled FLAIRs as ``real_canvases`` this adapts the model in minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from bids_app import lesions, preprocessing, templates
from bids_app.lesion_model import (  # noqa: F401
    brain_bbox, build_net, input_channel, predict_ensemble, predict_generic, search_region, subvolumes)

LOGGER = logging.getLogger("training.mslesion")
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- template
def load_template() -> dict:
    """Template arrays ``(X, Y, Z)``: T1w image, WM/GM probabilities, brain mask, prior, affine."""
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
            "affine": affine, "t1_knots": knots}


# ------------------------------------------------------------------------------- data synthesis
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
    FLAIR and carried to the template with it (:func:`bids_app.preprocessing.companion_to_template`)
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
        tsi = preprocessing.to_template_space(
            flair, tpl_img, sitk.ReadImage(str(templates.get_template_file("mask", desc="brain"))), threads=2)
        np.save(f, tsi.data)
        if t1_path:
            np.save(ft, preprocessing.companion_to_template(
                sitk.ReadImage(str(t1_path)), flair, tsi.transform, tpl_img,
                sitk.ReadImage(str(templates.get_template_file("mask", desc="brain"))), threads=2).data)
        if labels:
            soft = np.zeros(tsi.data.shape, np.float32)
            for lab in labels:
                m = sitk.Cast(sitk.ReadImage(str(lab)) > 0, sitk.sitkFloat32)
                m.CopyInformation(flair)  # labels share the FLAIR grid; headers may differ in float noise
                soft += np.transpose(sitk.GetArrayFromImage(
                    preprocessing.resample_to(m, tpl_img, tsi.transform, "linear")), (2, 1, 0))
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


class Sampler:
    """Draws ``(channels, target, weight)`` patches: ``channels`` ``(C, P, P, P)``, the others ``(P, P, P)``.

    Channels, in order: the FLAIR; with ``t1w`` the T1w (zeros when the canvas has none, and with
    probability ``t1w_dropout`` anyway, so that one model serves sessions with and without a T1w);
    with ``prior`` the global binary mask. Pasted lesions are hyperintense on the FLAIR and iso- to
    hypointense on the T1w (``-U(*t1w_contrast)`` IQR, default 0 to 1.5: from isointense to "black holes").

    With probability ``normal_hyper`` a patch also gets the FLAIR hyperintensities of normal-appearing
    white matter, which are *not* lesions (the target is unchanged): diffuse, smooth brightening
    (Gaussian random field, 3-8 mm correlation, up to ``U(0.3, 1.2)`` IQR; bright tracts, "dirty"
    white matter) and a thin periventricular rim (white matter within 2 mm of CSF, ``U(0.4, 1.2)``
    IQR; ependymal caps and bands). Pasted lesions are at least ``contrast[0]`` IQR above their
    surroundings, so the difference the network must learn is focal, local contrast, not absolute
    brightness. (A 1 mm FLAIR's bright normal white matter, ~1-1.5 IQR above the brain median, was
    where the held-out ``sub-ms07`` false positives lay.)

    ``sulci`` (probability per synthetic canvas, :meth:`_sulcal_csf`) opens the template's closed
    sulci; ``deform`` (probability per synthetic patch, :meth:`_warp`) warps the patch against the
    prior channel. Both are off by default and then draw no random numbers, so older configs
    reproduce; neither helped the held-out ``sub-ms07`` (``training/results/*_sulci_*``, ``*_warp_*``).
    """

    def __init__(self, tpl, lesion_masks, canvases, patch: int, real_fraction: float, seed: int,
                 contrast=(0.6, 4.0), lesion_wm: float = 0.0, labelled_weight: float = 1.0,
                 t1_fraction: float = 0.0, prior: bool = True, t1w: bool = False, t1w_dropout: float = 0.3,
                 t1w_contrast=(0.0, 1.5), normal_hyper: float = 0.0, sulci: float = 0.0, deform: float = 0.0):
        self.tpl, self.masks, self.canvases = tpl, lesion_masks, canvases
        self.sulci, self.deform = float(sulci), float(deform)
        if self.sulci > 0:
            self.ridges = sulcal_ridges(tpl["wm"], tpl["gm"], tpl["brain"])
        self.normal_hyper = float(normal_hyper)
        if self.normal_hyper > 0:
            csf = tpl["brain"] & (1 - tpl["wm"] - tpl["gm"] > 0.5)
            self.rim = (ndimage.binary_dilation(csf, iterations=2) & ~csf & (tpl["wm"] > 0.3)).astype(np.float32)
        self.prior, self.t1w, self.t1w_dropout = bool(prior), bool(t1w), float(t1w_dropout)
        self.t1w_contrast = tuple(t1w_contrast)
        self.t1_fraction = float(t1_fraction)
        self.labelled_weight = float(labelled_weight)
        for c in canvases:
            if "label" in c and "label_idx" not in c:
                c["label_idx"] = np.argwhere(c["label"] >= 0.5)
        self.contrast, self.lesion_wm = tuple(contrast), float(lesion_wm)
        self.p, self.real_fraction = patch, real_fraction
        self.rng = np.random.default_rng(seed)
        self.brain_idx = np.argwhere(tpl["brain"] & (tpl["wm"] + tpl["gm"] > 0.3))
        self.mask_idx = [np.argwhere(m) for m in lesion_masks]

    def _centre(self, region: tuple[slice, ...] | None, lesion_idx: np.ndarray) -> np.ndarray:
        rng = self.rng
        for _ in range(50):
            pool = lesion_idx if (rng.random() < 0.6 and len(lesion_idx)) else self.brain_idx
            c = pool[rng.integers(len(pool))]
            if region is None or all(s.start <= v < s.stop for s, v in zip(region, c)):
                return c
        return np.array([rng.integers(s.start, s.stop) for s in region])

    def sample(self, region=None):
        rng, p, tpl = self.rng, self.p, self.tpl
        k = rng.integers(len(self.masks))
        flip = rng.random() < 0.5
        canvas = None
        if self.canvases and rng.random() < self.real_fraction:
            canvas = self._pick_canvas()
        if canvas is not None and "label" in canvas and rng.random() < 0.7:
            # A real lesion, centred: real lesion appearance is what synthesis cannot give.
            c = self._centre(region, canvas["label_idx"])
        else:
            c = self._centre(region, self.mask_idx[k])
            if flip:
                c = c.copy(); c[0] = tpl["brain"].shape[0] - 1 - c[0]
        lo = np.clip(c - p // 2, 0, np.array(tpl["brain"].shape) - p)
        box = tuple(slice(int(a), int(a) + p) for a in lo)
        fbox = (slice(tpl["brain"].shape[0] - box[0].stop, tpl["brain"].shape[0] - box[0].start),) + box[1:]
        les = self.masks[k][fbox][::-1] if flip else self.masks[k][box]
        les = self._thin(les) | self._ellipsoids(tpl["wm"][box])
        les &= tpl["brain"][box]
        if self.lesion_wm > 0:  # keep pasted lesions in white matter (the masks come from another MNI template)
            les &= tpl["wm"][box] >= self.lesion_wm
        ignore = np.zeros_like(les)
        target = les.astype(np.float32)
        t1 = None
        if canvas is not None:
            img = canvas["image"][box].copy()
            if self.t1w and "t1w" in canvas:
                t1 = canvas["t1w"][box].copy()
            ignore = canvas["ignore"][box] & ~les
            if "label" in canvas:
                if rng.random() < 0.5:  # half of the labelled patches keep only the real lesions
                    les[:] = False
                target = np.maximum(les, canvas["label"][box])
        else:
            img, t1 = self._synthetic(box)
        if rng.random() < self.normal_hyper:
            img = img + self._normal_hyperintensity(box)
        soft = ndimage.gaussian_filter(les.astype(np.float32), 0.6)
        img = img + rng.uniform(*self.contrast) * soft * (1 + 0.3 * rng.standard_normal(img.shape).astype(np.float32))
        if canvas is None and self.deform > 0 and rng.random() < self.deform:  # no draw when off: same stream as before
            img, target, soft, t1 = self._warp(img, target, soft, t1)
        img = augment(img, tpl["brain"][box], rng)
        channels = [img]
        if self.t1w:
            if t1 is None or rng.random() < self.t1w_dropout:
                t1 = np.zeros_like(img)
            else:
                t1 = augment(t1 - rng.uniform(*self.t1w_contrast) * soft, tpl["brain"][box], rng)
            channels.append(t1)
        if self.prior:
            channels.append(tpl["prior"][box])
        weight = (~ignore).astype(np.float32)
        return np.stack(channels).astype(np.float32), target.astype(np.float32), weight

    def _pick_canvas(self) -> dict:
        """Labelled canvases are drawn ``labelled_weight`` times as often as unlabelled ones."""
        w = np.array([self.labelled_weight if "label" in c else 1.0 for c in self.canvases])
        return self.canvases[self.rng.choice(len(self.canvases), p=w / w.sum())]

    def _thin(self, les):
        lab, n = ndimage.label(les, np.ones((3, 3, 3)))
        if n == 0:
            return les
        keep = self.rng.random(n + 1) < self.rng.uniform(0.3, 1.0)
        keep[0] = False
        return keep[lab]

    def _ellipsoids(self, wm):
        rng, p = self.rng, self.p
        out = np.zeros((p, p, p), bool)
        cand = np.argwhere(wm > 0.7)
        if len(cand) == 0:
            return out
        g = np.indices((p, p, p)).astype(np.float32)
        for _ in range(rng.integers(0, 4)):
            c = cand[rng.integers(len(cand))]
            r = rng.uniform(0.9, 2.6, 3)
            out |= (((g - c.reshape(3, 1, 1, 1)) / r.reshape(3, 1, 1, 1)) ** 2).sum(0) <= 1
        return out

    def _normal_hyperintensity(self, box) -> np.ndarray:
        """Non-lesional FLAIR brightening of white matter for one patch, in IQR (see the class docstring)."""
        rng, wm = self.rng, self.tpl["wm"][box]
        field = ndimage.gaussian_filter(rng.standard_normal(wm.shape).astype(np.float32), rng.uniform(3.0, 8.0))
        field = np.clip(field, 0, None)
        inside = field[wm > 0.5]
        peak = float(inside.max()) if inside.size and inside.max() > 0 else float(field.max())
        out = rng.uniform(0.3, 1.2) * np.minimum(field / max(peak, 1e-6), 1.0) * wm  # peaks in white matter
        if rng.random() < 0.5:
            out += rng.uniform(0.4, 1.2) * ndimage.gaussian_filter(self.rim[box], 0.7)
        return out.astype(np.float32)

    def _synthetic(self, box):
        """A synthetic FLAIR patch and, with ``t1w``, the matching T1w patch (else ``None``).

        With probability ``sulci`` the closed sulci of the template are opened (:meth:`_sulcal_csf`)
        in both images, so that the thin bright cortical banks on either side of dark sulcal CSF
        of an individual 1 mm FLAIR are seen as normal anatomy.
        """
        rng, tpl = self.rng, self.tpl
        sulc = self._sulcal_csf(box) if self.sulci > 0 and rng.random() < self.sulci else None
        t1 = self._synthetic_t1w(box, sulc) if self.t1w else None
        wm, gm = tpl["wm"][box], tpl["gm"][box]
        csf = np.clip(tpl["brain"][box] - wm - gm, 0, 1)
        c_wm, c_gm, c_csf = rng.uniform(-0.3, 0.3), rng.uniform(0.4, 1.3), rng.uniform(-4.0, -1.5)
        if "t1_knots" in tpl and rng.random() < self.t1_fraction:
            # FLAIR contrast from the template T1w intensities (CSF < WM < GM mapped to CSF < WM < GM
            # of FLAIR, piecewise linear): the sharp 1 mm cortical ribbon, insula and deep grey
            # nuclei that the smooth tissue maps lack, so that bright cortex is seen as not-lesion.
            k_csf, k_gm, k_wm = tpl["t1_knots"]
            img = np.interp(tpl["t1"][box], [k_csf, k_gm, k_wm], [c_csf, c_gm, c_wm]).astype(np.float32)
            img *= tpl["brain"][box]
            noise = 0.1 * ndimage.gaussian_filter(rng.standard_normal(img.shape).astype(np.float32), 1.5)
        else:
            img = wm * c_wm + gm * c_gm + csf * c_csf
            noise = 0.15 * ndimage.gaussian_filter(rng.standard_normal(img.shape).astype(np.float32), 2.0)
        if sulc is not None:
            img = img * (1 - sulc) + c_csf * sulc
        return (img + noise).astype(np.float32), t1

    def _sulcal_csf(self, box) -> np.ndarray:
        """Partial-volume CSF fraction in ``[0, 1]`` along the template's closed sulci in one patch.

        The group template averages away the sulcal CSF between opposing cortical banks, which an
        individual 1 mm scan shows as a thin dark line between two bright ribbons. The ridges of the
        distance to white matter inside grey matter (:func:`sulcal_ridges`) mark those sulci; they are
        widened by one voxel in a third of the patches and softened by a 0.5 voxel Gaussian.
        """
        s = self.ridges[box]
        if self.rng.random() < 1 / 3:
            s = ndimage.binary_dilation(s)
        s = np.clip(1.5 * ndimage.gaussian_filter(s.astype(np.float32), 0.5), 0, 1)
        return (s * self.tpl["brain"][box]).astype(np.float32)

    def _warp(self, *arrays):
        """Warp patch arrays (``None`` passes through) with one smooth random field of 1-3 mm RMS.

        The synthetic anatomy is otherwise exactly aligned with the prior channel, which a real scan
        after affine registration never is; this keeps the network from trusting the prior's edges.
        """
        rng, p = self.rng, self.p
        coarse = rng.standard_normal((3, 5, 5, 5)).astype(np.float32)
        field = np.stack([ndimage.zoom(c, p / 5, order=3)[:p, :p, :p] for c in coarse])
        field *= rng.uniform(1.0, 3.0) / (float(np.sqrt((field ** 2).sum(0).mean())) + 1e-6)
        coords = np.indices((p, p, p), dtype=np.float32) + field
        return tuple(None if a is None else
                     ndimage.map_coordinates(a, coords, order=1, mode="nearest").astype(np.float32)
                     for a in arrays)

    def _synthetic_t1w(self, box, sulc: np.ndarray | None = None):
        """A T1w patch from the template T1w with random tissue contrasts (CSF < GM < WM kept)."""
        rng, tpl = self.rng, self.tpl
        k_csf, k_gm, k_wm = tpl["t1_knots"]
        values = [rng.uniform(-3.0, -0.8), rng.uniform(-1.0, -0.1), rng.uniform(0.2, 1.0)]
        img = np.interp(tpl["t1"][box], [k_csf, k_gm, k_wm], values).astype(np.float32) * tpl["brain"][box]
        if sulc is not None:
            img = img * (1 - sulc) + values[0] * sulc
        img += 0.1 * ndimage.gaussian_filter(rng.standard_normal(img.shape).astype(np.float32), 1.5)
        return img.astype(np.float32)


def augment(img: np.ndarray, brain: np.ndarray, rng) -> np.ndarray:
    """Image-quality augmentation of one ``(P, P, P)`` patch (see the module docstring)."""
    if rng.random() < 0.3:
        img = ndimage.gaussian_filter(img, rng.uniform(0.3, 1.2, 3))
    if rng.random() < 0.5:  # thick slices along one axis
        ax, k = rng.integers(3), int(rng.integers(2, 7))
        n = img.shape[ax] // k * k
        sl = [slice(None)] * 3; sl[ax] = slice(0, n)
        blocks = np.moveaxis(img[tuple(sl)], ax, 0).reshape(n // k, k, *np.delete(img.shape, ax)).mean(1)
        up = ndimage.zoom(blocks, [img.shape[ax] / blocks.shape[0], 1, 1], order=1)
        img = np.moveaxis(up[: img.shape[ax]], 0, ax)
    if rng.random() < 0.2:  # ghosting: every n-th k-space line scaled along one axis
        ax = rng.integers(3)
        k = np.fft.fftn(img)
        sl = [slice(None)] * 3; sl[ax] = slice(0, None, int(rng.integers(2, 5)))
        k[tuple(sl)] *= rng.uniform(0.3, 0.8)
        img = np.real(np.fft.ifftn(k))
    if rng.random() < 0.2:  # motion: part of k-space from a shifted copy
        shifted = ndimage.shift(img, rng.uniform(-2, 2, 3), order=1, mode="nearest")
        k, ks = np.fft.fftn(img), np.fft.fftn(shifted)
        ax = rng.integers(3)
        lines = rng.random(img.shape[ax]) < rng.uniform(0.1, 0.4)
        sel = lines.reshape([-1 if a == ax else 1 for a in range(3)])
        img = np.real(np.fft.ifftn(np.where(sel, ks, k)))
    if rng.random() < 0.5:  # bias field
        g = np.indices(img.shape).astype(np.float32) / img.shape[0] - 0.5
        coef = rng.normal(0, 0.3, 3)
        img = img * np.exp((coef.reshape(3, 1, 1, 1) * g).sum(0)) + 0.0
    if rng.random() < 0.5:  # gamma on the positive range
        lo = img.min()
        span = img.max() - lo + 1e-6
        img = lo + span * ((img - lo) / span) ** rng.uniform(0.7, 1.5)
    img = img + rng.uniform(0, 0.25) * rng.standard_normal(img.shape)
    return img.astype(np.float32)


# ----------------------------------------------------------------------------------- training
def loss_fn(logits, target, weight):
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weight)
    prob = torch.sigmoid(logits) * weight
    t = target * weight
    dice = 1 - (2 * (prob * t).sum() + 1) / (prob.sum() + t.sum() + 1)
    return bce + dice


def train_net(net, sampler, iterations, batch, lr, ckpt: Path, region=None, log_every=100):
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        net.load_state_dict(state["net"]); opt.load_state_dict(state["opt"]); start = int(state["it"])
        LOGGER.info("resumed %s at %d", ckpt, start)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, iterations) / iterations)))
    for _ in range(start):
        sched.step()
    net.train()
    t0, running = time.time(), 0.0
    for it in range(start, iterations):
        xs, ys, ws = [], [], []
        for _ in range(batch):
            x, les, w = sampler.sample(region)
            xs.append(x); ys.append(les[None]); ws.append(w[None])
        x, y, w = (torch.from_numpy(np.stack(a)) for a in (xs, ys, ws))
        opt.zero_grad()
        loss = loss_fn(net(x), y, w)
        loss.backward(); opt.step(); sched.step()
        running += loss.item()
        if (it + 1) % log_every == 0 or it + 1 == iterations:
            LOGGER.info("%s it %d/%d loss %.4f (%.1f s)", ckpt.parent.name + "/" + ckpt.stem, it + 1,
                        iterations, running / log_every, time.time() - t0)
            running = 0.0
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "it": it + 1}, ckpt)
    net.eval()
    return net


PRIOR_CHANNEL = "prior:WM probseg >= 0.5"


def input_channels(config: dict) -> list[str]:
    """The network's input channels, in order, as ``metadata.json`` names them (the app reads them)."""
    return ["FLAIR"] + (["T1w"] if config.get("t1w") else []) + ([PRIOR_CHANNEL] if config["prior"] else [])


def run(config: dict) -> None:
    torch.set_num_threads(config.get("threads", 2))
    torch.manual_seed(config["seed"])
    run_dir = ROOT / config["run_dir"]
    run_dir.mkdir(parents=True, exist_ok=True)
    tpl = load_template()
    masks = lesion_masks_in_template(Path(config["lesion_masks"]), tpl)
    data = Path(config["bids_dir"])
    t1w = bool(config.get("t1w"))
    canvases = [real_canvas(data / c, tpl, run_dir / "cache", t1w=t1w,
                            ignore_percentile=config.get("unlabelled_ignore_percentile"))
                for c in config["real_canvases"]]
    for image, labels in config.get("labelled_canvases", {}).items():
        canvases.append(real_canvas(data / image, tpl, run_dir / "cache", [data / lab for lab in labels], t1w=t1w))
    LOGGER.info("%d lesion masks, %d real canvases (%d labelled)", len(masks), len(canvases),
                len(config.get("labelled_canvases", {})))
    prior = config["prior"]
    sampler = Sampler(tpl, masks, canvases, config["patch"], config["real_fraction"], config["seed"],
                      config.get("lesion_contrast", (0.6, 4.0)), config.get("lesion_wm", 0.0),
                      config.get("labelled_weight", 1.0), config.get("synthetic_t1_fraction", 0.0),
                      prior=prior, t1w=t1w, t1w_dropout=config.get("t1w_dropout", 0.3),
                      normal_hyper=config.get("normal_hyper", 0.0), sulci=config.get("sulci", 0.0),
                      deform=config.get("deform", 0.0))
    n_in = len(input_channels(config))
    generic = build_net(n_in, config["channels"])
    if config.get("init_from") and not (run_dir / "generic.pt").exists():
        generic.load_state_dict(initial_weights(config))
    train_net(generic, sampler, config["generic_iterations"], config["batch"], config["lr"], run_dir / "generic.pt")
    boxes = subvolumes(tpl["brain"], tuple(config["grid"]), config["overlap"])
    for i, box in enumerate(boxes):
        net = build_net(n_in, config["channels"])
        ck = run_dir / f"special-{i:02d}.pt"
        if not ck.exists():
            net.load_state_dict(generic.state_dict())
        train_net(net, sampler, config["special_iterations"], config["batch"], config["lr"] * 0.3, ck,
                  region=box)
    LOGGER.info("done")


def initial_weights(config: dict) -> dict:
    """State dict of the generic net of the exported model ``config["init_from"]`` (a model folder,
    hash-checked, never unpickled), to fine-tune instead of starting from scratch: adapting a trained
    model to a site's unlabelled scans (``real_canvases``) takes minutes. The specialists are then
    initialised from the adapted generic net, as in the recipe (hierarchical specialisation).

    The model must have this config's input channels and architecture; otherwise the error says
    which differs.
    """
    from bids_app.lesion_model import architecture, load_ensemble

    folder = ROOT / config["init_from"]
    meta, generic, _, _ = load_ensemble(folder)
    wanted = {"input channels": (input_channels(config), meta["input"]["channels"]),
              "architecture": (architecture(len(input_channels(config)), config["channels"]), meta["architecture"])}
    for what, (ours, theirs) in wanted.items():
        if ours != theirs:
            raise SystemExit(f"init_from {folder}: its {what} ({theirs}) differ from this config's ({ours}); "
                             "start from a model trained with the same input channels and network, or drop init_from.")
    LOGGER.info("starting from the generic net of %s (sha256 %s)", folder, meta["sha256"][:12])
    return generic.state_dict()


#: The adaptation schedule of ``--adapt``, as measured in the model card
#: (``training/configs/mslesion_foldB_t1_adapt07_nolabels.json``).
ADAPT_SCHEDULE = {"generic_iterations": 600, "special_iterations": 150, "lr": 0.0005}


def adapt_config(config: dict, bids_dir: Path, lesion_masks: Path, models_dir: Path,
                 participant_labels: tuple[str, ...] = ()) -> dict:
    """The config that adapts the model of ``config`` (its ``export_dir``) to a dataset's FLAIRs.

    The FLAIRs are what the app would segment (the ``mslesion`` registry query, pybids) for all or
    the given participants (labels without ``sub-``); they become unlabelled canvases, no labelled
    canvas is used, training starts from the model (``init_from``) on :data:`ADAPT_SCHEDULE`, and the
    result is exported to ``models_dir/mslesion`` (run the app with ``--models-dir models_dir``); the
    checkpoints (resumable) go to ``models_dir/<name>_run``.
    """
    from bids_app.bids import collect_inputs, load_layout, participants
    from bids_app.tasks import get_task

    layout = load_layout(Path(bids_dir))
    task = get_task("mslesion")
    flairs = [image.relpath for subject in participants(layout, tuple(participant_labels))
              for image in collect_inputs(layout, task, subject)]
    if not flairs:
        raise SystemExit(f"{bids_dir} has no FLAIR (anat/*_FLAIR.nii[.gz]) to adapt to.")
    name = f"mslesion_adapt_{Path(bids_dir).resolve().name}"
    export_dir = Path(models_dir).resolve() / "mslesion"
    return {**config, **ADAPT_SCHEDULE, "name": name, "bids_dir": str(Path(bids_dir).resolve()),
            "lesion_masks": str(Path(lesion_masks).resolve()), "real_canvases": flairs, "labelled_canvases": {},
            "init_from": config["export_dir"], "run_dir": str(export_dir.parent / f"{name}_run"), "export_dir": str(export_dir),
            "config_path": str(export_dir / "training_config.json"), "card": {}}


def load_nets(config: dict):
    run_dir = ROOT / config["run_dir"]
    tpl = load_template()
    c = len(input_channels(config))
    generic = build_net(c, config["channels"])
    generic.load_state_dict(torch.load(run_dir / "generic.pt", weights_only=True)["net"]); generic.eval()
    boxes = subvolumes(tpl["brain"], tuple(config["grid"]), config["overlap"])
    nets = []
    for i in range(len(boxes)):
        ck = run_dir / f"special-{i:02d}.pt"
        if ck.exists():
            n = build_net(c, config["channels"])
            n.load_state_dict(torch.load(ck, weights_only=True)["net"]); n.eval(); nets.append(n)
    return tpl, generic, nets, boxes


def load_exported(config: dict):
    """Like :func:`load_nets`, from the exported ``export_dir`` (hash-checked safetensors) instead of
    the run's checkpoints: what the app runs."""
    from bids_app.lesion_model import load_ensemble

    _, generic, nets, boxes = load_ensemble(ROOT / config["export_dir"])
    return load_template(), generic, nets, boxes


def _case_in_template(case: dict, config: dict, tpl_img, tpl_mask) -> tuple:
    """``(flair, tsi, t1, seconds)`` of one evaluation case: the FLAIR (SimpleITK), its
    :func:`bids_app.preprocessing.to_template_space` result, the session's T1w in template space when
    the config has a T1w channel (else ``None``: that channel is zeros, as in training and in the app)
    and the stage seconds."""
    flair = sitk.ReadImage(case["flair"])
    tsi = preprocessing.to_template_space(flair, tpl_img, tpl_mask, threads=2)
    seconds = {k: round(v, 1) for k, v in tsi.seconds.items()}
    t1, t1_path = None, companion_path(Path(case["flair"])) if config.get("t1w") else None
    if t1_path:
        ct = preprocessing.companion_to_template(sitk.ReadImage(str(t1_path)), flair, tsi.transform,
                                                 tpl_img, tpl_mask, threads=2)
        t1 = ct.data
        seconds["t1w_n4"] = round(ct.seconds["n4"], 1)
        seconds["t1w_coregistration"] = round(ct.seconds["coregistration"], 1)
    return flair, tsi, t1, seconds


def _native_rows(model: str, prob: np.ndarray, case: dict, flair, tsi, tpl_img, threshold: float) -> list[dict]:
    """Scores of a template-grid map ``prob`` ``(X, Y, Z)`` for one case, on the native FLAIR grid:
    the map is resampled back (linear) and thresholded at ``threshold``; one row per manual label
    (Dice, lesion-wise F1, volumes), or one volume row when the case has none."""
    img = sitk.GetImageFromArray(np.transpose(prob, (2, 1, 0)))
    img.CopyInformation(tpl_img)
    native = preprocessing.resample_to(img, flair, tsi.transform.GetInverse(), "linear")
    pred = np.transpose(sitk.GetArrayFromImage(native), (2, 1, 0)) >= threshold
    if not case["labels"]:  # no manual label: the volume, for the longitudinal consistency check
        load = lesions.lesion_load(pred, flair.GetSpacing())
        return [{"case": Path(case["flair"]).name, "model": model, "lesion_count": load["count"],
                 "pred_ml": round(load["total_volume_ml"], 2)}]
    rows = []
    for label in case["labels"]:
        lab = nib.load(label)
        m = lesions.segmentation_metrics(pred, np.asarray(lab.dataobj) > 0, lab.header.get_zooms()[:3])
        rows.append({"case": Path(label).name, "model": model, "dice": round(m["dice"], 3),
                     "lesion_f1": round(m["lesion_f1"], 3), "precision": round(m["lesion_precision"], 3),
                     "recall": round(m["lesion_recall"], 3), "pred_ml": round(m["pred_volume_ml"], 2),
                     "truth_ml": round(m["truth_volume_ml"], 2)})
    return rows


def evaluate(config: dict, cases: list[dict], exported: bool = False) -> list[dict]:
    """Dice and lesion-wise F1 on the native FLAIR grid of labelled real cases (2 CPU threads), of the
    run's checkpoints or (``exported``) of the exported model."""
    torch.set_num_threads(2)
    tpl, generic, nets, boxes = load_exported(config) if exported else load_nets(config)
    tpl_img = sitk.ReadImage(str(templates.get_template_file("T1w")))
    tpl_mask = sitk.ReadImage(str(templates.get_template_file("mask", desc="brain")))
    region = search_region(tpl["wm"], dilation_mm=config["search_dilation_mm"])
    rows = []
    for case in cases:
        flair, tsi, t1, seconds = _case_in_template(case, config, tpl_img, tpl_mask)
        x = np.stack([input_channel(name, tsi.data, tpl["wm"], t1) for name in input_channels(config)])
        t0 = time.perf_counter()
        maps = {"generic": predict_generic(generic, x, tpl["brain"])}
        seconds["generic"] = round(time.perf_counter() - t0, 1)
        if len(nets) == len(boxes):
            t0 = time.perf_counter()
            maps["ensemble"] = predict_ensemble(nets, boxes, x, tpl["brain"])
            seconds["ensemble"] = round(time.perf_counter() - t0, 1)
        LOGGER.info("%s stage seconds (2 threads): %s", Path(case["flair"]).name, seconds)
        rows.append({"case": Path(case["flair"]).name, "seconds": seconds})
        for name, prob in maps.items():
            for row in _native_rows(name, prob * region, case, flair, tsi, tpl_img, config["threshold"]):
                LOGGER.info("%s", row)
                rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- baseline
#: The naive baseline's grid: FLAIR thresholds (in brain IQR above the brain median, after the
#: app's normalisation) and template white-matter probability thresholds.
BASELINE_GRID = {"flair_iqr": (1.0, 1.25, 1.5, 1.75, 2.0, 2.5), "template_wm": (0.5, 0.8)}


def intensity_baseline(flair: np.ndarray, wm: np.ndarray, flair_iqr: float, template_wm: float,
                       sigma_mm: float = 0.5) -> np.ndarray:
    """The lesion mask any model must beat: a FLAIR threshold inside the template white matter.

    ``flair`` ``(X, Y, Z)`` is the normalised FLAIR on the 1 mm template grid (``(x - median) / IQR``
    in the template brain), smoothed by a Gaussian of ``sigma_mm`` against noise; a voxel is lesion
    when it is brighter than ``flair_iqr`` and the template WM probability ``wm`` exceeds
    ``template_wm``. Returns float32 0/1 (so that it resamples like a probability map).
    """
    return ((ndimage.gaussian_filter(flair, sigma_mm) > flair_iqr) & (wm > template_wm)).astype(np.float32)


def baseline_name(flair_iqr: float, template_wm: float) -> str:
    return f"threshold FLAIR>{flair_iqr} IQR, WM>{template_wm}"


def evaluate_baseline(cases: list[dict]) -> list[dict]:
    """Rows of :func:`_native_rows` for every point of :data:`BASELINE_GRID` on every labelled case."""
    tpl = load_template()
    tpl_img = sitk.ReadImage(str(templates.get_template_file("T1w")))
    tpl_mask = sitk.ReadImage(str(templates.get_template_file("mask", desc="brain")))
    rows = []
    for case in (c for c in cases if c["labels"]):
        flair, tsi, _, _ = _case_in_template(case, {}, tpl_img, tpl_mask)
        for t in BASELINE_GRID["flair_iqr"]:
            for w in BASELINE_GRID["template_wm"]:
                mask = intensity_baseline(tsi.data, tpl["wm"], t, w)
                for row in _native_rows(baseline_name(t, w), mask, case, flair, tsi, tpl_img, 0.5):
                    rows.append({**row, "flair_iqr": t, "template_wm": w, "image": Path(case["flair"]).name})
    return rows


def cross_validated_baseline(rows: list[dict]) -> list[dict]:
    """The baseline's honest numbers: on each image, the grid point chosen on the *other* images.

    ``rows`` are :func:`evaluate_baseline` rows (keys ``image, flair_iqr, template_wm, dice, ...``).
    For every image the grid point with the highest mean Dice over all labels of all other images is
    chosen and that point's rows on the image are returned, with ``model`` naming the point and
    ``seen_in_training`` "none" (nothing of the image chose it). Ties go to the first grid point.
    """
    images = list(dict.fromkeys(r["image"] for r in rows))
    points = list(dict.fromkeys((r["flair_iqr"], r["template_wm"]) for r in rows))
    out = []
    for image in images:
        def score(point):
            d = [r["dice"] for r in rows if r["image"] != image and (r["flair_iqr"], r["template_wm"]) == point]
            return float(np.mean(d)) if d else -1.0
        best = max(points, key=score)  # max keeps the first of equal scores
        chosen_on = ", ".join(i for i in images if i != image)
        out += [{**r, "model": f"{r['model']} (chosen on {chosen_on})", "seen_in_training": "none"}
                for r in rows if r["image"] == image and (r["flair_iqr"], r["template_wm"]) == best]
    return out


def export(config: dict, metrics: list[dict] | None = None) -> Path:
    """Write ``models/mslesion/`` (weights as safetensors, ``metadata.json``) from the run's checkpoints."""
    from safetensors.torch import save_file

    from bids_app.inference import sha256_of
    from bids_app.lesion_model import architecture

    tpl, generic, nets, boxes = load_nets(config)
    if len(nets) != len(boxes):
        raise SystemExit(f"only {len(nets)} of {len(boxes)} specialists are trained; finish the run first")
    def half(v):  # float16 storage halves the download; inference casts back to float32
        return (v.to(torch.float16) if v.is_floating_point() else v).contiguous()

    tensors = {f"generic.{k}": half(v) for k, v in generic.state_dict().items()}
    for i, n in enumerate(nets):
        tensors.update({f"special.{i:02d}.{k}": half(v) for k, v in n.state_dict().items()})
    out = ROOT / config["export_dir"]
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    meta = {
        "name": "neuroseg-mslesion", "version": config["version"], "task": "mslesion",
        "weights": "model.safetensors", "sha256": sha256_of(out / "model.safetensors"),
        "weights_dtype": "float16 (stored; loaded into float32 networks)",
        "predictor": "lesion_ensemble",
        "architecture": architecture(len(input_channels(config)), config["channels"]),
        "input": {
            "space": templates.TEMPLATE, "resolution": 1, "orientation": "RAS",
            "channels": input_channels(config),
            "optional_channels": {"T1w": "zeros when the session has no T1w"} if config.get("t1w") else {},
            "normalisation": "(x - median) / IQR inside the template brain mask",
            "roi_size": [96, 96, 96],
        },
        "ensemble": {"grid": config["grid"], "overlap": config["overlap"],
                     "boxes": [[[s.start, s.stop] for s in box] for box in boxes],
                     "fusion": "weighted mean, separable cosine taper (floor 0.05)"},
        "output": {"activation": "sigmoid", "labels": {"lesion": 1}, "threshold": config["threshold"],
                   "search_region": {"template_wm_threshold": 0.5, "dilation_mm": config["search_dilation_mm"]},
                   "min_lesion_mm3": lesions.DEFAULT_MIN_VOLUME_MM3},
        "training": {"config": config.get("config_path", f"training/configs/{config['name']}.json")},
    }
    if metrics is not None:
        meta["metrics"] = metrics
    (out / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    LOGGER.info("exported %s (sha256 %s)", out, meta["sha256"])
    return out


def _table(rows: list[dict], run: bool = False) -> str:
    head = "| image / reference | " + ("run | " if run else "") + "model | seen in training | Dice | lesion F1 | " \
        "lesion precision | lesion recall | volume ours / manual (mL) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "dice" in r:
            lines.append(f"| {r['case']} | " + (f"{r['run']} | " if run else "") + f"{r['model']} | "
                         f"{r.get('seen_in_training', '?')} | {r['dice']:.3f} | {r['lesion_f1']:.3f} | "
                         f"{r['precision']:.3f} | {r['recall']:.3f} | {r['pred_ml']:.2f} / {r['truth_ml']:.2f} |")
    return "\n".join(lines)


def run_metrics(config_path: str) -> list[dict]:
    """The evaluation rows of a run: its ``run_dir/metrics.json``, else the newest committed copy
    ``training/results/<config stem>_<date>.json`` (run folders are not committed)."""
    cfg = json.loads((ROOT / config_path).read_text())
    live = ROOT / cfg["run_dir"] / "metrics.json"
    if live.is_file():
        return json.loads(live.read_text())
    copies = sorted((ROOT / "training" / "results").glob(f"{Path(config_path).stem}_20*.json"))
    if not copies:
        raise SystemExit(f"no metrics for {config_path}: run it with --evaluate first")
    return json.loads(copies[-1].read_text())


def _fold_rows(card: dict, key: str, seen: str = "none") -> list[dict]:
    """Rows of the runs listed under ``card[key]`` on the cases whose ``seen_in_training`` is ``seen``
    (``"none"``: held out; ``"image"``: the image was an unlabelled canvas, its labels never seen)."""
    rows = []
    for path in card.get(key, []):
        for r in run_metrics(path):
            if r.get("seen_in_training") == seen:
                rows.append({**r, "run": Path(path).stem})
    return rows


def _t1w_recipe(config: dict) -> str:
    """The card's line on the T1w channel (empty without one)."""
    if not config.get("t1w"):
        return ""
    images = list(config["real_canvases"]) + list(config.get("labelled_canvases", {}))
    with_t1 = [Path(c).name for c in images if companion_path(Path(config["bids_dir"]) / c)]
    return (f"- T1w channel: the real canvases with a T1w in their session ({', '.join(with_t1) or 'none'}) bring it, "
            "co-registered to their FLAIR; the others give zeros; synthetic canvases get a T1w from the template T1w "
            "with random CSF < GM < WM contrasts; pasted lesions are 0 to 1.5 IQR darker on the T1w; the channel is "
            f"zeroed in {int(100 * config.get('t1w_dropout', 0.3))} % of patches.\n")


def _baseline_section(card: dict) -> str:
    """The card's section on the FLAIR-threshold baseline (``card["baseline"]``: a results file of
    ``--baseline``); empty without one."""
    if not card.get("baseline"):
        return ""
    rows = json.loads((ROOT / card["baseline"]).read_text())["cross_validated"]
    grid = ", ".join(f"{k} {list(v)}" for k, v in BASELINE_GRID.items())
    return f"""### Baseline: a FLAIR threshold, cross-validated the same way

What any model must beat (`--baseline`, `{card['baseline']}`): the normalised FLAIR on the template grid,
smoothed by 0.5 mm, above a threshold (brain IQR) inside the template white matter, the two thresholds
chosen on the *other* labelled image (grid: {grid}), then resampled to the native grid and scored exactly
like the model.

{_table(rows)}

"""


def _transductive_section(card: dict) -> str:
    """The card's table of the runs under ``card["transductive"]``: the held-out case's labels never
    seen, its image an unlabelled canvas (semi-supervised adaptation to a scan); empty without any."""
    rows = _fold_rows(card, "transductive", seen="image")
    if not rows:
        return ""
    return f"""### Labels held out, image seen unlabelled (adaptation to a site's scans)

The same folds with the held-out image added as one more *unlabelled* canvas: real lesion shapes are
pasted into it and its bright white matter is left out of the loss, exactly as for `sub-mslong01`; its
manual labels are never read. This is what a user can do with their own unlabelled scans (README:
`python -m training.mslesion training/configs/mslesion.json --adapt BIDS_DIR ...` fine-tunes the shipped
model as `_adapt07_nolabels` does, 7-8 minutes on 2 CPU cores; `_ms07img` retrains from scratch, about
15 minutes); it is not a held-out number.

{_table(rows, run=True)}

"""


def write_card(config: dict, rows: list[dict]) -> Path:
    """``<export_dir>/README.md``: the model card, from the metadata, this run's rows and the held-out
    rows of the fold runs named in ``config["card"]`` (``held_out``, ``ablation``: config paths)."""
    out = ROOT / config["export_dir"]
    meta = json.loads((out / "metadata.json").read_text())
    card = config.get("card", {})
    held_out, ablation = _fold_rows(card, "held_out"), _fold_rows(card, "ablation")
    timing = [r for r in rows if "seconds" in r]
    volumes = [r for r in rows if "lesion_count" in r]
    labelled = list(config.get("labelled_canvases", {}))
    text = f"""# {meta['name']} {meta['version']}: MS white-matter lesions on FLAIR

sha256 of `model.safetensors`: `{meta['sha256']}` (checked by the app before loading; safetensors with
float16 storage, never unpickled).

## What it is
A DeepLesionBrain-style ensemble (Kamraoui et al., Medical Image Analysis 2022) of compact 3D MONAI
UNets (channels {config['channels']}, one residual unit per level, one output channel, sigmoid) on the 1 mm
{templates.TEMPLATE} grid. A generic whole-brain net was trained first; its weights initialised
{len(meta['ensemble']['boxes'])} specialists, one per overlapping sub-volume (grid {config['grid']}, overlap
{config['overlap']}) of the template brain box, each fine-tuned on patches centred in its sub-volume. The
specialists' maps are fused by a weighted mean with a cosine taper. The app runs the ensemble.

Inputs: the FLAIR after N4, affine registration to the template and `(x - median) / IQR` inside the
template brain mask{'; the T1w of the same session, rigidly co-registered to the FLAIR and normalised the same way (zeros when the session has none; in training zeros in ' + str(int(100 * config.get('t1w_dropout', 0.3))) + ' % of patches so that one model serves both)' if config.get('t1w') else ''}{'; the template white-matter mask (WM probability >= 0.5), the "global binary mask" prior (Hertel et al.)' if config['prior'] else ''}.
Channels, in order: {', '.join(meta['input']['channels'])}.
Output: lesion probability inside the template WM dilated by {config['search_dilation_mm']} mm, resampled to the FLAIR
grid, thresholded at {meta['output']['threshold']}; lesions smaller than {meta['output']['min_lesion_mm3']} mm^3 are dropped.

## Training data and recipe (`{meta['training']['config']}`)
`python -m training.mslesion {meta['training']['config']}` (resumable), then `--evaluate`, `--export`, `--card`.

- 28 real lesion masks (Lesjak et al. 2017) in MNI space, pasted (random subsets of their lesions, random
  left-right flip, kept inside template WM >= {config.get('lesion_wm', 0)}, plus small WM ellipsoids) with contrast
  {config.get('lesion_contrast', [0.6, 4.0])} IQR into:
  - unlabelled real FLAIRs ({', '.join(Path(c).name for c in config['real_canvases'])}); their bright white matter is left
    out of the loss;
  - labelled real FLAIRs ({', '.join(Path(c).name for c in labelled) or 'none'}): their manual lesions (mean of the raters,
    a soft target, carried to the template) are targets; half of their patches keep only the real lesions;
  - synthetic FLAIRs from the template tissue maps with random contrasts; {int(100 * config.get('synthetic_t1_fraction', 0))} % of them
    take their contrast from the template T1w (sharp 1 mm cortex).
{_t1w_recipe(config)}- Image-quality augmentation: blur, thick slices (2-6 mm), k-space ghosting and motion, noise, bias field, gamma.
- Loss BCE + soft Dice; patches {config['patch']}^3, batch {config['batch']}, AdamW lr {config['lr']} with cosine decay;
  generic {config['generic_iterations']} iterations, each specialist {config['special_iterations']} at 0.3x lr;
  {config.get('threads', 2)} CPU threads, no GPU.

## Metrics on real data, native FLAIR grid

Only two labelled real brains exist here (`sub-ms07`, `sub-isbi03`), so accuracy is measured by
**two-fold cross-validation**: the same recipe trained with one labelled case and evaluated on the
other, which that run never saw (neither image nor labels). These are the honest numbers.

### Held out (the fold that never saw the image)

{_table(held_out, run=True) if held_out else 'not measured'}

{_baseline_section(card)}{_transductive_section(card)}### Ablations: the same folds with one ingredient changed

The run name says which: `_noprior` without the prior channel, `_hyper` with normal white-matter
hyperintensities as negatives, `_t1w` with the session's T1w as an
extra channel (`sub-isbi03` has no T1w: that channel is zeros there), `_seed8` the same recipe with
another random seed (the noise floor of every comparison here), `_long` trained 2.4x longer, `_sulci`
with the template's closed sulci opened in synthetic canvases, `_warp` with synthetic patches warped
against the prior channel.

{_table(ablation, run=True) if ablation else 'not measured'}

{chr(10).join(chr(10) + n for n in card.get('notes', [])).strip()}

### The shipped model (trained with both labelled cases: in-sample, optimistic)

{_table(rows)}

"""
    if volumes:
        text += ("### Longitudinal consistency: sub-mslong01, two sessions, no manual label\n\n"
                 "ses-02 carries a large new periventricular lesion, bright on its FLAIR and absent at the same "
                 "template position in ses-01 (`training/results/mslesion_mslong01_sessions.png`), so equal volumes "
                 "are not expected; compare the lesion counts too.\n\n")
        text += "| image | model | lesions | volume (mL) |\n|---|---|---|---|\n"
        for r in volumes:
            text += f"| {r['case']} | {r['model']} | {r['lesion_count']} | {r['pred_ml']:.2f} |\n"
        for model in ("generic", "ensemble"):
            v = [r["pred_ml"] for r in volumes if r["model"] == model]
            if len(v) == 2 and max(v) > 0:
                text += f"\n{model}: session difference {100 * abs(v[0] - v[1]) / max(v):.0f} % of the larger volume."
        text += "\n\n"
    if timing:
        text += ("### Time per subject (2 CPU threads, seconds)\n\n| image | " + " | ".join(timing[0]["seconds"])
                 + " |\n|---|" + "---|" * len(timing[0]["seconds"]) + "\n")
        for r in timing:
            text += f"| {r['case']} | " + " | ".join(str(v) for v in r["seconds"].values()) + " |\n"
    text += f"""
## Limits
Trained on CPU for minutes, with {len(labelled)} labelled real brain(s) and {len(config['real_canvases'])} unlabelled
FLAIRs. Read the held-out numbers above before trusting it on your data: on the clean 1 mm image it was
not trained on (`sub-ms07` in fold B) it over-segments several-fold and scores below a FLAIR threshold;
fine-tuning on your own unlabelled scans (`init_from`, README) is what helped there. Validate on your own labels (the app
writes Dice and lesion-wise F1 when manual labels exist under `derivatives/labels`). The regions'
infratentorial part is a geometric approximation. Data: Lesjak et al., Neuroinformatics 2018 (CC-BY); ISBI
2015 challenge data via the ms.lesion R package (GPL-2); bids-dev sources are listed in its README.
"""
    (out / "README.md").write_text(text)
    return out / "README.md"


def write_adapted_card(config: dict) -> Path:
    """A short model card for a model adapted by ``--adapt`` (no labels were seen, so no metrics)."""
    out = Path(config["export_dir"])
    meta = json.loads((out / "metadata.json").read_text())
    start = json.loads((ROOT / config["init_from"] / "metadata.json").read_text())
    text = f"""# {meta['name']} {meta['version']}, adapted without labels

sha256 of `model.safetensors`: `{meta['sha256']}`.

Fine-tuned from `{config['init_from']}` (sha256 `{start['sha256']}`; see its card for the architecture,
recipe and measured accuracy) by `python -m training.mslesion ... --adapt {config['bids_dir']}`: its generic
net trained {config['generic_iterations']} more iterations (lr {config['lr']}) and {len(meta['ensemble']['boxes'])} specialists grown from it
({config['special_iterations']} iterations each), on real lesion shapes ({config['lesion_masks']}) pasted into the
{len(config['real_canvases'])} unlabelled FLAIRs of that dataset (their bright white matter left out of the loss) and into
synthetic brains. The full config is `training_config.json` beside this card.

No labels were used, so this folder carries no accuracy of its own. The shipped card's table "labels held
out, image seen unlabelled" measures what this kind of adaptation changed on the scans we could check.
Validate on a few of your own labelled scans (the app writes Dice and lesion-wise F1 when manual labels
exist under `derivatives/labels`) before relying on it.
"""
    (out / "README.md").write_text(text)
    return out / "README.md"


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.mslesion")
    ap.add_argument("config", type=Path)
    ap.add_argument("--evaluate", action="store_true")
    ap.add_argument("--exported", action="store_true",
                    help="with --evaluate: evaluate the exported model (export_dir) and store the rows in its "
                         "metadata.json, for when the run folder is gone")
    ap.add_argument("--baseline", action="store_true",
                    help="measure the FLAIR-threshold baseline on the labelled cases (cross-validated between them) "
                         "into training/results/mslesion_baseline_<date>.json")
    ap.add_argument("--adapt", type=Path, metavar="BIDS_DIR",
                    help="fine-tune the config's exported model on the FLAIRs of this BIDS dataset, without labels "
                         "(needs --lesion-masks and --models-dir)")
    ap.add_argument("--lesion-masks", type=Path, help="with --adapt: the folder of MNI lesion masks (*_mask.nii.gz)")
    ap.add_argument("--models-dir", type=Path, help="with --adapt: where the adapted model folder mslesion/ is written")
    ap.add_argument("--participant-label", nargs="+", default=(), help="with --adapt: only these participants")
    ap.add_argument("--card", action="store_true", help="write the model card from metrics.json")
    ap.add_argument("--export", action="store_true", help="write models/mslesion from the run (with its metrics.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = json.loads(args.config.read_text())
    config.setdefault("name", args.config.stem)
    if args.export:
        metrics_file = ROOT / config["run_dir"] / "metrics.json"
        export(config, json.loads(metrics_file.read_text()) if metrics_file.exists() else None)
        return 0
    if args.adapt:
        if not (args.lesion_masks and args.models_dir):
            ap.error("--adapt needs --lesion-masks and --models-dir")
        config = adapt_config(config, args.adapt, args.lesion_masks, args.models_dir,
                              tuple(p.removeprefix("sub-") for p in args.participant_label))
        config_file = Path(config["config_path"])  # what the exported metadata names as its training config
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(json.dumps(config, indent=2) + "\n")
        run(config)
        export(config)
        write_adapted_card(config)
        return 0
    if args.baseline:
        rows = evaluate_baseline(evaluation_cases(Path(config["bids_dir"])))
        out = ROOT / "training" / "results" / f"mslesion_baseline_{time.strftime('%Y-%m-%d')}.json"
        out.write_text(json.dumps({"grid": rows, "cross_validated": cross_validated_baseline(rows)}, indent=1) + "\n")
        LOGGER.info("wrote %s", out)
        return 0
    if args.evaluate:
        d = Path(config["bids_dir"])
        cases = evaluation_cases(d)
        rows = evaluate(config, cases, exported=args.exported)
        for row in rows:  # what of each evaluation case the run saw: held out only when "none"
            if "dice" in row:
                image = next(c for c in cases if Path(c["flair"]).name.split("_")[0] == row["case"].split("_")[0])
                rel = str(Path(image["flair"]).relative_to(d))
                row["seen_in_training"] = ("image+labels" if rel in config.get("labelled_canvases", {})
                                           else "image" if rel in config["real_canvases"] else "none")
        if args.exported:  # the weights (and their sha256) stay as they are
            meta_file = ROOT / config["export_dir"] / "metadata.json"
            meta = json.loads(meta_file.read_text())
            meta["metrics"] = rows
            meta_file.write_text(json.dumps(meta, indent=2) + "\n")
            return 0
        out = ROOT / config["run_dir"] / "metrics.json"
        out.write_text(json.dumps(rows, indent=1))
        return 0
    if args.card:
        live = ROOT / config["run_dir"] / "metrics.json"
        # Without the run folder (not committed), the rows stored in the exported metadata at --export.
        rows = json.loads(live.read_text()) if live.is_file() else \
            json.loads((ROOT / config["export_dir"] / "metadata.json").read_text()).get("metrics", [])
        write_card(config, rows)
        return 0
    run(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
