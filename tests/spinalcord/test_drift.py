"""CSA drift check on the real dev images (slow; needs ../shared/data).

Each image's mean CSA, as the app computes it with the shipped model, is compared with the value
stored in ``tests/spinalcord/drift_reference.json``; a change that moves any by more than 2 % fails. After a
deliberate change (new model), regenerate the reference with ``python tests/spinalcord/test_drift.py --update``
and say why in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(__file__).with_name("drift_reference.json")
BIDS_DEV = ROOT.parent / "shared" / "data" / "bids-dev"
IMAGES = json.loads(REFERENCE.read_text())["images"] if REFERENCE.is_file() else {}


def _mean_csa(relpath: str) -> float:
    from bids_app.config import default_models_dir
    from bids_app.models import load_model
    from training.spinalcord.evaluate import segment_and_measure

    bundle = load_model(default_models_dir() / "spinalcord")
    return segment_and_measure(bundle, BIDS_DEV / relpath)["csa_mean_mm2"]


@pytest.mark.slow
@pytest.mark.skipif(not BIDS_DEV.is_dir(), reason="../shared/data/bids-dev is not available")
@pytest.mark.parametrize("relpath", sorted(IMAGES))
def test_csa_has_not_drifted(relpath):
    reference = IMAGES[relpath]
    assert _mean_csa(relpath) == pytest.approx(reference, rel=0.02)


def test_reference_matches_shipped_model():
    """The reference was made with the weights that ship (otherwise it checks nothing)."""
    from bids_app.config import default_models_dir
    from bids_app.models import read_metadata

    assert json.loads(REFERENCE.read_text())["model_sha256"] == read_metadata(default_models_dir() / "spinalcord")["sha256"]


def update() -> None:
    from bids_app.config import default_models_dir
    from bids_app.models import read_metadata

    images = sorted(str(p.relative_to(BIDS_DEV)) for p in BIDS_DEV.glob("sub-*/anat/*.nii.gz")
                    if p.name.split("_")[0] in ("sub-sct01", "sub-unf01"))
    values = {rel: round(_mean_csa(rel), 3) for rel in images}
    REFERENCE.write_text(json.dumps({"model_sha256": read_metadata(default_models_dir() / "spinalcord")["sha256"],
                                     "images": values}, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if "--update" in sys.argv:
        update()
