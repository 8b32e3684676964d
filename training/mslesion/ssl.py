"""SSL² for the lesion network: self-supervised pre-training, then semi-supervised fine-tuning.

The recipe of SSL² (self-supervised pre-training of the encoder, then a semi-supervised student that
learns from unlabelled scans as well as the few labelled ones), on the project's compact 3D UNet
(:func:`bids_app.mslesion.predict.build_net`) rather than a SwinUNETR: that network is what the app
ships and runs on CPU in under a minute.

**Pre-training** (:func:`pretrain`, config block ``"ssl"``), the three proxy tasks of the SwinUNETR
recipe (Tang et al., CVPR 2022) on every patch of the unlabelled pool (real scans of any contrast on the
template grid, plus template synthesis):

* *masked inpainting*: ``holes`` random cubes (edge ``hole_mm``) of the image channel are replaced by
  noise; the UNet's own output (one channel, the same layer the segmentation head later uses) restores
  the image; L1 with weight 1 in the holes and 0.1 elsewhere;
* *rotation*: each view is rotated by ``k * 90`` degrees in the axial (X-Y) plane, ``k`` in 0..3, and a
  linear head on the globally pooled bottleneck features predicts ``k`` (cross-entropy);
* *contrastive coding*: two views of each patch (independent image-quality augmentation, rotation and
  holes) are pulled together and pushed from the other patches of the batch: NT-Xent (temperature
  ``temperature``) on a 2-layer projection of the pooled bottleneck.

Loss: ``w_inpaint * L1 + w_rotation * CE + w_contrast * NT-Xent`` (weights 1, 1, 1 as in the recipe).
The rotation and projection heads are dropped after pre-training; every tensor of the UNet initialises
the generic net of the fine-tuning (:func:`pretrained_weights`).

**Semi-supervised fine-tuning** (:class:`MeanTeacher`, config block ``"mean_teacher"``): the teacher is an
exponential moving average (``ema``) of the student; on each step a batch of unlabelled patches is seen
by both under independent image-quality augmentations (same geometry, so voxels correspond) and the
student pays ``weight * ramp(t) * mean((sigmoid(s) - sigmoid(t))^2)`` inside the brain, with the
sigmoid ramp-up ``exp(-5 (1 - t / ramp)^2)`` of Tarvainen & Valpola (2017) over the first ``ramp``
fraction of the iterations.

Patches are ``(C, P, P, P)`` on the 1 mm template grid, C the config's input channels (the image in
brain IQR first, the prior channel last when on).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers.simplelayers import SkipConnection

from training.mslesion.augment import augment

LOGGER = logging.getLogger("training.mslesion")


def bottleneck(net: torch.nn.Module) -> torch.nn.Module:
    """The deepest block of a MONAI ``UNet`` (the innermost ``SkipConnection``'s submodule)."""
    m = net.model
    while True:
        sub = m[1].submodule if isinstance(m[1], SkipConnection) else None
        if sub is None:
            raise ValueError("not a MONAI UNet: no SkipConnection at model[1]")
        if isinstance(sub, torch.nn.Sequential) and len(sub) == 3 and isinstance(sub[1], SkipConnection):
            m = sub
            continue
        return sub


class Heads(torch.nn.Module):
    """Rotation classifier and contrastive projection on pooled bottleneck features ``(B, F)``."""

    def __init__(self, features: int, projection: int = 64):
        super().__init__()
        self.rotation = torch.nn.Linear(features, 4)
        self.projection = torch.nn.Sequential(torch.nn.Linear(features, features), torch.nn.ReLU(),
                                              torch.nn.Linear(features, projection))


class Pretext:
    """The UNet plus a hook that keeps its pooled bottleneck features of the last forward pass."""

    def __init__(self, net: torch.nn.Module, features: int):
        self.net, self.heads = net, Heads(features)
        self._pooled = None
        bottleneck(net).register_forward_hook(lambda _m, _i, out: setattr(self, "_pooled", out.mean((2, 3, 4))))

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(restored (B, 1, P, P, P), pooled (B, F))``."""
        return self.net(x), self._pooled

    def parameters(self):
        return list(self.net.parameters()) + list(self.heads.parameters())


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each sample of ``(B, C, X, Y, Z)`` rotated by ``k[b] * 90`` degrees in the X-Y plane."""
    return torch.stack([torch.rot90(x[b], int(k[b]), dims=(1, 2)) for b in range(x.shape[0])])


def holes(shape, rng: np.random.Generator, count=(4, 10), edge=(6, 16)) -> torch.Tensor:
    """Boolean ``(B, 1, P, P, P)`` mask of ``count`` random cubes of edge ``edge`` voxels per sample."""
    b, _, *size = shape
    out = torch.zeros((b, 1, *size), dtype=torch.bool)
    for i in range(b):
        for _ in range(int(rng.integers(count[0], count[1] + 1))):
            e = rng.integers(edge[0], edge[1] + 1, 3)
            lo = [int(rng.integers(0, max(n - int(s), 1))) for n, s in zip(size, e)]
            out[i, 0, lo[0]:lo[0] + e[0], lo[1]:lo[1] + e[1], lo[2]:lo[2] + e[2]] = True
    return out


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross-entropy of SimCLR: sample ``i`` of ``z1`` and of ``z2`` (``(B, D)``)
    are the positive pair; the other ``2B - 2`` embeddings of the batch are negatives."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = z1.shape[0]
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def pretext_loss(model: Pretext, views: tuple[torch.Tensor, torch.Tensor], rng: np.random.Generator,
                 weights: dict, temperature: float, hole_count, hole_edge) -> dict[str, torch.Tensor]:
    """The three pre-training losses on two views ``(B, C, P, P, P)`` of the same patches; channel 0
    is the image that is inpainted (the other channels, e.g. the prior, are rotated but never masked)."""
    out = {"inpaint": 0.0, "rotation": 0.0}
    pooled = []
    for x in views:
        k = torch.from_numpy(rng.integers(0, 4, x.shape[0]))
        x = rotate(x, k)
        h = holes(x.shape, rng, hole_count, hole_edge)
        corrupted = x.clone()
        corrupted[:, :1] = torch.where(h, torch.randn_like(x[:, :1]), x[:, :1])
        restored, feat = model(corrupted)
        w = torch.where(h, 1.0, 0.1)
        out["inpaint"] = out["inpaint"] + ((restored - x[:, :1]).abs() * w).sum() / w.sum() / 2
        out["rotation"] = out["rotation"] + F.cross_entropy(model.heads.rotation(feat), k) / 2
        pooled.append(feat)
    out["contrast"] = nt_xent(model.heads.projection(pooled[0]), model.heads.projection(pooled[1]), temperature)
    out["total"] = sum(weights[k] * out[k] for k in ("inpaint", "rotation", "contrast"))
    return out


def two_views(sampler, batch: int, region=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two independently augmented views and the brain mask of ``batch`` unlabelled patches
    (:meth:`training.mslesion.sampler.Sampler.unlabelled`), as tensors ``(B, C, P, P, P)``, ``(B, 1, P, P, P)``."""
    a, b, m = zip(*(sampler.unlabelled(region) for _ in range(batch)))
    return (torch.from_numpy(np.stack(a)), torch.from_numpy(np.stack(b)),
            torch.from_numpy(np.stack(m))[:, None])


def pretrain(config: dict, sampler, n_in: int, out: Path) -> Path:
    """Pre-train the UNet of ``config`` with the three pretext tasks; resumable from ``out``.

    ``config["ssl"]``: ``iterations``, ``batch``, ``lr``, ``weights`` (``inpaint``, ``rotation``,
    ``contrast``), ``temperature``, ``hole_count`` and ``hole_edge`` (voxel ranges). ``sampler`` gives the
    unlabelled patches. Checkpoint ``out`` = ``{"net", "heads", "opt", "it", "losses"}``; returns ``out``.
    """
    from bids_app.mslesion.predict import build_net
    from training.mslesion.train import cosine_schedule

    cfg = config["ssl"]
    net = build_net(n_in, config["channels"])
    model = Pretext(net, int(config["channels"][-1]))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    start, losses = 0, []
    if out.exists():
        state = torch.load(out, weights_only=True)
        net.load_state_dict(state["net"]); model.heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["opt"]); start, losses = int(state["it"]), list(state["losses"])
        LOGGER.info("resumed %s at %d", out, start)
    iterations = int(cfg["iterations"])
    if start >= iterations:
        return out
    sched = cosine_schedule(opt, iterations, start)
    rng = np.random.default_rng([config["seed"], 1729, start])
    net.train()
    t0, running = time.time(), {}
    for it in range(start, iterations):
        v1, v2, _ = two_views(sampler, int(cfg["batch"]))
        loss = pretext_loss(model, (v1, v2), rng, cfg["weights"], float(cfg["temperature"]),
                            tuple(cfg["hole_count"]), tuple(cfg["hole_edge"]))
        opt.zero_grad(); loss["total"].backward(); opt.step(); sched.step()
        for k, v in loss.items():
            running[k] = running.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
        if (it + 1) % 50 == 0 or it + 1 == iterations:
            n = 50 if (it + 1) % 50 == 0 else (it + 1) % 50
            mean = {k: round(v / n, 4) for k, v in running.items()}
            losses.append([it + 1, mean["total"], mean["inpaint"], mean["rotation"], mean["contrast"]])
            LOGGER.info("ssl it %d/%d %s (%.0f s)", it + 1, iterations, mean, time.time() - t0)
            running = {}
            torch.save({"net": net.state_dict(), "heads": model.heads.state_dict(), "opt": opt.state_dict(),
                        "it": it + 1, "losses": losses}, out)
    return out


def pretrained_weights(path: Path) -> dict:
    """The UNet state dict of a pre-training checkpoint (the pretext heads are dropped)."""
    return torch.load(path, weights_only=True)["net"]


class MeanTeacher:
    """Consistency with an exponential-moving-average teacher on unlabelled patches (see the module docstring).

    ``cfg``: ``weight``, ``ema``, ``ramp`` (fraction of the iterations), ``batch`` (unlabelled patches per
    step). ``state_dict`` / ``load_state_dict`` carry the teacher through a checkpoint.
    """

    def __init__(self, student: torch.nn.Module, cfg: dict, iterations: int):
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.cfg, self.iterations = cfg, iterations

    def ramp(self, it: int) -> float:
        t = min(it / max(self.cfg["ramp"] * self.iterations, 1.0), 1.0)
        return math.exp(-5.0 * (1.0 - t) ** 2)

    def loss(self, student: torch.nn.Module, sampler, it: int, region=None) -> torch.Tensor:
        s_in, t_in, brain = two_views(sampler, int(self.cfg["batch"]), region)
        self.teacher.eval()
        with torch.no_grad():
            target = torch.sigmoid(self.teacher(t_in))
        diff = (torch.sigmoid(student(s_in)) - target) ** 2 * brain
        return self.cfg["weight"] * self.ramp(it) * diff.sum() / brain.sum().clamp(min=1)

    @torch.no_grad()
    def update(self, student: torch.nn.Module, it: int) -> None:
        # The usual warm-up: early on the teacher follows the student closely.
        a = min(1.0 - 1.0 / (it + 1), float(self.cfg["ema"]))
        for pt, ps in zip(self.teacher.parameters(), student.parameters()):
            pt.mul_(a).add_(ps.detach(), alpha=1.0 - a)

    def state_dict(self) -> dict:
        return self.teacher.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state)


def unlabelled_views(img: np.ndarray, extra: list[np.ndarray], brain: np.ndarray, rng) -> tuple[np.ndarray, ...]:
    """Two independently augmented copies of one image patch ``(P, P, P)`` stacked with the fixed
    ``extra`` channels (e.g. the prior), and the brain mask: ``(C, P, P, P), (C, P, P, P), (P, P, P)``."""
    views = [np.stack([augment(img, brain, rng), *extra]).astype(np.float32) for _ in range(2)]
    return views[0], views[1], brain.astype(np.float32)
