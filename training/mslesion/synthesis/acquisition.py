"""Everything between the object and the magnitude image (:func:`acquire`): partial volume, bias field,
thick slices along a random axis and their upsampling, k-space ghosting and motion, Rician or
Gaussian noise on the acquired grid."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from training.mslesion.synthesis.fields import FWHM, _u, smooth_field


def _interp_axis(vol: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """``vol`` linearly interpolated at the fractional indices ``pos`` along ``axis`` (clamped at the ends)."""
    n = vol.shape[axis]
    pos = np.clip(pos, 0, n - 1)
    k0 = np.clip(np.floor(pos).astype(int), 0, max(0, n - 2))
    w = (pos - k0).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(vol.ndim)])
    a = np.take(vol, k0, axis=axis)
    b = np.take(vol, np.minimum(k0 + 1, n - 1), axis=axis)
    return (a * (1 - w) + b * w).astype(np.float32)


def thick_slices(img: np.ndarray, axis: int, spacing: float, thickness: float, offset: float) -> np.ndarray:
    """Acquire slices of ``thickness`` mm every ``spacing`` mm along ``axis`` (1 mm voxels).

    Slice profile: a Gaussian of FWHM ``thickness`` (``sigma = thickness / (2 sqrt(2 ln 2))``) along
    ``axis``, sampled (linearly) at ``offset + k spacing``, ``k = 0 .. floor((n - 1 - offset) / spacing)``.
    Returns the slices: ``img``'s shape with ``K`` (their number) along ``axis``.
    """
    blurred = ndimage.gaussian_filter1d(img, thickness / FWHM, axis=axis, mode="nearest")
    k = int(np.floor((img.shape[axis] - 1 - offset) / spacing)) + 1
    return _interp_axis(blurred, offset + spacing * np.arange(k), axis)


def upsample_slices(low: np.ndarray, axis: int, n: int, spacing: float, offset: float) -> np.ndarray:
    """Slices from :func:`thick_slices` back on the 1 mm grid (``n`` voxels along ``axis``) by linear
    interpolation between slice centres (nearest beyond the first and last), as the app's linear
    resampling of a thick-slice scan onto the template grid does."""
    return _interp_axis(low, (np.arange(n) - offset) / spacing, axis)


def kspace_artefacts(vol: np.ndarray, pe_axis: int, rng, cfg: dict) -> tuple[np.ndarray, list[str]]:
    """Ghosting and motion by corrupting phase-encode lines (``cfg`` is the ``kspace`` block).

    A modulation that is the same for every readout frequency commutes with the readout FFT, so a 1D
    FFT along ``pe_axis`` suffices. Ghosting: every ``m``-th line (``m ~ U{ghost_period}``, random
    phase) times ``U(ghost_scale)``. Motion: a fraction ``U(motion_lines)`` of the lines from a copy
    shifted by ``U(motion_shift_mm)`` in a random direction. The magnitude is kept (a magnitude image).
    """
    applied = []
    if rng.random() < cfg["ghosting_probability"]:
        k = np.fft.fft(vol, axis=pe_axis)
        m = int(rng.integers(cfg["ghost_period"][0], cfg["ghost_period"][1] + 1))
        sl = [slice(None)] * vol.ndim
        sl[pe_axis] = slice(int(rng.integers(m)), None, m)
        k[tuple(sl)] *= _u(rng, cfg["ghost_scale"])
        vol = np.abs(np.fft.ifft(k, axis=pe_axis)).astype(np.float32)
        applied.append(f"ghosting/{m}")
    if rng.random() < cfg["motion_probability"]:
        direction = rng.standard_normal(vol.ndim)
        shift = _u(rng, cfg["motion_shift_mm"]) * direction / np.linalg.norm(direction)
        moved = ndimage.shift(vol, shift, order=1, mode="nearest")
        lines = rng.random(vol.shape[pe_axis]) < _u(rng, cfg["motion_lines"])
        sel = lines.reshape([-1 if a == pe_axis else 1 for a in range(vol.ndim)])
        k = np.where(sel, np.fft.fft(moved, axis=pe_axis), np.fft.fft(vol, axis=pe_axis))
        vol = np.abs(np.fft.ifft(k, axis=pe_axis)).astype(np.float32)
        applied.append("motion")
    return vol, applied


def add_noise(vol: np.ndarray, std: float, rician: bool, rng) -> np.ndarray:
    """Rician noise ``sqrt((x + std n1)^2 + (std n2)^2)`` or Gaussian ``max(0, x + std n1)``, ``n`` i.i.d. N(0, 1)."""
    n1 = rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(std)
    if rician:
        n2 = rng.standard_normal(vol.shape, dtype=np.float32) * np.float32(std)
        return np.sqrt((vol + n1) ** 2 + n2 ** 2)
    return np.maximum(vol + n1, 0)


def acquire(img: np.ndarray, rng, cfg: dict, noise_std: float, rician: bool, slice_axis: int | None,
            pe_axis: int) -> tuple[np.ndarray, dict]:
    """Everything between the object and the magnitude image on the 1 mm grid (float32 ``(X, Y, Z)``).

    Partial volume (isotropic Gaussian ``U(partial_volume_sigma_mm)``), bias field (``exp`` of a
    :func:`smooth_field` times ``U(bias.std)``, with ``bias.probability``), in-plane blur
    ``U(inplane_sigma_mm)`` (every axis when isotropic), then with ``slice_axis`` thick slices
    (spacing ``U(slice_spacing_mm)``, thickness ``spacing U(thickness_fraction)``, random offset),
    k-space artefacts and noise on the acquired grid (so noise is correlated across slices after
    upsampling, as in a real upsampled scan), upsampled back. Returns the image and what was drawn.
    """
    res, meta = cfg["resolution"], {}
    img = ndimage.gaussian_filter(img, _u(rng, cfg["partial_volume_sigma_mm"]))
    if rng.random() < cfg["bias"]["probability"]:
        std = _u(rng, cfg["bias"]["std"])
        img = img * np.exp(std * smooth_field(img.shape, cfg["bias"]["spacing_mm"], rng))
        meta["bias_std"] = round(std, 3)
    inplane = _u(rng, res["inplane_sigma_mm"])
    if slice_axis is None:
        img = ndimage.gaussian_filter(img, inplane)
        img, meta["kspace"] = kspace_artefacts(img, pe_axis, rng, cfg["kspace"])
        return add_noise(img, noise_std, rician, rng), meta
    img = ndimage.gaussian_filter(img, [0.0 if a == slice_axis else inplane for a in range(3)])
    spacing = _u(rng, res["slice_spacing_mm"])
    thickness = spacing * _u(rng, res["thickness_fraction"])
    offset = float(rng.uniform(0, spacing))
    low = thick_slices(img, slice_axis, spacing, thickness, offset)
    low, meta["kspace"] = kspace_artefacts(low, pe_axis, rng, cfg["kspace"])
    low = add_noise(low, noise_std, rician, rng)
    meta.update(spacing_mm=round(spacing, 2), thickness_mm=round(thickness, 2))
    return upsample_slices(low, slice_axis, img.shape[slice_axis], spacing, offset), meta
