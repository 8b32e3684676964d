"""Bad input gets one clear sentence, a documented exit code, no traceback and no partial file.

The image-level cases share one run on a many-participant dataset (one broken image per
participant) because that is also the crash-isolation test: every broken participant is listed in
``logs/failed.tsv`` with its reason, the healthy ones finish, and the run exits 5. The other cases
(command line, dataset, model, disk) each run the app once. Every run is a subprocess
(``python -m bids_app``, as a user types it), except the full-disk double, which must patch the
writer in-process.
"""

from __future__ import annotations

import csv
import errno
import gzip
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.synthetic import make_dataset
from tests.helpers import ENTRY_POINTS, assert_clean_console, assert_no_partial_files, run_app

APP = ENTRY_POINTS["python -m bids_app"]
T2W_ONLY = {"spinalcord": {"suffix": ["T2w"]}}


def _t2w(ds: Path, subject: str) -> Path:
    return ds / f"sub-{subject}" / "anat" / f"sub-{subject}_T2w.nii.gz"


def _rewrite(path: Path, data=None, affine=None, zooms=None, qform=None):
    img = nib.load(path)
    data = np.asarray(img.dataobj) if data is None else data
    out = nib.Nifti1Image(data, img.affine if affine is None else affine)
    if zooms is not None:
        out.header.set_zooms(zooms)
        out.set_sform(None, code=0)
        out.set_qform(None, code=0)
    if qform is not None:
        out.set_qform(qform, code=1)
        out.set_sform(img.affine, code=1)
    nib.save(out, path)


def _data(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj).astype(np.float32)


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _not_gzip(path: Path) -> None:
    path.write_bytes(b"this is not a NIfTI image, and not gzip either\n" * 20)


def _four_d(path: Path) -> None:
    _rewrite(path, data=np.stack([_data(path)] * 3, axis=-1))


def _all_nan(path: Path) -> None:
    _rewrite(path, data=np.full(_data(path).shape, np.nan, np.float32))


def _few_nan(path: Path) -> None:
    data = _data(path)
    data[:3, :3, :3], data[-1, -1, -1] = np.nan, np.inf
    _rewrite(path, data=data)


def _line_of_voxels(path: Path) -> None:
    _rewrite(path, data=_data(path)[:, 20:21, 20:21])


def _zero_size(path: Path) -> None:
    # nibabel will not write a 0-length axis; set it in the header by hand, as a broken converter does.
    img = nib.load(path)
    header = img.header.copy()
    header["dim"][3] = 0
    with gzip.open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4)


def _voxels_50mm(path: Path) -> None:
    _rewrite(path, zooms=(50.0, 50.0, 50.0))


def _voxels_micrometre(path: Path) -> None:
    _rewrite(path, zooms=(0.001, 0.001, 0.001))


def _singular(path: Path) -> None:
    img = nib.load(path)
    header = img.header.copy()
    header["qform_code"] = 0
    header["srow_z"] = [0.0, 0.0, 0.0, -20.0]  # the sform flattens the volume onto a plane
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, header), path)


def _qform_sform(path: Path) -> None:
    qform = nib.load(path).affine.copy()
    qform[:3, 3] += 6.0
    _rewrite(path, qform=qform)


def _no_cord(path: Path) -> None:
    rng = np.random.default_rng(3)
    _rewrite(path, data=(400 + rng.normal(0, 15, _data(path).shape)).astype(np.int16))


#: participant -> (how its T2w is broken, a pattern of the reason in failed.tsv); "ok*" are healthy.
CASES = {
    "truncated": (_truncate, r"truncated or corrupt"),
    "notgzip": (_not_gzip, r"NIFTI_HEADER_UNREADABLE|cannot be read as a NIfTI"),
    "fourd": (_four_d, r"4D with 3 volumes"),
    "allnan": (_all_nan, r"NaN/Inf voxels"),
    "line": (_line_of_voxels, r"only 1 along its second axis and 1 along its third axis"),
    "zerosize": (_zero_size, r"zero-size dimension|NIFTI_HEADER_UNREADABLE|cannot be read"),
    "vox50": (_voxels_50mm, r"voxel size of 50"),
    "vox0001": (_voxels_micrometre, r"voxel size of 0.001"),
    "singular": (_singular, r"non-invertible affine"),
    "qsform": (_qform_sform, r"qform and an sform that disagree"),
    "nocord": (_no_cord, r"No spinal cord found"),
}
HEALTHY = {"ok": None, "fewnan": _few_nan}


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    ds = make_dataset(root / "ds", {name: [None] for name in [*HEALTHY, *CASES]})
    for subject, (breaker, _) in CASES.items():
        breaker(_t2w(ds, subject))
    _few_nan(_t2w(ds, "fewnan"))
    (root / "f.json").write_text(json.dumps(T2W_ONLY))
    out = root / "out"
    start = time.monotonic()
    result = run_app(APP, [ds, out, "participant", "--nprocs", "2", "--device", "cpu", "-w", root / "work",
                           "--bids-filter-file", root / "f.json"], timeout=600)
    seconds = time.monotonic() - start
    with open(out / "logs" / "failed.tsv") as handle:
        failed = {row["participant_id"][len("sub-"):]: row for row in csv.DictReader(handle, delimiter="\t")}
    return result, out, failed, seconds


def test_broken_images_fail_alone_and_the_rest_finish(broken_run):
    result, out, failed, seconds = broken_run
    assert result.returncode == 5, result.stderr[-3000:]
    assert sorted(failed) == sorted(CASES)
    assert f"{len(CASES)} image(s) failed" in result.stderr
    for subject in HEALTHY:
        assert (out / f"sub-{subject}" / "anat" / f"sub-{subject}_label-SC_desc-T2w_mask.nii.gz").is_file()
    assert "NaN/Inf voxels" in result.stderr  # the few-NaN image: a warning, then processed
    assert_clean_console(result)
    # One line per failure from the main process; the workers' Nipype chatter is in the log file.
    assert "[Node] Error" not in result.stderr and "Storing result file" not in result.stderr
    assert_no_partial_files(out)
    assert seconds < 240, f"{seconds:.0f} s: refused images must not cost minutes"


@pytest.mark.parametrize("subject", sorted(CASES))
def test_each_broken_image_has_a_reason(broken_run, subject):
    import re

    result, out, failed, _ = broken_run
    row = failed[subject]
    assert re.search(CASES[subject][1], row["reason"]), row
    assert row["image"] == f"sub-{subject}/anat/sub-{subject}_T2w.nii.gz" and row["task"] == "spinalcord"
    assert f"sub-{subject}_T2w.nii.gz" in result.stderr  # named on the console, one line
    assert not list((out / f"sub-{subject}").glob("**/*_mask.nii.gz")), "no output for a failed image"
    if row["crash_file"] != "n/a":
        assert Path(row["crash_file"]).is_file()


def test_absurd_voxels_are_refused_in_seconds(tmp_path):
    ds = make_dataset(tmp_path / "ds", {"01": [None]})
    _voxels_50mm(_t2w(ds, "01"))
    (tmp_path / "f.json").write_text(json.dumps(T2W_ONLY))
    start = time.monotonic()
    result = run_app(APP, [ds, tmp_path / "out", "participant", "--device", "cpu", "-w", tmp_path / "w",
                           "--bids-filter-file", tmp_path / "f.json"], timeout=120)
    assert result.returncode == 5 and "voxel size of 50" in result.stderr, result.stderr[-2000:]
    assert time.monotonic() - start < 60
    assert_clean_console(result)


# --------------------------------------------------------------------------- command line, dataset, model
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    ds = make_dataset(root / "ds", {"01": [None]})
    (root / "f.json").write_text(json.dumps(T2W_ONLY))
    return ds, root / "f.json"


def _case_not_bids(tmp, ds, f):
    (tmp / "plain").mkdir()
    return [tmp / "plain", tmp / "out", "participant"], 3, "not a BIDS dataset"


def _case_empty(tmp, ds, f):
    (tmp / "empty").mkdir()
    shutil.copy(ds / "dataset_description.json", tmp / "empty")
    return [tmp / "empty", tmp / "out", "participant", "--skip-bids-validation"], 3, "No sub-"


def _case_unknown_participant(tmp, ds, f):
    return [ds, tmp / "out", "participant", "--participant-label", "99"], 3, "sub-99 not found"


def _case_label_dotdot(tmp, ds, f):
    return [ds, tmp / "out", "participant", "--participant-label", "../x"], 2, "not a BIDS label"


def _case_label_slash(tmp, ds, f):
    return [ds, tmp / "out", "participant", "--session-label", "a/b"], 2, "not a BIDS label"


def _case_output_is_input(tmp, ds, f):
    return [ds, ds, "participant"], 2, "must differ from bids_dir"


def _case_output_inside_input(tmp, ds, f):
    return [ds, ds / "sub-01" / "out", "participant"], 2, "inside bids_dir"


def _case_output_under_a_file(tmp, ds, f):
    (tmp / "afile").write_text("x")
    return [ds, tmp / "afile" / "out", "participant"], 2, "Cannot write to output_dir"


def _case_missing_flair(tmp, ds, f):
    return [ds, tmp / "out", "participant", "--tasks", "mslesion"], 3, "No input images found"


def _case_bad_filter_json(tmp, ds, f):
    (tmp / "bad.json").write_text("{not json")
    return [ds, tmp / "out", "participant", "--bids-filter-file", tmp / "bad.json"], 2, "Cannot read --bids-filter-file"


def _case_bad_filter_shape(tmp, ds, f):
    (tmp / "bad.json").write_text("[1, 2]")
    return [ds, tmp / "out", "participant", "--bids-filter-file", tmp / "bad.json"], 2, "must map task names"


def _models_copy(tmp):
    from bids_app.config import default_models_dir

    shutil.copytree(default_models_dir(), tmp / "models")
    return tmp / "models"


def _case_corrupt_model(tmp, ds, f):
    weights = _models_copy(tmp) / "spinalcord" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    return [ds, tmp / "out", "participant", "--models-dir", tmp / "models"], 4, "sha256 mismatch"


def _case_swapped_model(tmp, ds, f):
    models = _models_copy(tmp)
    shutil.copy(models / "mslesion" / "model.safetensors", models / "spinalcord" / "model.safetensors")
    return [ds, tmp / "out", "participant", "--models-dir", models], 4, "sha256 mismatch"


def _case_swapped_model_folders(tmp, ds, f):
    models = _models_copy(tmp)
    shutil.rmtree(models / "spinalcord")
    shutil.copytree(models / "mslesion", models / "spinalcord")
    return [ds, tmp / "out", "participant", "--models-dir", models], 4, "folders were swapped"


COMMAND_CASES = {name[len("_case_"):]: fn for name, fn in globals().copy().items() if name.startswith("_case_")}


@pytest.mark.parametrize("case", sorted(COMMAND_CASES))
def test_bad_command_dataset_or_model(case, good, tmp_path):
    ds, f = good
    args, code, message = COMMAND_CASES[case](tmp_path, ds, f)
    if "--bids-filter-file" not in args:
        args += ["--bids-filter-file", f]
    result = run_app(APP, [*args, "--device", "cpu", "-w", tmp_path / "work"], timeout=120)
    assert result.returncode == code, result.stderr[-2000:]
    assert message in result.stderr, result.stderr[-2000:]
    assert_clean_console(result)
    for out in (tmp_path / "out", ds / "sub-01" / "out"):
        if out.exists():
            assert not list(out.glob("sub-*")), "no derivative may be written"
            assert_no_partial_files(out)


def test_read_only_output_folder(good, tmp_path):
    """A read-only output folder: by mode bits for a normal user, by a read-only mount for root."""
    ds, f = good
    out = tmp_path / "ro"
    out.mkdir()
    mounted = False
    if os.geteuid() == 0:
        if shutil.which("mount") is None or subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(out)], capture_output=True).returncode:
            pytest.skip("running as root without permission to mount a read-only tmpfs")
        mounted = True
    else:
        out.chmod(0o555)
    try:
        result = run_app(APP, [ds, out, "participant", "--device", "cpu", "-w", tmp_path / "w",
                               "--bids-filter-file", f], timeout=60)
    finally:
        if mounted:
            subprocess.run(["umount", str(out)], check=False)
        else:
            out.chmod(0o755)
    assert result.returncode == 2 and "Cannot write to output_dir" in result.stderr, result.stderr[-2000:]
    assert_clean_console(result)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder whatever its mode")
def test_unreadable_bids_folder(good, tmp_path):
    ds, f = good
    locked = tmp_path / "locked"
    shutil.copytree(ds, locked)
    locked.chmod(0)
    try:
        result = run_app(APP, [locked, tmp_path / "out", "participant", "--device", "cpu"], timeout=60)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 2 and "cannot be read" in result.stderr
    assert_clean_console(result)


def test_full_disk_fails_the_image_and_keeps_the_rest_clean(good, tmp_path, monkeypatch, capfd):
    """A test double of ``os.replace`` failing with ENOSPC for derivatives (the log folder still
    works, as on a disk with a little room left): the image fails with the reason, nothing partial."""
    from bids_app import cli, outputs

    ds, f = good
    real_replace = os.replace

    def full(src, dst, *args, **kwargs):
        if "/sub-" in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(outputs.os, "replace", full)
    out = tmp_path / "out"
    code = cli.main([str(ds), str(out), "participant", "--device", "cpu", "-w", str(tmp_path / "w"),
                     "--bids-filter-file", str(f), "--nipype-plugin", "Linear"])
    captured = capfd.readouterr()
    assert code == 5, captured.err[-2000:]
    failed = (out / "logs" / "failed.tsv").read_text()
    assert "No space left on device" in failed
    assert "Traceback" not in captured.err
    assert not list(out.glob("sub-*/**/*.nii.gz")) and not list(out.glob("sub-*/**/*.tsv"))
    assert_no_partial_files(out)


def test_real_full_disk(good, tmp_path):
    """Root only: a 64 kB tmpfs as output_dir fills up for real."""
    ds, f = good
    out = tmp_path / "tiny"
    out.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)],
                                           capture_output=True).returncode:
        pytest.skip("needs root and mount to make a small file system")
    try:
        result = run_app(APP, [ds, out, "participant", "--device", "cpu", "-w", tmp_path / "w",
                               "--bids-filter-file", f], timeout=300)
        assert result.returncode in (2, 5), result.stderr[-2000:]
        assert "No space left on device" in result.stderr or "disk is full" in result.stderr, result.stderr[-2000:]
        assert_clean_console(result)
        assert_no_partial_files(out)
    finally:
        subprocess.run(["umount", str(out)], check=False)


def test_no_brain_in_the_field_of_view(tmp_path):
    """A spine image given as FLAIR: refused with a sentence before registration makes nonsense."""
    ds = make_dataset(tmp_path / "ds", {"01": [None]})
    shutil.copy(_t2w(ds, "01"), ds / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz")
    out = tmp_path / "out"
    result = run_app(APP, [ds, out, "participant", "--tasks", "mslesion", "--nprocs", "2", "--device", "cpu",
                           "-w", tmp_path / "w"], timeout=300)
    assert result.returncode == 5, result.stderr[-2000:]
    assert "No brain found" in result.stderr and "sub-01_FLAIR.nii.gz" in result.stderr, result.stderr[-2000:]
    assert "No brain found" in (out / "logs" / "failed.tsv").read_text()
    assert not list(out.glob("sub-01/**/*_mask.nii.gz"))
    assert_clean_console(result)
    assert_no_partial_files(out)
