"""The generator's configuration and its random draws.

:data:`DEFAULT_CONFIG` mirrors ``training/ich/configs/synth.json`` key for key (a test checks it); every
range or probability the generator uses is here, nowhere else. Ranges are ``[low, high]`` (uniform
unless the code says log-uniform), probabilities are dicts of choice -> weight (normalised when drawn).
Units: HU, mm, mL, degrees.

Sources of the ranges: tissue and blood HU, with a source each, are in
:data:`training.ich.tissues.TISSUE_HU` (acute blood 50-90 HU: Parizel et al., Eur Radiol 2001). Issue 15
fixed the clinical envelope: bleed volumes 0.1-100 mL, slice thickness 0.5-5 mm, gantry tilt 0-25
degrees, quantum noise SD 3-15 HU, calcifications 100-400 HU. The IPH location weights roughly follow
the usual distribution of spontaneous ICH (about half deep, a third lobar, the rest cerebellum and
brainstem; e.g. the review of Qureshi et al., N Engl J Med 2001;344:1450-1460). Everything else --
pose, field of view, kernels, artefact amplitudes, bleed shapes and extents, the mass-effect rule,
calcification sizes, probabilities -- is a generator choice (breadth of augmentation), documented in
the docstring of the code that uses it.

:class:`Draws` makes every random scalar draw through one object, which records it under a dotted
name (``"acquisition.slice_mm"``) in a JSON-serialisable dict and honours ``overrides`` with the same
names, so that a test or a figure can fix any draw.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

#: The committed configuration file that :data:`DEFAULT_CONFIG` mirrors.
CONFIG_PATH = Path(__file__).resolve().parent / "configs" / "synth.json"

DEFAULT_CONFIG: dict[str, Any] = {
    "task": "ich",
    "n_scans": 200,
    "normal_fraction": 0.2,
    "bleed_type_probabilities": {"iph": 0.3, "sdh": 0.25, "edh": 0.1, "sah": 0.2, "ivh": 0.15},
    "bleed_count_probabilities": [0.7, 0.22, 0.08],
    "tissues": {
        "calibration_offset_hu": [-3.0, 3.0],
        "gm_wm_contrast_hu": [6.0, 14.0],
        "texture_sd_hu": [0.5, 2.0],
        "texture_cell_mm": 4.0,
        "fat_fraction": [0.15, 0.45],
        "fat_cell_mm": 6.0,
        "orbital_fat_mm": 10.0,
        "cancellous_depth_mm": 2.0,
    },
    "bleeds": {
        "volume_ml": {"iph": [0.1, 100.0], "sdh": [0.1, 100.0], "edh": [0.1, 100.0],
                      "sah": [0.1, 40.0], "ivh": [0.1, 40.0]},
        "acute_probability": 0.8,
        "heterogeneity_sd_hu": [0.0, 4.0],
        "heterogeneity_cell_mm": 4.0,
        "iph_location_probabilities": {"deep": 0.5, "lobar": 0.32, "cerebellar": 0.1, "brainstem": 0.08},
        "iph_aspect": [1.0, 2.0],
        "iph_irregularity": [0.05, 0.25],
        "iph_lobar_depth_mm": [8.0, 25.0],
        "iph_csf_min_depth_mm": 3.0,
        "max_region_fraction": 0.4,
        "oedema_probability": 0.85,
        "oedema_volume_ratio": [0.2, 1.5],
        "extent_mm": {"sdh": [30.0, 70.0], "edh": [15.0, 40.0]},
        "min_thickness_mm": {"sdh": 2.0, "edh": 3.0},
        "max_thickness_mm": {"sdh": 25.0, "edh": 40.0},
        "extra_axial_irregularity": [0.0, 0.2],
        "edh_lateral_probability": 0.75,
        "convexity_min_lateral_mm": 20.0,
        "convexity_min_height_mm": 10.0,
        "skull_base_margin_mm": {"sdh": 15.0, "edh": 30.0},
        "falx_gap_mm": 1.0,
        "sah_pattern_probabilities": {"cisternal": 0.55, "convexal": 0.45},
        "sah_blood_fraction": [0.75, 1.0],
        "sah_convexal_depth_mm": [1.0, 8.0],
        "sah_cisternal_lateral_scale": 0.6,
        "spread_irregularity": [0.1, 0.4],
        "ivh_pattern_probabilities": {"layering": 0.4, "cast": 0.6},
        "ivh_max_ventricle_fraction": 0.8,
    },
    "mass_effect": {
        "types": ["iph", "sdh", "edh"],
        "min_volume_ml": 5.0,
        "strength": [0.3, 1.0],
        "max_push_mm": 10.0,
        "falloff_mm": [8.0, 20.0],
        "midline_shift_mm_per_ml": 0.12,
        "max_midline_shift_mm": 15.0,
        "midline_lateral_sd_mm": 25.0,
        "midline_longitudinal_sd_mm": 45.0,
        "skull_taper_mm": 10.0,
    },
    "calcifications": {
        "choroid_plexus_probability": 0.7,
        "bilateral_probability": 0.85,
        "pineal_probability": 0.6,
        "pallidal_probability": 0.05,
        "diameter_mm": [2.0, 7.0],
        "blobs": [1, 3],
        "atrium_band": [0.15, 0.4],
        "pineal_offset_mm": 3.0,
        "hu": [100.0, 400.0],
    },
    "acquisition": {
        "rotation_deg": [12.0, 8.0, 10.0],
        "translation_mm": [10.0, 10.0, 5.0],
        "fov_mm": [200.0, 260.0],
        "fov_offset_mm": 10.0,
        "inplane_mm": [0.8, 1.0],
        "slice_mm": [0.5, 5.0],
        "fine_mm": 1.0,
        "tilt_probability": 0.4,
        "tilt_deg": [0.0, 25.0],
        "coverage_mm": [150.0, 200.0],
        "vertex_margin_mm": [0.0, 15.0],
        "kernel_probabilities": {"smooth": 0.65, "sharp": 0.35},
        "smooth_sigma_mm": [0.3, 1.0],
        "sharp_sigma_mm": [0.5, 1.2],
        "sharp_amount": [0.3, 1.2],
        "noise_sd_hu": [3.0, 15.0],
        "posterior_fossa_noise_gain": [0.0, 0.5],
        "posterior_fossa_radius_mm": 35.0,
        "beam_hardening_hu": [0.0, 10.0],
        "beam_hardening_mm": [2.0, 6.0],
        "petrous_probability": 0.6,
        "petrous_hu": [10.0, 40.0],
        "petrous_width_mm": [2.0, 5.0],
        "petrous_halfheight_mm": [3.0, 8.0],
        "petrous_search_mm": {"anteroposterior": 25.0, "vertical": 15.0, "lateral": [15.0, 50.0]},
        "streak_count": [0, 5],
        "streak_hu": [-60.0, 30.0],
        "streak_width_mm": [0.5, 2.0],
        "streak_length_mm": [40.0, 120.0],
        "streak_halfheight_mm": [1.0, 4.0],
        "streak_source_max_height_mm": 20.0,
        "clip_hu": [-1024, 3071],
    },
}


def merge(base: dict, update: dict) -> dict:
    """A deep copy of ``base`` with ``update`` merged in (nested dicts key by key; unknown keys refused)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in out:
            raise KeyError(f"unknown configuration key {key!r}")
        out[key] = merge(out[key], value) if isinstance(out[key], dict) and isinstance(value, dict) else value
    return out


def load_config(path: str | Path | None = None) -> dict:
    """:data:`DEFAULT_CONFIG` updated with the JSON file at ``path`` (``None``: the defaults)."""
    if path is None:
        return copy.deepcopy(DEFAULT_CONFIG)
    return merge(DEFAULT_CONFIG, json.loads(Path(path).read_text()))


def _plain(value):
    """numpy scalars and arrays -> Python numbers and lists (JSON-serialisable)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


class Draws:
    """Every random scalar of one scan: drawn from ``rng`` unless ``overrides`` fixes it, recorded in
    :attr:`params` (dotted names, JSON-serialisable values)."""

    def __init__(self, rng: np.random.Generator, overrides: dict | None = None):
        self.rng = rng
        self.overrides = dict(overrides or {})
        self.params: dict[str, Any] = {}

    def _take(self, name: str, draw):
        value = self.overrides[name] if name in self.overrides else draw()
        self.params[name] = _plain(value)
        return value

    def record(self, name: str, value) -> None:
        """Record a derived (not drawn) value."""
        self.params[name] = _plain(value)

    def uniform(self, name: str, bounds) -> float:
        lo, hi = bounds
        return float(self._take(name, lambda: self.rng.uniform(lo, hi)))

    def loguniform(self, name: str, bounds) -> float:
        lo, hi = bounds
        return float(self._take(name, lambda: np.exp(self.rng.uniform(np.log(lo), np.log(hi)))))

    def integer(self, name: str, bounds) -> int:
        """An integer in ``[low, high]`` (both included)."""
        lo, hi = bounds
        return int(self._take(name, lambda: self.rng.integers(lo, hi + 1)))

    def bernoulli(self, name: str, p: float) -> bool:
        return bool(self._take(name, lambda: self.rng.random() < p))

    def choice(self, name: str, weights: dict[str, float]) -> str:
        keys = list(weights)
        w = np.asarray([weights[k] for k in keys], dtype=float)
        return str(self._take(name, lambda: keys[int(self.rng.choice(len(keys), p=w / w.sum()))]))
