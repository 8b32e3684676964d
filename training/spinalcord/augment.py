"""Batch synthesis and augmentation of cord slices, vectorised in torch.

Images are ``(B, P, P)`` pool crops (0.5 mm pixels); batches come out as ``(B, 1, patch, patch)``
images normalised per slice (0.5-99.5 percentiles, as at inference) with soft targets in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from bids_app.spinalcord.predict import normalise_slices
from training.spinalcord.data import SlicePool


def synthesise(fractions: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random-contrast image ``(B, X, Y)`` from tissue fractions ``(B, C, X, Y)``: each class gets a
    random mean intensity; within-class texture is smoothed noise."""
    b, c = fractions.shape[:2]
    means = torch.rand(b, c, 1, 1, generator=gen)
    texture = torch.randn(fractions.shape, generator=gen) * torch.rand(b, c, 1, 1, generator=gen) * 0.15
    texture = F.avg_pool2d(texture, 3, stride=1, padding=1)
    return (fractions * (means + texture)).sum(1)


def rim_fade(fractions: torch.Tensor, max_px: float, gen: torch.Generator) -> torch.Tensor:
    """Fade the painted cord into CSF over a rim of random width (0..``max_px`` pixels) inside the mask.

    Manual raters draw the cord's outer edge: on thick slices the cord's section changes within the
    slab, and the image's cord/CSF edge is a partial-volume ramp that raters include whole. Painting
    that ramp *inside* the mask while the target stays the whole mask teaches the network the raters'
    convention; painting a sharp edge at the mask (no rim) teaches the midpoint of the ramp, measured
    to under-estimate manual CSA by 5-20 % on real thick-slice images. ``fractions``: ``(B, C, X, Y)``,
    channel 0 cord, channel 1 CSF (which receives the faded fraction); returns a new tensor.
    """
    cord = fractions[:, :1]
    steps = int(math.ceil(max_px))
    depth = torch.zeros_like(cord)
    eroded = cord
    for _ in range(steps):  # depth inside the mask, in pixels, by repeated 3x3 erosion
        eroded = 1 - F.max_pool2d(1 - eroded, 3, stride=1, padding=1)
        depth = depth + eroded
    width = torch.rand(cord.shape[0], 1, 1, 1, generator=gen) * max_px
    faded = cord * ((depth + 1) / (width + 1)).clamp(max=1.0)
    out = fractions.clone()
    out[:, :1] = faded
    out[:, 1:2] = fractions[:, 1:2] + (cord - faded)
    return out


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each ``(B, 1, X, Y)`` image with its own isotropic sigma (pixels)."""
    radius = 4
    grid = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (grid[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    kernels = kernels / kernels.sum(1, keepdim=True)
    b = x.shape[0]
    out = F.conv2d(F.pad(x.transpose(0, 1), (0, 0, radius, radius), mode="replicate"),
                   kernels[:, None, :, None], groups=b)
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="replicate"), kernels[:, None, None, :], groups=b)
    return out.transpose(0, 1)


def augment(image: torch.Tensor, target: torch.Tensor, patch: int, gen: torch.Generator,
            max_shift: float = 56.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial and image-quality augmentation of ``(B, P, P)`` images and soft targets.

    Returns ``(B, 1, patch, patch)`` normalised images and soft targets.
    """
    b, size = image.shape[0], image.shape[-1]
    x = torch.stack([image, target], 1)
    # Spatial: rotation (+-25 deg), anisotropic scale (0.75-1.35), shear, flips, and translation of up to
    # +-``max_shift`` pool pixels: the cord must be found anywhere in the patch, or not at all when it
    # leaves the view (a network trained on centred cords learns position, not anatomy).
    angle = (torch.rand(b, generator=gen) - 0.5) * math.radians(50)
    scale = 0.75 + torch.rand(b, 2, generator=gen) * 0.6
    shear = (torch.rand(b, generator=gen) - 0.5) * 0.2
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos / scale[:, 0]
    theta[:, 0, 1] = (-sin + shear) / scale[:, 0]
    theta[:, 1, 0] = sin / scale[:, 1]
    theta[:, 1, 1] = cos / scale[:, 1]
    theta[:, :, :2] *= patch / size
    theta[:, :, 2] = (torch.rand(b, 2, generator=gen) - 0.5) * 2 * max_shift / size * 2
    flip = torch.rand(b, generator=gen) < 0.5
    theta[flip, 0, :] *= -1
    grid = F.affine_grid(theta, (b, 2, patch, patch), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    img, tgt = x[:, :1], x[:, 1:].clamp(0, 1)

    # Contrast: inversion and gamma (any contrast can look like any other).
    img = (img - img.amin((2, 3), keepdim=True)) / (img.amax((2, 3), keepdim=True) - img.amin((2, 3), keepdim=True)).clamp_min(1e-6)
    invert = (torch.rand(b, 1, 1, 1, generator=gen) < 0.3).float()
    img = invert * (1 - img) + (1 - invert) * img
    gamma = torch.exp((torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 1.4)
    img = img.clamp_min(0) ** gamma
    # Bias field: a smooth random multiplicative field (bilinear upsampling of a 3x3 grid).
    coarse = torch.exp((torch.rand(b, 1, 3, 3, generator=gen) - 0.5) * 0.8)
    img = img * F.interpolate(coarse, size=(patch, patch), mode="bicubic", align_corners=True)
    # Resolution loss: blur then down/up-sample by up to 3x per axis.
    img = _gaussian_blur(img, torch.rand(b, generator=gen) * 1.2)
    out = torch.empty_like(img)
    factors = 1 + torch.rand(b, 2, generator=gen) * 2.0
    factors[torch.rand(b, generator=gen) < 0.3] = 1.0
    for i in range(b):
        low = (max(8, int(patch / factors[i, 0])), max(8, int(patch / factors[i, 1])))
        small = F.interpolate(img[i:i + 1], size=low, mode="area")
        out[i:i + 1] = F.interpolate(small, size=(patch, patch), mode="bilinear", align_corners=False)
    img = out
    # Noise (Gaussian or Rician-like magnitude), then per-slice percentile normalisation as at inference.
    sigma = torch.rand(b, 1, 1, 1, generator=gen) * 0.08
    noise_a = torch.randn(img.shape, generator=gen) * sigma
    noise_b = torch.randn(img.shape, generator=gen) * sigma
    rician = (torch.rand(b, 1, 1, 1, generator=gen) < 0.5).float()
    img = rician * torch.sqrt((img + noise_a) ** 2 + noise_b ** 2) + (1 - rician) * (img + noise_a)
    return normalise_slices(img), tgt


def sample_batch(pools: dict[str, SlicePool], mix: dict[str, float], batch_size: int, patch: int,
                 gen: torch.Generator, max_shift: float = 56.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a batch mixing the pools in the proportions ``mix`` and augment it."""
    names = list(mix)
    counts = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen))).multinomial(
        batch_size, np.array([mix[n] for n in names]) / sum(mix.values()))
    images, targets = [], []
    for name, count in zip(names, counts):
        if count == 0:
            continue
        pool = pools[name]
        idx = torch.multinomial(pool.weight, int(count), replacement=True, generator=gen)
        if pool.image is not None:
            image = pool.image[idx]
        else:
            fractions = pool.fractions[idx]
            if pool.rim_px > 0:
                fractions = rim_fade(fractions, pool.rim_px, gen)
            image = synthesise(fractions, gen)
        images.append(image)
        targets.append(pool.target[idx])
    return augment(torch.cat(images), torch.cat(targets), patch, gen, max_shift)
