"""Synthetic head CT with haemorrhage from whole-head label maps (issue 15, item 1).

``synthesise_ct(label_map, affine, rng, bleed)`` runs, on the label grid: tissue classes
(:mod:`.tissues`), calcifications (:mod:`.anatomy`), bleeds (:mod:`.bleeds`), mass effect (:mod:`.mass`),
tissue and bleed HU, the beam-hardening band under the inner table; then, through the head pose onto
the scanner grid (:mod:`.scanner`): slice-profile averaging, kernel, petrous band, streaks, noise and
clipping. Every random draw is recorded in ``params``; the same ``rng`` state gives the same scan.

Command line (a small BIDS-like dataset)::

    python -m training.ich.synth --config training/ich/configs/synth.json \\
        --maps ../shared/data/synthseg-label-maps --out DIR --n N --seed S [--hold-out-maps ID ...]

writes ``sub-synthNNN/ct/sub-synthNNN_ct.nii.gz`` (int16 HU) with its ``_ct.json`` sidecar (all
parameters), ``derivatives/labels/sub-synthNNN/ct/sub-synthNNN_ct_label-ICH_dseg.nii.gz`` (0 none,
1 IPH, 2 SDH, 3 EDH, 4 SAH, 5 IVH) and ``..._label-calcification_mask.nii.gz`` on the same grid,
``participants.tsv`` (label map id and seed of each scan: split by anatomy with it) and ``maps.tsv``
(each map used or held out). ``--hold-out-maps`` takes map ids (``training_seg_03``, ``subject07``) or one
integer K (K maps drawn with the seed); held-out maps are never used.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from training.ich import anatomy, bleeds, mass, scanner, tissues
from training.ich.config import CONFIG_PATH, Draws, load_config
from training.ich.tissues import CALC_BASE

LOG = logging.getLogger("training.ich.synth")
DSEG_NAMES = {0: "background", 1: "IPH", 2: "SDH", 3: "EDH", 4: "SAH", 5: "IVH"}


@dataclass
class SyntheticCT:
    """One synthetic scan. Arrays ``(X, Y, Z)`` on the scanner grid of ``affine`` (RAS+ mm; Z = slices;
    sheared when the gantry is tilted, see :mod:`training.ich.scanner`).

    ``image_hu`` float32 HU in [-1024, 3071]; ``bleed_mask`` uint8 (0 none, 1 IPH, 2 SDH, 3 EDH, 4 SAH,
    5 IVH); ``calcification_mask`` uint8 0/1; ``bleed_volume_ml`` mL per type of ``bleed_mask`` (all five
    keys); ``params`` every draw (JSON-serialisable).
    """
    image_hu: np.ndarray
    bleed_mask: np.ndarray
    calcification_mask: np.ndarray
    affine: np.ndarray
    bleed_volume_ml: dict[str, float]
    params: dict

    def to_nifti(self) -> tuple[nib.Nifti1Image, nib.Nifti1Image, nib.Nifti1Image]:
        """The image (int16 HU, slope 1), the bleed dseg and the calcification mask (uint8). sform =
        ``affine`` (code 1); the qform carries it too unless it is sheared (tilt), then qform code 0."""
        sheared = self.params.get("acquisition.tilt_deg", 0.0) > 0
        out = []
        for data, dtype in ((np.round(self.image_hu), np.int16), (self.bleed_mask, np.uint8),
                            (self.calcification_mask, np.uint8)):
            img = nib.Nifti1Image(np.asarray(data).astype(dtype), self.affine)
            img.header.set_xyzt_units("mm")
            img.header.set_slope_inter(1.0, 0.0)
            img.set_sform(self.affine, code=1)
            if sheared:
                img.set_qform(None, code=0)
            else:
                img.set_qform(self.affine, code=1)
            out.append(img)
        return out[0], out[1], out[2]


def crop_to_head(label_map: np.ndarray, affine: np.ndarray, pad: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The label map cut to the head's bounding box (+ ``pad`` voxels) and its affine."""
    head = np.asarray(label_map) > 0
    if not head.any():
        raise ValueError("the label map is empty (no label > 0)")
    box = tissues.bbox(head, pad)
    out = np.asarray(affine, float).copy()
    out[:3, 3] = out[:3, :3] @ np.array([s.start for s in box]) + out[:3, 3]
    return np.asarray(label_map)[box].astype(np.int32), out


def synthesise_ct(label_map: np.ndarray, affine: np.ndarray, rng: np.random.Generator,
                  bleed: None | str | bleeds.BleedSpec | list[bleeds.BleedSpec] = "random", *,
                  config: dict | None = None, overrides: dict | None = None) -> SyntheticCT:
    """A synthetic head CT from a label map ``(X, Y, Z)`` (FreeSurfer/SynthSeg values) with its voxel ->
    world affine (RAS+ mm).

    ``bleed``: ``None`` (a normal scan), ``"random"`` (normal with probability ``normal_fraction``,
    else 1-3 bleeds of random types), a :class:`~training.ich.bleeds.BleedSpec` or a list of them.
    ``config``: a full configuration (:func:`training.ich.config.load_config`; default: the defaults).
    ``overrides``: fixed values for recorded draws by name (e.g. ``{"acquisition.slice_mm": 5.0}``).
    """
    cfg = config if config is not None else load_config()
    draws = Draws(rng, overrides)
    labels, lab_affine = crop_to_head(label_map, affine)
    anterior = np.linalg.inv(lab_affine[:3, :3]) @ np.array([0.0, 1.0, 0.0])
    tcfg = cfg["tissues"]
    vox = tissues.voxel_sizes(lab_affine)
    cls = tissues.class_volume(labels, vox, tcfg["orbital_fat_mm"], tcfg["cancellous_depth_mm"], anterior)
    tissues.add_random_fat(cls, labels, draws, tcfg, vox)
    anat = anatomy.Anatomy(labels, cls, lab_affine)
    pose = scanner.draw_pose(anat, draws, cfg["acquisition"])
    up = pose.rotation.T @ np.array([0.0, 1.0, 0.0])  # supine: anterior is up in the scanner
    calc_hu = anatomy.place_calcifications(anat, draws, cfg["calcifications"])
    specs = bleeds.resolve_specs(bleed, draws, cfg)
    made = [bleeds.make_bleed(anat, s, k, draws, cfg["bleeds"], up) for k, s in enumerate(specs)]
    mass.apply_mass_effect(anat, made, draws, cfg["mass_effect"])
    values = tissues.tissue_values(draws, tcfg)
    hu = tissues.paint_tissues(anat.cls, values, calc_hu, draws, tcfg, vox)
    bleeds.paint_bleeds(hu, anat, made, values, draws, cfg["bleeds"])
    acq = cfg["acquisition"]
    amp = draws.uniform("acquisition.beam_hardening_hu", acq["beam_hardening_hu"])
    width = draws.uniform("acquisition.beam_hardening_mm", acq["beam_hardening_mm"])
    if amp > 0:
        d = anat.d_inner_table()
        hu[anat.icv] -= amp * np.exp(-d[anat.icv] / width)
    ann = np.zeros(anat.cls.shape, np.uint8)
    ann[anat.mask("bone", "cancellous_bone")] = scanner.BONE_CODE
    ann[anat.cls >= CALC_BASE] = scanner.CALC_CODE
    for b in made:
        ann[b.mask] = b.code
    grid = scanner.plan_grid(anat, pose, draws, acq)
    image, ann_out = scanner.resample(hu, ann, lab_affine, pose, grid, values["air"])
    kernel = scanner.apply_kernel(image, grid, draws, acq)
    scanner.petrous_band(image, anat, pose, grid, draws, acq)
    scanner.streaks(image, anat, pose, grid, draws, acq)
    pf = anat.mask("cerebellum", "cerebellar_wm")
    pf_centre = pose.to_scanner(anat.world(np.argwhere(pf).mean(axis=0)))[0] if pf.any() else None
    scanner.add_noise(image, grid, kernel, pf_centre, draws, acq)
    np.clip(image, *acq["clip_hu"], out=image)
    bleed_mask = np.where(ann_out <= 5, ann_out, 0).astype(np.uint8)
    voxel_ml = abs(float(np.linalg.det(grid.affine[:3, :3]))) / 1000.0
    volumes = {k: float((bleed_mask == c).sum() * voxel_ml) for k, c in bleeds.BLEED_CODES.items()}
    params = dict(draws.params)
    params["bleeds"] = [b.info for b in made]
    params["bleed_volume_ml"] = volumes
    params["label_grid"] = {"shape": list(labels.shape), "affine": lab_affine.round(4).tolist()}
    params["pose"] = {"rotation": pose.rotation.round(6).tolist(), "translation_mm": pose.translation.tolist(),
                      "centre_mm": pose.centre.round(3).tolist()}
    params["affine"] = grid.affine.round(6).tolist()
    params = json.loads(json.dumps(params, default=_json_default))
    return SyntheticCT(image, bleed_mask, (ann_out == scanner.CALC_CODE).astype(np.uint8), grid.affine, volumes, params)


def _json_default(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value)}")


def map_id(path: Path) -> str:
    """``training_seg_01.nii.gz`` -> ``training_seg_01``; ``subject01_seg.nii.gz`` -> ``subject01``."""
    name = path.name.split(".nii")[0]
    return name[: -len("_seg")] if name.endswith("_seg") else name


def load_label_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj).astype(np.int32), img.affine


def _held_out(ids: list[str], hold: list[str], seed: int) -> set[str]:
    if len(hold) == 1 and hold[0].isdigit():
        k = int(hold[0])
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        return set(rng.choice(ids, size=min(k, len(ids)), replace=False).tolist()) if k else set()
    unknown = set(hold) - set(ids)
    if unknown:
        raise SystemExit(f"--hold-out-maps: unknown map ids {sorted(unknown)} (known: {', '.join(ids)})")
    return set(hold)


def write_dataset(out: Path, maps_dir: Path, n: int, seed: int, config: dict, hold: list[str],
                  use: list[str] | None = None) -> list[dict]:
    """Write ``n`` scans (see the module docstring); returns the rows of ``participants.tsv``.

    ``use``: map ids to draw from exclusively (a test set on the maps another run held out); every other
    map is then held out and ``hold`` must be empty."""
    paths = sorted(maps_dir.glob("*.nii*"))
    ids = [map_id(p) for p in paths]
    if not paths:
        raise SystemExit(f"no label maps (*.nii*) in {maps_dir}")
    if use:
        unknown = set(use) - set(ids)
        if unknown or hold:
            raise SystemExit(f"--use-maps: unknown map ids {sorted(unknown)}" if unknown
                             else "--use-maps and --hold-out-maps exclude each other")
        hold = [i for i in ids if i not in set(use)]
    held = _held_out(ids, hold, seed) if hold else set()
    used = [(i, p) for i, p in zip(ids, paths) if i not in held]
    if not used:
        raise SystemExit("every label map is held out")
    order = np.random.default_rng(np.random.SeedSequence([seed, 0])).permutation(len(used))
    out.mkdir(parents=True, exist_ok=True)
    labels_root = out / "derivatives" / "labels"
    labels_root.mkdir(parents=True, exist_ok=True)
    (out / "dataset_description.json").write_text(json.dumps(
        {"Name": "neuroseg synthetic head CT (issue 15)", "BIDSVersion": "1.9.0", "DatasetType": "raw",
         "GeneratedBy": [{"Name": "training.ich.synth", "Description": "synthesised from SynthSeg label maps"}]},
        indent=2) + "\n")
    (labels_root / "dataset_description.json").write_text(json.dumps(
        {"Name": "neuroseg synthetic head CT labels", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "training.ich.synth"}]}, indent=2) + "\n")
    (labels_root / "label-ICH_dseg.tsv").write_text(
        "index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in DSEG_NAMES.items()))
    (out / "maps.tsv").write_text("map_id\trole\n" + "".join(
        f"{i}\t{'held_out' if i in held else 'used'}\n" for i in ids))
    cache: dict[str, tuple] = {}
    rows = []
    for s in range(n):
        mid, path = used[order[s % len(used)]]
        if mid not in cache:
            cache.clear()
            cache[mid] = load_label_map(path)
        scan_seed = int(np.random.SeedSequence([seed, 2, s]).generate_state(1)[0])
        start = time.perf_counter()
        ct = synthesise_ct(*cache[mid], np.random.default_rng(scan_seed), "random", config=config)
        sub = f"sub-synth{s + 1:03d}"
        img, dseg, calc = ct.to_nifti()
        (out / sub / "ct").mkdir(parents=True, exist_ok=True)
        (labels_root / sub / "ct").mkdir(parents=True, exist_ok=True)
        nib.save(img, str(out / sub / "ct" / f"{sub}_ct.nii.gz"))
        nib.save(dseg, str(labels_root / sub / "ct" / f"{sub}_ct_label-ICH_dseg.nii.gz"))
        nib.save(calc, str(labels_root / sub / "ct" / f"{sub}_ct_label-calcification_mask.nii.gz"))
        sidecar = {"Modality": "CT", "Manufacturer": "synthetic (training.ich.synth)",
                   "SliceThickness": ct.params["acquisition.slice_mm"],
                   "GantryDetectorTilt": ct.params["acquisition.tilt_deg"],
                   "ConvolutionKernel": ct.params["acquisition.kernel"], "LabelMap": mid, "Seed": scan_seed,
                   "SynthesisParameters": ct.params}
        (out / sub / "ct" / f"{sub}_ct.json").write_text(json.dumps(sidecar, indent=1) + "\n")
        kinds = [b["kind"] for b in ct.params["bleeds"]]
        rows.append({"participant_id": sub, "map_id": mid, "seed": scan_seed, "bleed_types": ",".join(kinds) or "none",
                     **{f"{k}_ml": round(v, 3) for k, v in ct.bleed_volume_ml.items()}})
        LOG.info("%s from %s (%s) in %.1f s", sub, mid, rows[-1]["bleed_types"], time.perf_counter() - start)
    header = list(rows[0]) if rows else ["participant_id", "map_id", "seed", "bleed_types"]
    (out / "participants.tsv").write_text("\t".join(header) + "\n" + "".join(
        "\t".join(str(r[h]) for h in header) + "\n" for r in rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ich.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG_PATH, help="generator configuration (JSON)")
    parser.add_argument("--maps", type=Path, required=True, help="folder of label maps (*.nii.gz)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, default=None, help="number of scans (default: the config's n_scans)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hold-out-maps", nargs="*", default=[], metavar="ID",
                        help="map ids never used, or one integer K (K random maps held out)")
    parser.add_argument("--use-maps", nargs="*", default=[], metavar="ID",
                        help="draw only from these map ids (e.g. a test set on the maps a training set held out)")
    parser.add_argument("--normal-fraction", type=float, default=None,
                        help="fraction of scans without a bleed (default: the config's normal_fraction)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    config = load_config(args.config)
    n = config["n_scans"] if args.n is None else args.n
    if args.normal_fraction is not None:
        config = {**config, "normal_fraction": args.normal_fraction}
    write_dataset(args.out, args.maps, n, args.seed, config, args.hold_out_maps, args.use_maps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
