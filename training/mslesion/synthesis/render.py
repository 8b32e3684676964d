"""One canvas (:func:`render_canvas`): deformed anatomy with the lesions coded into it, a Gaussian
mixture contrast (:func:`tissue_lut`), lesion contrast and soft target, hard negatives, acquisition,
skull kept or stripped, normalised like the app's inputs; :func:`describe` puts a canvas in words."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bids_app.imaging.brain import normalise_intensity
from training.mslesion.synthesis.acquisition import acquire
from training.mslesion.synthesis.anatomy import (BRAIN_CLASSES, LESION_CODE, LESION_WM_LABELS, SULCAL_CSF, TISSUES,
                                                 _label_lut, _lut, deform_labels, random_coordinates)
from training.mslesion.synthesis.fields import _box, _u
from training.mslesion.synthesis.negatives import hard_negatives

#: Independent random stream of each stage (index into the seed sequence).
STAGES = ("spatial", "contrast", "lesions", "negatives", "acquisition", "skull")


def tissue_lut(size: int, contrast: str, rng, cfg: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-label mean and std (float32 arrays indexed by label value, ``size`` entries) and the class
    means: class mean ``m_c ~ U(tissue_mean[contrast][c])``, label mean ``m_c (1 + N(0, label_jitter))``
    (clipped at 0), label std ``U(tissue_std)``. Label 0 (air around the head) is 0 +- 0."""
    means = {c: _u(rng, cfg["tissue_mean"][contrast][c]) for c in TISSUES}
    mu = np.full(size, means["soft"], np.float32)
    for c, labs in TISSUES.items():
        for v in labs:
            if v < size:
                mu[v] = means[c]
    mu = np.clip(mu * (1 + cfg["label_jitter"] * rng.standard_normal(size)), 0, None).astype(np.float32)
    sd = rng.uniform(*cfg["tissue_std"], size).astype(np.float32)
    mu[0] = sd[0] = 0.0
    return mu, sd, means


def _streams(seed) -> dict:
    base = [int(s) for s in np.atleast_1d(seed)]
    return {stage: np.random.default_rng(base + [k]) for k, stage in enumerate(STAGES)}


def render_canvas(labels: np.ndarray, brain: np.ndarray, lesion: np.ndarray | None, cfg: dict, seed,
                  contrast: str | None = None) -> dict:
    """One synthetic canvas from a label map on the canvas grid (1 mm voxels, ``(X, Y, Z)``, RAS).

    Parameters
    ----------
    labels : integer ``(X, Y, Z)`` label map (FreeSurfer values, :data:`TISSUES`) already on the grid.
    brain : bool ``(X, Y, Z)``, the mask of the normalisation (the template brain mask).
    lesion : bool ``(X, Y, Z)`` lesion shapes (e.g. :func:`draw_lesion_mask`) or ``None``; only their
        part in this subject's white matter (:data:`LESION_WM_LABELS`) is used, in connected pieces of
        at least ``lesions.min_voxels`` voxels.
    cfg : :func:`settings`.
    seed : int or sequence of ints; each stage (:data:`STAGES`) draws from its own stream of it.
    contrast : force a contrast type instead of drawing it from ``cfg["contrast"]``.

    Returns ``{"image": float32 (x - median) / IQR in brain, "label": float32 soft lesion target in
    [0, 1], "labels": the deformed label map, "lesion": bool lesion voxels, "negatives": float32 the
    hard negatives added (before acquisition, intensity units), "meta": dict of what was drawn}``.
    """
    rng = _streams(seed)
    lab = np.asarray(labels).astype(np.uint16)
    size = int(lab.max()) + 1
    n_comp = 0
    if lesion is not None and lesion.any():
        les = lesion & _label_lut(LESION_WM_LABELS, size)[lab]
        comp, n_comp = ndimage.label(les, np.ones((3, 3, 3)))
        # Slivers left where a real lesion overlapped this subject's grey matter or CSF are dropped:
        # after partial volume they are invisible, yet would stay in the target.
        small = np.bincount(comp.ravel(), minlength=n_comp + 1) < cfg["lesions"]["min_voxels"]
        small[0] = False
        if small.any():
            les &= ~small[comp]
            comp, n_comp = ndimage.label(les, np.ones((3, 3, 3)))
        lab[les] = LESION_CODE + comp[les] - 1  # coded, so that labels and lesions deform together
        del comp, les
    lab = deform_labels(lab, random_coordinates(lab.shape, rng["spatial"], cfg["spatial"]))
    les = lab >= LESION_CODE
    comp = np.where(les, lab.astype(np.int32) - LESION_CODE, -1)
    lab[les] = 2  # lesions lie in white matter; their base is rendered as WM, their contrast added below

    # Contrast, noise level and geometry of the acquisition: the "contrast" stream.
    r = rng["contrast"]
    names = sorted(cfg["contrast"])
    p = np.array([cfg["contrast"][k] for k in names], float)
    drawn = names[r.choice(len(names), p=p / p.sum())]
    contrast = contrast or drawn
    mu, sd, means = tissue_lut(size, contrast, r, cfg)
    noise_std = _u(r, cfg["noise"]["std"])
    rician = bool(r.random() < cfg["noise"]["rician_probability"])
    res = cfg["resolution"]
    thick = r.random() < res["thick_probability"]
    ap = np.asarray(res["axis_probabilities"], float)
    slice_axis = int(r.choice(3, p=ap / ap.sum())) if thick else None
    pe_choices = [a for a in range(3) if a != slice_axis]
    pe_axis = int(pe_choices[r.integers(len(pe_choices))])
    img = mu[lab] + sd[lab] * r.standard_normal(lab.shape, dtype=np.float32)

    # Lesions: delta per component, soft target.
    lc = cfg["lesions"]
    sign = float(lc["sign"][contrast])
    mu_wm, sd_wm = means["wm"], float(sd[min(2, size - 1)])
    target = np.zeros(lab.shape, np.float32)
    rl = rng["lesions"]
    if les.any():
        n_def = int(comp.max()) + 1
        faint = rl.random(n_def) < lc["faint_fraction"]
        strong = rl.uniform(*lc["contrast"][contrast], n_def) * mu_wm
        weak = rl.uniform(*lc["faint_wm_std"], n_def) * np.sqrt(sd_wm ** 2 + noise_std ** 2)
        delta = sign * np.where(faint, weak, strong).astype(np.float32)
        edge = _u(rl, lc["edge_sigma_mm"])
        box = _box(les, int(np.ceil(4 * edge)) + 2)
        dmap = np.where(les[box], delta[np.maximum(comp[box], 0)], 0).astype(np.float32)
        tex = ndimage.gaussian_filter(rl.standard_normal(dmap.shape, dtype=np.float32), 1.0)
        dmap *= 1 + lc["texture"] * tex / (float(tex.std()) + 1e-6)
        img[box] += ndimage.gaussian_filter(dmap, edge)
        target[box] = np.clip(ndimage.gaussian_filter(les[box].astype(np.float32), edge), 0, 1)
        n_comp = n_def
    del comp

    negatives, neg_names = hard_negatives(lab, mu_wm, sign, n_comp, pe_axis, rng["negatives"], cfg["hard_negatives"])
    img += negatives

    img, acq = acquire(img, rng["acquisition"], cfg, noise_std, rician, slice_axis, pe_axis)

    rs = rng["skull"]
    skull = bool(rs.random() < cfg["skull_on_probability"])
    if not skull:
        d = int(rs.integers(cfg["strip_dilation_mm"][0], cfg["strip_dilation_mm"][1] + 1))
        # A skull-stripping mask holds the sulcal and outer CSF next to the brain (3 mm), then some
        # more or less of the tissue outside (d mm).
        keep = _lut(TISSUES, size, BRAIN_CLASSES)[lab]
        keep |= ndimage.binary_dilation(keep, iterations=3) & _label_lut(SULCAL_CSF, size)[lab]
        if d > 0:
            keep = ndimage.binary_dilation(keep, iterations=d)
        img = img * ndimage.binary_fill_holes(keep)
    image = normalise_intensity(img, brain)
    meta = {"contrast": contrast, "slice_axis": slice_axis, "pe_axis": pe_axis, "skull": skull,
            "noise_std": round(noise_std, 4), "rician": rician, "negatives": neg_names,
            "lesion_components": n_comp, "lesion_ml": round(float(target.sum()) / 1000, 2),
            "wm_mean": round(mu_wm, 4), **acq}
    return {"image": image.astype(np.float32), "label": target, "labels": lab, "lesion": les,
            "negatives": negatives, "meta": meta}


def describe(meta: dict, sep: str = ", ") -> str:
    """A canvas in words: contrast and resolution, then skull and artefacts (joined by ``sep``)."""
    if meta.get("slice_axis") is None:
        res = "1 mm isotropic"
    else:
        plane = ("sagittal", "coronal", "axial")[meta["slice_axis"]]
        res = f"{meta['spacing_mm']:.1f} mm {plane} slices ({meta['thickness_mm']:.1f} mm thick)"
    extra = list(meta.get("kspace", [])) + (["bias"] if "bias_std" in meta else [])
    return (f"{meta['contrast'].upper()}, {res}{sep}skull {'on' if meta['skull'] else 'off'}"
            + (f", {', '.join(extra)}" if extra else ""))
