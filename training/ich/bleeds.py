"""Haemorrhages of the five types, placed from the anatomy of a label map.

All masks are boolean ``(X, Y, Z)`` on the label grid; volumes are in mL; distances in mm. A bleed's
target volume is drawn log-uniform in ``bleeds.volume_ml[type]`` (0.1-100 mL; SAH and IVH up to
40 mL, since larger ones fill the whole subarachnoid space or the ventricles in these maps) and hit
exactly in voxels: each generator builds a *level* function over an allowed region and keeps the
``n`` allowed voxels of lowest level.

* **IPH** (code 1), intraparenchymal: a randomly rotated ellipsoid (axis ratio ``iph_aspect``) with a
  smooth random radius (``iph_irregularity``), seeded by location -- ``deep`` (basal ganglia,
  thalami), ``lobar`` (white matter ``iph_lobar_depth_mm`` below the inner table), ``cerebellar``,
  ``brainstem`` (weights ``iph_location_probabilities``, roughly the usual distribution of spontaneous
  ICH, e.g. the review of Qureshi et al., N Engl J Med 2001;344:1450-1460) -- and kept in the parenchyma of its
  compartment (cerebrum with its sulcal CSF deeper than ``iph_csf_min_depth_mm``, cerebellum, or brainstem), at most ``max_region_fraction``
  of it. An oedema rim (:func:`paint_bleeds`) surrounds it.
* **SDH** (2) and **EDH** (3): the intracranial voxels within a thickness of the inner table, on one
  side of the midline (the falx), above the tentorium and at most ``skull_base_margin_mm`` below the
  height of the 3rd ventricle (not along the skull base), around a convexity point (``convexity_min_height_mm`` above
  the 3rd ventricle, at least ``convexity_min_lateral_mm`` from the midline). Thickness falls
  off with the distance ``s`` from that point: ``T (1 - (s/S)^2)`` for SDH (a crescent that follows
  the convexity and is not stopped by sutures; ``S`` in ``extent_mm.sdh``) and ``T sqrt(1 - (s/S)^2)``
  for EDH (lentiform, biconvex and short, ``extent_mm.edh``, standing for the sutures that bound it;
  temporo-parietal with probability ``edh_lateral_probability``). ``T`` follows from the volume; ``S``
  shrinks for small bleeds so that ``T`` is at least ``min_thickness_mm``, and grows when ``T`` would
  exceed ``max_thickness_mm``.
* **SAH** (4): the extra-cerebral CSF voxels (label 24: sulci, fissures, cisterns) nearest a seed --
  ``cisternal`` (suprasellar cistern at the optic chiasm, spreading faster laterally, into the Sylvian
  fissures: y and z distances scaled by ``sah_cisternal_lateral_scale``) or ``convexal`` (CSF
  ``sah_convexal_depth_mm`` under the inner table, above the 3rd ventricle). Blood mixes with CSF: density ``csf + f (blood - csf)``
  with ``f`` in ``sah_blood_fraction``.
* **IVH** (5): ventricular voxels, ``layering`` (the most dependent ventricular CSF first, in the
  direction of gravity of the scanner: a fluid level in the occipital horns) or ``cast`` (nearest a
  seed in one ventricle); at most ``ivh_max_ventricle_fraction`` of the ventricles.

Density: acute (probability ``acute_probability``) uniform in TISSUE_HU ``blood_acute`` (50-90 HU),
else ``blood_subacute`` (isodense, 30-45 HU), plus a smooth heterogeneity of ``heterogeneity_sd_hu``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from training.ich.anatomy import CEREBRAL, Anatomy
from training.ich.tissues import CLASS_INDEX, PARENCHYMA, TISSUE_HU, bbox, smooth_field

#: Bleed type -> value in the bleed mask.
BLEED_CODES: dict[str, int] = {"iph": 1, "sdh": 2, "edh": 3, "sah": 4, "ivh": 5}


@dataclass
class BleedSpec:
    """What to generate; every ``None`` is drawn from the configuration.

    ``location``: IPH ``deep|lobar|cerebellar|brainstem``, SAH ``cisternal|convexal``, IVH
    ``layering|cast`` (ignored for SDH/EDH). ``side``: ``left|right`` (IPH deep/lobar, SDH, EDH).
    """
    kind: str
    volume_ml: float | None = None
    acute: bool | None = None
    density_hu: float | None = None
    location: str | None = None
    side: str | None = None

    def __post_init__(self):
        if self.kind not in BLEED_CODES:
            raise ValueError(f"unknown bleed type {self.kind!r}; one of {sorted(BLEED_CODES)}")


@dataclass
class Bleed:
    """A generated bleed: its mask on the label grid, density and recorded parameters."""
    kind: str
    mask: np.ndarray
    density_hu: float
    info: dict = field(default_factory=dict)

    @property
    def code(self) -> int:
        return BLEED_CODES[self.kind]


def resolve_specs(bleed, draws, cfg: dict) -> list[BleedSpec]:
    """``None`` -> no bleed; ``"random"`` -> a normal scan with probability ``normal_fraction``, else 1-3
    bleeds of distinct types (``bleed_count_probabilities``, ``bleed_type_probabilities``); a
    :class:`BleedSpec` or a list of them -> those."""
    if bleed is None:
        return []
    if isinstance(bleed, BleedSpec):
        return [bleed]
    if bleed != "random":
        return list(bleed)
    if draws.bernoulli("normal", cfg["normal_fraction"]):
        return []
    counts = {str(i + 1): p for i, p in enumerate(cfg["bleed_count_probabilities"])}
    n = int(draws.choice("bleed_count", counts))
    weights = dict(cfg["bleed_type_probabilities"])
    kinds = []
    for i in range(min(n, len(weights))):
        kinds.append(draws.choice(f"bleed_type.{i}", weights))
        weights.pop(kinds[-1])
    return [BleedSpec(k) for k in kinds]


def _lowest(level: np.ndarray, allowed: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """The ``n`` allowed voxels of lowest ``level`` and the level threshold reached."""
    vals = level[allowed]
    if vals.size == 0:
        return np.zeros(level.shape, bool), float("nan")
    if vals.size <= n:
        return allowed.copy(), float(vals.max())
    t = float(np.partition(vals, n - 1)[n - 1])
    return allowed & (level <= t), t


def _pick(draws, name: str, mask: np.ndarray) -> np.ndarray | None:
    """A random voxel (indices) of ``mask``; recorded as ``name`` (its position among the candidates)."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return None
    return idx[min(draws.integer(name, (0, len(idx) - 1)), len(idx) - 1)]


def _side_sign(spec: BleedSpec, draws, name: str) -> float:
    side = spec.side or ("right" if draws.bernoulli(name, 0.5) else "left")
    draws.record(name + "_side", side)
    return 1.0 if side == "right" else -1.0


def _distance(anat: Anatomy, box, centre_idx, scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    """World distance (mm) of the voxels of ``box`` from a voxel, axes scaled by ``scale`` (x, y, z)."""
    x, y, z = anat.box_world(box)
    c = anat.world(centre_idx)[0]
    return np.sqrt(((x - c[0]) / scale[0]) ** 2 + ((y - c[1]) / scale[1]) ** 2 + ((z - c[2]) / scale[2]) ** 2)


def _iph(anat, spec, draws, cfg, p, n):
    loc = spec.location or draws.choice(p + "location", cfg["iph_location_probabilities"])
    draws.record(p + "location", loc)
    d = anat.d_inner_table()
    if loc in ("cerebellar", "brainstem"):
        region = anat.mask("brainstem") if loc == "brainstem" else anat.mask("cerebellum", "cerebellar_wm")
        allowed = region
    else:
        allowed = anat.mask(*CEREBRAL) | (anat.mask("csf") & (d > cfg["iph_csf_min_depth_mm"]) & anat.supratentorial())
        if loc == "deep":
            region = anat.mask("deep_gm")
        else:
            lo, hi = cfg["iph_lobar_depth_mm"]
            region = anat.mask("wm") & (d >= lo) & (d <= hi)
        if spec.side is not None or loc in ("deep", "lobar"):
            sign = _side_sign(spec, draws, p + "right")
            x, y, z = anat.box_world(tuple(slice(0, s) for s in anat.cls.shape))
            region = region & (sign * anat.lateral(x, y, z) > 0)
    if not region.any():
        region = anat.parenchyma()
        allowed = region
    n = min(n, max(int(cfg["max_region_fraction"] * allowed.sum()), 1))
    seed = _pick(draws, p + "seed", region)
    aspect = draws.uniform(p + "aspect", cfg["iph_aspect"])
    irregular = draws.uniform(p + "irregularity", cfg["iph_irregularity"])
    angles = [draws.uniform(f"{p}rotation_{a}", (0.0, np.pi)) for a in "xyz"]
    radius = (3 * n * anat.voxel_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    box = anat.box(seed, radius * aspect * 1.8 + 6)
    x, y, z = anat.box_world(box)
    c = anat.world(seed)[0]
    pts = np.stack([x - c[0], y - c[1], z - c[2]], axis=-1)
    rot = _rotation(*angles)
    local = pts @ rot  # coordinates in the ellipsoid's axes
    level = np.sqrt((local[..., 0] / aspect) ** 2 + local[..., 1] ** 2 + (local[..., 2] * np.sqrt(aspect)) ** 2)
    noise = smooth_field(level.shape, draws.rng, max(radius / 1.5, 2.0) / anat.voxel_mm)
    level *= 1.0 + irregular * noise
    want = n
    for _ in range(5):  # one connected clot: grow the request until its largest piece has n voxels
        sub, _ = _lowest(level, allowed[box], want)
        lab, count = ndimage.label(sub)
        if count > 1:
            sizes = ndimage.sum(sub, lab, range(1, count + 1))
            sub = lab == (1 + int(np.argmax(sizes)))
        if sub.sum() >= 0.95 * n or want > 4 * n:
            break
        want += n - int(sub.sum())
    mask = np.zeros(anat.cls.shape, bool)
    mask[box] = sub
    return mask, {"location": loc, "seed_mm": c.round(1).tolist(), "aspect": aspect, "irregularity": irregular,
                  "equivalent_radius_mm": radius}


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _extra_axial(anat, spec, draws, cfg, p, n):
    kind = spec.kind
    d = anat.d_inner_table()
    sign = _side_sign(spec, draws, p + "right")
    full = tuple(slice(0, s) for s in anat.cls.shape)
    x, y, z = anat.box_world(full)
    lateral = anat.lateral(x, y, z)
    third = np.argwhere(anat.labels == 14)
    z_ref = anat.world(third.mean(axis=0))[0][2] if len(third) else float(np.median(z[anat.icv]))
    supra = anat.supratentorial()
    surface = (anat.icv & (d <= 1.5 * anat.voxel_mm.max()) & supra & (z >= z_ref + cfg["convexity_min_height_mm"])
               & (sign * lateral > cfg["convexity_min_lateral_mm"]))
    if kind == "edh" and draws.bernoulli(p + "temporoparietal", cfg["edh_lateral_probability"]):
        lateral_surface = surface & (np.abs(lateral) > 35.0)
        surface = lateral_surface if lateral_surface.any() else surface
    centre = _pick(draws, p + "centre", surface)
    if centre is None:
        return np.zeros(anat.cls.shape, bool), {"failed": "no convexity voxel"}
    extent = draws.uniform(p + "extent_mm", cfg["extent_mm"][kind])
    # small bleeds are small in extent too: at most the extent at which the central thickness is
    # min_thickness_mm (volume ~ pi S^2 T / 2 for the SDH profile, 2 pi S^2 T / 3 for the EDH one)
    shape_factor = 2.0 if kind == "sdh" else 1.5
    extent = min(extent, np.sqrt(shape_factor * n * anat.voxel_ml * 1000 / (np.pi * cfg["min_thickness_mm"][kind])))
    irregular = draws.uniform(p + "irregularity", cfg["extra_axial_irregularity"])
    max_t = cfg["max_thickness_mm"][kind]
    allowed_all = (anat.icv & ~anat.mask("ventricles", "choroid_plexus") & supra & (d <= max_t)
                   & (sign * lateral > cfg["falx_gap_mm"]) & (z >= z_ref - cfg["skull_base_margin_mm"][kind]))
    for _ in range(6):
        box = anat.box(centre, extent + max_t)
        s = _distance(anat, box, centre) / extent
        profile = np.clip(1.0 - s ** 2, 0.0, None)
        if kind == "edh":
            profile = np.sqrt(profile)
        noise = smooth_field(s.shape, draws.rng, 12.0 / anat.voxel_mm)
        profile = profile * (1.0 + irregular * noise)
        level = np.where(profile > 1e-3, d[box] / np.maximum(profile, 1e-3), np.inf)
        sub, thickness = _lowest(level, allowed_all[box] & np.isfinite(level), n)
        if thickness <= max_t or extent > 400:
            break
        extent *= 1.25
    draws.record(p + "extent_final_mm", extent)
    mask = np.zeros(anat.cls.shape, bool)
    mask[box] = sub
    return mask, {"centre_mm": anat.world(centre)[0].round(1).tolist(), "extent_mm": extent,
                  "thickness_mm": thickness, "irregularity": irregular, "side": "right" if sign > 0 else "left"}


def _sah(anat, spec, draws, cfg, p, n):
    pattern = spec.location or draws.choice(p + "pattern", cfg["sah_pattern_probabilities"])
    draws.record(p + "pattern", pattern)
    csf = anat.mask("csf")
    if not csf.any():
        return np.zeros(anat.cls.shape, bool), {"failed": "no CSF"}
    d = anat.d_inner_table()
    idx = np.argwhere(csf)
    if pattern == "cisternal":
        chiasm, third = np.argwhere(anat.labels == 85), np.argwhere(anat.labels == 14)
        if len(chiasm):
            target = anat.world(chiasm.mean(axis=0))[0]
        elif len(third):
            target = anat.world(third.mean(axis=0))[0] + np.array([0.0, 10.0, -10.0])
        else:
            target = anat.world(idx[np.argmax(d[tuple(idx.T)])])[0]
        seed = idx[np.argmin(((anat.world(idx) - target) ** 2).sum(axis=1))]
        k = cfg["sah_cisternal_lateral_scale"]  # distances along y and z count more: the spread runs laterally
        scale = (1.0, k, k)
    else:
        w = anat.world(idx)
        third = np.argwhere(anat.labels == 14)
        z_ref = anat.world(third.mean(axis=0))[0][2] if len(third) else np.median(w[:, 2])
        lo, hi = cfg["sah_convexal_depth_mm"]
        near = (d[tuple(idx.T)] >= lo) & (d[tuple(idx.T)] <= hi) & (w[:, 2] >= z_ref)
        seed = _pick(draws, p + "seed", _as_mask(csf.shape, idx[near]) if near.any() else csf)
        scale = (1.0, 1.0, 1.0)
    irregular = draws.uniform(p + "irregularity", cfg["spread_irregularity"])
    fraction = draws.uniform(p + "blood_fraction", cfg["sah_blood_fraction"])
    reach = min(90.0, 25.0 + 20.0 * (n * anat.voxel_ml) ** (1 / 3))
    box = anat.box(seed, reach)
    level = _distance(anat, box, seed, scale)
    level *= 1.0 + irregular * smooth_field(level.shape, draws.rng, 6.0 / anat.voxel_mm)
    sub, _ = _lowest(level, csf[box], n)
    mask = np.zeros(anat.cls.shape, bool)
    mask[box] = sub
    return mask, {"pattern": pattern, "seed_mm": anat.world(seed)[0].round(1).tolist(), "irregularity": irregular,
                  "blood_fraction": fraction}


def _as_mask(shape, idx) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(np.asarray(idx).T)] = True
    return m


def _ivh(anat, spec, draws, cfg, p, n, up_world):
    pattern = spec.location or draws.choice(p + "pattern", cfg["ivh_pattern_probabilities"])
    draws.record(p + "pattern", pattern)
    vent = anat.mask("ventricles", "choroid_plexus")
    if not vent.any():
        return np.zeros(anat.cls.shape, bool), {"failed": "no ventricles"}
    n = min(n, max(int(cfg["ivh_max_ventricle_fraction"] * vent.sum()), 1))
    irregular = draws.uniform(p + "irregularity", cfg["spread_irregularity"])
    box = bbox(vent, 2)
    x, y, z = anat.box_world(box)
    noise = smooth_field(x.shape, draws.rng, 5.0 / anat.voxel_mm)
    if pattern == "layering":
        lateral = np.isin(anat.labels[box], (4, 43, 5, 44)) & vent[box]
        allowed = lateral if lateral.any() else vent[box]
        height = x * up_world[0] + y * up_world[1] + z * up_world[2]
        level = height + irregular * 2.0 * noise
        seed_info = {"up": np.round(up_world, 3).tolist()}
    else:
        seed = _pick(draws, p + "seed", vent)
        allowed = vent[box]
        level = _distance(anat, box, seed) * (1.0 + irregular * noise)
        seed_info = {"seed_mm": anat.world(seed)[0].round(1).tolist()}
    sub, _ = _lowest(level, allowed, n)
    mask = np.zeros(anat.cls.shape, bool)
    mask[box] = sub
    return mask, {"pattern": pattern, "irregularity": irregular, **seed_info}


def make_bleed(anat: Anatomy, spec: BleedSpec, k: int, draws, cfg: dict, up_world: np.ndarray) -> Bleed:
    """Bleed ``k`` of a scan from ``spec`` (draws recorded under ``bleeds.<k>.``). ``up_world``: the
    direction against gravity in the label map's world frame (for IVH layering)."""
    p = f"bleeds.{k}."
    target = spec.volume_ml if spec.volume_ml is not None else draws.loguniform(p + "target_ml",
                                                                               cfg["volume_ml"][spec.kind])
    draws.record(p + "target_ml", target)
    acute = spec.acute if spec.acute is not None else draws.bernoulli(p + "acute", cfg["acute_probability"])
    lo, hi, _ = TISSUE_HU["blood_acute" if acute else "blood_subacute"]
    density = spec.density_hu if spec.density_hu is not None else draws.uniform(p + "density_hu", (lo, hi))
    n = max(int(round(target / anat.voxel_ml)), 1)
    if spec.kind == "iph":
        mask, info = _iph(anat, spec, draws, cfg, p, n)
    elif spec.kind in ("sdh", "edh"):
        mask, info = _extra_axial(anat, spec, draws, cfg, p, n)
    elif spec.kind == "sah":
        mask, info = _sah(anat, spec, draws, cfg, p, n)
    else:
        mask, info = _ivh(anat, spec, draws, cfg, p, n, up_world)
    info.update(kind=spec.kind, code=BLEED_CODES[spec.kind], target_ml=target, acute=bool(acute), density_hu=density,
                volume_ml_fine=float(mask.sum() * anat.voxel_ml))
    return Bleed(spec.kind, mask, float(density), info)


def paint_bleeds(hu: np.ndarray, anat: Anatomy, bleeds: list[Bleed], values: dict[str, float], draws,
                 cfg: dict) -> None:
    """Bleed HU into ``hu`` (in place, label grid), in order (a later bleed wins where they overlap):
    density plus a smooth heterogeneity; SAH mixed with CSF; around IPH an oedema rim
    (probability ``oedema_probability``) of ``oedema_volume_ratio`` times the clot's volume, fading
    from the TISSUE_HU ``oedema`` value at the clot to the parenchyma's own value, never raising HU."""
    for k, b in enumerate(bleeds):
        if not b.mask.any():
            continue
        p = f"bleeds.{k}."
        box = bbox(b.mask, 2)
        sub = b.mask[box]
        sd = draws.uniform(p + "heterogeneity_sd_hu", cfg["heterogeneity_sd_hu"])
        noise = smooth_field(sub.shape, draws.rng, cfg["heterogeneity_cell_mm"] / anat.voxel_mm)
        density = b.density_hu
        if b.kind == "sah":
            density = values["csf"] + b.info["blood_fraction"] * (b.density_hu - values["csf"])
        b.info["painted_hu"] = density
        hu_box = hu[box]
        hu_box[sub] = density + sd * noise[sub]
        if b.kind == "iph" and draws.bernoulli(p + "oedema", cfg["oedema_probability"]):
            ratio = draws.uniform(p + "oedema_volume_ratio", cfg["oedema_volume_ratio"])
            oedema_hu = draws.uniform(p + "oedema_hu", TISSUE_HU["oedema"][:2])
            radius = b.info["equivalent_radius_mm"]
            rim = max(radius * ((1 + ratio) ** (1 / 3) - 1), anat.voxel_mm.min())
            box = bbox(b.mask, int(np.ceil(rim / anat.voxel_mm.min())) + 1)
            dist = ndimage.distance_transform_edt(~b.mask[box], sampling=anat.voxel_mm)
            tissue = np.isin(anat.cls[box], [CLASS_INDEX[t] for t in PARENCHYMA])
            ring = (dist > 0) & (dist <= rim) & tissue
            w = 1.0 - (dist[ring] / rim) ** 2
            hu_box = hu[box]
            hu_box[ring] = np.minimum(hu_box[ring], hu_box[ring] + (oedema_hu - hu_box[ring]) * w)
            b.info.update(oedema_rim_mm=rim, oedema_hu=oedema_hu, oedema_ml=float(ring.sum() * anat.voxel_ml))
