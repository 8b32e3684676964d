"""Interfaces that touch geometry, and the promise that only the segmentation node imports torch."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np

from bids_app.interfaces import Reorient
from bids_app.spinalcord.interfaces import ToNative


def test_reorient_round_trip_is_exact_for_a_psr_image(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    data = rng.random((6, 7, 8)).astype(np.float32)
    # P-S-R voxel axes (like sub-sct01's sagittal T2w), 0.9 x 1.1 x 3 mm
    affine = np.array([[0, 0, 3.0, -10], [-0.9, 0, 0, 20], [0, 1.1, 0, -5], [0, 0, 0, 1]])
    src = tmp_path / "psr.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), src)
    ras = Reorient(in_file=str(src)).run().outputs.out_file
    ras_img = nib.load(ras)
    assert nib.aff2axcodes(ras_img.affine) == ("R", "A", "S")
    assert ras_img.header.get_zooms() == (3.0, np.float32(0.9), np.float32(1.1))
    back = nib.load(ToNative(in_file=ras, reference=str(src)).run().outputs.out_file)
    assert np.allclose(back.affine, affine) and np.array_equal(np.asarray(back.dataobj), data)


def test_workflow_modules_do_not_import_torch():
    code = ("import sys; import bids_app.cli, bids_app.workflows, bids_app.spinalcord.workflow, "
            "bids_app.mslesion.workflow, bids_app.mslesion.interfaces, bids_app.mslesion.report, "
            "bids_app.spinalcord.group, bids_app.mslesion.group, bids_app.models, "
            "bids_app.interfaces, bids_app.group, bids_app.bids, bids_app.ich.workflow, bids_app.ich.interfaces, "
            "bids_app.ich.group, bids_app.ich.qc, bids_app.ich.preprocess; sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
