"""Examples on the real data: the model card's figure of canvases (:func:`figure`) and the render
timing (:func:`benchmark`), the ``--figure`` and ``--benchmark`` of the command line."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from training.common.paths import ROOT
from training.mslesion.synthesis.anatomy import label_map_paths, register_label_map
from training.mslesion.synthesis.config import settings
from training.mslesion.synthesis.lesions import draw_lesion_mask
from training.mslesion.synthesis.render import describe, render_canvas

LOGGER = logging.getLogger(__name__)


def figure(config: dict, png: Path, n: int = 8) -> None:
    """``n`` canvases of different anatomies on the real data, one axial slice each (the slice with the
    most lesion target), the target's 0.5 contour in red and the hard negatives (added intensity above
    5 % of the WM mean) in cyan; the contrast type is fixed per panel (three FLAIRs, then each other
    type with a non-zero probability, cycled), everything else drawn from the settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, tpl, masks, cache, paths = _inputs(config)
    seed = int(cfg["figure_seed"])
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(paths), size=n, replace=False)
    types = [k for k in sorted(cfg["contrast"], key=lambda k: -cfg["contrast"][k]) if cfg["contrast"][k] > 0]
    order = ["flair"] * 3 + [t for t in types if t != "flair"]
    cols = 4
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 4.3 * rows), layout="constrained")
    for j, ax in enumerate(np.ravel(axes)):
        ax.set_axis_off()
        if j >= n:
            continue
        path = paths[picks[j]]
        les = draw_lesion_mask(masks, np.random.default_rng([seed, j, 100]), cfg["lesions"] | {"none_probability": 0},
                               None, tpl["brain"].shape)
        c = render_canvas(register_label_map(path, cache), tpl["brain"], les, cfg, (seed, j),
                          contrast=order[j % len(order)])
        area = (c["label"] >= 0.5).sum((0, 1))
        neg = np.abs(c["negatives"]) > 0.05 * c["meta"]["wm_mean"]
        z = int(np.argmax(area)) if area.max() > 0 else int(np.argmax(neg.sum((0, 1))))
        sl = c["image"][:, :, z].T
        lo, hi = np.percentile(c["image"][tpl["brain"]], [1, 99.5])
        ax.imshow(sl, cmap="gray", origin="lower", vmin=lo, vmax=hi)
        if (c["label"][:, :, z] >= 0.5).any():
            ax.contour(c["label"][:, :, z].T, [0.5], colors="red", linewidths=0.7)
        if neg[:, :, z].any():
            ax.contour(neg[:, :, z].T.astype(float), [0.5], colors="cyan", linewidths=0.5)
        m = c["meta"]
        negs = ", ".join(x.replace("csf_partial_volume", "CSF PV") for x in m["negatives"]) or "none"
        ax.set_title(f"{path.name.replace('.nii.gz', '').replace('_seg', '')}, z={z}, {m['lesion_ml']:.1f} mL\n"
                     f"{describe(m, sep=chr(10))}\nnegatives: {negs}", fontsize=7.5)
        LOGGER.info("figure canvas %d: %s %s", j, path.name, describe(m))
        del c
    fig.suptitle("Synthetic canvases on real anatomy, template grid (axial slice with the most lesion; red: lesion "
                 "target 0.5, cyan: hard negatives, not in the target)\ncontrast fixed per panel, everything else "
                 "drawn from configs/synthesis.json; image in brain IQR", fontsize=9)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=70)
    plt.close(fig)
    LOGGER.info("wrote %s (%d kB)", png, png.stat().st_size // 1024)


def benchmark(config: dict, n: int = 2) -> dict:
    """Seconds to render ``n`` canvases on the full template grid (wall and process CPU time, whatever the
    thread settings of the caller), and the registration time of the maps used (from their caches)."""
    cfg, tpl, masks, cache, paths = _inputs(config)
    rows = []
    for i in range(n):
        labels = register_label_map(paths[i], cache)
        reg = json.loads((cache / "labelmaps" / f"{paths[i].name.replace('.nii.gz', '')}.json").read_text())
        w0, c0 = time.perf_counter(), time.process_time()
        les = draw_lesion_mask(masks, np.random.default_rng([i, 100]), cfg["lesions"], None, tpl["brain"].shape)
        c = render_canvas(labels, tpl["brain"], les, cfg, (12345, i))
        rows.append({"map": paths[i].name, "render_wall_s": round(time.perf_counter() - w0, 2),
                     "render_cpu_s": round(time.process_time() - c0, 2), "registration_s": reg, "meta": c["meta"]})
        LOGGER.info("benchmark %s", rows[-1])
    return {"canvases": rows}


def _inputs(config: dict):
    """``(settings, template, lesion masks on the template grid, cache folder, label-map paths)``."""
    from training.mslesion.template import lesion_masks_in_template, load_template

    cfg = settings(config)
    tpl = load_template()
    folder = Path(cfg["lesion_masks"])
    masks = lesion_masks_in_template(folder if folder.is_absolute() else ROOT / folder, tpl)
    cache = Path(cfg["cache_dir"])
    cache = cache if cache.is_absolute() else ROOT / cache
    return cfg, tpl, masks, cache, label_map_paths(cfg)
