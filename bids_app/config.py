"""The one run configuration: built once by the CLI, frozen, passed as plain values below, saved per run."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

#: Repository root when running from a source checkout or an editable install.
ROOT = Path(__file__).resolve().parents[1]


def get_version() -> str:
    """The app version: the repository's ``version`` file when present, else the installed metadata."""
    version_file = ROOT / "version"
    if version_file.is_file():
        return version_file.read_text().strip()
    return metadata.version("neuroseg")


def default_models_dir() -> Path:
    """``$NEUROSEG_MODELS_DIR`` if set, else ``models/`` beside the package (source tree, image)."""
    return Path(os.environ.get("NEUROSEG_MODELS_DIR", ROOT / "models")).resolve()


@dataclass(frozen=True)
class Config:
    """Everything a run depends on.

    Attributes
    ----------
    bids_dir, output_dir, work_dir : absolute paths of the raw dataset, the derivatives folder and
        Nipype's scratch folder.
    analysis_level : ``participant`` or ``group``.
    participant_label, session_label : labels without the ``sub-``/``ses-`` prefix (empty = all).
    tasks : task names from :data:`bids_app.tasks.REGISTRY`.
    bids_filters : per-task pybids filters merged into each task's input query (fMRIPrep's
        ``--bids-filter-file`` format: ``{"<task or 'all'>": {"suffix": "T2w", ...}}``).
    labels_dir : folder of user-supplied labels (``derivatives/labels`` layout).
    device : ``cpu`` or ``cuda`` (resolved from ``auto`` once, by the CLI).
    nprocs, omp_nthreads : Nipype processes and threads per process.
    nipype_plugin, nipype_plugin_args : Nipype execution plugin (``MultiProc``, ``Linear``, ``SLURM``, ...).
    models_dir : folder holding ``<task>/`` model folders.
    skip_bids_validation : do not run the BIDS validator.
    bids_database_dir : folder of the pybids index (default ``work_dir/pybids_db``); reused only while
        the dataset's fingerprint is unchanged (:func:`bids_app.bids.load_layout`).
    overwrite : reprocess images whose outputs are already complete and current.
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ("spinalcord",)
    bids_filters: dict = field(default_factory=dict)
    labels_dir: Path | None = None
    device: str = "cpu"
    nprocs: int = 1
    omp_nthreads: int = 1
    nipype_plugin: str = "MultiProc"
    nipype_plugin_args: dict = field(default_factory=dict)
    models_dir: Path = field(default_factory=default_models_dir)
    skip_bids_validation: bool = False
    bids_database_dir: Path | None = None
    overwrite: bool = False
    verbosity: int = 0
    version: str = field(default_factory=get_version)
    run_id: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])

    def to_json(self) -> str:
        """JSON text of the config (paths as strings)."""
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()},
                          indent=2, default=str)

    def save(self) -> Path:
        """Write the config to ``<output_dir>/logs/config-<run_id>.json``; returns the path."""
        path = self.output_dir / "logs" / f"config-{self.run_id}.json"
        from bids_app.outputs import atomic_write_bytes

        atomic_write_bytes(path, (self.to_json() + "\n").encode())
        return path
