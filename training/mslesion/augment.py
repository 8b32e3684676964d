"""Image-quality augmentation of one ``(P, P, P)`` patch (1 mm voxels, intensities in brain IQR):
Gaussian blur, thick-slice simulation (block averaging along a random axis, 2-6 mm), ghosting and
motion in k-space, smooth multiplicative bias field, gamma contrast and additive noise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


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
