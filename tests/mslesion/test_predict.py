"""The mslesion ensemble's geometry and fusion, on synthetic volumes with known answers."""

import numpy as np
import pytest
import torch

from bids_app.mslesion import predict as M


def _brain(shape=(60, 70, 50)):
    brain = np.zeros(shape, bool)
    brain[10:50, 12:62, 6:44] = True
    return brain


@pytest.mark.parametrize("grid", [(1, 1, 1), (2, 2, 2), (3, 2, 2)])
def test_subvolumes_cover_the_brain_and_fit_the_net(grid):
    brain = _brain()
    boxes = M.subvolumes(brain, grid, overlap=0.3)
    assert len(boxes) == int(np.prod(grid))
    covered = np.zeros(brain.shape, bool)
    for box in boxes:
        assert all(s.stop - s.start > 0 and (s.stop - s.start) % 8 == 0 for s in box)
        assert all(0 <= s.start and s.stop <= n for s, n in zip(box, brain.shape))
        covered[box] = True
    assert covered[brain].all()


def test_taper_is_positive_peaks_in_the_middle_and_is_separable():
    w = M.taper((9, 5, 7))
    assert w.min() >= 0.05 ** 3 - 1e-7 and w.max() <= 1.0
    assert np.unravel_index(np.argmax(w), w.shape) == (4, 2, 3)
    assert np.isclose(w[4, 2, 0] * w[0, 2, 3], w[4, 2, 3] * w[0, 2, 0])


class _Const(torch.nn.Module):
    """A "network" that outputs a constant logit everywhere (known answer after fusion)."""

    def __init__(self, logit):
        super().__init__()
        self.logit = logit

    def forward(self, x):
        return torch.full((x.shape[0], 1, *x.shape[2:]), float(self.logit))


def test_ensemble_fusion_is_a_weighted_mean():
    brain = _brain()
    boxes = M.subvolumes(brain, (2, 1, 1), overlap=0.5)
    x = np.zeros((2, *brain.shape), np.float32)
    same = M.predict_ensemble([_Const(0.0), _Const(0.0)], boxes, x, brain)
    inside = np.zeros(brain.shape, bool)
    for b in boxes:
        inside[b] = True
    assert np.allclose(same[inside], 0.5) and np.all(same[~inside] == 0)
    # two specialists that disagree: in the overlap the fused value lies strictly between them
    lo, hi = 1 / (1 + np.exp(2.0)), 1 / (1 + np.exp(-2.0))
    fused = M.predict_ensemble([_Const(-2.0), _Const(2.0)], boxes, x, brain)
    only0 = np.zeros(brain.shape, bool); only0[boxes[0]] = True
    only1 = np.zeros(brain.shape, bool); only1[boxes[1]] = True
    assert np.allclose(fused[only0 & ~only1], lo) and np.allclose(fused[only1 & ~only0], hi)
    overlap = fused[only0 & only1]
    assert overlap.size and (overlap > lo).all() and (overlap < hi).all()


def test_generic_prediction_shape_and_outside_brain_box():
    brain = _brain()
    net = M.build_net(2, (4, 8, 16, 32)).eval()
    x = np.random.default_rng(0).standard_normal((2, *brain.shape)).astype(np.float32)
    prob = M.predict_generic(net, x, brain, roi=(32, 32, 32))
    assert prob.shape == brain.shape and prob.dtype == np.float32
    assert (prob >= 0).all() and (prob <= 1).all()
    box = M.brain_bbox(brain)
    outside = np.ones(brain.shape, bool); outside[box] = False
    assert np.all(prob[outside] == 0)


def test_load_ensemble_checks_the_hash_and_restores_every_net(tmp_path):
    import json

    from safetensors.torch import save_file

    from bids_app.errors import ModelError
    from bids_app.models import sha256_of

    brain = _brain()
    boxes = M.subvolumes(brain, (2, 1, 1), overlap=0.3)
    channels = (4, 8, 16, 32)
    torch.manual_seed(0)
    nets = [M.build_net(2, channels) for _ in range(len(boxes) + 1)]
    tensors = {f"generic.{k}": v for k, v in nets[0].state_dict().items()}
    for i, n in enumerate(nets[1:]):
        tensors.update({f"special.{i:02d}.{k}": v for k, v in n.state_dict().items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    meta = {"name": "t", "version": "0", "weights": "model.safetensors",
            "sha256": sha256_of(tmp_path / "model.safetensors"), "architecture": M.architecture(2, channels),
            "ensemble": {"boxes": [[[s.start, s.stop] for s in b] for b in boxes]}}
    (tmp_path / "metadata.json").write_text(json.dumps(meta))

    _, generic, specialists, loaded_boxes = M.load_ensemble(tmp_path)
    assert loaded_boxes == boxes and len(specialists) == len(boxes)
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        for ref, got in zip([n.eval() for n in nets], [generic, *specialists]):
            assert torch.allclose(ref(x), got(x))

    meta["sha256"] = "0" * 64
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        M.load_ensemble(tmp_path)


def test_input_channels_by_name():
    image = np.full((4, 5, 6), 2.0, np.float32)
    wm = np.zeros((4, 5, 6), np.float32)
    wm[1:3] = 0.7
    assert (M.input_channel("FLAIR", image, wm, None) == 2.0).all()
    assert not M.input_channel("T1w", image, wm, None).any()  # no T1w: zeros, as in training
    t1 = np.ones_like(image)
    assert (M.input_channel("T1w", image, wm, t1) == 1).all()
    prior = M.input_channel("prior:WM probseg >= 0.5", image, wm, t1)
    assert prior.dtype == np.float32 and prior.sum() == 2 * 5 * 6
    assert not M.input_channel("prior:WM probseg >= 0.8", image, wm, t1).any()
    with pytest.raises(ValueError, match="cannot"):
        M.input_channel("T2w", image, wm, t1)
