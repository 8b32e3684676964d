"""The training patches: real lesion shapes pasted into real or synthetic FLAIR canvases.

Each sample is ``(channels, target, weight)``: ``channels`` ``(C, P, P, P)`` float32 (FLAIR in brain
IQR, optional T1w, optional prior), ``target`` ``(P, P, P)`` in [0, 1] and ``weight`` ``(P, P, P)``
(0 where the loss ignores the voxel), on the 1 mm template grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from training.mslesion.augment import augment
from training.mslesion.template import sulcal_ridges


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
    reproduce; neither helped the held-out ``sub-ms07`` (``training/mslesion/results/*_sulci_*``, ``*_warp_*``).

    ``centre_on``: where a labelled patch is centred: on a manual-lesion voxel drawn uniformly
    (``"voxel"``, the default: large lesions dominate) or on a voxel of a manual lesion drawn
    uniformly among the lesions (``"lesion"``: small lesions get as many patches as large ones).

    ``unlabelled`` / ``unlabelled_synthetic``: the pool of :meth:`unlabelled` patches (see there).

    ``infratentorial``: the probability that a patch not centred on a real lesion is centred instead
    on the template's brainstem or cerebellar tissue (``tpl["infratentorial"]``; as :meth:`_centre` draws,
    60 % of such patches there, the rest anywhere in the brain) and gets 1-3 ellipsoid lesions of
    1-5 mm semi-axes in that tissue, exempt from ``lesion_wm``. The pasted masks are all
    supratentorial and the template WM probability is low there, so without it the nets see
    infratentorial lesions only in the few real labels (0 draws when 0: older configs reproduce).
    """

    def __init__(self, tpl, lesion_masks, canvases, patch: int, real_fraction: float, seed: int,
                 contrast=(0.6, 4.0), lesion_wm: float = 0.0, labelled_weight: float = 1.0,
                 t1_fraction: float = 0.0, prior: bool = True, t1w: bool = False, t1w_dropout: float = 0.3,
                 t1w_contrast=(0.0, 1.5), normal_hyper: float = 0.0, sulci: float = 0.0, deform: float = 0.0,
                 centre_on: str = "voxel", unlabelled: list[dict] | None = None,
                 unlabelled_synthetic: float = 0.0, infratentorial: float = 0.0):
        self.tpl, self.masks, self.canvases = tpl, lesion_masks, canvases
        self.unlabelled_pool = [c for c in canvases if "label" not in c] if unlabelled is None else unlabelled
        self.unlabelled_synthetic = float(unlabelled_synthetic)
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
        if centre_on not in ("voxel", "lesion"):
            raise ValueError(f"centre_on must be 'voxel' or 'lesion', not {centre_on!r}")
        self.centre_on = centre_on
        for c in canvases:
            if "label" in c and "label_idx" not in c:
                c["label_idx"] = np.argwhere(c["label"] >= 0.5)
            if "label" in c and centre_on == "lesion" and "lesion_idx" not in c:
                # One index array per manual lesion (26-connected), so that a patch centres on a
                # lesion drawn uniformly: by voxel, a 20 mL confluent lesion outweighs a hundred
                # 10 mm^3 ones, and the small ones are what the model misses.
                lab, n = ndimage.label(c["label"] >= 0.5, np.ones((3, 3, 3)))
                order = np.argsort(lab[tuple(c["label_idx"].T)], kind="stable")
                sorted_idx = c["label_idx"][order]
                counts = np.bincount(lab[tuple(sorted_idx.T)], minlength=n + 1)[1:]
                c["lesion_idx"] = np.split(sorted_idx, np.cumsum(counts)[:-1]) if n else []
        self.contrast, self.lesion_wm = tuple(contrast), float(lesion_wm)
        self.p, self.real_fraction = patch, real_fraction
        self.rng = np.random.default_rng(seed)
        self.brain_idx = np.argwhere(tpl["brain"] & (tpl["wm"] + tpl["gm"] > 0.3))
        self.mask_idx = [np.argwhere(m) for m in lesion_masks]
        self.infratentorial = float(infratentorial)
        if self.infratentorial > 0:
            # Brainstem and cerebellar tissue (not CSF): where the pasted lesion masks, all
            # supratentorial, never reach and the template WM probability is low.
            tissue = tpl["infratentorial"] & (tpl["wm"] + tpl["gm"] >= 0.5)
            self.infra_tissue, self.infra_idx = tissue, np.argwhere(tissue)

    def _centre(self, region: tuple[slice, ...] | None, lesion_idx: np.ndarray) -> np.ndarray:
        rng = self.rng
        for _ in range(50):
            pool = lesion_idx if (rng.random() < 0.6 and len(lesion_idx)) else self.brain_idx
            c = pool[rng.integers(len(pool))]
            if region is None or all(s.start <= v < s.stop for s, v in zip(region, c)):
                return c
        return np.array([rng.integers(s.start, s.stop) for s in region])

    def sample(self, region=None):
        rng, tpl = self.rng, self.tpl
        k = rng.integers(len(self.masks))
        flip = rng.random() < 0.5
        canvas = None
        if self.canvases and rng.random() < self.real_fraction:
            canvas = self._pick_canvas()
        infra = False
        if canvas is not None and "label" in canvas and rng.random() < 0.7:
            # A real lesion, centred: real lesion appearance is what synthesis cannot give.
            idx = canvas["label_idx"]
            if self.centre_on == "lesion" and canvas["lesion_idx"]:
                idx = canvas["lesion_idx"][rng.integers(len(canvas["lesion_idx"]))]
            c = self._centre(region, idx)
        else:
            c = self._centre(region, self.mask_idx[k])
            if flip:
                c = c.copy(); c[0] = tpl["brain"].shape[0] - 1 - c[0]
            infra = self.infratentorial > 0 and rng.random() < self.infratentorial
            if infra:  # an infratentorial patch: lesions of 1-5 mm radius pasted in brainstem/cerebellar tissue
                c = self._centre(region, self.infra_idx)
        box = self._box(c)
        fbox = (slice(tpl["brain"].shape[0] - box[0].stop, tpl["brain"].shape[0] - box[0].start),) + box[1:]
        les = self.masks[k][fbox][::-1] if flip else self.masks[k][box]
        les = self._thin(les) | self._ellipsoids(tpl["wm"][box])
        if infra:
            les |= self._ellipsoids(self.infra_tissue[box].astype(np.float32), count=(1, 4), radius=(1.0, 5.0))
        les &= tpl["brain"][box]
        if self.lesion_wm > 0:  # keep pasted lesions in white matter (the masks come from another MNI template)
            les &= (tpl["wm"][box] >= self.lesion_wm) | (self.infra_tissue[box] if infra else False)
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

    def _box(self, centre: np.ndarray) -> tuple[slice, ...]:
        """The patch box around ``centre``, shifted to lie inside the template grid."""
        lo = np.clip(centre - self.p // 2, 0, np.array(self.tpl["brain"].shape) - self.p)
        return tuple(slice(int(a), int(a) + self.p) for a in lo)

    def unlabelled(self, region=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One unlabelled patch seen twice: ``(view, view, brain)``, ``(C, P, P, P)`` twice and ``(P, P, P)``.

        The image comes from a canvas of the unlabelled pool (``unlabelled``, by default every canvas
        without a label) as it is, with no pasted lesion, or with probability ``unlabelled_synthetic``
        (always when the pool is empty) from the template synthesis. The two views differ only by
        their independent image-quality augmentation (same geometry, so voxels correspond); the
        T1w channel (with ``t1w``) is zeros and the prior channel is as in :meth:`sample`. For
        self-supervised pre-training and the mean teacher (:mod:`training.mslesion.ssl`).
        """
        from training.mslesion.ssl import unlabelled_views

        rng, tpl = self.rng, self.tpl
        box = self._box(self._centre(region, self.brain_idx[:0]))
        pool = self.unlabelled_pool
        if pool and rng.random() >= self.unlabelled_synthetic:
            img = pool[rng.integers(len(pool))]["image"][box]
        else:
            img, _ = self._synthetic(box)
        extra = ([np.zeros(img.shape, np.float32)] if self.t1w else []) + ([tpl["prior"][box]] if self.prior else [])
        return unlabelled_views(img, extra, tpl["brain"][box], rng)

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

    def _ellipsoids(self, wm, count=(0, 4), radius=(0.9, 2.6)):
        """Random axis-aligned ellipsoids ``(P, P, P)`` bool: ``U{count}`` of them (upper bound
        excluded), centred where ``wm > 0.7``, semi-axes ``U(radius)`` voxels each."""
        rng, p = self.rng, self.p
        out = np.zeros((p, p, p), bool)
        cand = np.argwhere(wm > 0.7)
        if len(cand) == 0:
            return out
        g = np.indices((p, p, p)).astype(np.float32)
        for _ in range(rng.integers(*count)):
            c = cand[rng.integers(len(cand))]
            r = rng.uniform(*radius, 3)
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
