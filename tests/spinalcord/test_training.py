"""The cord training data (v2): the rater's-rim synthesis and the spine-generic pool, on small synthetic
masks and a small synthetic template written here (no shared data needed)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from training.common.paths import ROOT
from training.spinalcord.__main__ import holdout_config
from training.spinalcord.augment import rim_fade
from training.spinalcord.spinegeneric import spinegeneric_pool, subjects


def _disk(size=64, radius=12.0):
    x, y = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return ((x - size / 2) ** 2 + (y - size / 2) ** 2 <= radius ** 2).astype(np.float32)


def _fractions(cord):
    sac = np.clip(_disk(cord.shape[0], 20.0) - cord, 0, 1)
    rest = 1 - cord - sac
    return torch.from_numpy(np.stack([cord, sac, rest, np.zeros_like(cord)]))[None]


def test_rim_fade_moves_the_painted_edge_inside_the_mask_and_keeps_fractions():
    cord = _disk()
    fractions = _fractions(cord).repeat(8, 1, 1, 1)
    faded = rim_fade(fractions, 4.0, torch.Generator().manual_seed(0))
    assert torch.allclose(faded.sum(1), fractions.sum(1))  # cord fraction goes to CSF, nothing lost
    painted = faded[:, 0].sum((1, 2)) / fractions[0, 0].sum()
    assert (painted < 1).all() and (painted > 0.55).all()  # a rim of up to 4 px on a 12 px radius
    assert (faded[:, 0][:, cord == 0] == 0).all()  # never outside the mask
    centre = int(cord.shape[0] / 2)
    assert (faded[:, 0, centre, centre] == 1).all()  # the core stays cord
    unchanged = rim_fade(fractions, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(unchanged, fractions)


def _write_template(folder, n=40, z=30):
    folder.mkdir()
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    x, y = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    r2 = (x - n / 2) ** 2 + (y - n / 2) ** 2
    cord = np.repeat((r2 <= 16)[..., None], z, 2).astype(np.float32)
    t2 = np.where(r2 <= 16, 300.0, np.where(r2 <= 49, 1000.0, 500.0))[..., None].repeat(z, 2).astype(np.float32)
    t2 += np.random.default_rng(0).normal(0, 20, t2.shape).astype(np.float32)
    nib.Nifti1Image(t2, affine).to_filename(folder / "PAM50_small_t2.nii.gz")
    nib.Nifti1Image(cord, affine).to_filename(folder / "PAM50_small_cord.nii.gz")


def _write_masks(folder, name, radius_px):
    anat = folder / name / "anat"
    anat.mkdir(parents=True)
    cord = np.repeat(_disk(80, radius_px)[..., None], 4, 2)
    csf = np.repeat(_disk(80, radius_px + 6)[..., None], 4, 2)
    affine = np.diag([0.5, 0.5, 5.0, 1.0])
    nib.Nifti1Image(cord, affine).to_filename(anat / f"{name}_T2w_seg-manual.nii.gz")
    nib.Nifti1Image(csf, affine).to_filename(anat / f"{name}_T2w_csfseg-manual.nii.gz")


def test_spinegeneric_pool_uses_real_mask_as_target_and_leaves_out_excluded(tmp_path):
    _write_template(tmp_path / "pam50")
    masks = tmp_path / "masks"
    _write_masks(masks, "sub-a01", 10.0)
    _write_masks(masks, "sub-b02", 14.0)
    assert subjects(masks) == ["sub-a01", "sub-b02"]
    pool = spinegeneric_pool(masks, tmp_path / "pam50", 0.5, 64, 6, rim_px=3.0)
    assert pool.fractions.shape == (8, 6, 64, 64) and pool.rim_px == 3.0
    assert torch.allclose(pool.fractions.sum(1), torch.ones(8, 64, 64), atol=1e-4)
    areas = sorted(set(np.round(pool.target.sum((1, 2)).numpy() * 0.25, 2).tolist()))
    assert areas == pytest.approx([float(_disk(80, r).sum()) * 0.25 for r in (10.0, 14.0)], abs=0.01)  # mm²
    # The cord sits in CSF: every pixel next to the cord is CSF, not other tissue.
    ring = torch.nn.functional.max_pool2d(pool.target[:, None], 3, 1, 1)[:, 0] - pool.target
    assert (pool.fractions[:, 1][ring > 0.5] > 0.99).all()
    held = spinegeneric_pool(masks, tmp_path / "pam50", 0.5, 64, 6, exclude=("sub-b02",))
    assert len(held.target) == 4


def test_holdout_leaves_the_subject_out_of_real_images_and_spine_generic_masks():
    config = json.loads((ROOT / "training" / "spinalcord" / "configs" / "v2.json").read_text())
    held, excluded = holdout_config(config, "sub-unf01", None)
    assert excluded and all(image.startswith("sub-unf01/") for image in excluded)
    assert not any(image.startswith("sub-unf01/") for image in held["data"]["train_images"])
    assert held["data"]["spinegeneric_exclude"] == ["sub-unf01"]
    assert held["output"]["export_dir"] != config["output"]["export_dir"]
