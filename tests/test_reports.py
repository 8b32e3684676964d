"""Visual QC reports: known-answer tests of the figure and outlier functions, and the pages of a real run
(the demo dataset, both tasks): every participant has a page, every image and link resolves, lesion
numbers match the table, outliers are flagged with a reason, and 200 participants stay fast and small."""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from bids_app.reports import mosaic
from bids_app.reports.group_page import outliers, robust_z
from bids_app.reports.records import image_records

CONTOUR_RGB = np.array([0xFF, 0xD0, 0x00]) / 255.0


def _rgb(png: bytes) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]


def _has_colour(rgb: np.ndarray, colour: np.ndarray, tol: float = 0.25) -> int:
    """Pixels near ``colour`` (anti-aliased lines blend with the grey below, hence the tolerance;
    grey pixels have R = G = B and are never near a saturated colour)."""
    return int(np.all(np.abs(rgb - colour) < tol, axis=-1).sum())


# ------------------------------------------------------------------------------------------ functions
def test_robust_z_known_values():
    z = robust_z({"a": 10, "b": 10, "c": 11, "d": 9, "e": 10, "f": 30})
    # median 10, MAD median(|0,0,1,1,0,20|) = 0.5, so z = (x - 10) / 0.7413
    assert z["f"] == pytest.approx(20 / (1.4826 * 0.5))
    assert z["c"] == pytest.approx(1 / (1.4826 * 0.5)) and z["a"] == 0
    assert robust_z({"a": 1, "b": 1, "c": 1, "d": 1, "e": 5}) == {}  # MAD = 0
    assert robust_z({"a": 1, "b": 2, "c": 30}) == {}  # too few images
    assert "n" not in robust_z({"a": 10, "b": 10, "c": 11, "d": 9, "e": 10, "n": None})


def test_outlier_reason_names_the_measure_and_direction():
    class R:
        def __init__(self, key):
            self.key = key

    records = [R(k) for k in "abcdef"]
    summaries = {k: {"csa": v} for k, v in zip("abcdef", (70, 71, 69, 70, 72, 40))}
    flags = outliers(records, summaries, {"csa": "mean CSA (mm²)"})
    assert list(flags) == ["f"]
    assert re.match(r"mean CSA \(mm²\) 40 is [\d.]+ robust SD below the cohort median 70", flags["f"][0])


def test_pick_slices_follow_the_structure():
    mask = np.zeros((8, 8, 40), bool)
    mask[3:5, 3:5, 10:21] = True
    assert mosaic.pick_slices(mask, 3) == [10, 15, 20]
    mask[:, :, 30] = True  # the slice with the most voxels comes first by content
    assert mosaic.pick_slices(mask, 2, by_content=True) == [10, 30] or mosaic.pick_slices(mask, 1, by_content=True) == [30]
    assert mosaic.pick_slices(mask, 1, by_content=True) == [30]
    assert mosaic.pick_slices(np.zeros((4, 4, 11), bool), 3) == [1, 5, 9]


def test_contour_is_drawn_where_the_mask_is():
    image = np.random.default_rng(0).normal(100, 5, (40, 40, 10)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[10:20, 10:20, 3:7] = True
    with_mask = _rgb(mosaic.axial_mosaic(image, (1, 1, 1), [4], mask=mask))
    without = _rgb(mosaic.axial_mosaic(image, (1, 1, 1), [4]))
    assert _has_colour(with_mask, CONTOUR_RGB) > 50 and _has_colour(without, CONTOUR_RGB) == 0
    # radiological display: the mask (low x = patient's right) appears on the viewer's left... of a
    # 40-voxel-wide panel, columns 10-20 from the right edge once flipped
    ys, xs = np.nonzero(np.all(np.abs(with_mask - CONTOUR_RGB) < 0.25, axis=-1))
    assert xs.mean() > with_mask.shape[1] / 2


def test_labels_are_numbered_on_the_slice_where_they_are_largest():
    labels = np.zeros((20, 20, 6), np.int32)
    labels[2:6, 2:6, 1] = 1
    labels[2:8, 2:8, 2] = 1
    labels[12:14, 12:14, 4] = 2
    where = mosaic._label_slices(labels, [1, 2, 4])
    assert where[1][0] == 2 and where[2][0] == 4
    assert where[1][1] == pytest.approx((4.5, 4.5)) and where[1][2] == pytest.approx(np.sqrt(36 / np.pi))


# ------------------------------------------------------------------------------------------ real run
def test_every_participant_has_a_report_whose_figures_and_links_resolve(demo_run):
    records = image_records(demo_run)
    participants = sorted({r.participant for r in records})
    assert participants == ["sub-01", "sub-02"] and {r.task for r in records} == {"spinalcord", "mslesion"}
    for participant in participants:
        page = (demo_run / f"{participant}.html").read_text()
        mine = [r for r in records if r.participant == participant]
        assert page.count("<h2 id=") == len(mine)
        for src in re.findall(r'src="([^"]+)"', page):
            assert (demo_run / src).is_file(), src
        assert "http://" not in page and "https://" not in page  # opens offline
        for record in mine:
            assert record.sidecar["Model"]["SHA256"] in page


def test_lesion_numbers_in_the_report_match_the_lesion_table(demo_run):
    (record,) = [r for r in image_records(demo_run) if r.task == "mslesion"]
    page = (demo_run / f"{record.participant}.html").read_text()
    table = (demo_run / record.output("lesions", "morph", ".tsv")).read_text().splitlines()
    assert len(table) - 1 == 3  # the demo FLAIR has three lesions
    lesion_table = page.split("Lesions (numbers as in the figure)", 1)[1].split("</table>", 1)[0]
    ids = re.findall(r"<tr><td>(\d+)</td>", lesion_table)
    assert ids == ["1", "2", "3"]
    figure = _rgb((demo_run / record.figure("axial")).read_bytes())
    assert _has_colour(figure, np.array([0xFF, 0x3D, 0xF5]) / 255.0) > 10  # numbers drawn


def test_group_report_links_every_image_to_its_section(demo_run):
    page = (demo_run / "group_report.html").read_text()
    records = image_records(demo_run)
    for record in records:
        assert f'href="{record.participant}.html#' in page
    for href in re.findall(r'href="([^"#]+)(?:#([^"]+))?"', page):
        target = demo_run / href[0]
        assert target.is_file(), href
        if href[1]:
            assert f'id="{href[1]}"' in target.read_text()
    assert page.count('class="rating"') == len(records) and 'id="export-ratings"' in page


def test_200_participants_group_report_is_fast_and_small(demo_run, tmp_path):
    """The group level alone on 200 participants (one participant's outputs copied 200 times, one with
    a CSA halved so that it must be flagged): under 2 minutes, page under 5 MB."""
    from bids_app.cli import main

    out = tmp_path / "out"
    shutil.copytree(demo_run, out, ignore=shutil.ignore_patterns("sub-*", "group_*", "figures"))
    for n in range(200):
        _clone_participant_from(demo_run, out, f"sub-{n:03d}")
    odd = next((out / "sub-007").rglob("*_desc-T2wlevels_morph.tsv"))
    lines = odd.read_text().splitlines()
    header = lines[0].split("\t")
    col = header.index("csa_mean_mm2")
    rows = [line.split("\t") for line in lines[1:]]
    for row in rows:
        row[col] = f"{float(row[col]) / 2:.4f}"
    odd.write_text("\n".join(["\t".join(header)] + ["\t".join(r) for r in rows]) + "\n")
    side = odd.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["CSAMeanMm2"] = meta["CSAMeanMm2"] / 2
    side.write_text(json.dumps(meta))
    start = time.perf_counter()
    assert main([str(demo_run.parent / "bids"), str(out), "group", "--tasks", "spinalcord", "mslesion"]) == 0
    seconds = time.perf_counter() - start
    page = out / "group_report.html"
    assert seconds < 120, seconds
    assert page.stat().st_size < 5e6
    text = page.read_text()
    assert text.count('class="rating"') == 200 * len(image_records(demo_run, "sub-01"))
    assert re.search(r"sub-007 spinalcord T2w</a>: mean CSA \(mm²\) [\d.]+ is [\d.]+ robust SD below", text)


def _clone_participant_from(src_out: Path, out: Path, target: str) -> None:
    for path in (src_out / "sub-01").rglob("*"):
        if path.is_file():
            rel = path.relative_to(src_out / "sub-01")
            dst = out / target / Path(*[p.replace("sub-01", target) for p in rel.parts])
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dst)
