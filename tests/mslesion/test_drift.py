"""Lesion-volume drift check on the real dev FLAIRs (slow; needs ../shared/data).

Each FLAIR's total lesion volume, as the app's own lesion nodes compute it with the shipped model, is
compared with ``tests/mslesion/drift_reference.json``; a change that moves any by more than 3 % (or
0.05 mL) fails. After a deliberate change (new model, new preprocessing), regenerate the reference
with ``python tests/mslesion/test_drift.py --update`` and say why in the commit.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(__file__).with_name("drift_reference.json")
BIDS_DEV = ROOT.parent / "shared" / "data" / "bids-dev"
IMAGES = json.loads(REFERENCE.read_text())["images"] if REFERENCE.is_file() else {}


def _volume_ml(relpath: str, workdir: Path) -> float:
    """Total lesion volume (mL) of one FLAIR through the app's nodes: template, segment, native, binarise."""
    import nibabel as nib
    import numpy as np

    from bids_app.config import default_models_dir
    from bids_app.mslesion.interfaces import BinariseLesions, FromTemplate, SegmentLesions, ToTemplate
    from bids_app.mslesion.measures import lesion_load

    model_dir = str(default_models_dir() / "mslesion")
    path = str(BIDS_DEV / relpath)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        tpl = ToTemplate(in_file=path, num_threads=2).run().outputs
        prob = SegmentLesions(in_file=tpl.out_file, model_dir=model_dir, num_threads=2).run().outputs.out_file
        native = FromTemplate(in_file=prob, transform_file=tpl.transform_file, reference=path).run().outputs.out_file
        mask = nib.load(BinariseLesions(in_file=native, model_dir=model_dir).run().outputs.out_file)
    finally:
        os.chdir(cwd)
    return lesion_load(np.asarray(mask.dataobj) > 0, mask.header.get_zooms()[:3])["total_volume_ml"]


@pytest.mark.slow
@pytest.mark.skipif(not BIDS_DEV.is_dir(), reason="../shared/data/bids-dev is not available")
@pytest.mark.parametrize("relpath", sorted(IMAGES))
def test_lesion_volume_has_not_drifted(relpath, tmp_path):
    reference = IMAGES[relpath]
    assert _volume_ml(relpath, tmp_path) == pytest.approx(reference, rel=0.03, abs=0.05)


def _recipe(metadata: dict) -> dict:
    """What of the model decides the volumes besides its weights: inference options and output rule."""
    return {"inference": metadata.get("inference", {}), "output": metadata["output"]}


def test_reference_matches_shipped_model():
    """The reference was made with the weights, inference options (e.g. flip averaging) and output rule
    (threshold, minimum lesion) that ship; otherwise it checks nothing."""
    from bids_app.config import default_models_dir
    from bids_app.models import read_metadata

    reference = json.loads(REFERENCE.read_text())
    metadata = read_metadata(default_models_dir() / "mslesion")
    assert reference["model_sha256"] == metadata["sha256"]
    assert reference["recipe"] == _recipe(metadata)


def update() -> None:
    import tempfile

    from bids_app.config import default_models_dir
    from bids_app.models import read_metadata

    # The reference's images (``--all``: every FLAIR of bids-dev, about 40 s each on 2 cores).
    images = sorted(str(p.relative_to(BIDS_DEV)) for p in BIDS_DEV.glob("sub-*/**/anat/*_FLAIR.nii.gz")
                    if "--all" in sys.argv or str(p.relative_to(BIDS_DEV)) in IMAGES)
    with tempfile.TemporaryDirectory() as tmp:
        values = {rel: round(_volume_ml(rel, Path(tmp)), 3) for rel in images}
    metadata = read_metadata(default_models_dir() / "mslesion")
    REFERENCE.write_text(json.dumps({"model_sha256": metadata["sha256"], "recipe": _recipe(metadata),
                                     "images": values}, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    if "--update" in sys.argv:
        update()
