"""The mslesion ensemble's spread (uncertainty map), on small synthetic volumes with known answers.

Members are real torch modules: small random UNets where only the fusion matters, constant-logit
modules where the answer is computed by hand (``sigmoid(logit)`` everywhere, so each member's
probability at a voxel is known and the taper weights give the expected standard deviation).
"""

import numpy as np
import pytest
import torch

from bids_app.mslesion import predict as M


class _Const(torch.nn.Module):
    """A "network" that outputs one constant logit everywhere."""

    def __init__(self, logit):
        super().__init__()
        self.logit = float(logit)

    def forward(self, x):
        return torch.full((x.shape[0], 1, *x.shape[2:]), self.logit)


def _sigmoid(logit):
    return float(torch.sigmoid(torch.tensor(float(logit))))


# A 30 x 21 x 21 volume, brain [10:20, 8:13, 8:13] so its box (margin 4) is [6:24, 4:17, 4:17]; two
# specialist boxes of odd size along y and z (a taper of odd length is exactly 1 at its centre voxel):
# A = [0:16], B = [12:30] along x, overlapping on 12..15, and each reaching voxels outside the brain box.
SHAPE = (30, 21, 21)
BOXES = [(slice(0, 16), slice(0, 21), slice(0, 21)), (slice(12, 30), slice(0, 21), slice(0, 21))]


def _brain():
    brain = np.zeros(SHAPE, bool)
    brain[10:20, 8:13, 8:13] = True
    return brain


def _taper_at(box, voxel):
    """Taper weight of the specialist on ``box`` at the global ``voxel``."""
    shape = tuple(s.stop - s.start for s in box)
    return float(M.taper(shape)[tuple(v - s.start for v, s in zip(voxel, box))])


def _weighted_std(p, w):
    p, w = np.asarray(p, float), np.asarray(w, float)
    m = (w * p).sum() / w.sum()
    return float(np.sqrt((w * (p - m) ** 2).sum() / w.sum()))


def test_the_mean_is_predict_ensemble_bit_for_bit():
    brain = np.zeros((40, 44, 36), bool)
    brain[8:32, 6:38, 5:31] = True
    boxes = M.subvolumes(brain, (2, 2, 1), overlap=0.3)
    torch.manual_seed(0)
    nets = [M.build_net(2, (4, 8, 16, 32)).eval() for _ in boxes]
    generic = M.build_net(2, (4, 8, 16, 32)).eval()
    x = np.random.default_rng(1).standard_normal((2, *brain.shape)).astype(np.float32)
    mean, spread = M.predict_ensemble_with_spread(nets, boxes, x, brain, generic, roi=(16, 16, 16))
    reference = M.predict_ensemble(nets, boxes, x, brain)
    assert mean.dtype == reference.dtype == np.float32 and np.array_equal(mean, reference)
    assert spread.shape == brain.shape and spread.dtype == np.float32
    assert spread.min() >= 0 and spread.max() <= 0.5
    # Random nets disagree: every voxel of the brain has at least two members, and a spread.
    assert (spread[brain] > 0).all()


def test_no_spread_where_the_members_agree():
    brain = _brain()
    x = np.zeros((1, *SHAPE), np.float32)
    mean, spread = M.predict_ensemble_with_spread([_Const(0.7), _Const(0.7)], BOXES, x, brain, _Const(0.7),
                                                  roi=(8, 8, 8))
    assert np.allclose(mean, _sigmoid(0.7))
    assert np.abs(spread).max() < 1e-6  # the generic's Gaussian blending of a constant rounds in float32


def test_the_spread_is_the_weighted_std_of_the_members_at_each_voxel():
    brain = _brain()
    x = np.zeros((1, *SHAPE), np.float32)
    la, lb, lg = -1.0, 2.0, 0.5
    pa, pb, pg = _sigmoid(la), _sigmoid(lb), _sigmoid(lg)
    mean, spread = M.predict_ensemble_with_spread([_Const(la), _Const(lb)], BOXES, x, brain, _Const(lg),
                                                  roi=(8, 8, 8))
    a_and_generic = (8, 10, 10)        # box A and the brain box
    all_three = (14, 10, 10)           # boxes A and B overlap, inside the brain box
    b_and_generic = (22, 5, 15)
    wa, wb = _taper_at(BOXES[0], all_three), _taper_at(BOXES[1], all_three)
    w = M.GENERIC_WEIGHT
    assert spread[all_three] == pytest.approx(_weighted_std([pa, pb, pg], [wa, wb, w]), abs=1e-6)
    # ... and the fused probability there is the specialists' taper-weighted mean, the generic aside.
    assert mean[all_three] == pytest.approx((wa * pa + wb * pb) / (wa + wb), abs=1e-6)
    # Two members: |p1 - p2| sqrt(w1 w2) / (w1 + w2).
    for voxel, box, p in ((a_and_generic, BOXES[0], pa), (b_and_generic, BOXES[1], pb)):
        ws = _taper_at(box, voxel)
        assert spread[voxel] == pytest.approx(abs(p - pg) * np.sqrt(ws * w) / (ws + w), abs=1e-6)
        assert mean[voxel] == pytest.approx(p, abs=1e-6)
    # One member (a box reaching past the brain box, where the generic does not run): no spread.
    for voxel, p in (((2, 10, 10), pa), ((27, 1, 20), pb)):
        assert spread[voxel] == 0 and mean[voxel] == pytest.approx(p, abs=1e-6)


def test_the_spread_reaches_one_half_for_an_even_split_between_zero_and_one():
    brain = _brain()
    x = np.zeros((1, *SHAPE), np.float32)
    box = (slice(5, 26), slice(0, 21), slice(0, 21))  # 21 x 21 x 21: taper exactly 1 at its centre
    centre = (15, 10, 10)
    assert _taper_at(box, centre) == 1.0 and M.GENERIC_WEIGHT == 1.0
    _, spread = M.predict_ensemble_with_spread([_Const(60.0)], [box], x, brain, _Const(-60.0), roi=(8, 8, 8))
    assert spread[centre] == pytest.approx(0.5, abs=1e-6)
    assert spread.max() <= 0.5


def tiny_lesion_model():
    """``(metadata, generic, specialists, boxes, brain, wm)``: random UNets (channels 4-32) of a
    two-channel model (FLAIR + WM prior) on a ``(40, 44, 36)`` grid, two specialists along x; the
    search region is the WM (0.8 in a block) dilated by 2 mm. Shared with ``test_flip.py``."""
    brain = np.zeros((40, 44, 36), bool)
    brain[8:32, 6:38, 5:31] = True
    wm = np.zeros(brain.shape, np.float32)
    wm[14:26, 14:30, 12:24] = 0.8
    boxes = M.subvolumes(brain, (2, 1, 1), overlap=0.3)
    torch.manual_seed(2)
    channels = (4, 8, 16, 32)
    metadata = {"input": {"channels": ["FLAIR", "prior:WM probseg >= 0.5"], "roi_size": [16, 16, 16]},
                "output": {"search_region": {"template_wm_threshold": 0.5, "dilation_mm": 2.0}}}
    generic = M.build_net(2, channels).eval()
    return metadata, generic, [M.build_net(2, channels).eval() for _ in boxes], boxes, brain, wm


def test_lesion_probability_with_spread_matches_lesion_probability_in_the_search_region():
    metadata, generic, nets, boxes, brain, wm = tiny_lesion_model()
    model = (metadata, generic, nets, boxes)
    image = np.random.default_rng(3).standard_normal(brain.shape).astype(np.float32)
    prob, spread = M.lesion_probability_with_spread(model, image, wm, brain)
    assert np.array_equal(prob, M.lesion_probability(model, image, wm, brain, "ensemble"))
    region = M.search_region(wm, 0.5, 2.0)
    assert np.all(spread[~region] == 0) and (spread[region] > 0).all() and spread.max() <= 0.5
