"""The MNI152NLin2009aSym template, shipped as an offline TemplateFlow home.

Nothing is downloaded at run time. The project ships a TemplateFlow-layout folder
(``<repo>/templateflow``; in the container ``$TEMPLATEFLOW_HOME=/opt/neuroseg/templateflow``) built by
:func:`build_offline_home` from the copy of the ICBM 2009a *symmetric* template that nilearn bundles
in its wheel (``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``)::

    python -m bids_app.imaging.templates build [DST]      # default DST: <repo>/templateflow

Files written (all on nilearn's grid, see below; 1 mm, RAS+, ``sform_code = qform_code = 4``
(MNI152), gzip-compressed)::

    DST/tpl-MNI152NLin2009aSym/
        template_description.json                                  Name, Identifier, licence, citations
        README.md                                                  provenance of every file
        tpl-MNI152NLin2009aSym_res-01_T1w.nii.gz                   uint8, 0..255 (skull-stripped by nilearn)
        tpl-MNI152NLin2009aSym_res-01_label-GM_probseg.nii.gz      uint8 with scl_slope = 1/255: reads as 0..1
        tpl-MNI152NLin2009aSym_res-01_label-WM_probseg.nii.gz      uint8 with scl_slope = 1/255: reads as 0..1
        tpl-MNI152NLin2009aSym_res-01_desc-brain_mask.nii.gz       uint8, 0/1

The grid is nilearn's, i.e. the MNI distribution's: shape ``(197, 233, 189)``, origin
``(-98, -134, -72)`` mm. It is *not* TemplateFlow's re-gridded ``res-1`` (``193 x 229 x 193``), so these
files are not voxel-for-voxel TemplateFlow's ``tpl-MNI152NLin2009aSym``; both are in the same
MNI152NLin2009aSym world (mm) space, so anything registered to one is registered to the other. The T1w is stored as the uint8 it is in nilearn (converting to float32 would add
bytes, not information); the probability maps are stored as uint8 with a NIfTI scale factor of 1/255,
so nibabel (``get_fdata``) and SimpleITK (``ReadImage`` gives float32) both read probabilities in
[0, 1] with a step of 1/255, the precision of the source.

Brain mask
----------
nilearn ships no CSF probability map, so the mask is derived from GM and WM only:

1. ``GM + WM > 0.2`` (probabilities);
2. keep the largest 6-connected component (drops a few specks);
3. fill holes in 3D (12,899 voxels), then slice by slice in axial slices (18,771 more): the
   ventricular system is not all enclosed in 3D (it opens to the basal cisterns), the axial fill
   closes the rest;
4. a morphological closing (6-connected structuring element, 2 iterations) to include sulcal CSF,
   then fill holes again;
5. dilate by one voxel (6-connected): a slightly generous mask is safer for skull stripping a
   registered FLAIR (a lesion at the cortex must not be cut) than a tight one.

The result (1,964,213 voxels, 1.96 L) covers nilearn's skull-stripped T1w except 679 scattered
voxels (0.04 % of its 1,886,539 non-zero voxels), all within 2 mm of the mask's edge.

Lookup
------
:func:`get_template_file` returns a file through TemplateFlow's client (``templateflow.api.get`` is
that client bound to the import-time ``$TEMPLATEFLOW_HOME``), with the home pointed at
:func:`templateflow_home` and without any network access, see its docstring.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

LOGGER = logging.getLogger(__name__)

TEMPLATE = "MNI152NLin2009aSym"

#: Copyright notice that must accompany every copy of the ICBM 2009 templates.
MNI_COPYRIGHT = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, "
    "Montreal Neurological Institute, McGill University"
)
MNI_LICENSE = (
    MNI_COPYRIGHT + ". Permission to use, copy, modify, and distribute this software and its "
    "documentation for any purpose and without fee is hereby granted, provided that the above "
    "copyright notice appear in all copies. The authors and McGill University make no "
    "representations about the suitability of this software for any purpose. It is provided "
    '"as is" without express or implied warranty. The authors are not responsible for any data '
    "loss, equipment damage, property loss, or injury to subjects or patients resulting from the "
    "use or misuse of this software package."
)
CITATIONS = [
    "Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL; Brain Development "
    "Cooperative Group. Unbiased average age-appropriate atlases for pediatric studies. "
    "NeuroImage 54(1):313-327, 2011. https://doi.org/10.1016/j.neuroimage.2010.07.033",
    "Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average "
    "age-appropriate brain templates from birth to adulthood. NeuroImage 47(S1):S102, 2009. "
    "https://doi.org/10.1016/S1053-8119(09)70884-5",
    "Collins DL, Zijdenbos AP, Baare WFC, Evans AC. ANIMAL+INSECT: Improved Cortical Structure "
    "Segmentation. IPMI 1999, LNCS 1613:210-223. https://doi.org/10.1007/3-540-48714-X_16",
]

_NILEARN_FILES = {
    "T1w": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "GM": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "WM": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_MASK_THRESHOLD = 0.2
_NIFTI_CODE_MNI = 4  # NIfTI xform code "MNI152"

REPO_ROOT = Path(__file__).resolve().parents[2]

# One TemplateFlow client per home folder (building a pybids layout costs ~1 s).
_CLIENTS: dict[Path, object] = {}


def templateflow_home() -> Path:
    """``$TEMPLATEFLOW_HOME`` if set (and not empty), else ``<repo>/templateflow``."""
    env = os.environ.get("TEMPLATEFLOW_HOME")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "templateflow"


def _nilearn_data_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("nilearn.datasets") / "data"))


def _fname(suffix: str, label: str | None = None, desc: str | None = None, resolution: int = 1) -> str:
    parts = [f"tpl-{TEMPLATE}", f"res-{resolution:02d}"]
    if label:
        parts.append(f"label-{label}")
    if desc:
        parts.append(f"desc-{desc}")
    return "_".join(parts + [suffix]) + ".nii.gz"


def _brain_mask(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Brain mask (bool) from GM and WM probabilities in [0, 1]; recipe in the module docstring."""
    from scipy import ndimage as ndi

    mask = (gm + wm) > _MASK_THRESHOLD
    labels, n = ndi.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == sizes.argmax()
    mask = ndi.binary_fill_holes(mask)
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndi.binary_fill_holes(mask[:, :, k])
    ball = ndi.generate_binary_structure(3, 1)
    pad = 3
    mask = ndi.binary_closing(np.pad(mask, pad), structure=ball, iterations=2)[pad:-pad, pad:-pad, pad:-pad]
    mask = ndi.binary_fill_holes(mask)
    return ndi.binary_dilation(mask, structure=ball, iterations=1)


def _save(data: np.ndarray, affine: np.ndarray, path: Path, *, probseg: bool = False) -> None:
    import nibabel as nib

    if probseg:
        # float probabilities (k/255, min 0, max 1) -> uint8 on disk: nibabel picks
        # scl_slope = (max - min) / 255 = 1/255 and scl_inter = 0, so every k/255 round-trips.
        # (nibabel moves the scaling to ``img.dataobj.slope`` on load; header['scl_slope'] reads NaN.)
        img = nib.Nifti1Image(np.clip(data, 0.0, 1.0).astype(np.float32), affine)
        img.set_data_dtype(np.uint8)
    else:
        img = nib.Nifti1Image(data.astype(np.uint8), affine)
        img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=_NIFTI_CODE_MNI)
    img.set_qform(affine, code=_NIFTI_CODE_MNI)
    nib.save(img, path)


def build_offline_home(dst: Path) -> Path:
    """Write ``dst/tpl-MNI152NLin2009aSym/`` (see the module docstring) and return ``dst``.

    Existing files of that template folder are overwritten; nothing else in ``dst`` is touched.
    Raises ``FileNotFoundError`` if nilearn's bundled template files are missing.
    """
    import nibabel as nib

    dst = Path(dst).expanduser().resolve()
    src = _nilearn_data_dir()
    missing = [name for name in _NILEARN_FILES.values() if not (src / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"nilearn's bundled MNI152 files are missing from {src}: {missing}. "
            "Install nilearn (pinned in requirements.txt) in this environment and retry."
        )
    tpl_dir = dst / f"tpl-{TEMPLATE}"
    tpl_dir.mkdir(parents=True, exist_ok=True)

    t1 = nib.load(src / _NILEARN_FILES["T1w"])
    affine = t1.affine
    arrays = {}
    for key in ("GM", "WM"):
        img = nib.load(src / _NILEARN_FILES[key])
        if img.shape != t1.shape or not np.allclose(img.affine, affine):
            raise ValueError(f"nilearn's {key} map is not on the T1w grid; nilearn changed its files?")
        arrays[key] = np.asanyarray(img.dataobj).astype(np.float32) / 255.0
    t1_data = np.asanyarray(t1.dataobj)
    if t1_data.dtype != np.uint8:
        raise ValueError(f"nilearn's T1w is {t1_data.dtype}, expected uint8; nilearn changed its files?")

    _save(t1_data, affine, tpl_dir / _fname("T1w"))
    for key in ("GM", "WM"):
        _save(arrays[key], affine, tpl_dir / _fname("probseg", label=key), probseg=True)
    mask = _brain_mask(arrays["GM"], arrays["WM"])
    _save(mask, affine, tpl_dir / _fname("mask", desc="brain"))
    LOGGER.info("brain mask: %d voxels (%.2f L)", int(mask.sum()), mask.sum() / 1e6)

    description = {
        "Name": "ICBM 152 Nonlinear Symmetrical template version 2009a",
        "Identifier": TEMPLATE,
        "Authors": ["Fonov V", "Evans AC", "Botteron K", "Almli CR", "McKinstry RC", "Collins DL"],
        "BIDSVersion": "1.1.0",
        "TemplateFlowVersion": "1.0.0",
        "Species": "Homo sapiens",
        "RRID": "SCR_008796",
        "License": (
            "The MNI152 ICBM 2009a templates are freely redistributable with their copyright "
            "notice. " + MNI_LICENSE
        ),
        "Copyright": MNI_COPYRIGHT,
        "HowToAcknowledge": "Cite Fonov et al., NeuroImage 2011 (first entry of ReferencesAndLinks).",
        "ReferencesAndLinks": [
            "https://doi.org/10.1016/j.neuroimage.2010.07.033",
            "https://doi.org/10.1016/S1053-8119(09)70884-5",
            "https://doi.org/10.1007/3-540-48714-X_16",
            "http://nist.mni.mcgill.ca/icbm-152-nonlinear-atlases-2009/",
        ],
        "Citations": CITATIONS,
        "GeneratedBy": [
            {
                "Name": "neuroseg bids_app.imaging.templates.build_offline_home",
                "Description": (
                    "Copied from nilearn's bundled mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted "
                    "files (nilearn's skull-stripped, uint8-rescaled copy of "
                    "mni_icbm152_nlin_sym_09a); brain mask derived from GM+WM, see README.md."
                ),
            }
        ],
        "res": {
            "1": {
                "origin": [float(v) for v in affine[:3, 3]],
                "shape": [int(v) for v in t1.shape],
                "zooms": [float(v) for v in t1.header.get_zooms()[:3]],
            }
        },
    }
    (tpl_dir / "template_description.json").write_text(json.dumps(description, indent=2) + "\n")
    (tpl_dir / "README.md").write_text(_readme(mask_voxels=int(mask.sum()), shape=t1.shape))
    LOGGER.info("wrote offline TemplateFlow home %s", dst)
    return dst


def _readme(mask_voxels: int, shape: tuple[int, ...]) -> str:
    return f"""# tpl-{TEMPLATE} (offline copy shipped with neuroseg)

Generated by `python -m bids_app.imaging.templates build` (`bids_app/imaging/templates.py`); do not edit by hand.

## Where the files come from

nilearn (pinned in `requirements.txt`) bundles, in `nilearn/datasets/data/`, a copy of the
ICBM 2009a **symmetric** nonlinear template (`mni_icbm152_nlin_sym_09a`, distributed by the
McConnell Brain Imaging Centre, MNI): `mni_icbm152_{{t1,gm,wm}}_tal_nlin_sym_09a_converted.nii.gz`.
nilearn's T1w is skull-stripped and rescaled to uint8 (0..255); the GM and WM probability maps are
rescaled to uint8 (255 = probability 1). (nilearn's documentation calls it "asymmetrical"; the files
are named `sym` and the T1w is exactly left-right symmetric.)

| file | source | storage |
|------|--------|---------|
| `tpl-{TEMPLATE}_res-01_T1w.nii.gz` | nilearn `..._t1_..._converted` | uint8, copied voxel for voxel |
| `tpl-{TEMPLATE}_res-01_label-GM_probseg.nii.gz` | nilearn `..._gm_..._converted` | uint8, scl_slope 1/255 (reads 0..1) |
| `tpl-{TEMPLATE}_res-01_label-WM_probseg.nii.gz` | nilearn `..._wm_..._converted` | uint8, scl_slope 1/255 (reads 0..1) |
| `tpl-{TEMPLATE}_res-01_desc-brain_mask.nii.gz` | derived, see below | uint8 0/1 |

Grid: shape {tuple(int(s) for s in shape)}, 1 mm, RAS+, origin (-98, -134, -72) mm, qform/sform code 4
(MNI152). This is the MNI distribution's grid, not TemplateFlow's re-gridded `res-1`
(193 x 229 x 193, origin (-96, -132, -78)): same world (mm) space, different voxel indices.

## Brain mask

nilearn ships no CSF map, so: GM + WM > 0.2; largest connected component; 3D hole filling, then
axial slice-by-slice hole filling (closes the ventricles); closing (6-connected, 2 iterations) to
take in sulcal CSF; hole filling; 1-voxel dilation. {mask_voxels} voxels ({mask_voxels / 1e6:.2f} L).

## Licence

{MNI_LICENSE}

Please cite: {CITATIONS[0]}
"""


def _client(home: Path):
    """A TemplateFlow client bound to ``home`` that never touches the network."""
    os.environ["TEMPLATEFLOW_HOME"] = str(home)
    os.environ["TEMPLATEFLOW_AUTOUPDATE"] = "0"
    os.environ["TEMPLATEFLOW_USE_DATALAD"] = "0"
    client = _CLIENTS.get(home)
    if client is None:
        # Imported only now, after the environment is set: ``templateflow.api`` binds its module-level
        # client to $TEMPLATEFLOW_HOME at import time (and populates an empty home with a stub).
        from templateflow.client import TemplateFlowClient

        client = TemplateFlowClient(root=home, autoupdate=False, use_datalad=False, timeout=1)
        _CLIENTS[home] = client
    return client


def get_template_file(
    suffix: str, label: str | None = None, desc: str | None = None, resolution: int = 1
) -> Path:
    """Path of one file of ``tpl-MNI152NLin2009aSym`` in the offline home.

    ``get_template_file("T1w")``, ``get_template_file("probseg", label="GM")``,
    ``get_template_file("mask", desc="brain")``. Entities left as ``None`` must be *absent* from the
    file name (TemplateFlow semantics), so ``"T1w"`` does not match a ``desc-brain_T1w``.

    The query goes through TemplateFlow's client (the class behind ``templateflow.api.get``) bound
    explicitly to :func:`templateflow_home`; ``TEMPLATEFLOW_HOME`` and ``TEMPLATEFLOW_AUTOUPDATE=0``
    are also exported before templateflow is first imported, so that a later
    ``import templateflow.api`` elsewhere in the process sees the same home. No network access can
    happen: the home must already hold ``tpl-MNI152NLin2009aSym/`` (otherwise TemplateFlow would
    unpack its stub of empty placeholders into it), and templateflow only downloads files that are
    listed but empty or missing, which is checked for beforehand.

    Raises ``FileNotFoundError`` (with how to fix it) when the home or the file is missing and
    ``ValueError`` when the query matches several files.
    """
    home = templateflow_home()
    tpl_dir = home / f"tpl-{TEMPLATE}"
    fix = (
        f"Build the offline TemplateFlow home with `python -m bids_app.imaging.templates build {home}` "
        "(or point $TEMPLATEFLOW_HOME at a folder that holds "
        f"tpl-{TEMPLATE}/)."
    )
    if not tpl_dir.is_dir():
        raise FileNotFoundError(f"TemplateFlow home {home} has no tpl-{TEMPLATE}/ folder. {fix}")
    expected = tpl_dir / _fname(suffix, label=label, desc=desc, resolution=resolution)

    client = _client(home)
    matches = client.ls(
        TEMPLATE, suffix=suffix, label=label, desc=desc, resolution=resolution, extension=".nii.gz"
    )
    if not matches:
        raise FileNotFoundError(
            f"No {TEMPLATE} file with suffix={suffix!r}, label={label!r}, desc={desc!r}, "
            f"resolution={resolution} in {home} (expected {expected.name}). {fix}"
        )
    if len(matches) > 1:
        raise ValueError(f"Ambiguous template query, {len(matches)} files match: {matches}")
    path = matches[0]
    if not path.is_file() or path.stat().st_size == 0:
        # An empty file is a TemplateFlow placeholder: client.get() would try to download it.
        raise FileNotFoundError(f"{path} is an empty placeholder, not a template file. {fix}")
    out = client.get(
        TEMPLATE, suffix=suffix, label=label, desc=desc, resolution=resolution, extension=".nii.gz"
    )
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m bids_app.imaging.templates build [DST]``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "build" or len(argv) > 2:
        sys.stderr.write("usage: python -m bids_app.imaging.templates build [DST]  (default: <repo>/templateflow)\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dst = Path(argv[1]) if len(argv) == 2 else REPO_ROOT / "templateflow"
    out = build_offline_home(dst)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    LOGGER.info("%s: %.1f MB", out, size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
