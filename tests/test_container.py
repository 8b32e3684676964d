"""The container image (issue 17): the demo in the image, read-only, no network, an arbitrary user,
gives the host's outputs (``benchmarks/container.py``); the Apptainer definition matches the image.

The image tests are slow and skip without podman (or ``$CONTAINER``) or without the image
(``make image``; ``$NEUROSEG_IMAGE`` names another). On hosts where ``podman run`` needs settings
(rlimits, runtime), export ``CONTAINERS_CONF`` first (containers/README.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = os.environ.get("CONTAINER", "podman")
IMAGE = os.environ.get("NEUROSEG_IMAGE", "neuroseg:" + (ROOT / "version").read_text().strip())


def _bench():
    spec = importlib.util.spec_from_file_location("container_bench", ROOT / "benchmarks" / "container.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image_present() -> bool:
    if shutil.which(ENGINE) is None:
        return False
    try:
        return subprocess.run([ENGINE, "image", "inspect", IMAGE], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_image = pytest.mark.skipif(not _image_present(), reason=f"{ENGINE} or the image {IMAGE} is absent (make image)")


def test_definition_repeats_the_images_environment():
    """containers/neuroseg.def's %environment sets what the Dockerfile's ENV sets (same values)."""
    env = dict(re.findall(r"export (\w+)=(\S+)", _bench().def_sections()["environment"]))
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in ("NEUROSEG_MODELS_DIR", "TEMPLATEFLOW_HOME", "TEMPLATEFLOW_AUTOUPDATE", "NIPYPE_NO_ET"):
        assert re.search(rf"\b{name}={re.escape(env[name])}\b", dockerfile), name
    assert env["NEUROSEG_CONTAINER"] == "apptainer"
    assert "exec neuroseg" in _bench().def_sections()["runscript"]


@pytest.mark.slow
@needs_image
def test_image_runs_read_only_without_network_as_any_user():
    cmd = [ENGINE, "run", "--rm", "--read-only", "--network", "none", "--user", "54321:54321", IMAGE, "--version"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "neuroseg " + (ROOT / "version").read_text().strip()


@pytest.mark.slow
@needs_image
def test_demo_outputs_in_the_image_are_the_hosts(tmp_path):
    result = tmp_path / "container.json"
    code = _bench().main(["--image", IMAGE, "--engine", ENGINE, "--json", str(result), "--no-host-repeat"])
    report = json.loads(result.read_text())
    assert report["image_matches_tree"], \
        f"{IMAGE} was built from another tree (make image): {report['tree_files_not_in_image']}"
    for name, comparison in report["comparisons"].items():
        assert comparison["identical"], f"{name}: {json.dumps(comparison, indent=1)}"
        assert comparison["sha256_identical"] > 0
        assert set(comparison["json_ignored_differences"]) <= {"dataset_description.json"}
    assert code == 0
