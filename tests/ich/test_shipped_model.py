"""The shipped ich model (``models/ich``) on synthetic head CTs, run as a user types it (``python run.py``):
the 20 mL bleed of the phantom is measured within 30 %, and the same phantom without it gets at most
0.5 mL. Skipped while the model is not shipped (``models/ich/metadata.json`` absent)."""

from __future__ import annotations

import pandas as pd
import pytest

from bids_app.synthetic import make_ct_dataset
from tests.helpers import ENTRY_POINTS, ROOT, assert_clean_console, run_app

MODEL = ROOT / "models" / "ich"  # what run.py uses (run_app drops NEUROSEG_MODELS_DIR)

pytestmark = pytest.mark.skipif(not (MODEL / "metadata.json").is_file(),
                                reason=f"the ich model is not shipped yet ({MODEL / 'metadata.json'} does not exist)")

BLEED_ML = 20.0


def test_the_shipped_model_measures_a_known_bleed_and_nothing_without_it(tmp_path):
    bids = make_ct_dataset(tmp_path / "ds", {"01": BLEED_ML, "02": 0.0})
    out = tmp_path / "out"
    result = run_app(ENTRY_POINTS["python run.py"], [bids, out, "participant", "--tasks", "ich", "--nprocs", "2",
                                                     "-w", tmp_path / "work"], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_clean_console(result)

    def total(subject: str) -> float:
        table = out / f"sub-{subject}" / "ct" / f"sub-{subject}_label-ICH_desc-ctvolumes_morph.tsv"
        return float(pd.read_csv(table, sep="\t")["total_volume_ml"][0])

    assert total("01") == pytest.approx(BLEED_ML, rel=0.3)
    assert total("02") <= 0.5
