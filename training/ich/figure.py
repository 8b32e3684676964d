"""Example figure of the generator: one scan per bleed type and one normal scan with calcifications.

``python -m training.ich.figure --maps ../shared/data/synthseg-label-maps --out PNG [--seed S]`` draws,
for each panel, an axial slice (the one with the largest product of bleed area -- calcification area
for the normal scan -- and head area, so not a tangential cut at the vertex) at brain window 0-80 HU (radiological display: the patient's right on the left), without
and with the mask contour.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from training.ich.bleeds import BleedSpec  # noqa: E402
from training.ich.synth import load_label_map, synthesise_ct  # noqa: E402

#: (title, label map id, bleed) of each panel; the normal scan has both calcifications forced on.
PANELS = (
    ("IPH", "training_seg_02", BleedSpec("iph", volume_ml=25.0, acute=True, location="deep")),
    ("SDH", "training_seg_07", BleedSpec("sdh", volume_ml=40.0, acute=True)),
    ("EDH", "subject03", BleedSpec("edh", volume_ml=30.0, acute=True)),
    ("SAH", "training_seg_12", BleedSpec("sah", volume_ml=12.0, acute=True, location="cisternal")),
    ("IVH", "subject08", BleedSpec("ivh", volume_ml=10.0, acute=True, location="cast")),
    ("normal", "training_seg_15", None),
)
COLOURS = {1: "red", 2: "orange", 3: "yellow", 4: "cyan", 5: "magenta"}


def _path(maps: Path, mid: str) -> Path:
    for name in (f"{mid}.nii.gz", f"{mid}_seg.nii.gz"):
        if (maps / name).exists():
            return maps / name
    raise FileNotFoundError(f"no label map {mid} in {maps}")


def make_figure(maps: Path, out: Path, seed: int = 0, panels=PANELS) -> list[dict]:
    """Synthesise the ``panels`` and write the figure to ``out``; returns one summary per panel."""
    fig, axes = plt.subplots(2, len(panels), figsize=(2.3 * len(panels), 5.0))
    summaries = []
    for col, (title, mid, spec) in enumerate(panels):
        labels, affine = load_label_map(_path(maps, mid))
        overrides = {} if spec is not None else {"calcifications.choroid_plexus": True, "calcifications.pineal": True}
        ct = synthesise_ct(labels, affine, np.random.default_rng([seed, col]), spec, overrides=overrides)
        mask = ct.bleed_mask if spec is not None else ct.calcification_mask
        area = (ct.image_hu > -300).sum(axis=(0, 1)) * mask.sum(axis=(0, 1))  # large lesion, large head
        k = int(np.argmax(area)) if mask.any() else ct.image_hu.shape[2] // 2
        head = ct.image_hu[:, :, k] > -300
        rows, cols = np.flatnonzero(head.any(axis=1)), np.flatnonzero(head.any(axis=0))
        crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)) if rows.size else (slice(None),) * 2
        img = ct.image_hu[:, :, k][crop][::-1].T
        m = mask[:, :, k][crop][::-1].T
        for row in (0, 1):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=0, vmax=80, origin="lower", interpolation="nearest")
            if row == 1 and m.any():
                ax.contour(m > 0, [0.5], colors=COLOURS.get(int(m.max()), "lime") if spec else "lime", linewidths=0.8)
            ax.set_xticks([]), ax.set_yticks([])
        p = ct.params
        vol = sum(ct.bleed_volume_ml.values())
        axes[0, col].set_title(f"{title} {vol:.0f} mL\n{mid}", fontsize=7)
        axes[1, col].set_title(f"{p['acquisition.slice_mm']:.1f} mm, {p['acquisition.kernel']}, "
                               f"tilt {p['acquisition.tilt_deg']:.0f}\u00b0, noise {p['acquisition.noise_sd_hu']:.0f}",
                               fontsize=6)
        inside = ct.image_hu[mask > 0]
        summaries.append({"panel": title, "map": mid, "slice": k, "volume_ml": vol,
                          "median_hu_in_mask": float(np.median(inside)) if inside.size else None,
                          "midline_shift_mm": p.get("mass_effect.midline_shift_mm", 0.0)})
    fig.suptitle("Synthetic head CT (training.ich.synth), brain window 0-80 HU; bottom: mask contours", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=85)
    plt.close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ich.figure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--maps", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for row in make_figure(args.maps, args.out, args.seed):
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
