"""Cost of the ``ich`` task per head CT on this machine (not a test): end to end as a user runs it, and
stage by stage through the app's own Nipype interfaces.

    python benchmarks/ich/timing.py CT.nii.gz [CT.nii.gz ...] [--threads 2] [--json out.json]

End to end: ``python run.py BIDS OUT participant --tasks ich --nprocs 2`` on a one-participant BIDS copy
of each CT (wall seconds, including Python start-up, pybids indexing and report writing). Stages (in this
process, one after the other): load + HU check + model grid (``PrepareCT``), network (``SegmentICH``),
back to the native grid (``ICHToNative``), threshold + types (``BinariseICH``), measures (``MeasureICH``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NIPYPE_NO_ET", "1")


def end_to_end(ct: Path, nprocs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        bids = Path(tmp) / "bids"
        (bids / "sub-01" / "ct").mkdir(parents=True)
        shutil.copyfile(ct, bids / "sub-01" / "ct" / "sub-01_ct.nii.gz")
        (bids / "dataset_description.json").write_text('{"Name": "bench", "BIDSVersion": "1.9.0"}\n')
        (bids / ".bidsignore").write_text("ct\n")
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "run.py"), str(bids), str(Path(tmp) / "out"), "participant",
                        "--tasks", "ich", "--nprocs", str(nprocs), "-w", str(Path(tmp) / "work")],
                       check=True, cwd=ROOT, capture_output=True)
        return time.perf_counter() - start


def stages(ct: Path, threads: int) -> dict:
    from bids_app.config import default_models_dir
    from bids_app.ich.interfaces import run_in_process

    with tempfile.TemporaryDirectory() as tmp:
        outputs, seconds = run_in_process(ct, default_models_dir() / "ich", Path(tmp), threads)
    row = {f"{name}_s": s for name, s in seconds.items()}
    row["summary"] = outputs["measure"].summary
    row["stages_total_s"] = sum(seconds.values())
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cts", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import nibabel as nib

    rows = []
    for ct in args.cts:
        ct = ct.resolve()
        img = nib.load(str(ct))
        row = {"image": ct.name, "shape": list(img.shape), "zooms_mm": [round(float(z), 3) for z in img.header.get_zooms()[:3]]}
        row.update(stages(ct, args.threads))
        row["end_to_end_s"] = end_to_end(ct, args.threads)
        rows.append(row)
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps({"cpu_threads": args.threads, "os_cpus": os.cpu_count(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
