"""Measured attempt at automatic disc detection by registering the PAM50 template (issue 14, item 1).

    python benchmarks/disc_registration.py [--out benchmarks/results/discs_pam50_<date>.json]

Not part of the app: it records why the app does not yet find vertebral levels on its own. For each dev
image with manual levels, the mid-sagittal slab (±2 mm around the manual cord) of the image and of the
PAM50_small T2 template are registered in 2D (SimpleITK, Mattes mutual information, so any contrast;
similarity transform; multi-start every 4 mm along the template and at scales 0.9/1.0/1.1; the best
final metric wins). The template's discs are carried into the image and compared with the manual discs
(from the levelled T2w mask of `sub-sct01`, carried to T1w through world coordinates).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bids_app.spinalcord import vertebrae  # noqa: E402

DATA = ROOT / ".." / "shared" / "data"
IMAGES = ["sub-sct01/anat/sub-sct01_T2w", "sub-sct01/anat/sub-sct01_T1w"]
LEVELS = "derivatives/labels/sub-sct01/anat/sub-sct01_T2w_label-SC_desc-vertlevels_seg.nii.gz"


def _canonical(path: Path):
    img = nib.as_closest_canonical(nib.load(str(path)))
    return img, np.asarray(img.dataobj, dtype=np.float32), tuple(float(z) for z in img.header.get_zooms()[:3])


def midsagittal(data: np.ndarray, cord: np.ndarray, zooms) -> sitk.Image:
    """Mean of ±2 mm around the cord's median x: a 2D image, x = anterior (mm), y = superior (mm)."""
    cx = int(round(np.median(np.argwhere(cord > 0)[:, 0])))
    half = max(0, int(round(2.0 / zooms[0])))
    plane = data[max(0, cx - half):cx + half + 1].mean(0)
    lo, hi = np.percentile(plane, [1, 99])
    image = sitk.GetImageFromArray(np.clip((plane - lo) / (hi - lo + 1e-6), 0, 1).T.astype(np.float32).copy())
    image.SetSpacing((zooms[1], zooms[2]))
    return image


def register(fixed: sitk.Image, moving: sitk.Image, y_shift: float) -> tuple[float, sitk.Similarity2DTransform]:
    height = fixed.GetSize()[1] * fixed.GetSpacing()[1]
    extent = moving.GetSize()[1] * moving.GetSpacing()[1]
    best = None
    for start in np.arange(0.0, extent - height, 4.0):
        for scale in (0.9, 1.0, 1.1):
            transform = sitk.Similarity2DTransform()
            transform.SetScale(scale)
            transform.SetTranslation((y_shift, start))
            method = sitk.ImageRegistrationMethod()
            method.SetMetricAsMattesMutualInformation(24)
            method.SetMetricSamplingStrategy(method.REGULAR)
            method.SetMetricSamplingPercentage(0.3, seed=1)
            method.SetInterpolator(sitk.sitkLinear)
            method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, 60)
            method.SetOptimizerScalesFromPhysicalShift()
            method.SetShrinkFactorsPerLevel([2, 1])
            method.SetSmoothingSigmasPerLevel([2, 1])
            method.SetInitialTransform(transform, inPlace=True)
            try:
                method.Execute(fixed, moving)
            except RuntimeError:
                continue
            if best is None or method.GetMetricValue() < best[0]:
                best = (method.GetMetricValue(), sitk.Similarity2DTransform(transform))
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / f"discs_pam50_{date.today().isoformat()}.json")
    args = parser.parse_args(argv)
    bids, template = DATA / "bids-dev", DATA / "templates" / "PAM50_small"
    _, t2, tz = _canonical(template / "PAM50_small_t2.nii.gz")
    _, tcord, _ = _canonical(template / "PAM50_small_cord.nii.gz")
    moving = midsagittal(t2, tcord, tz)
    template_discs = {}
    for n, k in vertebrae.PAM50_DISC_SLICES.items():
        ys = np.argwhere(tcord[:, :, k] > 0)[:, 1]
        template_discs[n] = (float(ys.mean() * tz[1]) if ys.size else 35.0, k * tz[2])
    levels_img = nib.load(str(bids / LEVELS))
    rows = []
    for stem in IMAGES:
        img, data, zooms = _canonical(bids / f"{stem}.nii.gz")
        _, cord, _ = _canonical(bids / "derivatives" / "labels" / f"{stem}_label-SC_seg.nii.gz")
        manual, _ = vertebrae.discs_and_levels(np.asarray(levels_img.dataobj), levels_img.affine, img.affine,
                                               data.shape[2], zooms[2])
        fixed = midsagittal(data, cord, zooms)
        y_shift = float(np.argwhere(tcord > 0)[:, 1].mean() * tz[1] - np.argwhere(cord > 0)[:, 1].mean() * zooms[1])
        metric, transform = register(fixed, moving, y_shift)
        inverse = transform.GetInverse()
        height = data.shape[2] * zooms[2]
        found = {n: inverse.TransformPoint(p)[1] / zooms[2] for n, p in template_discs.items()}
        found = {n: z for n, z in found.items() if 0 <= z * zooms[2] <= height}
        # Position error: each manual disc against the nearest detected disc, whatever its number.
        nearest = {n: min(found.items(), key=lambda item: abs(item[1] - z)) for n, z in manual.items()} if found else {}
        rows.append({"image": stem.split("/")[-1], "metric": round(metric, 4), "scale": round(transform.GetScale(), 3),
                     "manual_discs_slice": {str(n): round(z, 1) for n, z in manual.items()},
                     "detected_discs_slice": {str(n): round(z, 1) for n, z in found.items()},
                     "position_error_mm": {str(n): round(abs(m[1] - manual[n]) * zooms[2], 1) for n, m in nearest.items()},
                     "identity_offset_levels": {str(n): m[0] - n for n, m in nearest.items()}})
        print(json.dumps(rows[-1]))
    args.out.write_text(json.dumps({"method": __doc__.strip().splitlines()[0], "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
