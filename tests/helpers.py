"""Helpers shared by the end-to-end tests: run the app the way a user types it, check what it left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def app_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEUROSEG_")}
    env.update(NIPYPE_NO_ET="1", PYTHONPATH=str(ROOT), **extra)
    return env


def run_app(command: list[str], args: list[str], *, cwd: Path = ROOT, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``command + args`` as a subprocess (a hard timeout: a hang fails the test)."""
    return subprocess.run([*command, *map(str, args)], cwd=cwd, env=env or app_env(), capture_output=True,
                          text=True, timeout=timeout)


#: The documented ways to start the app.
ENTRY_POINTS = {
    "python run.py": [sys.executable, str(ROOT / "run.py")],
    "neuroseg": [str(BIN / "neuroseg")],
    "bids_app": [str(BIN / "bids_app")],
    "python -m bids_app": [sys.executable, "-m", "bids_app"],
}


def assert_no_partial_files(output_dir: Path) -> None:
    """No temporary left, every derivative has its sidecar and reads completely."""
    output_dir = Path(output_dir)
    leftovers = [p for p in output_dir.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left in output_dir: {leftovers}"
    for path in output_dir.glob("sub-*/**/*"):
        if path.name.endswith((".nii.gz", ".tsv")):
            stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.name[: -len(".tsv")]
            assert path.with_name(stem + ".json").is_file(), f"{path} has no sidecar"
            if path.name.endswith(".nii.gz"):
                nib.load(path).get_fdata()  # raises on a truncated file
            else:
                assert path.read_text().endswith("\n"), f"{path} is cut short"


def assert_clean_console(result: subprocess.CompletedProcess) -> None:
    """The user sees sentences, never a Python traceback."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
