"""The lesion networks on the real evaluation cases: the run's checkpoints or the exported model, the
generic net and the ensemble, scored on the native FLAIR grid (:mod:`training.mslesion.scoring`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from bids_app.imaging import templates
from bids_app.mslesion.predict import (
    build_net, input_channel, load_ensemble, predict_ensemble, predict_generic, subvolumes)
from training.common.paths import ROOT
from training.mslesion.channels import input_channels
from training.mslesion.scoring import case_in_template, native_rows
from training.mslesion.template import load_template

LOGGER = logging.getLogger("training.mslesion")


def load_nets(config: dict):
    run_dir = ROOT / config["run_dir"]
    tpl = load_template()
    c = len(input_channels(config))
    generic = build_net(c, config["channels"])
    generic.load_state_dict(torch.load(run_dir / "generic.pt", weights_only=True)["net"]); generic.eval()
    boxes = subvolumes(tpl["brain"], tuple(config["grid"]), config["overlap"])
    nets = []
    for i in range(len(boxes)):
        ck = run_dir / f"special-{i:02d}.pt"
        if ck.exists():
            n = build_net(c, config["channels"])
            n.load_state_dict(torch.load(ck, weights_only=True)["net"]); n.eval(); nets.append(n)
    return tpl, generic, nets, boxes


def load_exported(config: dict):
    """Like :func:`load_nets`, from the exported ``export_dir`` (hash-checked safetensors) instead of
    the run's checkpoints: what the app runs."""
    _, generic, nets, boxes = load_ensemble(ROOT / config["export_dir"])
    return load_template(), generic, nets, boxes


def evaluate(config: dict, cases: list[dict], exported: bool = False) -> list[dict]:
    """Dice and lesion-wise F1 on the native FLAIR grid of labelled real cases (2 CPU threads), of the
    run's checkpoints or (``exported``) of the exported model."""
    torch.set_num_threads(2)
    tpl, generic, nets, boxes = load_exported(config) if exported else load_nets(config)
    tpl_img = sitk.ReadImage(str(templates.get_template_file("T1w")))
    tpl_mask = sitk.ReadImage(str(templates.get_template_file("mask", desc="brain")))
    from training.mslesion.crossval import config_region

    region = config_region(config, tpl)
    rows = []
    for case in cases:
        flair, tsi, t1, seconds = case_in_template(case, config, tpl_img, tpl_mask)
        x = np.stack([input_channel(name, tsi.data, tpl["wm"], t1) for name in input_channels(config)])
        t0 = time.perf_counter()
        maps = {"generic": predict_generic(generic, x, tpl["brain"])}
        seconds["generic"] = round(time.perf_counter() - t0, 1)
        if len(nets) == len(boxes):
            t0 = time.perf_counter()
            maps["ensemble"] = predict_ensemble(nets, boxes, x, tpl["brain"])
            seconds["ensemble"] = round(time.perf_counter() - t0, 1)
        LOGGER.info("%s stage seconds (2 threads): %s", Path(case["flair"]).name, seconds)
        rows.append({"case": Path(case["flair"]).name, "seconds": seconds})
        for name, prob in maps.items():
            for row in native_rows(name, prob * region, case, flair, tsi, tpl_img, config["threshold"]):
                LOGGER.info("%s", row)
                rows.append(row)
    return rows
