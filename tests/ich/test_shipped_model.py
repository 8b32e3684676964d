"""The shipped ich model (``models/ich``) on synthetic head CTs, run as a user types it (``python run.py``):
the 20 mL bleed of the phantom is measured within 30 %, and the same phantom without it gets at most
0.5 mL. Skipped while the model is not shipped (``models/ich/metadata.json`` absent)."""

from __future__ import annotations

import pandas as pd
import pytest

from bids_app.synthetic import make_ct_dataset
from tests.helpers import ENTRY_POINTS, ROOT, assert_clean_console, run_app

MODEL = ROOT / "models" / "ich"  # what run.py uses (run_app drops NEUROSEG_MODELS_DIR)

# slow: a full participant run of two CTs with the real network (29 s on 2 CPUs) stays out of the default suite.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (MODEL / "metadata.json").is_file(),
                                reason=f"the ich model is not shipped yet ({MODEL / 'metadata.json'} does not exist)")]

BLEED_ML = 20.0


@pytest.fixture(scope="module")
def shipped_run(tmp_path_factory):
    """One ``python run.py`` participant run of the shipped model on the phantom with and without the bleed."""
    tmp = tmp_path_factory.mktemp("shipped")
    bids = make_ct_dataset(tmp / "ds", {"01": BLEED_ML, "02": 0.0})
    out = tmp / "out"
    result = run_app(ENTRY_POINTS["python run.py"], [bids, out, "participant", "--tasks", "ich", "--nprocs", "2",
                                                     "-w", tmp / "work"], timeout=900)
    return result, out


def _total(out, subject: str) -> float:
    table = out / f"sub-{subject}" / "ct" / f"sub-{subject}_label-ICH_desc-ctvolumes_morph.tsv"
    return float(pd.read_csv(table, sep="\t")["total_volume_ml"][0])


def test_the_shipped_model_runs_as_users_run_it(shipped_run):
    result, out = shipped_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert_clean_console(result)
    assert _total(out, "01") > 0.5 * BLEED_ML  # the bleed is found


# v0.1.0 (6 CPU-minutes of training, see models/ich/README.md) over-segments: 28.4 mL on the 20 mL phantom.
# strict: this test fails as soon as a model meets the target, so that the marker is then removed.
@pytest.mark.xfail(strict=True, reason="models/ich 0.1.0 misses the issue-15 accuracy targets (see its card)")
def test_the_shipped_model_measures_a_known_bleed_and_nothing_without_it(shipped_run):
    _, out = shipped_run
    assert _total(out, "01") == pytest.approx(BLEED_ML, rel=0.3)
    assert _total(out, "02") <= 0.5
