"""Contrast-agnostic soft spinal-cord model: data synthesis, augmentation and training.

Recipe (after Bédard et al., "Towards contrast-agnostic soft segmentation of the spinal cord"):

* **Soft ground truth.** Binary cord masks are resampled to the network's 0.5 mm in-plane grid by
  bilinear interpolation, which turns the mask edge into partial-volume fractions; in synthetic slices
  built from tissue-fraction maps the cord fraction itself is the soft target. Contrasts of one subject
  that share one mask (``sub-unf01``) share one soft target: the model is pushed to give the same answer
  whatever the contrast.
* **A regression loss.** Mean squared error between the sigmoid output and the soft target, plus a soft
  Dice term on the same soft target; there is no binarisation during training.
* **One model for every contrast**, trained on three kinds of slices mixed in every batch:
  real labelled slices (``bids-dev`` cords, with intensity augmentation), slices synthesised from the
  PAM50 template anatomy with random tissue intensities (any contrast), and slices synthesised from the
  real images' own anatomy (their cord mask plus intensity classes) with random tissue intensities.
* **Heavy augmentation** on the batch, in torch: random rotation, scale, shear and translation,
  intensity inversion and gamma, bias field, blur, noise, and in-plane resolution loss (down- then
  up-sampling by up to 3x per axis, as thick-slice and low-resolution acquisitions look on the 0.5 mm grid).
  Thick through-plane slices are simulated on the template by averaging tissue fractions over 1 to 8
  neighbouring 2 mm slices.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from bids_app.inference import build_network, fine_shape, to_fine

LOGGER = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Pools of 2D slices on the fine grid, stored as fixed-size crops centred on the cord
# ----------------------------------------------------------------------------------------------------
@dataclass
class SlicePool:
    """``image``: (N, P, P) real intensities or ``None``; ``fractions``: (N, C, P, P) tissue fractions
    whose channel 0 is the cord; ``target``: (N, P, P) soft cord target; ``weight``: sampling weights."""

    image: torch.Tensor | None
    fractions: torch.Tensor | None
    target: torch.Tensor
    weight: torch.Tensor


def _canonical(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj, dtype=np.float32), tuple(float(z) for z in img.header.get_zooms()[:3])


def _crop_around(arr: torch.Tensor, centre: tuple[float, float], size: int) -> torch.Tensor:
    """Crop ``(..., X, Y)`` to ``size`` x ``size`` around ``centre`` with zero padding."""
    cx, cy = int(round(centre[0])), int(round(centre[1]))
    half = size // 2
    pad = (size, size, size, size)
    padded = F.pad(arr, pad)
    x0, y0 = cx - half + size, cy - half + size
    return padded[..., x0:x0 + size, y0:y0 + size]


def _quantile_classes(image: np.ndarray, exclude: np.ndarray, n_classes: int) -> np.ndarray:
    """Integer class map (1..n_classes) from intensity quantiles of the pixels outside ``exclude``."""
    values = image[~exclude]
    edges = np.quantile(values, np.linspace(0, 1, n_classes + 1)[1:-1]) if values.size else []
    return np.digitize(image, edges) + 1


def manual_label_path(bids_dir: Path, relpath: str) -> Path:
    """The manual cord mask of an image: ``derivatives/labels/<same folder>/<stem>_label-SC_seg.nii.gz``."""
    src = bids_dir / relpath
    return bids_dir / "derivatives" / "labels" / src.parent.relative_to(bids_dir) / \
        src.name.replace(".nii.gz", "_label-SC_seg.nii.gz")


def real_pools(bids_dir: Path, images: list[str], spacing: float, size: int,
               n_classes: int) -> tuple[SlicePool, SlicePool]:
    """Real labelled slices, and synthetic-contrast slices built from the same anatomy.

    ``images`` are paths relative to ``bids_dir`` of labelled images (labels: :func:`manual_label_path`).
    """
    imgs, reals_target, fracs, per_image = [], [], [], []
    for rel in images:
        data, zooms = _canonical(bids_dir / rel)
        mask, _ = _canonical(manual_label_path(bids_dir, rel))
        fine_img = to_fine(np.moveaxis(data, 2, 0), zooms[:2], spacing)[:, 0]
        fine_lab = to_fine(np.moveaxis((mask > 0.5).astype(np.float32), 2, 0), zooms[:2], spacing)[:, 0].clamp(0, 1)
        kept = 0
        for k in range(fine_img.shape[0]):
            if fine_lab[k].sum() < 4:
                continue
            centre = ndimage.center_of_mass(fine_lab[k].numpy())
            im = _crop_around(fine_img[k], centre, size)
            lab = _crop_around(fine_lab[k], centre, size)
            imgs.append(im)
            reals_target.append(lab)
            classes = _quantile_classes(im.numpy(), lab.numpy() > 0.5, n_classes - 1)
            onehot = np.stack([(classes == c).astype(np.float32) for c in range(1, n_classes)])
            onehot *= (1 - lab.numpy())[None]
            fracs.append(torch.cat([lab[None], torch.from_numpy(onehot)]))
            kept += 1
        LOGGER.info("real %s: %d slices", rel, kept)
        per_image.append(kept)
    target = torch.stack(reals_target)
    # Every image weighs the same whatever its number of slices (a 5-slice MT scan counts as much as
    # a 77-slice T1w), so that thick-slice contrasts are not drowned.
    weight = torch.cat([torch.full((n,), 1.0 / n) for n in per_image])
    real = SlicePool(image=torch.stack(imgs), fractions=None, target=target, weight=weight)
    synth = SlicePool(image=None, fractions=torch.stack(fracs), target=target.clone(), weight=weight.clone())
    return real, synth


def template_pool(template_dir: Path, spacing: float, size: int, n_classes: int,
                  thickness: tuple[int, ...]) -> SlicePool:
    """Tissue-fraction slices from the PAM50 template: cord, CSF and intensity classes of the rest.

    Thick slices are made by averaging the one-hot maps over ``t`` neighbouring template slices, so the
    cord channel becomes a through-plane partial-volume fraction.
    """
    t2, zooms = _canonical(template_dir / "PAM50_small_t2.nii.gz")
    cord, _ = _canonical(template_dir / "PAM50_small_cord.nii.gz")
    cord = cord > 0.5
    # CSF: bright T2 voxels close to the cord (within ~6 mm in plane), as in the T2 template.
    near = ndimage.binary_dilation(cord, structure=np.ones((13, 13, 1), bool))
    body = t2 > np.quantile(t2, 0.05)
    csf = near & ~cord & (t2 > np.quantile(t2[near & ~cord], 0.5))
    rest = _quantile_classes(t2, cord | csf | ~body, n_classes - 3)
    onehot = np.zeros((n_classes,) + t2.shape, np.float32)
    onehot[0] = cord
    onehot[1] = csf
    onehot[2] = ~body & ~cord & ~csf
    for c in range(1, n_classes - 2):
        onehot[2 + c] = (rest == c) & body & ~cord & ~csf
    fractions, targets = [], []
    for t in thickness:
        kernel = np.ones(t) / t
        averaged = ndimage.convolve1d(onehot, kernel, axis=3, mode="nearest")
        step = max(1, t // 2)
        for k in range(0, t2.shape[2], step):
            if averaged[0, :, :, k].sum() < 2:
                continue
            fine = to_fine(averaged[:, :, :, k], zooms[:2], spacing)[:, 0]
            centre = ndimage.center_of_mass(fine[0].numpy())
            crop = _crop_around(fine, centre, size)
            crop[2] += 1.0 - crop.sum(0).clamp(max=1.0)  # padding outside the template is air
            fractions.append(crop)
            targets.append(crop[0])
    LOGGER.info("template: %d slices", len(fractions))
    fr = torch.stack(fractions)
    return SlicePool(image=None, fractions=fr, target=torch.stack(targets), weight=torch.ones(len(fr)))


# ----------------------------------------------------------------------------------------------------
# Batch augmentation (vectorised in torch)
# ----------------------------------------------------------------------------------------------------
def synthesise(fractions: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random-contrast image ``(B, X, Y)`` from tissue fractions ``(B, C, X, Y)``: each class gets a
    random mean intensity; within-class texture is smoothed noise."""
    b, c = fractions.shape[:2]
    means = torch.rand(b, c, 1, 1, generator=gen)
    texture = torch.randn(fractions.shape, generator=gen) * torch.rand(b, c, 1, 1, generator=gen) * 0.15
    texture = F.avg_pool2d(texture, 3, stride=1, padding=1)
    return (fractions * (means + texture)).sum(1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each ``(B, 1, X, Y)`` image with its own isotropic sigma (pixels)."""
    radius = 4
    grid = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (grid[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    kernels = kernels / kernels.sum(1, keepdim=True)
    b = x.shape[0]
    out = F.conv2d(F.pad(x.transpose(0, 1), (0, 0, radius, radius), mode="replicate"),
                   kernels[:, None, :, None], groups=b)
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="replicate"), kernels[:, None, None, :], groups=b)
    return out.transpose(0, 1)


def augment(image: torch.Tensor, target: torch.Tensor, patch: int, gen: torch.Generator,
            max_shift: float = 56.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial and image-quality augmentation of ``(B, P, P)`` images and soft targets.

    Returns ``(B, 1, patch, patch)`` normalised images and soft targets.
    """
    b, size = image.shape[0], image.shape[-1]
    x = torch.stack([image, target], 1)
    # Spatial: rotation (+-25 deg), anisotropic scale (0.75-1.35), shear, flips, and translation of up to
    # +-``max_shift`` pool pixels: the cord must be found anywhere in the patch, or not at all when it
    # leaves the view (a network trained on centred cords learns position, not anatomy).
    angle = (torch.rand(b, generator=gen) - 0.5) * math.radians(50)
    scale = 0.75 + torch.rand(b, 2, generator=gen) * 0.6
    shear = (torch.rand(b, generator=gen) - 0.5) * 0.2
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos / scale[:, 0]
    theta[:, 0, 1] = (-sin + shear) / scale[:, 0]
    theta[:, 1, 0] = sin / scale[:, 1]
    theta[:, 1, 1] = cos / scale[:, 1]
    theta[:, :, :2] *= patch / size
    theta[:, :, 2] = (torch.rand(b, 2, generator=gen) - 0.5) * 2 * max_shift / size * 2
    flip = torch.rand(b, generator=gen) < 0.5
    theta[flip, 0, :] *= -1
    grid = F.affine_grid(theta, (b, 2, patch, patch), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    img, tgt = x[:, :1], x[:, 1:].clamp(0, 1)

    # Contrast: inversion and gamma (any contrast can look like any other).
    img = (img - img.amin((2, 3), keepdim=True)) / (img.amax((2, 3), keepdim=True) - img.amin((2, 3), keepdim=True)).clamp_min(1e-6)
    invert = (torch.rand(b, 1, 1, 1, generator=gen) < 0.3).float()
    img = invert * (1 - img) + (1 - invert) * img
    gamma = torch.exp((torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 1.4)
    img = img.clamp_min(0) ** gamma
    # Bias field: a smooth random multiplicative field (bilinear upsampling of a 3x3 grid).
    coarse = torch.exp((torch.rand(b, 1, 3, 3, generator=gen) - 0.5) * 0.8)
    img = img * F.interpolate(coarse, size=(patch, patch), mode="bicubic", align_corners=True)
    # Resolution loss: blur then down/up-sample by up to 3x per axis.
    img = _gaussian_blur(img, torch.rand(b, generator=gen) * 1.2)
    out = torch.empty_like(img)
    factors = 1 + torch.rand(b, 2, generator=gen) * 2.0
    factors[torch.rand(b, generator=gen) < 0.3] = 1.0
    for i in range(b):
        low = (max(8, int(patch / factors[i, 0])), max(8, int(patch / factors[i, 1])))
        small = F.interpolate(img[i:i + 1], size=low, mode="area")
        out[i:i + 1] = F.interpolate(small, size=(patch, patch), mode="bilinear", align_corners=False)
    img = out
    # Noise (Gaussian or Rician-like magnitude), then per-slice percentile normalisation as at inference.
    sigma = torch.rand(b, 1, 1, 1, generator=gen) * 0.08
    noise_a = torch.randn(img.shape, generator=gen) * sigma
    noise_b = torch.randn(img.shape, generator=gen) * sigma
    rician = (torch.rand(b, 1, 1, 1, generator=gen) < 0.5).float()
    img = rician * torch.sqrt((img + noise_a) ** 2 + noise_b ** 2) + (1 - rician) * (img + noise_a)
    from bids_app.inference import normalise_slices

    return normalise_slices(img), tgt


def sample_batch(pools: dict[str, SlicePool], mix: dict[str, float], batch_size: int, patch: int,
                 gen: torch.Generator, max_shift: float = 56.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a batch mixing the pools in the proportions ``mix`` and augment it."""
    names = list(mix)
    counts = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen))).multinomial(
        batch_size, np.array([mix[n] for n in names]) / sum(mix.values()))
    images, targets = [], []
    for name, count in zip(names, counts):
        if count == 0:
            continue
        pool = pools[name]
        idx = torch.multinomial(pool.weight, int(count), replacement=True, generator=gen)
        image = pool.image[idx] if pool.image is not None else synthesise(pool.fractions[idx], gen)
        images.append(image)
        targets.append(pool.target[idx])
    return augment(torch.cat(images), torch.cat(targets), patch, gen, max_shift)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, mse_weight: float = 10.0,
            dice_weight: float = 0.3) -> torch.Tensor:
    """Regression loss on the soft target: weighted MSE of the sigmoid output plus a small soft Dice.

    MSE is minimised by the expected partial-volume fraction, so the soft map stays calibrated for
    CSA; a soft-Dice term speeds up learning of the small foreground but, weighted strongly, biases
    the map towards over-segmentation (measured: +7 to +17 % area with weight 1), hence its low weight.
    """
    prob = torch.sigmoid(logits)
    mse = F.mse_loss(prob, target)
    inter = (prob * target).sum((1, 2, 3))
    denom = prob.sum((1, 2, 3)) + target.sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (denom + 1)
    return mse_weight * mse + dice_weight * dice.mean()


# ----------------------------------------------------------------------------------------------------
# Training loop with resumable checkpoints
# ----------------------------------------------------------------------------------------------------
def train(config: dict, root: Path, resume: bool = True) -> Path:
    """Train from ``config`` (paths relative to ``root``); returns the run folder."""
    torch.set_num_threads(config["train"].get("threads", 2))
    data_cfg, train_cfg = config["data"], config["train"]
    run_dir = root / config["output"]["run_dir"]
    run_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(config["seed"])
    torch.manual_seed(config["seed"])

    bids_dir = root / data_cfg["bids_dir"]
    spacing, size, n_classes = data_cfg["spacing_mm"], data_cfg["pool_size"], data_cfg["n_classes"]
    real, real_synth = real_pools(bids_dir, data_cfg["train_images"], spacing, size, n_classes)
    pools = {"real": real, "real_synth": real_synth,
             "template": template_pool(root / data_cfg["template_dir"], spacing, size, n_classes,
                                       tuple(data_cfg["template_thickness"]))}

    network = build_network(config["model"])
    optimiser = torch.optim.AdamW(network.parameters(), lr=train_cfg["lr"], weight_decay=1e-4)
    total = train_cfg["iterations"]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=train_cfg["lr"], total_steps=total,
                                                    pct_start=0.05)
    start = 0
    ckpt = run_dir / "checkpoint.pt"
    if train_cfg.get("init_from") and not (resume and ckpt.is_file()):
        # Second stage: start from the weights of an earlier run (our own checkpoint, tensors only).
        network.load_state_dict(torch.load(root / train_cfg["init_from"], weights_only=True)["network"])
        LOGGER.info("initialised from %s", train_cfg["init_from"])
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        start = int(state["iteration"])
        LOGGER.info("resumed at iteration %d", start)

    log = open(run_dir / "train_log.tsv", "a")
    if start == 0:
        log.write("iteration\tloss\tlr\tseconds\n")
    network.train()
    t0, running = time.time(), []
    for it in range(start, total):
        image, target = sample_batch(pools, train_cfg["mix"], train_cfg["batch_size"], train_cfg["patch"], gen,
                                     train_cfg["max_shift_px"])
        loss = loss_fn(network(image), target, **train_cfg["loss"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        scheduler.step()
        running.append(float(loss))
        if (it + 1) % train_cfg["log_every"] == 0 or it + 1 == total:
            log.write(f"{it + 1}\t{np.mean(running):.5f}\t{scheduler.get_last_lr()[0]:.2e}\t{time.time() - t0:.0f}\n")
            log.flush()
            LOGGER.info("it %d loss %.4f (%.0f s)", it + 1, np.mean(running), time.time() - t0)
            running = []
        if (it + 1) % train_cfg["checkpoint_every"] == 0 or it + 1 == total:
            torch.save({"network": network.state_dict(), "optimiser": optimiser.state_dict(),
                        "scheduler": scheduler.state_dict(), "generator": gen.get_state(),
                        "iteration": it + 1}, run_dir / "checkpoint.tmp")
            (run_dir / "checkpoint.tmp").replace(ckpt)
    log.close()
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    return run_dir
