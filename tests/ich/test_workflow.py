"""The ich task end to end with a random-weight model folder (plumbing, not accuracy): a participant run
on synthetic head CTs writes every output with BIDS names and sidecars, wrong images fail with their
reason (exit 5, logs/failed.tsv, no traceback), and the group level writes group_ich.tsv."""

from __future__ import annotations

import csv
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_app.bids import validate_dataset
from bids_app.cli import main
from bids_app.synthetic import make_ct_dataset, synthetic_ct
from tests.helpers import ENTRY_POINTS, assert_clean_console, assert_no_partial_files, run_app
from tests.ich.conftest import read_json

PREFIXES = {"sub-01": "sub-01_label-ICH_desc-ct", "sub-02": "sub-02_label-ICH_desc-ct"}


def test_workflow_builds_without_importing_torch(tmp_path):
    from tests.ich.conftest import make_model

    make_model(tmp_path / "models" / "ich")
    bids = make_ct_dataset(tmp_path / "ds", {"01": 0.0})
    code = ("import sys; from pathlib import Path; import bids_app.ich.workflow as w, bids_app.ich.group, "
            "bids_app.ich.qc, bids_app.ich.measures; from bids_app.bids import InputImage; "
            "from bids_app.tasks import get_task; "
            f"m = Path({str(tmp_path / 'models' / 'ich')!r}); "
            f"image = InputImage(path=Path({str(bids / 'sub-01' / 'ct' / 'sub-01_ct.nii.gz')!r}), "
            "relpath='sub-01/ct/sub-01_ct.nii.gz', "
            "entities={'subject': '01', 'suffix': 'ct', 'datatype': 'ct', 'extension': '.nii.gz'}); "
            "wf = w.init_ich_wf(task=get_task('ich'), image=image, output_dir=Path('/out'), model_dir=m, "
            "model={}, version='0', name='ich_wf'); "
            "names = set(wf.list_node_names()); "
            "assert {'prepare', 'segment', 'to_native', 'binarise', 'measure', 'ds_probseg', 'ds_mask', 'ds_dseg', "
            "'ds_volumes', 'figures', 'ds_axial_qc'} <= names, names; "
            "sys.exit('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope="module")
def ich_run(tmp_path_factory, ich_models):
    """sub-01: a head CT with a 20 mL bleed; sub-02: a skull-stripped CT (background 0). Participant level."""
    root = tmp_path_factory.mktemp("ich")
    bids = make_ct_dataset(root / "ds", {"01": 20.0, "02": 0.0})
    ct = bids / "sub-02" / "ct" / "sub-02_ct.nii.gz"
    img = nib.load(ct)
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.where((data > 20) & (data < 100), data, 0).astype(np.int16), img.affine), str(ct))
    out = root / "out"
    code = main([str(bids), str(out), "participant", "--tasks", "ich", "--device", "cpu", "--nprocs", "2",
                 "-w", str(root / "work"), "--models-dir", str(ich_models)])
    assert code == 0
    return bids, out


def test_every_output_with_bids_names_and_sidecars(ich_run, ich_models):
    bids, out = ich_run
    meta = read_json(ich_models / "ich" / "metadata.json")
    for subject, prefix in PREFIXES.items():
        folder = out / subject / "ct"
        source = nib.load(bids / subject / "ct" / f"{subject}_ct.nii.gz")
        prob = nib.load(folder / f"{prefix}_probseg.nii.gz")
        mask = nib.load(folder / f"{prefix}_mask.nii.gz")
        dseg = nib.load(folder / f"{subject}_desc-ctICHtypes_dseg.nii.gz")
        for image in (prob, mask, dseg):
            assert image.shape == source.shape and np.allclose(image.affine, source.affine, atol=1e-4)
        p, m, d = (np.asarray(i.dataobj) for i in (prob, mask, dseg))
        assert prob.get_data_dtype() == np.float32 and p.min() >= 0 and p.max() <= 1
        assert mask.get_data_dtype() == np.uint8 and set(np.unique(m)) <= {0, 1}
        assert np.array_equal(m > 0, p >= meta["output"]["threshold"])  # min_component_ml 0: nothing dropped
        assert np.array_equal(d > 0, m > 0) and d.max() <= 5
        lookup = pd.read_csv(folder / f"{subject}_desc-ctICHtypes_dseg.tsv", sep="\t")
        assert lookup.to_dict("list") == {"index": [0, 1, 2, 3, 4, 5],
                                          "name": ["background", "IPH", "SDH", "EDH", "SAH", "IVH"]}
        table = pd.read_csv(folder / f"{prefix}volumes_morph.tsv", sep="\t")
        row = table.iloc[0]
        zooms = source.header.get_zooms()[:3]
        assert row["total_volume_ml"] == pytest.approx((m > 0).sum() * np.prod(zooms) / 1000, rel=1e-3)
        types = ["IPH", "SDH", "EDH", "SAH", "IVH"]
        assert sum(row[f"{t}_volume_ml"] for t in types) == pytest.approx(row["total_volume_ml"], abs=1e-3)
        assert row["intracranial_volume_ml"] == pytest.approx(1198, rel=0.1)  # the 65 x 80 x 55 mm brain
        assert row["threshold"] == meta["output"]["threshold"]
        for name in (f"{prefix}_probseg", f"{prefix}_mask", f"{subject}_desc-ctICHtypes_dseg",
                     f"{prefix}volumes_morph"):
            side = read_json(folder / f"{name}.json")
            assert side["Sources"] == [f"bids:raw:{subject}/ct/{subject}_ct.nii.gz"]
            assert side["Model"] == {"Name": "neuroseg-ich", "Version": "0.1.0", "SHA256": meta["sha256"]}
            assert side["GeneratedBy"]["Name"] == "neuroseg" and side["SourceDigests"]
        assert read_json(folder / f"{prefix}_mask.json")["Threshold"] == meta["output"]["threshold"]
        assert set(table.columns) <= set(read_json(folder / f"{prefix}volumes_morph.json"))
        assert (out / subject / "figures" / f"{prefix}axial_qc.png").is_file()
        assert "ich: " in (out / f"{subject}.html").read_text()
    kinds = {s: pd.read_csv(out / s / "ct" / f"{p}volumes_morph.tsv", sep="\t")["input_kind"][0]
             for s, p in PREFIXES.items()}
    assert kinds == {"sub-01": "ct", "sub-02": "ct-skull-stripped"}
    assert "ct" in (out / ".bidsignore").read_text().split()
    assert_no_partial_files(out)
    assert validate_dataset(out) == {}


def test_nodes_in_process_give_what_the_workflow_wrote(ich_run, ich_models, tmp_path):
    """run_in_process (evaluation, benchmarks) runs the workflow's nodes: same mask and volumes."""
    from bids_app.ich.interfaces import NODE_ORDER, run_in_process

    bids, out = ich_run
    outputs, seconds = run_in_process(bids / "sub-01" / "ct" / "sub-01_ct.nii.gz", ich_models / "ich", tmp_path)
    assert tuple(seconds) == NODE_ORDER and all(v >= 0 for v in seconds.values())
    written = np.asarray(nib.load(out / "sub-01" / "ct" / f"{PREFIXES['sub-01']}_mask.nii.gz").dataobj)
    assert np.array_equal(np.asarray(nib.load(outputs["binarise"].mask_file).dataobj), written)
    table = pd.read_csv(out / "sub-01" / "ct" / f"{PREFIXES['sub-01']}volumes_morph.tsv", sep="\t").iloc[0]
    assert outputs["measure"].summary["total_volume_ml"] == pytest.approx(table["total_volume_ml"], abs=1e-3)


def test_rerun_skips_current_outputs_and_redoes_a_deleted_lookup_table(ich_run, ich_models, tmp_path):
    bids, out = ich_run
    lookup = out / "sub-01" / "ct" / "sub-01_desc-ctICHtypes_dseg.tsv"
    lookup.unlink()
    assert main([str(bids), str(out), "participant", "--tasks", "ich", "--device", "cpu", "--nprocs", "2",
                 "-w", str(tmp_path / "work"), "--models-dir", str(ich_models), "--participant-label", "01"]) == 0
    assert lookup.is_file()


def test_group_level_writes_group_ich(ich_run):
    bids, out = ich_run
    assert main([str(bids), str(out), "group", "--tasks", "ich"]) == 0
    table = pd.read_csv(out / "group_ich.tsv", sep="\t")
    assert table["participant_id"].tolist() == ["sub-01", "sub-02"] and set(table["contrast"]) == {"ct"}
    assert table["source"].tolist() == ["bids:raw:sub-01/ct/sub-01_ct.nii.gz", "bids:raw:sub-02/ct/sub-02_ct.nii.gz"]
    columns = read_json(out / "group_ich.json")
    assert set(table.columns) <= set(columns) and columns["total_volume_ml"]["Units"] == "mL"
    assert (out / "figures" / "group_ich.png").is_file() and (out / "group_report.html").is_file()


def test_wrong_images_fail_with_their_reason(tmp_path, ich_models):
    """An MR-like image, a CT without its rescale and a CT whose sidecar says MR: exit 5, each listed in
    logs/failed.tsv with the check's sentence, no traceback on the console; run as a user types it."""
    import json

    bids = make_ct_dataset(tmp_path / "ds", {"01": 0.0, "02": 0.0, "03": 0.0})
    data, affine, _ = synthetic_ct(0.0)
    rng = np.random.default_rng(0)
    mr = np.where(data > -500, rng.uniform(200, 900, data.shape), rng.uniform(0, 20, data.shape))
    nib.save(nib.Nifti1Image(mr.astype(np.int16), affine), str(bids / "sub-01" / "ct" / "sub-01_ct.nii.gz"))
    nib.save(nib.Nifti1Image((data + 1024).astype(np.int16), affine), str(bids / "sub-02" / "ct" / "sub-02_ct.nii.gz"))
    (bids / "sub-03" / "ct" / "sub-03_ct.json").write_text(json.dumps({"Modality": "MR"}))
    out = tmp_path / "out"
    result = run_app(ENTRY_POINTS["python run.py"], [bids, out, "participant", "--tasks", "ich", "--device", "cpu",
                                                     "--nprocs", "2", "-w", tmp_path / "work",
                                                     "--models-dir", ich_models])
    assert result.returncode == 5, result.stderr[-3000:]
    assert_clean_console(result)
    with (out / "logs" / "failed.tsv").open() as handle:
        rows = {r["participant_id"]: r["reason"] for r in csv.DictReader(handle, delimiter="\t")}
    assert "does not look like CT in Hounsfield units" in rows["sub-01"]
    assert "without its rescale" in rows["sub-02"]
    assert '"Modality": "MR"' in rows["sub-03"]
    assert all("Error:" not in reason for reason in rows.values()), rows  # the sentence, not the class
    assert "does not look like CT in Hounsfield units" in result.stderr


def test_a_ct_the_validator_does_not_know_is_refused_with_the_bidsignore_fix(tmp_path, ich_models):
    bids = make_ct_dataset(tmp_path / "ds", {"01": 0.0})
    (bids / ".bidsignore").unlink()
    code = main([str(bids), str(tmp_path / "out"), "participant", "--tasks", "ich", "--device", "cpu",
                 "-w", str(tmp_path / "work"), "--models-dir", str(ich_models)])
    assert code == 5
    (row,) = csv.DictReader((tmp_path / "out" / "logs" / "failed.tsv").open(), delimiter="\t")
    assert "NOT_INCLUDED" in row["reason"] and "List ct in the dataset's .bidsignore" in row["reason"]
