"""Label-efficient learning for the ``ich`` model (Spahr et al. 2023): pre-training objectives, fine-tuning
and evaluation on the model grid. Nothing here is specific to haemorrhage except the class names: any
2D-slice segmentation task with few pixel labels can use it.

The network is a MONAI 2D ``UNet`` over axial slices with the app's 2.5D windowed input
(:func:`bids_app.ich.preprocess.window_channels`). Every objective trains the same UNet body; only the
last block (its output channels) differs, and :func:`transfer` copies every tensor whose shape matches.

Objectives (``objective`` in the config):

* ``inpaint`` -- context restoration (self-supervised): random boxes of the input are replaced by noise
  and the network restores the centre slice's windows (L1, boxes weighted 1, the rest 0.1).
* ``vicreg`` -- dense VICReg (self-supervised): two intensity-augmented views of the same slices
  (same geometry) give per-pixel embeddings; invariance (MSE between the views at the same pixels),
  variance (hinge on each dimension's SD, >= 1) and covariance (off-diagonal squared) over pixels sampled
  in the head; weights 25 / 25 / 1 (Bardes et al. 2022).
* ``weak`` -- weakly supervised from slice labels ("this slice contains a bleed"): pixel logits pooled by
  log-sum-exp (sharpness ``r``) inside the intracranial mask, binary cross-entropy with the slice label.
* ``supervised`` -- pixel labels: cross-entropy over the classes plus soft Dice of the bleed probability
  ``1 - p(background)``.

Shapes: a batch is ``hu`` ``(B, 2c+1, H, W)`` HU (the slice and its ``c`` neighbours each side), ``label``
``(B, H, W)`` int64 (255 = unknown), ``inside`` ``(B, H, W)`` bool.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

from bids_app.ich import predict
from training.ich.data import NO_LABEL, Scan

LOG = logging.getLogger("training.ich.learn")


def build_unet(in_channels: int, out_channels: int, channels=(16, 32, 64, 128)) -> UNet:
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=1)


def transfer(source: dict, target: torch.nn.Module) -> int:
    """Copy every tensor of state dict ``source`` whose name and shape match ``target``'s; return the count."""
    own = target.state_dict()
    keep = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    own.update(keep)
    target.load_state_dict(own)
    return len(keep)


# ------------------------------------------------------------------------------------------- sampling
@dataclass
class Sampler:
    """Random 2.5D slabs from cached scans. ``bleed_fraction`` of labelled draws are slices with a bleed;
    ``crop`` is the in-plane training size (multiple of 8); ``context`` slices each side."""
    scans: list[Scan]
    crop: int = 96
    context: int = 1
    bleed_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)
        self.brain_slices = [np.flatnonzero(s.inside.any(axis=(0, 1))) for s in self.scans]

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        hu, label, inside = [], [], []
        for _ in range(size):
            i = int(self.rng.integers(len(self.scans)))
            scan = self.scans[i]
            bleeds = scan.bleed_slices
            nz = scan.hu.shape[2]
            if bleeds.size and self.rng.random() < self.bleed_fraction:
                z = int(self.rng.choice(bleeds))
            elif self.brain_slices[i].size and self.rng.random() < 0.9:
                z = int(self.rng.choice(self.brain_slices[i]))
            else:
                z = int(self.rng.integers(nz))
            index = np.clip(np.arange(z - self.context, z + self.context + 1), 0, nz - 1)
            box = self._box(scan, z)
            hu.append(np.moveaxis(scan.hu[box[0], box[1]][:, :, index].astype(np.float32), 2, 0))
            lab = scan.label[box[0], box[1], z] if scan.label is not None else np.full((self.crop,) * 2, NO_LABEL)
            label.append(lab.astype(np.int64))
            inside.append(scan.inside[box[0], box[1], z])
        return {"hu": torch.from_numpy(np.stack(hu)), "label": torch.from_numpy(np.stack(label)),
                "inside": torch.from_numpy(np.stack(inside))}

    def _box(self, scan: Scan, z: int) -> tuple[slice, slice]:
        nx, ny = scan.hu.shape[:2]
        where = np.argwhere(scan.inside[:, :, z])
        if where.size:
            cx, cy = where[self.rng.integers(len(where))]
        else:
            cx, cy = nx // 2, ny // 2
        x0 = int(np.clip(cx - self.crop // 2 + self.rng.integers(-8, 9), 0, nx - self.crop))
        y0 = int(np.clip(cy - self.crop // 2 + self.rng.integers(-8, 9), 0, ny - self.crop))
        return slice(x0, x0 + self.crop), slice(y0, y0 + self.crop)


# --------------------------------------------------------------------------------------- augmentation
def augment_geometry(batch: dict, rng: np.random.Generator, rotate_deg: float = 15.0,
                     scale: tuple[float, float] = (0.9, 1.1)) -> dict:
    """Random in-plane rotation, isotropic scaling and left-right flip per sample (HU bilinear, labels and
    mask nearest; outside filled with air / unknown / outside)."""
    b = batch["hu"].shape[0]
    theta = np.zeros((b, 2, 3), np.float32)
    for i in range(b):
        a = math.radians(rng.uniform(-rotate_deg, rotate_deg))
        s = rng.uniform(*scale)
        flip = -1.0 if rng.random() < 0.5 else 1.0
        theta[i, :, :2] = np.array([[math.cos(a) * flip, -math.sin(a)], [math.sin(a) * flip, math.cos(a)]]) / s
    grid = F.affine_grid(torch.from_numpy(theta), list(batch["hu"].shape), align_corners=False)
    hu = F.grid_sample(batch["hu"] + 1024.0, grid, mode="bilinear", align_corners=False) - 1024.0
    lab = F.grid_sample(batch["label"][:, None].float() + 1.0, grid, mode="nearest", align_corners=False)[:, 0]
    lab = torch.where(lab == 0, torch.full_like(lab, NO_LABEL + 1.0), lab) - 1.0
    inside = F.grid_sample(batch["inside"][:, None].float(), grid, mode="nearest", align_corners=False)[:, 0] > 0.5
    return {"hu": hu, "label": lab.long(), "inside": inside}


def augment_intensity(hu: torch.Tensor, inside: torch.Tensor, rng: np.random.Generator,
                      offset_hu: float = 5.0, gain: float = 0.04, noise_hu: float = 8.0,
                      skull_strip: float = 0.1) -> torch.Tensor:
    """Per-sample HU offset (+-``offset_hu``) and gain (1 +- ``gain``) on soft tissue, Gaussian noise
    (SD up to ``noise_hu``) and, with probability ``skull_strip``, air outside the intracranial mask (as
    in a brain-extracted CT)."""
    out = hu.clone()
    for i in range(hu.shape[0]):
        g = 1.0 + rng.uniform(-gain, gain)
        out[i] = out[i] * g + rng.uniform(-offset_hu, offset_hu)
        out[i] += torch.randn_like(out[i]) * float(rng.uniform(0.0, noise_hu))
        if rng.random() < skull_strip:
            out[i] = torch.where(inside[i][None], out[i], torch.full_like(out[i], -1024.0))
    return out


def windows(hu: torch.Tensor, bounds) -> torch.Tensor:
    """``(B, S, H, W)`` HU -> ``(B, S * len(bounds), H, W)`` network input: for slice s, window w at
    channel ``s * len(bounds) + w`` (the layout of :func:`bids_app.ich.preprocess.window_channels`)."""
    chans = []
    for s in range(hu.shape[1]):
        for lo, hi in bounds:
            chans.append(((hu[:, s].clamp(lo, hi) - lo) / float(hi - lo)))
    return torch.stack(chans, 1)


# ---------------------------------------------------------------------------------------- objectives
def loss_supervised(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    known = label != NO_LABEL
    target = torch.where(known, label, torch.zeros_like(label))
    ce = F.cross_entropy(logits, target, reduction="none")
    ce = (ce * known).sum() / known.sum().clamp(min=1)
    bleed = 1.0 - torch.softmax(logits, 1)[:, 0]
    truth = ((label > 0) & known).float()
    inter = (bleed * truth * known).sum()
    dice = 1.0 - (2 * inter + 1.0) / ((bleed * known).sum() + truth.sum() + 1.0)
    return ce + dice


def loss_inpaint(net, x: torch.Tensor, rng: np.random.Generator, n_windows: int, boxes: int = 6,
                 size=(8, 28)) -> torch.Tensor:
    b, c, h, w = x.shape
    holes = torch.zeros((b, 1, h, w), dtype=torch.bool)
    for i in range(b):
        for _ in range(boxes):
            bh, bw = rng.integers(size[0], size[1] + 1, 2)
            y0, x0 = rng.integers(0, h - bh), rng.integers(0, w - bw)
            holes[i, 0, y0:y0 + bh, x0:x0 + bw] = True
    corrupted = torch.where(holes, torch.rand_like(x), x)
    centre = x.shape[1] // n_windows // 2
    target = x[:, centre * n_windows:(centre + 1) * n_windows]
    err = (net(corrupted) - target).abs()
    weight = torch.where(holes, 1.0, 0.1).expand_as(err)
    return (err * weight).sum() / weight.sum()


def loss_vicreg(net, x1: torch.Tensor, x2: torch.Tensor, inside: torch.Tensor, rng: np.random.Generator,
                pixels: int = 1024) -> torch.Tensor:
    z1, z2 = net(x1), net(x2)
    where = torch.nonzero(inside)
    if where.shape[0] == 0:
        where = torch.nonzero(torch.ones_like(inside))
    pick = where[torch.from_numpy(rng.integers(0, where.shape[0], pixels))]
    e1 = z1[pick[:, 0], :, pick[:, 1], pick[:, 2]]
    e2 = z2[pick[:, 0], :, pick[:, 1], pick[:, 2]]
    inv = F.mse_loss(e1, e2)

    def var_cov(e):
        e = e - e.mean(0)
        std = torch.sqrt(e.var(0) + 1e-4)
        cov = (e.T @ e) / (e.shape[0] - 1)
        off = cov - torch.diag(torch.diag(cov))
        return F.relu(1.0 - std).mean(), (off ** 2).sum() / e.shape[1]

    v1, c1 = var_cov(e1)
    v2, c2 = var_cov(e2)
    return 25.0 * inv + 25.0 * (v1 + v2) / 2 + 1.0 * (c1 + c2)


def loss_weak(logits: torch.Tensor, label: torch.Tensor, inside: torch.Tensor, r: float = 4.0) -> torch.Tensor:
    """Slice-level BCE: slice logit = (1/r) log mean_inside exp(r * pixel logit)."""
    known = (label != NO_LABEL).all(dim=(1, 2))
    slice_label = ((label > 0) & (label != NO_LABEL)).any(dim=(1, 2)).float()
    pix = logits[:, 0]
    masked = torch.where(inside, r * pix, torch.full_like(pix, -1e4))
    count = inside.sum(dim=(1, 2)).clamp(min=1).float()
    pooled = (torch.logsumexp(masked.flatten(1), 1) - torch.log(count)) / r
    bce = F.binary_cross_entropy_with_logits(pooled, slice_label, reduction="none")
    return (bce * known).sum() / known.sum().clamp(min=1)


# ------------------------------------------------------------------------------------------- training
OUT_CHANNELS = {"inpaint": None, "vicreg": 32, "weak": 1}


def train(objective: str, scans: list[Scan], cfg: dict, init: dict | None = None, seed: int = 0,
          log_every: int = 50) -> tuple[dict, list[float]]:
    """Train a UNet with ``objective`` on ``scans`` for ``cfg['iterations']``; return its state dict and
    the loss curve (one value per ``log_every`` iterations, means).

    ``cfg``: ``iterations``, ``batch``, ``lr``, ``crop``, ``windows``, ``context``, ``n_classes``,
    ``channels``; ``init``: a state dict to start from (matching tensors copied, see :func:`transfer`).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    bounds = cfg["windows"]
    n_in = len(bounds) * (2 * cfg["context"] + 1)
    out = cfg["n_classes"] if objective == "supervised" else (OUT_CHANNELS[objective] or len(bounds))
    net = build_unet(n_in, out, cfg["channels"])
    if init is not None:
        LOG.info("%s: %d tensors transferred from the pre-trained network", objective, transfer(init, net))
    sampler = Sampler(scans, crop=cfg["crop"], context=cfg["context"], seed=seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    steps = int(cfg["iterations"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=steps, pct_start=0.1)
    curve, acc, start = [], [], time.perf_counter()
    net.train()
    for step in range(steps):
        batch = augment_geometry(sampler.batch(cfg["batch"]), rng)
        hu = augment_intensity(batch["hu"], batch["inside"], rng)
        if objective == "supervised":
            loss = loss_supervised(net(windows(hu, bounds)), batch["label"])
        elif objective == "inpaint":
            loss = loss_inpaint(net, windows(hu, bounds), rng, len(bounds))
        elif objective == "vicreg":
            other = augment_intensity(batch["hu"], batch["inside"], rng, skull_strip=0.0)
            loss = loss_vicreg(net, windows(hu, bounds), windows(other, bounds), batch["inside"], rng)
        elif objective == "weak":
            loss = loss_weak(net(windows(hu, bounds)), batch["label"], batch["inside"])
        else:
            raise ValueError(f"unknown objective {objective!r}; expected supervised, inpaint, vicreg or weak")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        acc.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            curve.append(float(np.mean(acc)))
            acc = []
            LOG.info("%s %d/%d loss %.4f (%.0f s)", objective, step + 1, steps, curve[-1], time.perf_counter() - start)
    net.eval()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, curve


# ----------------------------------------------------------------------------------------- evaluation
def evaluate_grid(state: dict, scans: list[Scan], cfg: dict, threshold: float = 0.5) -> list[dict]:
    """Per-scan metrics of a supervised network on labelled ``scans`` on the model grid: Dice of the
    bleed mask, true and predicted volume (mL, voxel volume ``spacing_mm ** 3``), with the app's
    intracranial masking (:func:`bids_app.ich.predict.predict_grid`)."""
    bounds = cfg["windows"]
    net = build_unet(len(bounds) * (2 * cfg["context"] + 1), cfg["n_classes"], cfg["channels"])
    net.load_state_dict(state)
    net.eval()
    meta = {"windows": bounds, "context": cfg["context"], "spacing_mm": cfg["spacing_mm"],
            "intracranial_margin_mm": cfg["intracranial_margin_mm"]}
    voxel_ml = cfg["spacing_mm"] ** 3 / 1000.0
    rows = []
    for scan in scans:
        bleed, _ = predict.predict_grid(net, scan.hu.astype(np.float32), meta)
        pred = bleed >= threshold
        truth = scan.label > 0
        inter = float((pred & truth).sum())
        denom = float(pred.sum() + truth.sum())
        rows.append({"scan": scan.stem, "true_ml": float(truth.sum() * voxel_ml), "pred_ml": float(pred.sum() * voxel_ml),
                     "dice": 2 * inter / denom if denom else 1.0, "overlap_ml": inter * voxel_ml})
    return rows


def summarise(rows: list[dict], normals: list[dict] | None = None) -> dict:
    """Acceptance figures from :func:`evaluate_grid` rows: mean Dice and mean |volume error| % over bleeds
    >= 5 mL, detection rate (overlap > 0) over bleeds >= 1 mL, and the largest volume on normal scans."""
    big = [r for r in rows if r["true_ml"] >= 5]
    one = [r for r in rows if r["true_ml"] >= 1]
    out = {"n": len(rows), "n_ge5ml": len(big), "n_ge1ml": len(one),
           "dice_ge5ml": float(np.mean([r["dice"] for r in big])) if big else None,
           "volume_error_pct_ge5ml": float(np.mean([abs(r["pred_ml"] - r["true_ml"]) / r["true_ml"] * 100 for r in big]))
           if big else None,
           "detection_ge1ml": float(np.mean([r["overlap_ml"] > 0 for r in one])) if one else None,
           "dice_all": float(np.mean([r["dice"] for r in rows])) if rows else None}
    if normals is not None:
        out["normal_max_ml"] = float(max(r["pred_ml"] for r in normals)) if normals else None
        out["normal_mean_ml"] = float(np.mean([r["pred_ml"] for r in normals])) if normals else None
    return out


