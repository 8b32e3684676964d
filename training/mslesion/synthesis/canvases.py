"""The training API (:func:`synthetic_canvases`): the canvases of a training run, rendered once and
cached, ready for :class:`training.mslesion.sampler.Sampler`."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from training.mslesion.synthesis.anatomy import label_map_paths, register_label_map
from training.mslesion.synthesis.config import settings
from training.mslesion.synthesis.lesions import draw_lesion_mask
from training.mslesion.synthesis.render import describe, render_canvas

LOGGER = logging.getLogger(__name__)


def _fingerprint(masks) -> str:
    h = hashlib.sha256()
    for m in masks or []:
        m = np.asarray(m)
        h.update(str(m.shape).encode())
        h.update(np.packbits(m >= 0.5 if m.dtype != bool else m).tobytes())
    return h.hexdigest()


def _source_hash() -> str:
    """sha256 of the sources of this package (every ``*.py`` of ``synthesis/``, by file name), so that a
    change to any stage of the recipe invalidates the canvas cache."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def synthetic_canvases(config: dict, tpl: dict, lesion_masks: list[np.ndarray], cache: Path,
                       n: int | None = None, seed: int | None = None, extra_lesions: list[np.ndarray] | None = None,
                       label_maps: dict[str, np.ndarray] | None = None) -> list[dict]:
    """``n`` labelled canvases for :class:`.sampler.Sampler`: ``{"image": float32 (X, Y, Z) brain IQR,
    "label": float32 soft lesion target in [0, 1], "ignore": bool all False, "meta": dict}``.

    ``config``: a training config (its ``"synthesis"`` block over the defaults, :func:`settings`);
    ``n`` defaults to ``synthesis.n_canvases`` and ``seed`` to ``config["seed"]``. ``lesion_masks``:
    boolean masks on the template grid (:func:`.template.lesion_masks_in_template`); ``extra_lesions``:
    more masks (e.g. the labelled scans' lesions), drawn instead with ``lesions.extra_probability``.
    ``label_maps``: name -> label map already on the grid (tests); by default the maps of
    ``synthesis.label_maps`` are registered once (:func:`register_label_map`, cached in
    ``cache/labelmaps``). Canvas ``i`` uses anatomy ``perm[i % n_maps]`` (``perm`` a permutation drawn
    from ``seed``), so 40 canvases see all 39 anatomies, and the seed ``(seed, i)``.

    Rendered canvases are cached as float16 ``.npy`` in ``cache/canvases/<hash>/`` keyed by seed and
    index, where the hash covers the settings, the lesion masks, the anatomies and this package's
    sources (:func:`_source_hash`), so a changed recipe never reads stale canvases. Memory: ~70 MB per
    returned canvas on the full template grid (float32 image and label); one shared all-False
    ``ignore`` array serves every canvas (read-only use only).
    """
    cfg = settings(config)
    n = int(cfg["n_canvases"] if n is None else n)
    seed = int(config.get("seed", 0) if seed is None else seed)
    if label_maps is None:
        paths = label_map_paths(cfg)
        names = [p.name.replace(".nii.gz", "") for p in paths]
        load = {nm: (lambda p=p: register_label_map(p, cache)) for nm, p in zip(names, paths)}
    else:
        names = sorted(label_maps)
        load = {nm: (lambda nm=nm: label_maps[nm]) for nm in names}
    perm = np.random.default_rng([seed, 999]).permutation(len(names))
    key = hashlib.sha256(json.dumps({
        "cfg": cfg, "masks": _fingerprint(lesion_masks), "extra": _fingerprint(extra_lesions), "maps": names,
        "code": _source_hash(),
        "maps_data": None if label_maps is None else _fingerprint([label_maps[k] > 0 for k in names]),
    }, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = cache / "canvases" / key
    folder.mkdir(parents=True, exist_ok=True)
    ignore = np.zeros(tpl["brain"].shape, bool)
    out = []
    for i in range(n):
        name = names[perm[i % len(names)]]
        stem = folder / f"seed{seed}-{i:03d}"
        fi, fl, fm = (Path(f"{stem}_{s}") for s in ("image.npy", "label.npy", "meta.json"))
        if not (fi.exists() and fl.exists() and fm.exists()):
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, i, 100])
            les = draw_lesion_mask(lesion_masks, rng, cfg["lesions"], extra_lesions, tpl["brain"].shape)
            c = render_canvas(load[name](), tpl["brain"], les, cfg, (seed, i))
            meta = {**c["meta"], "anatomy": name, "seconds": round(time.perf_counter() - t0, 1)}
            np.save(fi, c["image"].astype(np.float16))
            np.save(fl, c["label"].astype(np.float16))
            fm.write_text(json.dumps(meta))
            LOGGER.info("synthetic canvas %d/%d (%s): %s, %.2f mL of lesion, negatives %s (%.1f s)", i + 1, n,
                        name, describe(meta), meta["lesion_ml"], meta["negatives"] or "none", meta["seconds"])
            del c
        out.append({"image": np.load(fi).astype(np.float32), "label": np.load(fl).astype(np.float32),
                    "ignore": ignore, "meta": json.loads(fm.read_text())})
    return out
