"""Real lesion shapes for a canvas (:func:`draw_lesion_mask`): random masks, random subsets of their
connected components, random left-right flips."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from training.mslesion.synthesis.fields import _box, _u


def draw_lesion_mask(masks: list[np.ndarray], rng, cfg: dict, extra: list[np.ndarray] | None = None,
                     shape=None) -> np.ndarray:
    """A boolean ``(X, Y, Z)`` lesion mask on the template grid from real masks (``cfg`` is the
    ``lesions`` block).

    With probability ``none_probability`` empty. Otherwise ``U{masks_per_canvas}`` masks drawn without
    replacement from ``extra`` (with probability ``extra_probability`` when given; soft masks are taken
    at >= 0.5) or ``masks``; each flipped left-right (axis 0, the template is symmetric) with
    ``flip_probability``, and each of its connected components (26-connectivity) kept with a
    probability drawn from ``components_kept`` for that mask; their union.
    """
    shape = tuple(shape if shape is not None else masks[0].shape)
    out = np.zeros(shape, bool)
    if rng.random() < cfg["none_probability"]:
        return out
    pool = extra if extra and rng.random() < cfg["extra_probability"] else masks
    if not pool:
        return out
    lo, hi = cfg["masks_per_canvas"]
    k = min(int(rng.integers(lo, hi + 1)), len(pool))
    for j in rng.choice(len(pool), size=k, replace=False):
        m = np.asarray(pool[j])
        m = m >= 0.5 if m.dtype != bool else m
        if rng.random() < cfg["flip_probability"]:
            m = m[::-1]
        box = _box(m, 1)
        if box is None:
            continue
        lab, n = ndimage.label(m[box], np.ones((3, 3, 3)))
        keep = rng.random(n + 1) < _u(rng, cfg["components_kept"])
        keep[0] = False
        out[box] |= keep[lab]
    return out
