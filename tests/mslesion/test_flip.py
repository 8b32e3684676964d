"""Left-right flip averaging of the lesion networks (``flip=True`` in :mod:`bids_app.mslesion.predict`)
on small synthetic volumes with known answers: real torch modules (random UNets, or a module that is
the identity up to a sigmoid so that every member's map is known)."""

import numpy as np
import pytest
import torch

from bids_app.mslesion import predict as M
from tests.mslesion.test_uncertainty import tiny_lesion_model


class _Logit(torch.nn.Module):
    """A "network" whose logit is its first input channel: its probability map is ``sigmoid(x[0])``."""

    def forward(self, x):
        return x[:, :1].clone()  # a copy: MONAI weights window outputs in place


def _brain(shape):
    brain = np.zeros(shape, bool)
    brain[6:-6, 5:-5, 4:-4] = True
    return brain


def _symmetric_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A left-right symmetric brain ``(40, 32, 24)`` and random two-channel input ``x``; seeds torch too."""
    torch.manual_seed(0)
    brain = _brain((40, 32, 24))
    return brain | brain[::-1], np.random.default_rng(seed).normal(size=(2, 40, 32, 24)).astype(np.float32)


def test_mirror_box_reflects_and_is_an_involution():
    box = (slice(21, 125), slice(22, 150), slice(0, 104))
    assert M.mirror_box(box, 197) == (slice(72, 176), slice(22, 150), slice(0, 104))
    assert M.mirror_box(M.mirror_box(box, 197), 197) == box


def test_flipped_members_are_mirrored_back_onto_their_voxels():
    # With sigmoid(x) as every member, each member is right at every voxel it covers only if its
    # mirrored run is mirrored back onto the mirrored box: the fused map must be sigmoid(x) exactly
    # where any member reaches (a missing flip back would put the right hemisphere's values on the left).
    rng = np.random.default_rng(0)
    shape = (33, 24, 20)
    x = rng.normal(size=(1, *shape)).astype(np.float32)
    brain = _brain(shape)
    boxes = [(slice(0, 16), slice(0, 24), slice(0, 16)), (slice(10, 26), slice(0, 24), slice(4, 20))]
    fused = M.predict_ensemble([_Logit(), _Logit()], boxes, x, brain, flip=True)
    covered = np.zeros(shape, bool)
    for b in boxes + [M.mirror_box(b, shape[0]) for b in boxes]:
        covered[b] = True
    expected = 1 / (1 + np.exp(-x[0]))
    assert covered.sum() > np.zeros(shape, bool)[boxes[0]].size  # the mirrored boxes reach new voxels
    np.testing.assert_allclose(fused[covered], expected[covered], atol=1e-6)
    assert np.all(fused[~covered] == 0)
    generic = M.predict_generic(_Logit(), x, brain, roi=(16, 16, 16), flip=True)
    bbox = M.brain_bbox(brain)
    np.testing.assert_allclose(generic[bbox], expected[bbox], atol=1e-6)


def test_flip_averaging_makes_any_net_mirror_equivariant():
    # A random UNet is not symmetric; averaged with its mirrored run it is: the map of the mirrored
    # image is the mirrored map (the template is symmetric, so left and right lesions are treated alike).
    brain, x = _symmetric_case(1)
    xm = np.ascontiguousarray(x[:, ::-1])
    nets = [M.build_net(2, (4, 8, 16, 32)).eval() for _ in range(4)]
    boxes = M.subvolumes(brain, (2, 2, 1), overlap=0.3)
    for flip, close in ((True, True), (False, False)):
        a = M.predict_ensemble(nets, boxes, x, brain, flip=flip)
        b = M.predict_ensemble(nets, boxes, xm, brain, flip=flip)
        assert np.allclose(b, a[::-1], atol=1e-5) == close
        g = M.predict_generic(nets[0], x, brain, roi=(16, 16, 16), flip=flip)
        gm = M.predict_generic(nets[0], xm, brain, roi=(16, 16, 16), flip=flip)
        assert np.allclose(gm, g[::-1], atol=1e-5) == close


def test_spread_with_flip_counts_the_mirrored_members():
    # The fused mean of the spread pass is predict_ensemble's flip map; the spread is computed over
    # twice as many members, so a net that disagrees with its own mirrored run has spread > 0 even
    # when the specialists and the generic net are the same module.
    brain, x = _symmetric_case(2)
    net = M.build_net(2, (4, 8, 16, 32)).eval()
    box = [(slice(0, 40), slice(0, 32), slice(0, 24))]
    mean, spread = M.predict_ensemble_with_spread([net], box, x, brain, net, roi=(40, 32, 24), flip=True)
    np.testing.assert_array_equal(mean, M.predict_ensemble([net], box, x, brain, flip=True))
    assert 0 < spread.max() <= 0.5
    _, spread_plain = M.predict_ensemble_with_spread([net], box, x, brain, net, roi=(40, 32, 24))
    # Without the flip the one specialist and the generic net run the same module on the same voxels:
    # they agree up to the Gaussian window blending, far below the mirrored disagreement.
    assert spread_plain[M.brain_bbox(brain)].max() < spread[M.brain_bbox(brain)].max()


@pytest.mark.parametrize("flag, expected", [({}, False), ({"inference": {"flip_lr": True}}, True),
                                            ({"inference": {"flip_lr": False}}, False)])
def test_the_model_metadata_asks_for_flip(flag, expected):
    assert M.flip_lr(flag) is expected


def test_the_app_path_flips_when_the_model_metadata_asks():
    # lesion_probability(_with_spread) is what the app runs: with inference.flip_lr it returns the
    # flip-averaged ensemble (inside the search region), without it the plain one.
    plain, generic, nets, boxes, brain, wm = tiny_lesion_model()
    flipped = {**plain, "inference": {"flip_lr": True}}
    image = np.random.default_rng(3).standard_normal(brain.shape).astype(np.float32)
    x = np.stack([image, (wm >= 0.5).astype(np.float32)])
    region = M.search_region(wm, 0.5, 2.0)
    p_plain = M.lesion_probability((plain, generic, nets, boxes), image, wm, brain)
    p_flip, _ = M.lesion_probability_with_spread((flipped, generic, nets, boxes), image, wm, brain)
    np.testing.assert_array_equal(p_plain, M.predict_ensemble(nets, boxes, x, brain) * region)
    np.testing.assert_array_equal(p_flip, M.predict_ensemble(nets, boxes, x, brain, flip=True) * region)
    assert not np.allclose(p_plain[region], p_flip[region], atol=1e-4)
    g_flip = M.lesion_probability((flipped, generic, nets, boxes), image, wm, brain, "generic")
    np.testing.assert_allclose(g_flip, M.predict_generic(generic, x, brain, (16, 16, 16), flip=True) * region, atol=1e-7)
