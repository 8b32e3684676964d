"""The shipped cord model: hash check, loading without pickle, and segmentation of a phantom."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from bids_app import models
from bids_app.config import default_models_dir
from bids_app.errors import ModelError
from bids_app.spinalcord import measures, predict
from bids_app.synthetic import cord_image

MODEL = default_models_dir() / "spinalcord"


@pytest.fixture(scope="module")
def bundle():
    return models.load_model(MODEL, "cpu")


def test_metadata_describes_the_model():
    meta = json.loads((MODEL / "metadata.json").read_text())
    assert meta["sha256"] == models.sha256_of(MODEL / meta["weights"])
    assert meta["predictor"] in predict.PREDICTORS
    assert 0 < meta["output"]["threshold"] < 1
    card = (MODEL / "README.md").read_text()
    assert meta["sha256"] in card, "the model card must state the sha256 of the shipped weights"


def test_corrupt_weights_are_refused(tmp_path):
    copy = tmp_path / "spinalcord"
    shutil.copytree(MODEL, copy)
    with open(copy / "model.safetensors", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        models.load_model(copy)


def test_unknown_architecture_is_refused():
    with pytest.raises(ModelError, match="Unknown network"):
        models.build_network({"name": "os.system", "params": {}})


def test_area_resampling_preserves_partial_volume():
    fine = torch.rand(3, 1, 64, 48)
    native = predict.to_native(fine, (26, 19))
    scale = (64 * 48) / (26 * 19)
    assert float(native.sum() * scale) == pytest.approx(float(fine.sum()), rel=0.02)


@pytest.mark.parametrize("contrast", ["T2w", "T1w"])
def test_segments_a_cord_phantom(bundle, contrast):
    """Phantom: elliptic cord 6 x 4 mm (CSA 75.4 mm^2) in a CSF ring, 0.8 mm in plane, 3 mm slices.

    The model is calibrated to manual masks drawn slightly inside the visible cord edge, so on this
    crisp phantom it under-estimates the geometric CSA (measured with v1.0.0: -11 % on T2w, -12 % on T1w);
    the bound catches a model that lost the cord or its calibration, not that convention.
    """
    zooms = (0.8, 0.8, 3.0)
    image, truth = cord_image((60, 60, 10), zooms, contrast, a=6.0, b=4.0, seed=3)
    soft = predict.predict_soft_cord(bundle, image, zooms)
    assert soft.shape == image.shape and soft.dtype == np.float32
    assert 0.0 <= soft.min() and soft.max() <= 1.0
    mask = measures.binarise(soft, bundle.metadata["output"]["threshold"])
    assert measures.dice(mask, truth >= 0.5) > 0.85
    csa = np.nanmean(measures.csa_per_slice(soft, zooms).csa_mm2)
    assert csa == pytest.approx(math.pi * 6.0 * 4.0, rel=0.15)


def test_empty_image_gives_no_cord(bundle):
    rng = np.random.default_rng(0)
    soft = predict.predict_soft_cord(bundle, rng.normal(100, 5, (40, 40, 4)).astype(np.float32), (1, 1, 3))
    assert (soft > 0.5).sum() < 20


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_prediction_matches_cpu(bundle):
    zooms = (0.8, 0.8, 3.0)
    image, _ = cord_image((60, 60, 10), zooms, "T2w", seed=5)
    gpu = models.load_model(MODEL, "cuda")
    assert np.abs(predict.predict_soft_cord(gpu, image, zooms) - predict.predict_soft_cord(bundle, image, zooms)).max() < 1e-3
