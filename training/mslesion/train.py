"""Training of the lesion ensemble: loss, the resumable loop of one net and the whole recipe (generic net,
then one specialist per sub-volume, grown from it), optionally starting from an exported model.

Checkpoints in ``run_dir``: ``generic.pt`` and ``special-<i>.pt`` (``{"net", "opt", "it"}``), and a
``cache/`` of the canvases in template space.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from bids_app.mslesion.predict import architecture, build_net, load_ensemble, subvolumes
from training.common.paths import ROOT
from training.mslesion.canvases import real_canvas
from training.mslesion.channels import input_channels
from training.mslesion.sampler import Sampler
from training.mslesion.template import lesion_masks_in_template, load_template

LOGGER = logging.getLogger("training.mslesion")


def loss_fn(logits, target, weight):
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=weight)
    prob = torch.sigmoid(logits) * weight
    t = target * weight
    dice = 1 - (2 * (prob * t).sum() + 1) / (prob.sum() + t.sum() + 1)
    return bce + dice


def cosine_schedule(opt, iterations: int, start: int = 0):
    """Cosine decay of ``opt``'s learning rate to 0 over ``iterations`` steps, fast-forwarded to ``start``
    (a resumed run continues on the same curve)."""
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, iterations) / iterations)))
    for _ in range(start):
        sched.step()
    return sched


def cache_dir(config: dict) -> Path:
    """Where the run's registered canvases are cached: ``cache_dir`` (shared, e.g. by the folds of a
    cross-validation, which then register each real scan once) or the run's own ``cache/``."""
    return ROOT / config["cache_dir"] if config.get("cache_dir") else ROOT / config["run_dir"] / "cache"


def train_net(net, sampler, iterations, batch, lr, ckpt: Path, region=None, log_every=100, mean_teacher=None):
    """Train ``net`` for ``iterations`` steps of ``batch`` patches of ``sampler`` (within ``region``);
    resumable from ``ckpt``. ``mean_teacher``: the ``"mean_teacher"`` config block, which adds the
    consistency loss of :class:`training.mslesion.ssl.MeanTeacher` on unlabelled patches."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    start = 0
    teacher = None
    if mean_teacher:
        from training.mslesion.ssl import MeanTeacher

        teacher = MeanTeacher(net, mean_teacher, iterations)
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        net.load_state_dict(state["net"]); opt.load_state_dict(state["opt"]); start = int(state["it"])
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        LOGGER.info("resumed %s at %d", ckpt, start)
    sched = cosine_schedule(opt, iterations, start)
    net.train()
    t0, running = time.time(), 0.0
    for it in range(start, iterations):
        xs, ys, ws = [], [], []
        for _ in range(batch):
            x, les, w = sampler.sample(region)
            xs.append(x); ys.append(les[None]); ws.append(w[None])
        x, y, w = (torch.from_numpy(np.stack(a)) for a in (xs, ys, ws))
        opt.zero_grad()
        loss = loss_fn(net(x), y, w)
        if teacher is not None:
            loss = loss + teacher.loss(net, sampler, it, region)
        loss.backward(); opt.step(); sched.step()
        if teacher is not None:
            teacher.update(net, it)
        running += loss.item()
        if (it + 1) % log_every == 0 or it + 1 == iterations:
            LOGGER.info("%s it %d/%d loss %.4f (%.1f s)", ckpt.parent.name + "/" + ckpt.stem, it + 1,
                        iterations, running / log_every, time.time() - t0)
            running = 0.0
            state = {"net": net.state_dict(), "opt": opt.state_dict(), "it": it + 1}
            if teacher is not None:
                state["teacher"] = teacher.state_dict()
            torch.save(state, ckpt)
    net.eval()
    return net


def run(config: dict) -> None:
    torch.set_num_threads(config.get("threads", 2))
    torch.manual_seed(config["seed"])
    run_dir = ROOT / config["run_dir"]
    run_dir.mkdir(parents=True, exist_ok=True)
    tpl = load_template()
    masks = lesion_masks_in_template(Path(config["lesion_masks"]), tpl)
    data = Path(config["bids_dir"])
    t1w = bool(config.get("t1w"))
    cache = cache_dir(config)
    canvases = [real_canvas(data / c, tpl, cache, t1w=t1w,
                            ignore_percentile=config.get("unlabelled_ignore_percentile"))
                for c in config["real_canvases"]]
    for image, labels in config.get("labelled_canvases", {}).items():
        canvases.append(real_canvas(data / image, tpl, cache, [data / lab for lab in labels], t1w=t1w))
    LOGGER.info("%d lesion masks, %d real canvases (%d labelled)", len(masks), len(canvases),
                len(config.get("labelled_canvases", {})))
    if config.get("synthseg_canvases"):
        # Real anatomies (the 39 SynthSeg label maps) rendered in random contrasts and resolutions,
        # with real lesion shapes: the labelled scans' own lesions join the MNI masks, so that only
        # the training folds' labels are ever drawn (a fold's config lists only those).
        from training.mslesion.synthesis import settings, synthetic_canvases

        real_lesions = [c["label"] >= 0.5 for c in canvases if "label" in c]
        synth = synthetic_canvases(config, tpl, masks, ROOT / settings(config)["cache_dir"],
                                   n=int(config["synthseg_canvases"]), seed=config["seed"],
                                   extra_lesions=real_lesions)
        LOGGER.info("%d synthetic canvases on real anatomies", len(synth))
        canvases += synth
    prior = config["prior"]
    sampler = Sampler(tpl, masks, canvases, config["patch"], config["real_fraction"], config["seed"],
                      config.get("lesion_contrast", (0.6, 4.0)), config.get("lesion_wm", 0.0),
                      config.get("labelled_weight", 1.0), config.get("synthetic_t1_fraction", 0.0),
                      prior=prior, t1w=t1w, t1w_dropout=config.get("t1w_dropout", 0.3),
                      normal_hyper=config.get("normal_hyper", 0.0), sulci=config.get("sulci", 0.0),
                      deform=config.get("deform", 0.0), centre_on=config.get("centre_on", "voxel"),
                      infratentorial=config.get("infratentorial_lesions", 0.0))
    n_in = len(input_channels(config))
    generic = build_net(n_in, config["channels"])
    if config.get("init_from") and not (run_dir / "generic.pt").exists():
        generic.load_state_dict(initial_weights(config))
    if config.get("ssl") and not (run_dir / "generic.pt").exists():
        from training.mslesion.ssl import pretrained_weights

        generic.load_state_dict(pretrained_weights(pretrained(config, tpl, masks, n_in)))
        LOGGER.info("generic net initialised from the self-supervised pre-training")
    mt = config.get("mean_teacher") or {}
    if mt.get("pool") == "real":
        # Consistency on every real scan of the recipe, labelled or not (their labels stay unused there).
        sampler.unlabelled_pool = [c for c in canvases if "meta" not in c]
    train_net(generic, sampler, config["generic_iterations"], config["batch"], config["lr"], run_dir / "generic.pt",
              mean_teacher=mt)
    if not config["special_iterations"]:
        LOGGER.info("done (generic net only: special_iterations is 0)")
        return
    boxes = subvolumes(tpl["brain"], tuple(config["grid"]), config["overlap"])
    for i, box in enumerate(boxes):
        net = build_net(n_in, config["channels"])
        ck = run_dir / f"special-{i:02d}.pt"
        if not ck.exists():
            net.load_state_dict(generic.state_dict())
        train_net(net, sampler, config["special_iterations"], config["batch"], config["lr"] * 0.3, ck,
                  region=box, mean_teacher=mt if mt.get("specialists") else None)
    LOGGER.info("done")


def pretrained(config: dict, tpl: dict, masks: list, n_in: int) -> Path:
    """The self-supervised pre-training checkpoint of ``config["ssl"]`` (trained now when missing or
    unfinished; shared by every config with the same ``ssl.run_dir``).

    Its pool: the real scans ``ssl.scans`` (any contrast; relative to ``bids_dir``, registered to the
    template once, cached in the config's cache) and the template synthesis with probability
    ``ssl.synthetic_fraction``. The scans must hold no patient that a cross-validation fold tests
    (:func:`training.mslesion.crossval.fold_config` checks).
    """
    from training.mslesion.ssl import pretrain

    cfg = config["ssl"]
    out_dir = ROOT / cfg["run_dir"]
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = [real_canvas(Path(config["bids_dir"]) / s, tpl, cache_dir(config)) for s in cfg["scans"]]
    sampler = Sampler(tpl, masks, pool, config["patch"], 0.0, config["seed"] + 1000, prior=config["prior"],
                      t1w=bool(config.get("t1w")), unlabelled=pool,
                      unlabelled_synthetic=cfg.get("synthetic_fraction", 0.3))
    LOGGER.info("self-supervised pre-training on %d real scans and template synthesis (%.0f %%)", len(pool),
                100 * cfg.get("synthetic_fraction", 0.3))
    return pretrain(config, sampler, n_in, out_dir / "pretrained.pt")


def initial_weights(config: dict) -> dict:
    """State dict of the generic net of the exported model ``config["init_from"]`` (a model folder,
    hash-checked, never unpickled), to fine-tune instead of starting from scratch: adapting a trained
    model to a site's unlabelled scans (``real_canvases``) takes minutes. The specialists are then
    initialised from the adapted generic net, as in the recipe (hierarchical specialisation).

    The model must have this config's input channels and architecture; otherwise the error says
    which differs.
    """
    folder = ROOT / config["init_from"]
    meta, generic, _, _ = load_ensemble(folder)
    wanted = {"input channels": (input_channels(config), meta["input"]["channels"]),
              "architecture": (architecture(len(input_channels(config)), config["channels"]), meta["architecture"])}
    for what, (ours, theirs) in wanted.items():
        if ours != theirs:
            raise SystemExit(f"init_from {folder}: its {what} ({theirs}) differ from this config's ({ours}); "
                             "start from a model trained with the same input channels and network, or drop init_from.")
    LOGGER.info("starting from the generic net of %s (sha256 %s)", folder, meta["sha256"][:12])
    return generic.state_dict()
