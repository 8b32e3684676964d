"""The label-efficiency experiment (Spahr et al. 2023, reproduced on synthetic CT) and the shipped model.

Stages, each resumable (a finished piece is a file in ``run_dir`` and is not redone):

* ``pretrain``: one network per objective of ``config['pretrain']`` (``inpaint``, ``vicreg``: self-supervised
  on every training scan, labels unused; ``weak``: slice labels "contains a bleed" of every training scan)
  -> ``pretrain_<objective>.safetensors`` and ``pretrain_<objective>.json`` (loss curve, seconds).
* ``experiment``: for each budget ``n`` of ``config['experiment']['budgets']`` and each init (``scratch`` or
  a pre-training), fine-tune on the first ``n`` scans of a fixed shuffled order of the labelled training
  scans (nested: the 5 are inside the 10 ...), evaluate on the first ``eval_bleed`` test scans and
  ``eval_normal`` normal scans on the model grid -> ``ft_<init>_<n>.json``; ``table`` gathers them into
  ``experiment.json`` and ``experiment.png``.
* ``final``: fine-tune the shipped model on all labelled training scans from ``final['init']`` (``choose``:
  the init with the best mean Dice at the largest budget) -> ``final.safetensors``, ``final.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from training.common.paths import ROOT
from training.ich.data import Scan, load_collection

LOG = logging.getLogger("training.ich.experiment")


def _path(value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else ROOT / p


def train_cfg(config: dict, stage: dict) -> dict:
    """The flat settings :func:`training.ich.learn.train` reads: input, network and the stage's own."""
    return {**config["input"], **config["network"], **stage}


def collections(config: dict) -> dict[str, list[Scan]]:
    """``train`` (pixel labels kept; a stage decides what it uses), ``test`` and ``test_normal`` scans."""
    inp = config["input"]
    cache = _path(config["cache"])
    return {name: load_collection(_path(config["synthesis"][name]["out"]), cache / name, inp["spacing_mm"], inp["in_plane"])
            for name in ("train", "test", "test_normal")}


def labelled_order(scans: list[Scan], seed: int) -> list[Scan]:
    """The labelled training scans in the fixed random order the budgets take their first ``n`` from."""
    labelled = [s for s in scans if s.label is not None]
    order = np.random.default_rng(seed).permutation(len(labelled))
    return [labelled[i] for i in order]


def _save(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)


def _load(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def unlabelled(scans: list[Scan]) -> list[Scan]:
    """The scans with their pixel labels hidden (self-supervised objectives must not see them)."""
    return [Scan(s.stem, s.hu, None, s.inside, s.affine, s.weak) for s in scans]


def pretrain(config: dict, data: dict, only: list[str] | None = None) -> None:
    from training.ich import learn

    run = _path(config["run_dir"])
    run.mkdir(parents=True, exist_ok=True)
    for objective, stage in config["pretrain"].items():
        if only and objective not in only:
            continue
        out = run / f"pretrain_{objective}.safetensors"
        if out.is_file():
            continue
        # weak: slice labels only (the loss reads whether a slice holds a bleed, never where)
        scans = data["train"] if objective == "weak" else unlabelled(data["train"])
        start = time.perf_counter()
        state, curve = learn.train(objective, scans, train_cfg(config, stage), seed=config["experiment"]["seed"])
        _save(state, out)
        _write_json(run / f"pretrain_{objective}.json", {"objective": objective, "scans": len(scans),
                                                         "seconds": round(time.perf_counter() - start, 1),
                                                         "loss_curve": curve, **stage})


def _init_state(run: Path, init: str) -> dict | None:
    if init == "scratch":
        return None
    path = run / f"pretrain_{init}.safetensors"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run the pretrain stage first")
    return _load(path)


def finetune_and_evaluate(config: dict, data: dict, budgets: list[int] | None = None,
                          inits: list[str] | None = None) -> None:
    from training.ich import learn

    run = _path(config["run_dir"])
    exp = config["experiment"]
    order = labelled_order(data["train"], exp["seed"])
    test = data["test"][: exp["eval_bleed"]]
    normal = data["test_normal"][: exp["eval_normal"]]
    cfg = train_cfg(config, config["finetune"])
    for n in budgets or exp["budgets"]:
        for init in inits or exp["inits"]:
            out = run / f"ft_{init}_{n}.json"
            if out.is_file():
                continue
            start = time.perf_counter()
            state, curve = learn.train("supervised", order[:n], cfg, init=_init_state(run, init), seed=exp["seed"] + n)
            seconds = time.perf_counter() - start
            rows = learn.evaluate_grid(state, test, cfg, config["threshold"])
            normals = learn.evaluate_grid(state, normal, cfg, config["threshold"])
            summary = learn.summarise(rows, normals)
            LOG.info("%s @ %d labelled: %s", init, n, summary)
            _write_json(out, {"init": init, "labelled": n, "train_seconds": round(seconds, 1), "loss_curve": curve,
                              "summary": summary, "rows": rows, "normal_rows": normals,
                              "labelled_scans": [s.stem for s in order[:n]]})


def table(config: dict) -> dict:
    """``experiment.json`` (every finished fine-tune's summary) and ``experiment.png`` (Dice >= 5 mL and
    detection >= 1 mL against the label budget, one line per init)."""
    run = _path(config["run_dir"])
    exp = config["experiment"]
    cells = []
    for n in exp["budgets"]:
        for init in exp["inits"]:
            path = run / f"ft_{init}_{n}.json"
            if path.is_file():
                d = json.loads(path.read_text())
                cells.append({"init": init, "labelled": n, "train_seconds": d["train_seconds"], **d["summary"]})
    result = {"budgets": exp["budgets"], "inits": exp["inits"], "cells": cells,
              "eval": {"bleed_scans": exp["eval_bleed"], "normal_scans": exp["eval_normal"], "grid": "model grid"},
              "pretrain": {o: {k: v for k, v in json.loads((run / f"pretrain_{o}.json").read_text()).items()
                               if k != "loss_curve"}
                           for o in config["pretrain"] if (run / f"pretrain_{o}.json").is_file()}}
    _write_json(run / "experiment.json", result)
    _plot(result, run / "experiment.png")
    return result


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for init in result["inits"]:
        cells = sorted((c for c in result["cells"] if c["init"] == init), key=lambda c: c["labelled"])
        if not cells:
            continue
        x = [c["labelled"] for c in cells]
        axes[0].plot(x, [c["dice_ge5ml"] for c in cells], marker="o", label=init)
        axes[1].plot(x, [c["detection_ge1ml"] for c in cells], marker="o", label=init)
    for ax, title in zip(axes, ("Dice, bleeds >= 5 mL", "detection, bleeds >= 1 mL")):
        ax.set_xscale("log")
        ax.set_xticks(result["budgets"], [str(b) for b in result["budgets"]])
        ax.set_xlabel("pixel-labelled training scans")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chosen_init(config: dict) -> str:
    """``final['init']``, or (``choose``) the init with the best Dice >= 5 mL at the largest budget run."""
    init = config["final"]["init"]
    if init != "choose":
        return init
    result = table(config)
    top = max(c["labelled"] for c in result["cells"])
    best = max((c for c in result["cells"] if c["labelled"] == top), key=lambda c: c["dice_ge5ml"] or 0)
    return best["init"]


def final(config: dict, data: dict) -> Path:
    from training.ich import learn

    run = _path(config["run_dir"])
    out = run / "final.safetensors"
    if out.is_file():
        return out
    init = chosen_init(config)
    scans = [s for s in data["train"] if s.label is not None]
    start = time.perf_counter()
    state, curve = learn.train("supervised", scans, train_cfg(config, config["final"]), init=_init_state(run, init),
                               seed=config["experiment"]["seed"] + 1000)
    _save(state, out)
    _write_json(run / "final.json", {"init": init, "labelled": len(scans), "seconds": round(time.perf_counter() - start, 1),
                                     "loss_curve": curve, **config["final"]})
    return out
