"""The synthetic head-CT generator (training/ich) on a small synthetic label map built here (no shared
data needed): an 80^3 head at 2 mm, FreeSurfer/SynthSeg labels, white matter inside grey matter inside
CSF inside skull inside scalp, with ventricles, thalami, brainstem and cerebellum."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from training.common.paths import ROOT
from training.ich import anatomy, bleeds, mass, synth, tissues
from training.ich.bleeds import BleedSpec
from training.ich.config import DEFAULT_CONFIG, Draws, load_config
from training.ich.tissues import TISSUE_HU, label_groups

N, VOX = 80, 2.0
R_WM, R_GM, R_CSF, R_SKULL, R_HEAD = 20, 25, 28, 32, 36  # outer radii (voxels) of the layers
AFFINE = np.diag([VOX, VOX, VOX, 1.0])
AFFINE[:3, 3] = -(N - 1) / 2 * VOX  # world (0, 0, 0) at the centre of the array


def _phantom(family: str = "training") -> np.ndarray:
    """The label map ``(80, 80, 80)``: x to the right, y anterior, z superior (RAS), 2 mm voxels."""
    g = np.indices((N, N, N)).astype(float) - (N - 1) / 2
    x, y, z = g
    r = np.sqrt((g ** 2).sum(0))
    right = x > 0
    lab = np.zeros((N, N, N), np.int32)
    lab[r <= R_HEAD] = 511  # skin
    lab[r <= R_HEAD - 1] = 507  # soft tissue
    lab[r <= R_SKULL] = 515  # skull
    lab[r <= R_CSF] = 24
    lab[r <= R_GM] = np.where(right, 42, 3)[r <= R_GM]  # cortex
    lab[r <= R_WM] = np.where(right, 41, 2)[r <= R_WM]  # white matter

    def ellipsoid(c, s):
        return (((x - c[0]) / s[0]) ** 2 + ((y - c[1]) / s[1]) ** 2 + ((z - c[2]) / s[2]) ** 2) <= 1

    for sx in (-1, 1):
        lab[ellipsoid((6 * sx, 0, 4), (3, 10, 4))] = 43 if sx > 0 else 4  # lateral ventricles
        lab[ellipsoid((6 * sx, -3, -5), (3, 3, 3))] = 49 if sx > 0 else 10  # thalami
        lab[ellipsoid((7 * sx, -12, -14), (5, 5, 4))] = 47 if sx > 0 else 8  # cerebellum
    lab[ellipsoid((0, -2, -2), (1.2, 5, 3))] = 14  # 3rd ventricle
    lab[ellipsoid((0, -5, -14), (3.5, 3.5, 4))] = 16  # brainstem
    lab[ellipsoid((0, -10, -14), (1.5, 1.5, 1.5))] = 15  # 4th ventricle
    if family == "subject":  # older maps: merged hemispheres, coarse extra-cerebral labels
        for new, old in {2: 41, 3: 42, 4: 43, 10: 49, 8: 47, 165: 515, 258: 507}.items():
            lab[lab == old] = new
        lab[lab == 511] = 258
    return lab


def _config(**acquisition):
    cfg = load_config()
    cfg["acquisition"].update(fine_mm=2.0, fov_mm=[170.0, 170.0], inplane_mm=[2.0, 2.0], slice_mm=[2.0, 2.0],
                              **acquisition)
    return cfg


#: No head rotation, translation, field-of-view offset or tilt: the output grid lies on the label grid.
ALIGNED = {**{f"acquisition.rotation_{a}_deg": 0.0 for a in "xyz"},
           **{f"acquisition.translation_{a}_mm": 0.0 for a in "xyz"},
           "acquisition.fov_offset_x_mm": 0.0, "acquisition.fov_offset_y_mm": 0.0, "acquisition.tilted": False}
CLEAN = {"acquisition.streak_count": 0, "acquisition.petrous": False, "acquisition.beam_hardening_hu": 0.0,
         "acquisition.kernel": "smooth", "acquisition.kernel_sigma_mm": 0.0}


def _labels_on_output(ct, labels=None) -> np.ndarray:
    """The phantom label of each output voxel (nearest, through the two affines)."""
    labels = _phantom() if labels is None else labels
    ijk = np.indices(ct.image_hu.shape).reshape(3, -1).astype(float)
    world = ct.affine[:3, :3] @ ijk + ct.affine[:3, 3:4]
    inv = np.linalg.inv(AFFINE)
    idx = np.rint(inv[:3, :3] @ world + inv[:3, 3:4]).astype(int)
    ok = np.all((idx >= 0) & (idx < N), axis=0)
    out = np.zeros(idx.shape[1], np.int32)
    out[ok] = labels[tuple(idx[:, ok])]
    return out.reshape(ct.image_hu.shape)


def _run(bleed, seed=0, overrides=None, cfg=None):
    return synth.synthesise_ct(_phantom(), AFFINE, np.random.default_rng(seed), bleed,
                               config=cfg or _config(), overrides={**ALIGNED, **(overrides or {})})


def test_config_file_mirrors_the_defaults_and_every_range_has_a_source():
    assert json.loads((ROOT / "training/ich/configs/synth.json").read_text()) == DEFAULT_CONFIG
    for name, (lo, hi, source) in TISSUE_HU.items():
        assert lo < hi and len(source) > 20, name
    for name, (lo, hi) in {"gm": (35, 45), "wm": (20, 30), "csf": (0, 15), "bone": (700, 2000),
                           "blood_acute": (50, 90)}.items():
        assert TISSUE_HU[name][:2] == (lo, hi)
    assert "Parizel" in TISSUE_HU["blood_acute"].source
    assert TISSUE_HU["fat"].low < -90 < TISSUE_HU["fat"].high and TISSUE_HU["air"].low < -990


@pytest.mark.parametrize("family", ["training", "subject"])
def test_label_groups_partitions_both_map_families(family):
    lab = _phantom(family)
    lab[30:50, 72:80, 25:40] = 507 if family == "training" else 258  # a face in front of the skull
    lab[38:42, 76:80, 30:34] = 506 if family == "training" else 259  # an eye in it
    groups = label_groups(lab, AFFINE)
    total = sum(m.astype(int) for m in groups.values())
    assert (total == 1).all()  # every voxel in exactly one class
    g = np.indices(lab.shape) - (N - 1) / 2
    r = np.sqrt((g ** 2).sum(0))
    assert groups["wm"][r < 10].mean() > 0.6 and groups["gm"][(r > R_WM + 1) & (r < R_GM - 1) & (g[2] > 5)].all()
    assert groups["csf"][(r > R_GM + 0.5) & (r < R_CSF - 0.5)].all() and groups["ventricles"].sum() > 500
    assert groups["deep_gm"].any() and groups["cerebellum"].any() and groups["brainstem"].any()
    assert groups["air"][(r > R_HEAD + 1) & (g[1] < 30)].all() and groups["eyes"].sum() == 64
    bone = groups["bone"] | groups["cancellous_bone"]
    assert bone[(r > R_CSF + 0.5) & (r < R_SKULL - 0.5)].all()
    if family == "subject":  # one skull label: its interior becomes cancellous bone
        assert groups["cancellous_bone"].any() and groups["bone"].any()
    fat = np.argwhere(groups["fat"])
    assert len(fat) > 10 and fat[:, 1].max() <= 77.5  # orbital fat, behind the eye's centre, not in front


def test_tissue_hu_lie_in_their_published_ranges():
    cfg = _config()
    cfg["tissues"].update(fat_fraction=[0.0, 0.0], cancellous_depth_mm=100.0)
    noise = 3.0
    ct = _run(None, seed=1, cfg=cfg, overrides={**CLEAN, "acquisition.noise_sd_hu": noise,
                                               "tissues.texture_sd_hu": 0.5, "calcifications.choroid_plexus": False,
                                               "calcifications.pineal": False})
    where = _labels_on_output(ct)
    checked = 0
    for cls, labels in tissues.LABELS.items():
        inside = ndimage.binary_erosion(np.isin(where, labels), np.ones((3, 3, 3)))
        if cls == "air":
            inside &= ct.image_hu > -1100  # the air of the phantom, not the field outside the grid
        if inside.sum() < 5:
            continue
        lo, hi, _ = TISSUE_HU[cls]
        mean = float(ct.image_hu[inside].mean())
        tol = 1.5 + 4 * noise / np.sqrt(inside.sum())
        assert lo - tol <= mean <= hi + tol, (cls, mean, (lo, hi))
        checked += 1
    assert checked >= 9
    assert abs(float(ct.image_hu[where == 3].mean()) - float(ct.image_hu[where == 2].mean())) >= 4  # GM > WM


@pytest.mark.parametrize("kind, location", [("iph", "deep"), ("sdh", None), ("edh", None), ("sah", "convexal"),
                                            ("ivh", "cast")])
def test_each_bleed_lands_where_it_should_with_its_volume_and_density(kind, location):
    volume = {"ivh": 3.0, "edh": 12.0, "sdh": 15.0}.get(kind, 8.0)
    # a thick lens (to measure its core); a wide crescent (that would cross the midline without the falx)
    extent = {"edh": {"bleeds.0.extent_mm": 20.0}, "sdh": {"bleeds.0.extent_mm": 70.0}}.get(kind, {})
    ct = _run(BleedSpec(kind, volume_ml=volume, acute=True, location=location), seed=2,
              overrides={**CLEAN, "acquisition.noise_sd_hu": 3.0, **extent})
    mask = ct.bleed_mask == bleeds.BLEED_CODES[kind]
    assert set(np.unique(ct.bleed_mask)) <= {0, bleeds.BLEED_CODES[kind]}
    assert abs(ct.bleed_volume_ml[kind] - volume) <= 0.3 * volume, ct.bleed_volume_ml
    assert abs(ct.params["bleeds"][0]["volume_ml_fine"] - volume) <= 0.05 * volume
    where = _labels_on_output(ct)[mask]
    frac = {name: float(np.isin(where, labels).mean()) for name, labels in tissues.LABELS.items()}
    ijk = np.argwhere(mask)
    world = ijk @ ct.affine[:3, :3].T + ct.affine[:3, 3]
    radius = np.sqrt((world ** 2).sum(1)) / VOX  # in phantom voxels from the centre
    if kind == "iph":
        assert frac["wm"] + frac["gm"] + frac["deep_gm"] >= 0.95 and frac["ventricles"] < 0.05
        assert radius.max() < R_GM
    elif kind in ("sdh", "edh"):
        assert frac["csf"] + frac["gm"] >= 0.95 and frac["bone"] == 0 and frac["wm"] < 0.02
        assert radius.max() > R_CSF - 1 and radius.min() > R_WM - 3  # against the inner table, outside the WM
        assert (radius >= R_CSF - 1).mean() > (0.4 if kind == "sdh" else 0.1)  # SDH: a thin crescent
        assert np.all(np.sign(world[:, 0]) == np.sign(world[0, 0]))  # one side of the falx
    elif kind == "sah":
        assert frac["csf"] >= 0.9 and frac["ventricles"] == 0 and radius.min() > R_CSF - 6
    else:
        assert frac["ventricles"] >= 0.9
    if kind in ("iph", "edh"):  # away from partial volume with other tissue, acute blood reads 50-90 HU
        core = ndimage.binary_erosion(mask, np.ones((3, 3, 3)))
        assert core.sum() > 10
        assert 50 - 2 <= float(np.median(ct.image_hu[core])) <= 90 + 2
        outside = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(mask, iterations=1)
        assert np.median(ct.image_hu[core]) > np.median(ct.image_hu[outside & (ct.image_hu < 300)]) + 10


def test_normal_scans_have_no_bleed_but_dense_calcifications():
    ct = _run(None, seed=3, overrides={"calcifications.choroid_plexus": True, "calcifications.choroid_bilateral": True,
                                       "calcifications.pineal": True, "calcifications.0.hu": 300.0,
                                       "calcifications.0.diameter_mm": 6.0, "calcifications.1.diameter_mm": 6.0,
                                       "calcifications.2.diameter_mm": 6.0, "acquisition.noise_sd_hu": 3.0})
    assert ct.bleed_mask.sum() == 0 and ct.params["bleeds"] == [] and sum(ct.bleed_volume_ml.values()) == 0
    kinds = [c["kind"] for c in ct.params["calcifications"]]
    assert kinds.count("choroid_plexus") == 2 and "pineal" in kinds
    assert ct.calcification_mask.sum() > 0 and ct.image_hu[ct.calcification_mask > 0].max() > 100
    pineal = next(c for c in ct.params["calcifications"] if c["kind"] == "pineal")
    third = np.argwhere(_phantom() == 14) @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    assert abs(pineal["centre_mm"][0]) < 3 and pineal["centre_mm"][1] < third[:, 1].min()  # midline, behind the 3rd V.
    for c in ct.params["calcifications"]:
        if c["kind"] == "choroid_plexus":
            assert abs(abs(c["centre_mm"][0]) - 12) < 6 and c["centre_mm"][1] < 0  # atria: lateral ventricles, posterior


def test_slice_thickness_and_tilt_set_the_affine_and_keep_the_mask_on_the_image():
    spec = BleedSpec("iph", volume_ml=10.0, acute=True, location="deep", side="right")
    flat = _run(spec, seed=4, overrides={"acquisition.slice_mm": 5.0})
    tilt = _run(spec, seed=4, overrides={"acquisition.slice_mm": 5.0, "acquisition.tilted": True,
                                         "acquisition.tilt_deg": 20.0})
    t = np.deg2rad(20.0)
    assert np.allclose(flat.affine[:3, :3], np.diag([2.0, 2.0, 5.0]))
    assert np.allclose(tilt.affine[:3, 0], [2, 0, 0]) and np.allclose(tilt.affine[:3, 1], [0, 2 * np.cos(t), 2 * np.sin(t)])
    assert np.allclose(tilt.affine[:3, 2], [0, 0, 5.0 / np.cos(t)])  # table increment; slices 5 mm thick
    assert np.isclose(abs(np.linalg.det(tilt.affine[:3, :3])), 2 * 2 * 5.0)
    assert tilt.bleed_mask.shape == tilt.image_hu.shape and flat.bleed_mask.shape == flat.image_hu.shape
    centroids = []
    for ct in (flat, tilt):
        ijk = np.argwhere(ct.bleed_mask > 0)
        centroids.append((ijk @ ct.affine[:3, :3].T + ct.affine[:3, 3]).mean(axis=0))
        assert np.median(ct.image_hu[ct.bleed_mask > 0]) > 45  # the mask lies on the bright clot
    assert np.linalg.norm(centroids[0] - centroids[1]) < 2.5  # the same clot in world coordinates
    assert centroids[0][0] > 0  # on the requested (right) side
    img, dseg, _ = tilt.to_nifti()
    assert img.get_data_dtype() == np.int16 and np.allclose(img.affine, tilt.affine)
    assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 1  # a shear is sform-only


def test_the_same_seed_gives_the_same_scan_and_another_seed_another():
    a, b = _run("random", seed=5), _run("random", seed=5)
    c = _run("random", seed=6)
    assert np.array_equal(a.image_hu, b.image_hu) and np.array_equal(a.bleed_mask, b.bleed_mask)
    assert a.params == b.params
    json.dumps(a.params)  # JSON-serialisable
    assert a.image_hu.shape != c.image_hu.shape or not np.array_equal(a.image_hu, c.image_hu)
    assert a.params != c.params


def test_mass_effect_pushes_the_midline_away_from_a_large_bleed():
    lab, aff = synth.crop_to_head(_phantom(), AFFINE)
    vox = tissues.voxel_sizes(aff)
    cls = tissues.class_volume(lab, vox, 10.0, 2.0, np.array([0.0, 1.0, 0.0]))
    anat = anatomy.Anatomy(lab, cls, aff)
    tracer = tissues.CALC_BASE + 9  # the 3rd ventricle, traced like a calcification (it moves with the tissue)
    anat.cls[lab == 14] = tracer
    before = anat.world(np.argwhere(anat.cls == tracer).mean(axis=0))[0][0]
    draws = Draws(np.random.default_rng(7), {"mass_effect.strength": 1.0})
    cfg = load_config()
    b = bleeds.make_bleed(anat, BleedSpec("iph", volume_ml=40.0, location="lobar", side="right"), 0, draws,
                          cfg["bleeds"], np.array([0.0, 1.0, 0.0]))
    mass.apply_mass_effect(anat, [b], draws, cfg["mass_effect"])
    shift = draws.params["mass_effect.midline_shift_mm"]
    assert np.isclose(shift, min(0.12 * b.info["volume_ml_fine"], 15.0))
    after = anat.world(np.argwhere(anat.cls == tracer).mean(axis=0))[0][0]
    assert after < before - 1.0  # the 3rd ventricle moved to the left, away from the right-sided clot


def test_command_line_writes_a_bids_like_dataset(tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    nib.save(nib.Nifti1Image(_phantom(), AFFINE), str(maps / "training_seg_01.nii.gz"))
    nib.save(nib.Nifti1Image(_phantom("subject"), AFFINE), str(maps / "subject01_seg.nii.gz"))
    config = tmp_path / "synth.json"
    config.write_text(json.dumps({"acquisition": {"fine_mm": 2.0, "fov_mm": [170.0, 170.0], "inplane_mm": [2.0, 2.0],
                                                  "slice_mm": [2.0, 4.0]}}))
    out = tmp_path / "ds"
    proc = subprocess.run([sys.executable, "-m", "training.ich.synth", "--config", str(config), "--maps", str(maps),
                           "--out", str(out), "--n", "2", "--seed", "3", "--hold-out-maps", "subject01"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in (out / "participants.tsv").read_text().splitlines()]
    assert rows[0][:4] == ["participant_id", "map_id", "seed", "bleed_types"] and len(rows) == 3
    assert {r[1] for r in rows[1:]} == {"training_seg_01"}  # the held-out map is never used
    assert "subject01\theld_out" in (out / "maps.tsv").read_text()
    for row in rows[1:]:
        sub = row[0]
        img = nib.load(str(out / sub / "ct" / f"{sub}_ct.nii.gz"))
        dseg = nib.load(str(out / "derivatives/labels" / sub / "ct" / f"{sub}_ct_label-ICH_dseg.nii.gz"))
        assert img.get_data_dtype() == np.int16 and dseg.get_data_dtype() == np.uint8
        assert img.shape == dseg.shape and np.allclose(img.affine, dseg.affine)
        data = np.asarray(img.dataobj)
        assert data.min() >= -1024 and data.max() <= 3071 and data.max() > 700  # HU, bone present
        assert set(np.unique(np.asarray(dseg.dataobj))) <= {0, 1, 2, 3, 4, 5}
        sidecar = json.loads((out / sub / "ct" / f"{sub}_ct.json").read_text())
        assert sidecar["LabelMap"] == "training_seg_01" and str(sidecar["Seed"]) == row[2]
        assert np.allclose(sidecar["SynthesisParameters"]["affine"], img.affine, atol=1e-3)
        # the recorded seed reproduces the scan
        again = synth.synthesise_ct(_phantom(), AFFINE, np.random.default_rng(int(row[2])), "random",
                                    config=load_config(config))
        assert np.array_equal(np.round(again.image_hu).astype(np.int16), data)
