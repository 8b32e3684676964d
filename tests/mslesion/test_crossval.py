"""The patient-level cross-validation protocol of the lesion model, on small synthetic data."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from bids_app.mslesion.measures import small_lesion_recall
from training.mslesion.crossval import fold_config, labelled_cases, merge, score_map
from training.mslesion.cvrows import case_means, choose_thresholds, held_out_rows, summary
from training.mslesion.cvcard import markdown


def _nii(path, data, zooms=(1.0, 1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([*zooms, 1.0])), str(path))


def _bids(tmp_path):
    d = tmp_path / "bids"
    (d).mkdir()
    (d / "participants.tsv").write_text("participant_id\tsource\nsub-a\tSiteA\nsub-b\tSiteB\nsub-c\tSiteB\n")
    z = np.zeros((8, 8, 8))
    for s in ("a", "b", "c"):
        _nii(d / f"sub-{s}/anat/sub-{s}_FLAIR.nii.gz", z)
    lab = d / "derivatives/labels"
    _nii(lab / "sub-a/anat/sub-a_FLAIR_label-lesion_desc-rater1_seg.nii.gz", z)
    _nii(lab / "sub-a/anat/sub-a_FLAIR_label-lesion_desc-rater2_seg.nii.gz", z)
    _nii(lab / "sub-b/anat/sub-b_FLAIR_label-lesion_seg.nii.gz", z)
    _nii(lab / "sub-b/anat/sub-b_FLAIR_label-nWMH_seg.nii.gz", z)
    _nii(lab / "sub-b/anat/sub-b_FLAIR_label-ventricles_seg.nii.gz", z)  # not a lesion label
    return d  # sub-c has no lesion label: not a case


def test_labelled_cases_finds_every_rater_and_the_nwmh_mask_and_skips_unlabelled(tmp_path):
    cases = {c["subject"]: c for c in labelled_cases(_bids(tmp_path))}
    assert sorted(cases) == ["a", "b"]
    assert len(cases["a"]["labels"]) == 2 and cases["a"]["nwmh"] is None and cases["a"]["site"] == "SiteA"
    assert len(cases["b"]["labels"]) == 1 and cases["b"]["nwmh"].endswith("label-nWMH_seg.nii.gz")


def test_a_fold_trains_on_every_other_patient_and_never_its_own(tmp_path):
    d = _bids(tmp_path)
    cases = labelled_cases(d)
    config = {"name": "cv", "run_dir": "runs/cv", "bids_dir": str(d), "seed": 7,
              "folds": {"X": ["a"], "Y": ["b"]}}
    fx = fold_config(config, "X", cases)
    assert list(fx["labelled_canvases"]) == ["sub-b/anat/sub-b_FLAIR.nii.gz"]
    assert fx["run_dir"] == "runs/cv/fold-X" and "folds" not in fx
    fy = fold_config(config, "Y", cases)
    assert list(fy["labelled_canvases"]) == ["sub-a/anat/sub-a_FLAIR.nii.gz"]
    assert len(fy["labelled_canvases"]["sub-a/anat/sub-a_FLAIR.nii.gz"]) == 2  # both raters
    with pytest.raises(SystemExit, match="in no fold"):
        fold_config({**config, "folds": {"X": ["a"]}}, "X", cases)
    with pytest.raises(SystemExit, match="exactly one fold"):
        fold_config({**config, "folds": {"X": ["a", "b"], "Y": ["b"]}}, "X", cases)


def test_small_lesion_recall_counts_only_lesions_of_3_to_50_mm3():
    truth = np.zeros((30, 30, 30), bool)
    truth[2:4, 2:4, 2:4] = True        # 8 mm^3: small, found
    truth[10:12, 10:12, 10:13] = True  # 12 mm^3: small, missed
    truth[20:26, 20:26, 20:26] = True  # 216 mm^3: large, not counted
    pred = np.zeros_like(truth)
    pred[3, 3, 3] = True
    assert small_lesion_recall(pred, truth, (1, 1, 1)) == 0.5
    # at 2 mm voxels the 8-voxel lesion is 64 mm^3 (too large); only the 12-voxel one, 96 mm^3, neither
    assert math.isnan(small_lesion_recall(pred, truth, (2, 2, 2)))
    assert math.isnan(small_lesion_recall(pred, np.zeros_like(truth), (1, 1, 1)))


def test_score_map_scores_on_the_native_grid_and_the_nwmh_fraction(tmp_path):
    # A 20^3 "template" and a native FLAIR with the same grid: identity transform.
    grid = np.zeros((20, 20, 20), np.float32)
    flair = tmp_path / "f.nii.gz"
    _nii(flair, grid)
    truth = np.zeros_like(grid); truth[5:9, 5:9, 5:9] = 1
    nwmh = np.zeros_like(grid); nwmh[12:16, 12:16, 12:16] = 1
    _nii(tmp_path / "l.nii.gz", truth); _nii(tmp_path / "n.nii.gz", nwmh)
    case = {"subject": "x", "site": "S", "flair": str(flair), "labels": [str(tmp_path / "l.nii.gz")],
            "nwmh": str(tmp_path / "n.nii.gz")}
    prob = 0.45 * truth + 0.7 * (nwmh * (np.indices(grid.shape)[0] < 14))  # half the nWMH at 0.7
    tpl_img = sitk.ReadImage(str(flair))
    rows = score_map(prob, case, sitk.Transform(3, sitk.sitkIdentity), tpl_img, [0.4, 0.5], "m")
    at = {r["threshold"]: r for r in rows}
    assert at[0.4]["dice"] == pytest.approx(2 * 64 / (64 + 64 + 32))
    assert at[0.4]["recall"] == 1.0 and at[0.5]["recall"] == 0.0 and at[0.5]["dice"] == 0.0
    assert at[0.4]["nwmh_fraction"] == at[0.5]["nwmh_fraction"] == 0.5
    assert at[0.4]["volume_error_percent"] == pytest.approx(50.0)
    # With white matter only around the true lesion, the predicted nWMH blob is dropped.
    wm = np.zeros_like(grid); wm[3:11, 3:11, 3:11] = 0.9
    at = {r["threshold"]: r for r in score_map(prob, case, sitk.Transform(3, sitk.sitkIdentity), tpl_img, [0.4],
                                               "m", wm, 0.3)}
    assert at[0.4]["dice"] == 1.0 and at[0.4]["nwmh_fraction"] == 0.0
    with pytest.raises(ValueError, match="wm"):
        score_map(prob, case, sitk.Transform(3, sitk.sitkIdentity), tpl_img, [0.4], "m", None, 0.3)



def test_the_hysteresis_arm_keeps_a_lesion_rim_that_the_plain_threshold_cuts(tmp_path):
    grid = np.zeros((20, 20, 20), np.float32)
    flair = tmp_path / "f.nii.gz"
    _nii(flair, grid)
    truth = np.zeros_like(grid); truth[4:10, 4:10, 4:10] = 1
    _nii(tmp_path / "l.nii.gz", truth)
    case = {"subject": "x", "site": "S", "flair": str(flair), "labels": [str(tmp_path / "l.nii.gz")], "nwmh": None}
    prob = 0.3 * truth
    prob[6:8, 6:8, 6:8] = 0.9                      # the lesion's confident core
    prob[14:17, 14:17, 14:17] = 0.35               # a faint false positive without a core
    rows = score_map(prob, case, sitk.Transform(3, sitk.sitkIdentity), sitk.ReadImage(str(flair)), [0.5], "m",
                     hysteresis=[0.5])
    by = {r["model"]: r for r in rows}
    assert set(by) == {"m", "m hyst0.5"}
    assert by["m"]["dice"] == pytest.approx(2 * 8 / (8 + 216), abs=1e-4)
    assert by["m hyst0.5"]["dice"] == 1.0 and by["m hyst0.5"]["precision"] == 1.0

def _row(subject, fold, t, dice, site="MS3SEG-raw"):
    return {"subject": subject, "site": site, "model": "cv ensemble", "threshold": t, "fold": fold,
            "seen_in_training": "none", "reference": "r", "dice": dice, "lesion_f1": dice, "precision": 1.0,
            "recall": 1.0, "small_recall": math.nan, "volume_error_percent": 10.0, "pred_ml": 1.0,
            "truth_ml": 1.0, "nwmh_fraction": math.nan}


def test_each_fold_threshold_is_chosen_on_the_other_folds_only():
    rows = [_row("a", "X", 0.3, 0.9), _row("a", "X", 0.5, 0.1),   # X alone would choose 0.3
            _row("b", "Y", 0.3, 0.2), _row("b", "Y", 0.5, 0.6)]   # Y alone would choose 0.5
    assert choose_thresholds(rows, "cv ensemble") == {"X": 0.5, "Y": 0.3}
    held = {r["subject"]: r["dice"] for r in held_out_rows(rows, "cv ensemble")}
    assert held == {"a": 0.1, "b": 0.2}


def test_case_means_average_raters_and_the_summary_table_lists_every_arm():
    rows = [_row("a", "X", 0.5, 0.4), {**_row("a", "X", 0.5, 0.6), "reference": "r2"},
            _row("b", "Y", 0.5, 0.8, site="Lesjak")]
    cm = case_means(rows)
    assert {r["subject"]: r["dice"] for r in cm} == {"a": 0.5, "b": 0.8}
    base = [{**r, "model": "threshold", "image": r["subject"], "flair_iqr": 1.0, "template_wm": 0.5}
            for r in rows]
    arms = summary(rows + base, "cv")
    assert list(arms) == ["baseline (FLAIR threshold, LOPO)", "cv ensemble (cross-validated)"]
    # Inference-time arms follow their member; the ensemble's come before the generic net.
    extra = [{**r, "model": m} for r in rows for m in ("cv generic", "cv ensemble flip", "cv generic hyst0.5")]
    assert list(summary(rows + extra, "cv")) == [
        "cv ensemble (cross-validated)", "cv ensemble flip (cross-validated)", "cv generic (cross-validated)",
        "cv generic hyst0.5 (cross-validated)"]
    text = markdown(arms)
    assert "| cv ensemble (cross-validated) | 2 | 0.800 | 0.500 | n/a | 0.650 |" in text
    json.dumps(arms)  # JSON-ready (NaN allowed by json)


def test_an_arm_without_labels_is_one_model_for_every_fold(tmp_path):
    d = _bids(tmp_path)
    config = {"name": "s", "run_dir": "runs/s", "bids_dir": str(d), "seed": 7, "labels": False,
              "folds": {"X": ["a"], "Y": ["b"]}}
    fx, fy = (fold_config(config, f, labelled_cases(d)) for f in ("X", "Y"))
    assert fx == fy and fx["labelled_canvases"] == {} and fx["run_dir"] == "runs/s/all"


def test_the_card_puts_the_summary_first_and_states_each_target_from_the_rows(tmp_path):
    from training.mslesion.cvcard import write_cv_card

    rows = []
    for subject, site, fold, dice, base in (("a", "Lesjak", "X", 0.7, 0.3), ("b", "MS3SEG-raw", "Y", 0.5, 0.6)):
        arm = {**_row(subject, fold, 0.5, dice, site=site), "model": "cv ensemble",
               "nwmh_fraction": 0.1 if subject == "b" else math.nan}
        rows.append(arm)
        rows.append({**arm, "model": "thr", "image": subject, "flair_iqr": 1.0, "template_wm": 0.5, "dice": base})
    res = tmp_path / "cv.json"
    res.write_text(json.dumps({"config": "cv", "rows": rows}))
    export = tmp_path / "model"
    export.mkdir()
    (export / "metadata.json").write_text(json.dumps({
        "name": "neuroseg-mslesion", "version": "9.9", "sha256": "ab" * 32, "ensemble": {"boxes": [[0, 1]] * 8},
        "input": {"channels": ["FLAIR", "prior:WM probseg >= 0.5"]},
        "output": {"threshold": 0.5, "min_lesion_mm3": 3.0}, "training": {"config": "c.json"}}))
    config = {"export_dir": str(export), "channels": [16, 32], "grid": [2, 2, 2], "overlap": 0.3,
              "search_dilation_mm": 3.0, "real_canvases": [], "labelled_canvases": {"sub-a/anat/sub-a_FLAIR.nii.gz": []},
              "patch": 48, "batch": 4, "lr": 0.002, "generic_iterations": 1, "special_iterations": 1,
              "lesion_contrast": [1.5, 4.0], "card": {"crossval": [str(res)]}}
    text = write_cv_card(config, "cv ensemble (cross-validated)").read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# neuroseg-mslesion 9.9") and lines[2].startswith("| ")  # the table comes first
    assert "| Dice, patients never seen: 1 mm / 1.5T clinical / all | 0.700 / 0.500 / 0.600 |" in text
    assert "| mean Dice >= 0.65 over the 1 mm brains | yes |" in text
    assert "| mean Dice >= 0.6 over the ten 1.5T patients | no |" in text
    assert "| every case above its FLAIR-threshold baseline | no |" in text and "or below their baseline: sub-b" in text
    assert "| non-MS hyperintensities labelled lesion <= 15 % | yes |" in text
    assert "Self-supervised pre-training, mean-teacher semi-supervised fine-tuning and synthesis on the 39 real " \
           "anatomies are measured in the strategy table but not in this model." in " ".join(lines)
    assert "fused; FLAIR + global-binary-mask prior |" in text and "Self-supervised pre-training of" not in text
    config.update(ssl={"iterations": 3, "batch": 2, "scans": ["sub-u/anat/sub-u_T2w.nii.gz"],
                       "weights": {"inpaint": 1.0, "rotation": 0.0, "contrast": 1.0}},
                  synthseg_canvases=4, prior=False)
    config["card"]["crossval_config"] = "cv9.json"
    text = " ".join(write_cv_card(config, "cv ensemble (cross-validated)").read_text().splitlines())
    assert "Mean-teacher semi-supervised fine-tuning is measured in the strategy table but not in this model." in text
    assert "pre-training of the generic net first (inpaint, contrast; 3 iterations, batch 2)" in text
    assert "(sub-u_T2w)" in text and "fused; FLAIR alone" in text and "no prior channel" in text
    assert "crossval cv9.json --prepare" in text


def test_the_seed_table_shows_both_seeds_and_their_difference():
    from training.mslesion.cvcard import seed_table

    def arm(dice, f1):
        return [{**_row("a", "X", 0.5, dice, site="Lesjak"), "lesion_f1": f1, "small_recall": math.nan,
                 "nwmh_fraction": math.nan, "volume_error_percent": 0.0}]
    text = seed_table({"r": arm(0.5, 0.4), "r (seed 8)": arm(0.45, 0.5)}, [["r", "r (seed 8)"]])
    assert "| r | 0.500 / 0.450 (-0.050) | n/a / n/a (n/a) | 0.500 / 0.450 (-0.050) | 0.400 / 0.500 (0.100) |" in text


def test_partial_evaluations_merge_into_one_result_and_a_fold_is_never_counted_twice(tmp_path, monkeypatch):
    import training.mslesion.crossval as crossval

    monkeypatch.setattr(crossval, "RESULTS", tmp_path)
    parts = []
    for folds in ("A", "B"):
        part = tmp_path / f"cv_part_{folds}.json"
        part.write_text(json.dumps({"config": "cv", "rows": [{**_row("p" + folds, folds, 0.5, 0.6), "model": "cv generic"}]}))
        parts.append(part)
    out = merge({"name": "cv"}, parts)
    assert [r["fold"] for r in out["rows"]] == ["A", "B"] and out["merged_from"] == ["cv_part_A.json", "cv_part_B.json"]
    assert json.loads(next(tmp_path.glob("cv_2*.json")).read_text())["rows"] == out["rows"]
    with pytest.raises(SystemExit, match="fold"):
        merge({"name": "cv"}, [parts[0], parts[0]])
    with pytest.raises(SystemExit, match="not 'other'"):
        merge({"name": "other"}, parts)


def test_the_card_per_patient_table_shows_only_the_arms_it_is_told(tmp_path):
    from training.mslesion.cvcard import _patient_arms, patient_table

    arms = {name: [{**_row("a", "X", 0.5, d), "truth_ml": 1.0, "pred_ml": 1.0}]
            for name, d in (("baseline", 0.3), ("cv ensemble", 0.6), ("cv generic", 0.5))}
    assert list(_patient_arms(arms, {})) == list(arms)  # default: every arm
    shown = _patient_arms(arms, {"patient_arms": ["cv ensemble", "baseline"]})
    assert list(shown) == ["cv ensemble", "baseline"]
    header = patient_table(shown).splitlines()[0]
    assert "cv ensemble" in header and "cv generic" not in header
    with pytest.raises(SystemExit, match="no result file"):
        _patient_arms(arms, {"patient_arms": ["cv nothing"]})
