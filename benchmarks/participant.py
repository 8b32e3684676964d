"""Participant-level cost per image on this machine, stage by stage (not a test).

Runs the app's own Nipype interfaces in-process, one fresh Python process per image so that peak
memory is per image, and prints a table of seconds per stage (load, preprocess, inference, measure,
write) and the peak resident memory after each stage.

    python benchmarks/participant.py [--task spinalcord|mslesion] [--bids-dir DIR] [--device cpu] [--threads 2]
                                     [--json out.json]

For ``mslesion`` the preprocessing is split into N4, registration and resampling.

Without ``--bids-dir`` it uses ``../shared/data/bids-dev`` when present, else a synthetic dataset.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NIPYPE_NO_ET", "1")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_image(args: tuple[str, str, dict, str, int]) -> dict:
    """Time every stage of one image (runs in a fresh process)."""
    path, relpath, entities, device, threads = args
    import nibabel as nib
    import numpy as np

    from bids_app.config import default_models_dir, get_version
    from bids_app.interfaces import DerivativesSink, Reorient
    from bids_app.models import model_reference
    from bids_app.spinalcord.interfaces import Binarise, MeasureCSA, Segment, ToNative

    model_dir = default_models_dir() / "spinalcord"
    row: dict = {"image": Path(path).name}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        t0 = time.perf_counter()
        np.asarray(nib.load(path).dataobj)
        row["load_s"], row["load_peak_mb"] = time.perf_counter() - t0, _peak_mb()

        t0 = time.perf_counter()
        ras = Reorient(in_file=path).run().outputs.out_file
        row["preprocess_s"], row["preprocess_peak_mb"] = time.perf_counter() - t0, _peak_mb()

        t0 = time.perf_counter()
        soft = Segment(in_file=ras, model_dir=str(model_dir), device=device, num_threads=threads).run().outputs.out_file
        row["inference_s"], row["inference_peak_mb"] = time.perf_counter() - t0, _peak_mb()

        t0 = time.perf_counter()
        binarised = Binarise(in_file=soft, model_dir=str(model_dir)).run().outputs
        measured = MeasureCSA(soft_file=soft, mask_file=binarised.out_file).run().outputs
        row["measure_s"], row["measure_peak_mb"] = time.perf_counter() - t0, _peak_mb()

        t0 = time.perf_counter()
        common = dict(output_dir=str(Path(tmp) / "out"), source_relpath=relpath, source_entities=entities,
                      label="SC", model=model_reference(model_dir), version=get_version())
        for suffix, produced in (("probseg", soft), ("mask", binarised.out_file)):
            native = ToNative(in_file=produced, reference=path).run().outputs.out_file
            DerivativesSink(in_file=native, suffix=suffix, **common).run()
        for extra, table in (("slices", measured.slices_tsv), ("levels", measured.levels_tsv)):
            DerivativesSink(in_file=table, suffix="morph", desc_extra=extra, **common).run()
        row["write_s"], row["write_peak_mb"] = time.perf_counter() - t0, _peak_mb()
        os.chdir(ROOT)
    row["total_s"] = sum(row[f"{s}_s"] for s in ("load", "preprocess", "inference", "measure", "write"))
    return row


def bench_lesion_image(args: tuple[str, str, dict, str, int, str | None]) -> dict:
    """Time every stage of the ``mslesion`` workflow on one FLAIR (runs in a fresh process).

    ``t1w``: the session's T1w; its N4, co-registration and resampling are the ``t1w`` stage, run
    only when the model has a T1w channel (as in the workflow)."""
    path, relpath, entities, device, threads, t1w = args
    import nibabel as nib
    import numpy as np

    from bids_app.config import default_models_dir, get_version
    from bids_app.interfaces import DerivativesSink
    from bids_app.models import model_reference, read_metadata
    from bids_app.mslesion import interfaces as nodes

    model_dir = default_models_dir() / "mslesion"
    if "T1w" not in read_metadata(model_dir)["input"]["channels"]:
        t1w = None
    row: dict = {"image": Path(path).name}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        t0 = time.perf_counter()
        np.asarray(nib.load(path).dataobj)
        row["load_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        tpl = nodes.ToTemplate(in_file=path, num_threads=threads).run().outputs
        row["preprocess_s"] = time.perf_counter() - t0
        row.update({f"{k}_s": v for k, v in tpl.seconds.items()})  # n4, registration, resampling

        t0 = time.perf_counter()
        extra = {}
        if t1w:
            extra["t1w_file"] = nodes.CompanionToTemplate(in_file=t1w, reference=path, transform_file=tpl.transform_file,
                                                    num_threads=threads).run().outputs.out_file
        row["t1w_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        prob = nodes.SegmentLesions(in_file=tpl.out_file, model_dir=str(model_dir), device=device,
                              num_threads=threads, **extra).run().outputs.out_file
        row["inference_s"] = time.perf_counter() - t0
        row["inference_peak_mb"] = _peak_mb()

        t0 = time.perf_counter()
        native = nodes.FromTemplate(in_file=prob, transform_file=tpl.transform_file, reference=path).run().outputs.out_file
        binarised = nodes.BinariseLesions(in_file=native, model_dir=str(model_dir)).run().outputs
        measured = nodes.MeasureLesions(mask_file=binarised.out_file, transform_file=tpl.transform_file,
                                  min_lesion_mm3=binarised.min_lesion_mm3).run().outputs
        row["measure_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        common = dict(output_dir=str(Path(tmp) / "out"), source_relpath=relpath, source_entities=entities,
                      label="lesion", model=model_reference(model_dir), version=get_version())
        DerivativesSink(in_file=native, suffix="probseg", **common).run()
        DerivativesSink(in_file=binarised.out_file, suffix="mask", **common).run()
        for extra, table in (("lesions", measured.lesions_tsv), ("summary", measured.summary_tsv)):
            DerivativesSink(in_file=table, suffix="morph", desc_extra=extra, **common).run()
        row["write_s"] = time.perf_counter() - t0
        row["write_peak_mb"] = _peak_mb()
        os.chdir(ROOT)
    row["total_s"] = sum(row[f"{s}_s"] for s in ("load", "preprocess", "t1w", "inference", "measure", "write"))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bids-dir", type=Path)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--task", default="spinalcord", choices=["spinalcord", "mslesion"])
    args = parser.parse_args()

    from bids_app import bids
    from bids_app.tasks import get_task

    bids_dir = args.bids_dir
    if bids_dir is None:
        shared = ROOT.parent / "shared" / "data" / "bids-dev"
        if shared.is_dir():
            bids_dir = shared
        else:
            from bids_app.synthetic import make_dataset, make_lesion_dataset

            make = make_lesion_dataset if args.task == "mslesion" else make_dataset
            bids_dir = make(Path(tempfile.mkdtemp()) / "ds")
    layout = bids.load_layout(bids_dir)
    task = get_task(args.task)
    def companion(image):
        found = bids.find_companion(layout, image, task.companions["T1w"]) if "T1w" in task.companions else None
        return str(found.path) if found else None

    images = [i for subject in bids.participants(layout) for i in bids.collect_inputs(layout, task, subject)]
    jobs = [(str(i.path), i.relpath, i.entities, args.device, args.threads)
            + ((companion(i),) if args.task == "mslesion" else ()) for i in images]
    context = mp.get_context("spawn")
    rows = []
    bench = bench_lesion_image if args.task == "mslesion" else bench_image
    for job in jobs:
        with context.Pool(1) as pool:
            rows.append(pool.map(bench, [job])[0])
    stages = ("load", "preprocess", "inference", "measure", "write")
    if args.task == "mslesion":
        stages = ("load", "n4", "registration", "resampling", "t1w", "inference", "measure", "write")
    header = f"{'image':40s} " + " ".join(f"{s:>10s}" for s in stages) + f" {'total':>8s} {'peak MB':>8s}"
    print(f"neuroseg participant level, task {args.task}, {args.device}, {args.threads} threads, dataset {bids_dir}")
    print(header)
    for row in rows:
        print(f"{row['image'][:40]:40s} " + " ".join(f"{row[s + '_s']:10.2f}" for s in stages)
              + f" {row['total_s']:8.2f} {row['write_peak_mb']:8.0f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
