"""ich inputs: the registry entry and its CLI choice, discovery of ct/*_ct.nii.gz (with --bids-filter-file),
and the CT checks (HU, sidecar Modality) that turn a wrong image into an input error."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bids_app import bids
from bids_app.ich.interfaces import check_ct
from bids_app.inputs import InputImageError
from bids_app.synthetic import make_ct_dataset, synthetic_ct
from bids_app.tasks import REGISTRY, get_task


def test_registry_entry():
    task = get_task("ich")
    assert dict(task.inputs) == {"datatype": "ct", "suffix": "ct", "extension": [".nii", ".nii.gz"]}
    assert (task.label, task.model, task.group_table) == ("ICH", "ich", "group_ich.tsv")
    assert task.participant_table == "*_label-{label}_desc-*volumes_morph.tsv" and task.bidsignore == ("ct",)
    assert task.citation == ("Spahr A, Bozorgtabar B, Thiran JP. Label-efficient deep semantic segmentation of "
                             "intracranial hemorrhages in CT-scans. Frontiers in Neuroimaging 2023;2:1136181. "
                             "doi:10.3389/fnimg.2023.1136181")
    assert "ich" in REGISTRY


def test_cli_accepts_tasks_ich(tmp_path):
    from bids_app.cli import build_parser

    args = build_parser().parse_args([str(tmp_path), str(tmp_path / "out"), "participant", "--tasks", "ich"])
    assert args.tasks == ["ich"]


@pytest.fixture(scope="module")
def ct_layout(tmp_path_factory):
    """sub-01 (ct/, no session) and sub-02 (sessions A with two runs, B), and a T2w that is not a CT."""
    root = make_ct_dataset(tmp_path_factory.mktemp("ctds") / "ds", {"01": 5.0})
    data, affine, _ = synthetic_ct(0.0, fov_mm=(60.0, 60.0, 40.0))
    for rel in ("sub-02/ses-A/ct/sub-02_ses-A_run-1_ct.nii.gz", "sub-02/ses-A/ct/sub-02_ses-A_run-2_ct.nii.gz",
                "sub-02/ses-B/ct/sub-02_ses-B_ct.nii.gz", "sub-02/ses-B/anat/sub-02_ses-B_T2w.nii.gz"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), str(root / rel))
    return root, bids.load_layout(root)


def test_ct_files_are_found_with_their_datatype(ct_layout):
    root, layout = ct_layout
    task = get_task("ich")
    (one,) = bids.collect_inputs(layout, task, "01")
    assert one.relpath == "sub-01/ct/sub-01_ct.nii.gz" and one.entities["datatype"] == "ct"
    found = [i.relpath for i in bids.collect_inputs(layout, task, "02")]
    assert found == ["sub-02/ses-A/ct/sub-02_ses-A_run-1_ct.nii.gz", "sub-02/ses-A/ct/sub-02_ses-A_run-2_ct.nii.gz",
                     "sub-02/ses-B/ct/sub-02_ses-B_ct.nii.gz"]
    assert [i.relpath for i in bids.collect_inputs(layout, task, "02", ("B",))] == ["sub-02/ses-B/ct/sub-02_ses-B_ct.nii.gz"]
    # The other tasks' queries do not pick up CT.
    assert not bids.collect_inputs(layout, get_task("mslesion"), "02")


def test_bids_filter_file_refines_the_ct_query(ct_layout, tmp_path):
    root, layout = ct_layout
    path = tmp_path / "filters.json"
    path.write_text(json.dumps({"ich": {"session": "A", "run": 2}}))
    filters = bids.task_filters(bids.read_filter_file(path), "ich")
    assert [i.relpath for i in bids.collect_inputs(layout, get_task("ich"), "02", filters=filters)] == [
        "sub-02/ses-A/ct/sub-02_ses-A_run-2_ct.nii.gz"]
    everything = bids.task_filters({"all": {"datatype": ["ct", "anat"]}}, "ich")
    assert len(bids.collect_inputs(layout, get_task("ich"), "02", filters=everything)) == 3


def test_sidecar_metadata_follows_inheritance(tmp_path):
    folder = tmp_path / "sub-01" / "ses-A" / "ct"
    folder.mkdir(parents=True)
    (tmp_path / "dataset_description.json").write_text("{}")
    (tmp_path / "ct.json").write_text(json.dumps({"Modality": "CT", "Manufacturer": "top"}))
    (tmp_path / "sub-01" / "sub-01_ct.json").write_text(json.dumps({"Manufacturer": "subject"}))
    (folder / "sub-01_ses-A_ct.json").write_text(json.dumps({"KVP": 120}))
    (folder / "sub-01_ses-A_run-2_ct.json").write_text(json.dumps({"KVP": 80}))  # another run: not applied
    image = folder / "sub-01_ses-A_ct.nii.gz"
    assert bids.sidecar_metadata(image) == {"Modality": "CT", "Manufacturer": "subject", "KVP": 120}


def _save(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def test_ct_checks(tmp_path):
    data, _, _ = synthetic_ct(0.0)
    assert check_ct(_save(tmp_path / "a_ct.nii.gz", data))[2] == "ct"
    # Skull-stripped (background 0, brain only): accepted.
    stripped = np.where((data > 20) & (data < 100), data, 0)
    assert check_ct(_save(tmp_path / "b_ct.nii.gz", stripped))[2] == "ct-skull-stripped"
    # Stored without the rescale intercept: air 0-24, brain near 1060.
    with pytest.raises(InputImageError, match="without its rescale"):
        check_ct(_save(tmp_path / "c_ct.nii.gz", data + 1024))
    # MR-like: positive arbitrary units, no air.
    rng = np.random.default_rng(0)
    mr = np.where(data > -500, rng.uniform(200, 900, data.shape), rng.uniform(0, 20, data.shape))
    with pytest.raises(InputImageError, match="does not look like CT in Hounsfield units"):
        check_ct(_save(tmp_path / "d_ct.nii.gz", mr))
    # A sidecar that says MR is refused before the voxels are read.
    _save(tmp_path / "e_ct.nii.gz", data)
    (tmp_path / "e_ct.json").write_text(json.dumps({"Modality": "MR"}))
    with pytest.raises(InputImageError, match='"Modality": "MR"'):
        check_ct(tmp_path / "e_ct.nii.gz")
