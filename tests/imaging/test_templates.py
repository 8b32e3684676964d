"""The offline TemplateFlow home: building it from nilearn's files, and looking files up offline."""

from __future__ import annotations

import json
import socket
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app.imaging import templates as T

TPL = f"tpl-{T.TEMPLATE}"
NILEARN = Path(str(files("nilearn.datasets") / "data"))
NILEARN_T1 = NILEARN / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
EXPECTED = {
    "T1w": f"{TPL}_res-01_T1w.nii.gz",
    "GM": f"{TPL}_res-01_label-GM_probseg.nii.gz",
    "WM": f"{TPL}_res-01_label-WM_probseg.nii.gz",
    "mask": f"{TPL}_res-01_desc-brain_mask.nii.gz",
}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return T.build_offline_home(tmp_path_factory.mktemp("tf") / "templateflow")


@pytest.fixture
def offline(monkeypatch):
    """No network: any socket connection fails the test. TemplateFlow settings restored afterwards."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    monkeypatch.setenv("TEMPLATEFLOW_USE_DATALAD", "0")
    monkeypatch.delenv("TEMPLATEFLOW_HOME", raising=False)
    return monkeypatch


def test_build_writes_the_template_files(home):
    tpl_dir = home / TPL
    assert sorted(p.name for p in tpl_dir.iterdir()) == sorted(
        [*EXPECTED.values(), "README.md", "template_description.json"]
    )
    source = nib.load(NILEARN_T1)
    assert source.shape == (197, 233, 189)
    images = {key: nib.load(tpl_dir / name) for key, name in EXPECTED.items()}
    for key, img in images.items():
        assert img.shape == source.shape, key
        np.testing.assert_allclose(img.affine, source.affine)
        assert img.get_data_dtype() == np.uint8, key
        assert int(img.header["sform_code"]) == 4 and int(img.header["qform_code"]) == 4
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(np.asanyarray(images["T1w"].dataobj), np.asanyarray(source.dataobj))
    for key in ("GM", "WM"):
        prob = images[key].get_fdata()
        src = np.asanyarray(nib.load(NILEARN / f"mni_icbm152_{key.lower()}_tal_nlin_sym_09a_converted.nii.gz").dataobj)
        np.testing.assert_allclose(prob, src / 255.0, atol=1e-6)  # probabilities in [0, 1]
        assert prob.max() == pytest.approx(1.0, abs=1e-6)

    mask = np.asanyarray(images["mask"].dataobj)
    assert set(np.unique(mask)) == {0, 1}
    assert 1.7e6 < mask.sum() < 2.2e6  # mm^3; measured 1,964,213 (1.96 L)
    t1 = np.asanyarray(images["T1w"].dataobj)
    assert (mask[t1 > 0] > 0).mean() > 0.999  # nilearn's skull-stripped T1w lies inside the mask
    gm, wm = images["GM"].get_fdata(), images["WM"].get_fdata()
    assert (mask[(gm + wm) > 0.5] > 0).all()
    # the ventricles (GM + WM < 0.2 in a central box, |x| < 25, |y| < 30, 0 < z < 30 mm) are filled in
    x, y, z = (np.moveaxis(np.indices(mask.shape), 0, -1) + source.affine[:3, 3]).transpose(3, 0, 1, 2)
    ventricles = (np.abs(x) < 25) & (np.abs(y) < 30) & (z > 0) & (z < 30) & ((gm + wm) < 0.2)
    assert ventricles.sum() > 5000  # measured: 8096 voxels
    assert (mask[ventricles] > 0).all()
    assert mask[0, 0, 0] == 0

    meta = json.loads((tpl_dir / "template_description.json").read_text())
    assert meta["Identifier"] == T.TEMPLATE
    assert "Nonlinear Symmetrical" in meta["Name"]
    assert (
        "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, "
        "Montreal Neurological Institute, McGill University"
    ) in meta["License"]
    assert any("Fonov" in c and "NeuroImage" in c and "2011" in c for c in meta["Citations"])
    assert meta["res"]["1"]["shape"] == [197, 233, 189]
    readme = (tpl_dir / "README.md").read_text()
    assert "nilearn" in readme and "Louis Collins" in readme


def test_build_is_reproducible(home, tmp_path):
    again = T.build_offline_home(tmp_path / "tf")
    for name in EXPECTED.values():
        assert (again / TPL / name).read_bytes() == (home / TPL / name).read_bytes(), name


def test_templateflow_home_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("TEMPLATEFLOW_HOME", raising=False)
    assert T.templateflow_home() == Path(T.__file__).resolve().parents[2] / "templateflow"
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path))
    assert T.templateflow_home() == tmp_path.resolve()


def test_get_template_file_offline(home, offline):
    offline.setenv("TEMPLATEFLOW_HOME", str(home))
    assert T.get_template_file("T1w") == home / TPL / EXPECTED["T1w"]
    assert T.get_template_file("probseg", label="GM") == home / TPL / EXPECTED["GM"]
    assert T.get_template_file("probseg", label="WM") == home / TPL / EXPECTED["WM"]
    assert T.get_template_file("mask", desc="brain") == home / TPL / EXPECTED["mask"]
    with pytest.raises(FileNotFoundError, match="python -m bids_app.imaging.templates build"):
        T.get_template_file("T2w")
    with pytest.raises(FileNotFoundError):
        T.get_template_file("T1w", resolution=2)
    # nothing was added to the home (no TemplateFlow stub, no layout database)
    assert sorted(p.name for p in home.iterdir()) == [TPL]


def test_get_template_file_missing_home(offline, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    offline.setenv("TEMPLATEFLOW_HOME", str(empty))
    with pytest.raises(FileNotFoundError, match=f"no {TPL}/ folder"):
        T.get_template_file("T1w")
    assert list(empty.iterdir()) == []  # TemplateFlow did not populate a stub


def test_get_template_file_rejects_empty_placeholder(home, offline, tmp_path):
    """An empty file is what TemplateFlow would try to download: refuse it, offline."""
    stub = tmp_path / "stub"
    (stub / TPL).mkdir(parents=True)
    (stub / TPL / EXPECTED["T1w"]).write_bytes(b"")
    (stub / TPL / "template_description.json").write_text((home / TPL / "template_description.json").read_text())
    offline.setenv("TEMPLATEFLOW_HOME", str(stub))
    with pytest.raises(FileNotFoundError, match="placeholder"):
        T.get_template_file("T1w")


def test_shipped_home_matches_a_fresh_build(home, offline):
    """The repository's templateflow/ (what the container ships) is what the builder writes."""
    shipped = Path(T.__file__).resolve().parents[2] / "templateflow"
    if not (shipped / TPL).is_dir():
        pytest.skip("no templateflow/ shipped in this checkout (python -m bids_app.imaging.templates build)")
    path = T.get_template_file("T1w")  # TEMPLATEFLOW_HOME unset -> <repo>/templateflow
    assert path == shipped / TPL / EXPECTED["T1w"]
    for name in EXPECTED.values():
        a, b = nib.load(shipped / TPL / name), nib.load(home / TPL / name)
        np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
        np.testing.assert_allclose(a.affine, b.affine)
