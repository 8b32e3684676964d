"""Where does a cord model's CSA bias come from? A decomposition on volumes with a known answer.

    python -m training.spinalcord.bias MODEL_DIR [--exclude sub-unf01] [--out bias.json]

Synthetic axial volumes are painted from the spine-generic manual masks (random contrast per tissue,
:mod:`training.spinalcord.spinegeneric`) on the 0.5 mm grid and area-averaged onto a native in-plane
grid of 0.5, 0.8 or 1.0 mm, so the true cord area of every slice is the manual mask's area (mm²).
Reported per native spacing, as mean ratios to the true area (1.0 = no bias):

- ``resampling``: the true cord fraction on the native grid taken to 0.5 mm and back
  (:func:`bids_app.spinalcord.predict.to_fine` / ``to_native``): the pipeline's own share;
- ``soft`` / ``binary``: the model's soft map (within two voxels of its mask, as the app measures it)
  and its binary mask, with the calibrated logit offset and with none (``*_uncalibrated``).

Axial areas are compared (no angle correction): the synthetic slices are cut exactly where the masks are.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from bids_app.models import load_model
from bids_app.spinalcord import measures
from bids_app.spinalcord.predict import predict_soft_cord, to_fine, to_native
from training.common.logs import setup_logging
from training.common.paths import ROOT
from training.spinalcord.data import template_classes
from training.spinalcord.spinegeneric import load_subject, paste_into_template, subjects

LOGGER = logging.getLogger(__name__)
FINE_MM = 0.5


def synthetic_volume(cord: torch.Tensor, csf: torch.Tensor, background: torch.Tensor, native_mm: float,
                     gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Painted volume ``(X, Y, Z)`` on a ``native_mm`` in-plane grid and the true cord fraction there.

    ``cord``/``csf``: ``(Z, X, Y)`` masks on the 0.5 mm grid; ``background``: one template class crop
    ``(C, X, Y)`` of the same in-plane size used for every slice (one person, one neck).
    """
    fractions = paste_into_template(cord, csf, background[None].expand(cord.shape[0], -1, -1, -1))
    # One contrast for the whole volume (same class means on every slice), with the cord visibly
    # different from the CSF (a cord of CSF brightness has no edge to find, whatever the model).
    while True:
        means = torch.rand(fractions.shape[1], generator=gen)
        if abs(float(means[0] - means[1])) >= 0.25:
            break
    image = (fractions * means[None, :, None, None]).sum(1)
    image = image + torch.randn(image.shape, generator=gen) * 0.02
    size = [max(1, int(round(n * FINE_MM / native_mm))) for n in cord.shape[1:]]
    native_img = F.adaptive_avg_pool2d(image[:, None], size)[:, 0]
    native_cord = F.adaptive_avg_pool2d(cord[:, None], size)[:, 0]
    return np.moveaxis(native_img.numpy(), 0, 2), np.moveaxis(native_cord.numpy(), 0, 2)


def decompose(model_dir: Path, mask_dir: Path, template_dir: Path, exclude: tuple[str, ...] = (),
              spacings: tuple[float, ...] = (0.5, 0.8, 1.0), seed: int = 7) -> dict:
    """Ratios to the true area per native spacing (see the module docstring); per participant and mean."""
    bundle = load_model(model_dir, "cpu")
    offset = float(bundle.metadata["output"].get("logit_offset", 0.0))
    threshold = bundle.metadata["output"]["threshold"]
    gen = torch.Generator().manual_seed(seed)
    size = 160  # 80 mm field of view
    backgrounds = template_classes(template_dir, FINE_MM, size, 6)
    rows = []
    for subject in subjects(mask_dir, exclude):
        cord, csf = load_subject(mask_dir, subject, FINE_MM)
        keep = cord.sum((1, 2)) >= 4
        cord, csf = cord[keep], csf[keep]
        centre = ndimage.center_of_mass(cord.sum(0).numpy())
        x0, y0 = int(centre[0]) - size // 2, int(centre[1]) - size // 2
        pad = F.pad(torch.stack([cord, csf]), (size, size, size, size))
        cord_c = pad[0][:, x0 + size:x0 + 2 * size, y0 + size:y0 + 2 * size]
        csf_c = pad[1][:, x0 + size:x0 + 2 * size, y0 + size:y0 + 2 * size]
        truth = cord_c.sum((1, 2)).numpy() * FINE_MM ** 2
        background = backgrounds[int(torch.randint(len(backgrounds), (1,), generator=gen))]
        for native in spacings:
            volume, fraction = synthetic_volume(cord_c, csf_c, background, native, gen)
            zooms = (native, native, 5.0)
            back = to_native(to_fine(np.moveaxis(fraction, 2, 0), zooms[:2], FINE_MM), fraction.shape[:2])
            row = {"subject": subject, "native_mm": native,
                   "resampling": float(np.mean(back.sum((1, 2, 3)).numpy() * native ** 2 / truth))}
            for name, off in (("", offset), ("_uncalibrated", 0.0)):
                bundle.metadata["output"]["logit_offset"] = off
                soft = predict_soft_cord(bundle, volume, zooms)
                mask = measures.binarise(soft, threshold, True)
                support = ndimage.binary_dilation(mask, iterations=2)
                row["soft" + name] = float(np.mean((soft * support).sum((0, 1)) * native ** 2 / truth))
                row["binary" + name] = float(np.mean(mask.sum((0, 1)) * native ** 2 / truth))
                row["dice" + name] = measures.dice(mask, fraction >= 0.5)
            bundle.metadata["output"]["logit_offset"] = offset
            LOGGER.info("%s %.1f mm: %s", subject, native, {k: round(v, 3) for k, v in row.items()
                                                            if isinstance(v, float)})
            rows.append(row)
    keys = [k for k in rows[0] if k not in ("subject", "native_mm")]
    means = {f"{native:g}mm": {k: round(float(np.mean([r[k] for r in rows if r["native_mm"] == native])), 4)
                               for k in keys} for native in spacings}
    medians = {f"{native:g}mm": {k: round(float(np.median([r[k] for r in rows if r["native_mm"] == native])), 4)
                                 for k in keys} for native in spacings}
    return {"model": str(model_dir), "logit_offset": offset, "excluded": list(exclude), "mean": means,
            "median": medians, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.spinalcord.bias", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--masks", type=Path, default=ROOT / "../shared/data/spinegeneric-cord-masks")
    parser.add_argument("--template", type=Path, default=ROOT / "../shared/data/templates/PAM50_small")
    parser.add_argument("--exclude", nargs="*", default=[], help="participants to leave out")
    parser.add_argument("--out", type=Path, help="write the result as JSON")
    args = parser.parse_args(argv)
    setup_logging()
    result = decompose(args.model_dir, args.masks, args.template, tuple(args.exclude))
    LOGGER.info("median ratios to the true area: %s", json.dumps(result["median"]))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
