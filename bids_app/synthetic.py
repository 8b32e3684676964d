"""Synthetic spinal-cord phantoms with known answers, and the demo BIDS dataset built from them.

``python -m bids_app.synthetic OUT_DIR`` writes the demo dataset (two participants, one with two
sessions, T1w/T2w/T2starw-like contrasts, disc labels for one image, and a brain FLAIR with three
known lesions and their mask for ``sub-01``; under 5 MB).

A phantom is an elliptic cylinder (semi-axes ``a``, ``b`` in mm, so its true cross-sectional area is
``pi * a * b``) tilted by ``tilt_deg`` from the inferior-superior axis, inside a ring of CSF and a
tissue background. Partial volume is exact up to the supersampling: each voxel holds the fraction of
its volume inside the cylinder, computed on ``supersample**3`` sub-voxel points.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def _rotation(tilt_deg: float, azimuth_deg: float) -> np.ndarray:
    """Rotation taking the z axis onto the cord direction (tilted by ``tilt`` towards ``azimuth``)."""
    t, a = np.radians(tilt_deg), np.radians(azimuth_deg)
    ry = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return rz @ ry @ rz.T


def elliptic_cylinder(shape: tuple[int, int, int], zooms: tuple[float, float, float], a: float, b: float,
                      tilt_deg: float = 0.0, azimuth_deg: float = 0.0, supersample: int = 5,
                      centre_mm: tuple[float, float, float] | None = None) -> np.ndarray:
    """Partial-volume fraction ``(X, Y, Z)`` in [0, 1] of a tilted elliptic cylinder.

    Coordinates are ``index * zoom`` in mm (RAS+ voxel axes); the cylinder passes through
    ``centre_mm`` (default: the centre of the volume).
    """
    zooms = np.asarray(zooms, float)
    centre = np.asarray(centre_mm if centre_mm is not None else (np.asarray(shape) - 1) / 2 * zooms, float)
    inverse = _rotation(tilt_deg, azimuth_deg).T
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    frac = np.zeros(shape, np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    for ox in offsets:
        for oy in offsets:
            for oz in offsets:
                points = (grid + (ox, oy, oz)) * zooms - centre
                local = points @ inverse.T
                frac += ((local[..., 0] / a) ** 2 + (local[..., 1] / b) ** 2) <= 1.0
    return (frac / supersample ** 3).astype(np.float32)


def cord_image(shape: tuple[int, int, int], zooms: tuple[float, float, float], contrast: str,
               a: float = 6.5, b: float = 4.0, tilt_deg: float = 0.0, seed: int = 0,
               ) -> tuple[np.ndarray, np.ndarray]:
    """A cord phantom image and its true partial-volume cord fraction.

    ``contrast`` is ``T2w`` (bright CSF, darker cord), ``T1w`` (dark CSF, brighter cord) or
    ``T2starw`` (bright cord grey matter-like, bright CSF). Returns ``(image, cord_fraction)``.
    """
    rng = np.random.default_rng(seed)
    cord = elliptic_cylinder(shape, zooms, a, b, tilt_deg)
    canal = elliptic_cylinder(shape, zooms, a + 3.0, b + 3.0, tilt_deg)
    body = elliptic_cylinder(shape, zooms, a + 14.0, b + 12.0, tilt_deg)
    csf = np.clip(canal - cord, 0, 1)
    tissue = np.clip(body - canal, 0, 1)
    intensity = {"T2w": (300.0, 900.0, 450.0), "T1w": (600.0, 150.0, 400.0), "T2starw": (700.0, 800.0, 250.0)}
    c_cord, c_csf, c_tissue = intensity[contrast]
    image = cord * c_cord + csf * c_csf + tissue * c_tissue + (1 - body) * 40.0
    image += rng.normal(0, 15.0, shape)
    return np.abs(image).astype(np.float32), cord


def _save(data: np.ndarray, zooms: tuple[float, float, float], path: Path, dtype=np.float32) -> None:
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -np.asarray(data.shape) * np.asarray(zooms) / 2
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def make_dataset(root: Path, subjects: dict[str, list[str | None]] | None = None, flair: bool = False) -> Path:
    """Write a small synthetic spine BIDS dataset under ``root``; returns ``root``.

    ``subjects`` maps participant labels to session labels (``None`` for no session). Every image is
    40 x 40 mm in plane at 0.8 mm with 3 mm slices (T2w: 1 mm slices); ``sub-01``'s T2w gets disc labels.
    With ``flair``, the first participant (first session) also gets the brain :func:`synthetic_flair`
    and its lesion mask as a manual label (about 1.4 MB more).
    """
    subjects = subjects or {"01": [None], "02": ["A", "B"]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "neuroseg synthetic spine demo", "BIDSVersion": "1.10.0", "DatasetType": "raw",
         "License": "CC0", "Authors": ["neuroseg"]}, indent=2) + "\n")
    (root / "README").write_text("Synthetic spinal-cord phantoms made by neuroseg (bids_app/synthetic.py).\n")
    rows = ["participant_id"]
    for n, (subject, sessions) in enumerate(subjects.items()):
        rows.append(f"sub-{subject}")
        for m, session in enumerate(sessions):
            folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
            prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
            for k, contrast in enumerate(("T2w", "T1w", "T2starw")):
                zooms = (0.8, 0.8, 1.0 if contrast == "T2w" else 3.0)
                shape = (50, 50, 40 if contrast == "T2w" else 14)
                # Cords 6.0-7.2 mm semi-axis: realistic for any number of participants.
                image, _ = cord_image(shape, zooms, contrast, a=6.0 + 0.3 * (n % 5), b=4.0, tilt_deg=8.0,
                                      seed=100 * n + 10 * m + k)
                _save(image, zooms, folder / f"{prefix}_{contrast}.nii.gz", np.int16)
                (folder / f"{prefix}_{contrast}.json").write_text(json.dumps({"Manufacturer": "synthetic"}) + "\n")
                if subject == "01" and contrast == "T2w":
                    discs = np.zeros(shape, np.float32)
                    discs[25, 20, 30], discs[25, 21, 10] = 3, 4  # C2/C3 and C3/C4 disc tips
                    labels = root / "derivatives" / "labels" / folder.relative_to(root)
                    _save(discs, zooms, labels / f"{prefix}_{contrast}_label-disc_seg.nii.gz")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    if flair:
        subject, sessions = next(iter(subjects.items()))
        _write_flair(root, subject, sessions[0], t1w=False)  # this session's T1w is the cord image
    labels_root = root / "derivatives" / "labels"
    if labels_root.is_dir():
        (labels_root / "dataset_description.json").write_text(json.dumps(
            {"Name": "demo labels", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
             "GeneratedBy": [{"Name": "neuroseg synthetic"}]}, indent=2) + "\n")
    return root


# ------------------------------------------------------------------------------------------ brain FLAIR
#: Spherical lesions of the synthetic FLAIR: centre (MNI mm, RAS) and radius (mm), all in white matter.
FLAIR_LESIONS = (((-26.0, -10.0, 28.0), 5.0), ((28.0, -20.0, 24.0), 4.0), ((-22.0, 20.0, 18.0), 3.5))


#: Tissue intensities (white matter, grey matter, CSF, lesion) of the synthetic contrasts, x 1000.
FLAIR_INTENSITIES = (0.6, 1.0, 0.15, 1.7)
T1W_INTENSITIES = (1.0, 0.6, 0.15, 0.45)


def synthetic_t1w(zooms: tuple[float, float, float] = (1.2, 1.2, 1.2), tilt_deg: float = -6.0,
                  lesions=FLAIR_LESIONS, seed: int = 1) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """The T1w of the :func:`synthetic_flair` brain: same anatomy and lesions (hypointense), T1w
    ordering (WM > GM > CSF, :data:`T1W_INTENSITIES`), its own 1.2 mm grid tilted the other way, so
    that it must be co-registered to the FLAIR."""
    return synthetic_flair(zooms, tilt_deg, lesions, seed, T1W_INTENSITIES)


def synthetic_flair(zooms: tuple[float, float, float] = (1.0, 1.0, 4.0), tilt_deg: float = 12.0,
                    lesions=FLAIR_LESIONS, seed: int = 0,
                    intensities: tuple[float, float, float, float] = FLAIR_INTENSITIES
                    ) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """A FLAIR-like brain with known lesions on an oblique thick-slice grid, and its lesion mask.

    Intensities come from the MNI152NLin2009aSym tissue maps of the project's TemplateFlow home
    (``intensities`` of white matter, grey matter, CSF and lesion; FLAIR by default: grey matter 1.0 >
    white matter 0.6 > CSF 0.15, lesions 1.7; times 1000, plus 2 % noise). The grid has voxel sizes ``zooms`` (mm) and is rotated
    by ``tilt_deg`` about the left-right axis (an oblique clinical acquisition), covering the template
    brain. Values are sampled at voxel centres on a 1 mm template-space rendering (linear), so thick
    slices are point-sampled, not averaged. The mask holds 1 where a voxel centre lies in a sphere.
    """
    from scipy import ndimage

    from bids_app.imaging import templates

    def arr(path):
        img = nib.load(str(path))
        return np.asarray(img.dataobj, dtype=np.float32), img.affine

    wm, tpl_affine = arr(templates.get_template_file("probseg", label="WM"))
    gm, _ = arr(templates.get_template_file("probseg", label="GM"))
    brain = arr(templates.get_template_file("mask", desc="brain"))[0] > 0
    csf = np.clip(brain - wm - gm, 0, 1)
    i_wm, i_gm, i_csf, i_lesion = intensities
    image = (i_wm * wm + i_gm * gm + i_csf * csf) * brain
    ijk = np.indices(brain.shape).reshape(3, -1)
    xyz = (tpl_affine[:3, :3] @ ijk + tpl_affine[:3, 3:4]).reshape(3, *brain.shape)
    truth = np.zeros(brain.shape, bool)
    for centre, radius in lesions:
        truth |= ((xyz - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(0) <= radius ** 2
    image[truth] = i_lesion

    t = np.radians(tilt_deg)
    rotation = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    zooms = np.asarray(zooms, float)
    extent = np.array([150.0, 190.0, 160.0])  # mm, covers the template brain at this tilt
    shape = np.ceil(extent / zooms).astype(int)
    affine = np.eye(4)
    affine[:3, :3] = rotation * zooms
    affine[:3, 3] = np.array([0.0, -18.0, 10.0]) - affine[:3, :3] @ ((shape - 1) / 2)
    to_template = np.linalg.inv(tpl_affine) @ affine
    native = ndimage.affine_transform(image, to_template[:3, :3], to_template[:3, 3], output_shape=tuple(shape),
                                      order=1)
    grid = np.indices(tuple(shape)).reshape(3, -1)
    world = (affine[:3, :3] @ grid + affine[:3, 3:4]).reshape(3, *shape)
    mask = np.zeros(tuple(shape), bool)
    for centre, radius in lesions:
        mask |= ((world - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(0) <= radius ** 2
    native = native + 0.02 * np.random.default_rng(seed).standard_normal(native.shape) * (native > 0)
    out = []
    for data, dtype in ((1000 * native, np.int16), (mask, np.uint8)):
        img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
        out.append(img)
    return out[0], out[1]


def _write_flair(root: Path, subject: str, session: str | None, t1w: bool = True) -> None:
    """The :func:`synthetic_flair` of one participant, its lesion mask under ``derivatives/labels``
    and, with ``t1w``, the :func:`synthetic_t1w` of the same session."""
    flair, mask = synthetic_flair()
    rel = Path(f"sub-{subject}") / (f"ses-{session}" if session else "") / "anat"
    prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    (root / rel).mkdir(parents=True, exist_ok=True)
    nib.save(flair, str(root / rel / f"{prefix}_FLAIR.nii.gz"))
    (root / rel / f"{prefix}_FLAIR.json").write_text(json.dumps({"Manufacturer": "synthetic"}) + "\n")
    if t1w:
        nib.save(synthetic_t1w()[0], str(root / rel / f"{prefix}_T1w.nii.gz"))
        (root / rel / f"{prefix}_T1w.json").write_text(json.dumps({"Manufacturer": "synthetic"}) + "\n")
    labels = root / "derivatives" / "labels" / rel
    labels.mkdir(parents=True, exist_ok=True)
    nib.save(mask, str(labels / f"{prefix}_FLAIR_label-lesion_seg.nii.gz"))


def make_lesion_dataset(root: Path, t1w: bool = True) -> Path:
    """A one-participant BIDS dataset: ``sub-01`` with the :func:`synthetic_flair`, its manual label
    and (``t1w``) the :func:`synthetic_t1w` of the same session."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "neuroseg synthetic MS lesion demo", "BIDSVersion": "1.10.0", "DatasetType": "raw",
         "License": "CC0", "Authors": ["neuroseg"]}, indent=2) + "\n")
    (root / "README").write_text("A synthetic FLAIR with three spherical lesions (bids_app/synthetic.py).\n")
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    _write_flair(root, "01", None, t1w)
    labels = root / "derivatives" / "labels"
    (labels / "dataset_description.json").write_text(json.dumps(
        {"Name": "demo labels", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "neuroseg synthetic"}]}, indent=2) + "\n")
    return root


# --------------------------------------------------------------------------------------------- head CT
#: The synthetic head CT (HU): brain ellipsoid semi-axes (mm), skull and scalp thickness (mm), values.
CT_BRAIN_MM = (65.0, 80.0, 55.0)
CT_SKULL_MM, CT_SCALP_MM = 6.0, 3.0
CT_HU = {"air": -1000.0, "scalp": 40.0, "skull": 1000.0, "brain": (30.0, 40.0), "blood": 60.0}
#: Centre (mm, RAS, head centre at 0) of the bleed of :func:`synthetic_ct`.
CT_BLEED_CENTRE = (22.0, 12.0, 6.0)


def synthetic_ct(bleed_ml: float = 20.0, zooms: tuple[float, float, float] = (2.0, 2.0, 2.0),
                 fov_mm: tuple[float, float, float] = (200.0, 220.0, 160.0), seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A head-CT phantom in HU: ``(data int16, affine, bleed mask)``.

    Air -1000 HU around an ellipsoidal head: scalp 40 HU (:data:`CT_SCALP_MM`), skull 1000 HU
    (:data:`CT_SKULL_MM`) and brain uniform in 30-40 HU (:data:`CT_BRAIN_MM` semi-axes), with one sphere of
    60 HU blood of ``bleed_ml`` mL at :data:`CT_BLEED_CENTRE` (none when 0). The mask is the sphere's voxels
    (its volume is ``bleed_ml`` to the voxelisation).
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(round(f / z)) for f, z in zip(fov_mm, zooms))
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * np.asarray(zooms)
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape)
    semi = np.asarray(CT_BRAIN_MM, np.float32).reshape(3, 1, 1, 1)

    def inside(grow_mm: float) -> np.ndarray:
        return (((xyz / (semi + grow_mm)) ** 2).sum(0)) <= 1.0

    data = np.full(shape, CT_HU["air"], np.float32)
    data[inside(CT_SKULL_MM + CT_SCALP_MM)] = CT_HU["scalp"]
    data[inside(CT_SKULL_MM)] = CT_HU["skull"]
    brain = inside(0.0)
    low, high = CT_HU["brain"]
    data[brain] = rng.uniform(low, high, int(brain.sum()))
    bleed = np.zeros(shape, bool)
    if bleed_ml > 0:
        radius = (3 * bleed_ml * 1000.0 / (4 * np.pi)) ** (1 / 3)
        centre = np.asarray(CT_BLEED_CENTRE, np.float32).reshape(3, 1, 1, 1)
        bleed = (np.sqrt(((xyz - centre) ** 2).sum(0)) <= radius) & brain
        data[bleed] = CT_HU["blood"]
    return np.round(data).astype(np.int16), affine, bleed


def make_ct_dataset(root: Path, bleeds_ml: dict[str, float] | None = None) -> Path:
    """A BIDS dataset of head CTs (``sub-<label>/ct/sub-<label>_ct.nii.gz``, HU, sidecar ``Modality: CT``), one
    :func:`synthetic_ct` per participant with the bleed volume of ``bleeds_ml`` (default ``01``: 20 mL,
    ``02``: none); ``.bidsignore`` lists ``ct`` (BIDS has no CT datatype)."""
    bleeds_ml = {"01": 20.0, "02": 0.0} if bleeds_ml is None else bleeds_ml
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "neuroseg synthetic head CT", "BIDSVersion": "1.10.0", "DatasetType": "raw", "License": "CC0",
         "Authors": ["neuroseg"]}, indent=2) + "\n")
    (root / "README").write_text("Synthetic head-CT phantoms in HU made by neuroseg (bids_app/synthetic.py).\n")
    (root / ".bidsignore").write_text("ct\n")
    (root / "participants.tsv").write_text("\n".join(["participant_id", *(f"sub-{s}" for s in bleeds_ml)]) + "\n")
    for n, (subject, ml) in enumerate(bleeds_ml.items()):
        data, affine, _ = synthetic_ct(ml, seed=n)
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm")
        folder = root / f"sub-{subject}" / "ct"
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(folder / f"sub-{subject}_ct.nii.gz"))
        (folder / f"sub-{subject}_ct.json").write_text(json.dumps({"Modality": "CT", "Manufacturer": "synthetic"})
                                                      + "\n")
    return root


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bids_app.synthetic",
                                     description="Write the demo dataset: spinal-cord phantoms and a brain FLAIR "
                                                 "with three known lesions, as BIDS.")
    parser.add_argument("folder", nargs="?", type=Path, default=Path("demo/bids"), help="dataset folder to create")
    make_dataset(parser.parse_args().folder, flair=True)
