"""The one BIDS-Derivatives writer: every output file and its JSON sidecar go through here.

Naming scheme
-------------
Outputs keep the source image's entities (``sub``, ``ses``, ``acq``, ``ce``, ``rec``, ``run``, ...),
add the task's ``label-<L>``, and carry the source suffix in ``desc`` so that the contrasts of one
participant and session stay apart (BIDS: ``desc`` distinguishes files no other entity does)::

    sub-01/ses-A/anat/sub-01_ses-A_acq-MToff_label-SC_desc-PDw_probseg.nii.gz   soft segmentation 0..1
    sub-01/ses-A/anat/sub-01_ses-A_acq-MToff_label-SC_desc-PDw_mask.nii.gz      binary mask
    sub-01/ses-A/anat/sub-01_ses-A_acq-MToff_label-SC_desc-PDwslices_morph.tsv  CSA per slice
    sub-01/ses-A/anat/sub-01_ses-A_acq-MToff_label-SC_desc-PDwlevels_morph.tsv  CSA per level

Every file gets a sidecar with ``Sources`` (BIDS URIs ``bids:raw:<path>``, the dataset link ``raw``
being declared in ``dataset_description.json``), the model's name, version and sha256, and the app
version. Files are written to a temporary name in the same folder and renamed, so a reader never sees
a half-written file; a temporary left by a killed run (hidden, named after its host and process) is
removed by the next run (:func:`remove_stale_temporaries`).

Resuming
--------
Every sidecar also records ``SourceDigests`` (sha256 of every file the result depends on: the image,
its companions, user labels). An image's outputs are *current* when every expected file and sidecar
exists and the sidecars name the same digests, model sha256 and app version
(:func:`outputs_current`); a rerun skips those images.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger(__name__)

#: Suffix of the QC figures (PNG, in each participant's ``figures/`` folder, listed in ``.bidsignore``).
FIGURE_SUFFIX = "qc"

#: BIDS entity order (schema order) of the entities a derivative name may carry.
ENTITY_ORDER = ("subject", "session", "task", "acquisition", "ceagent", "tracer", "reconstruction",
                "direction", "run", "echo", "flip", "inv", "mt", "part", "space", "label", "desc")
ENTITY_KEYS = {"subject": "sub", "session": "ses", "task": "task", "acquisition": "acq", "ceagent": "ce",
               "tracer": "trc", "reconstruction": "rec", "direction": "dir", "run": "run", "echo": "echo",
               "flip": "flip", "inv": "inv", "mt": "mt", "part": "part", "space": "space",
               "label": "label", "desc": "desc"}


def derivative_relpath(source_entities: dict, label: str, suffix: str, extension: str,
                       desc_extra: str = "") -> Path:
    """Relative path of a derivative of the source image described by ``source_entities`` (pybids)."""
    entities = {k: v for k, v in source_entities.items() if k in ENTITY_KEYS and k not in ("label", "desc", "space")}
    entities["label"] = label
    entities["desc"] = f"{source_entities['suffix']}{desc_extra}"
    name = "_".join(f"{ENTITY_KEYS[k]}-{entities[k]}" for k in ENTITY_ORDER if entities.get(k) not in (None, ""))
    folder = Path(f"sub-{entities['subject']}")
    if entities.get("session"):
        folder /= f"ses-{entities['session']}"
    return folder / source_entities.get("datatype", "anat") / f"{name}_{suffix}{extension}"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: mkstemp creates files readable by their owner only; outputs get the usual permissions instead
#: (0666 less the umask), so that a lab's group can read what one member computed.
_FILE_MODE = 0o666 & ~_current_umask()


def _temp_prefix(name: str) -> str:
    # Host and pid in the name let the next run tell a dead writer's leftovers from a live one's
    # (several SLURM jobs may share one output_dir).
    return f".{name}.neuroseg-{socket.gethostname()}-{os.getpid()}-"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(output_dir: Path, max_age_s: float = 3600.0) -> int:
    """Delete temporaries of :func:`atomic_write_bytes` whose writer is gone; returns how many.

    A temporary of this host is stale when its process no longer exists; one of another host when
    it is older than ``max_age_s`` (writing one output never takes that long).
    """
    host = socket.gethostname()
    removed = 0
    for tmp in Path(output_dir).rglob(".*.neuroseg-*.tmp"):
        try:
            writer_host, pid = tmp.name.rsplit(".neuroseg-", 1)[1].rsplit("-", 2)[:2]
            if writer_host == host:
                stale = not Path(f"/proc/{int(pid)}").exists()
            else:
                stale = time.time() - tmp.stat().st_mtime > max_age_s
            if stale:
                tmp.unlink()
                removed += 1
        except (ValueError, OSError):
            continue
    if removed:
        LOGGER.info("Removed %d temporary file(s) left by an interrupted run in %s.", removed, output_dir)
    return removed


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy a file produced in the work dir into the derivatives atomically."""
    atomic_write_bytes(dst, Path(src).read_bytes())


def write_json(path: Path, content: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(content, indent=2, default=str) + "\n").encode())


def sidecar(source_relpath: str, model: dict[str, str] | None, version: str, *, other_sources: Sequence[str] = (),
            **extra: Any) -> dict[str, Any]:
    """The JSON sidecar content shared by every output.

    ``Sources`` lists the segmented image first, then ``other_sources`` (raw-dataset paths of other
    images that went into the result, e.g. the session's T1w co-registered to the FLAIR).
    """
    content: dict[str, Any] = {"Sources": [f"bids:raw:{p}" for p in (source_relpath, *other_sources)]}
    if model:
        content["Model"] = model
    content["GeneratedBy"] = {"Name": "neuroseg", "Version": version}
    content.update(extra)
    return content


def write_output(output_dir: Path, in_file: Path, relpath: Path, sidecar_content: dict[str, Any],
                 companions: Sequence[tuple[Path, Path]] = ()) -> Path:
    """Copy ``in_file`` to ``output_dir/relpath`` and write its sidecar next to it; returns the path.

    ``companions``: ``(file, relpath)`` of files that share the sidecar (a ``dseg.nii.gz``'s ``dseg.tsv``
    lookup table), copied after ``in_file`` and before the sidecar."""
    dst, side = (output_dir / p for p in expected_files(relpath))
    # The image first, its sidecar last: a sidecar (with its digests) vouches for a complete file.
    atomic_copy(in_file, dst)
    for companion, companion_relpath in companions:
        atomic_copy(companion, output_dir / companion_relpath)
    write_json(side, sidecar_content)
    LOGGER.debug("wrote %s", dst)
    return dst


def expected_files(relpath: Path) -> tuple[Path, Path]:
    """``(output, sidecar)`` relative paths of one derivative."""
    name = relpath.name
    for ext in (".nii.gz", ".nii", ".tsv", ".png"):
        if name.endswith(ext):
            return relpath, relpath.with_name(name[: -len(ext)] + ".json")
    return relpath, relpath.with_name(name + ".json")


def outputs_current(output_dir: Path, relpaths: Sequence[Path], digests: dict[str, str], model_sha256: str | None,
                    version: str) -> bool:
    """Whether every derivative in ``relpaths`` exists with a sidecar naming the same
    ``SourceDigests``, model sha256 and app version (then a rerun may skip the image)."""
    if not relpaths:
        return False
    for relpath in relpaths:
        output, side = (output_dir / p for p in expected_files(relpath))
        if not output.is_file():
            return False
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            return False
        if (meta.get("SourceDigests") != digests or meta.get("GeneratedBy", {}).get("Version") != version
                or (meta.get("Model") or {}).get("SHA256") != model_sha256):
            return False
    return True


#: What every derivatives folder's ``.bidsignore`` lists (see :func:`write_dataset_description`).
BIDSIGNORE = ("logs/", "group_*", "*_morph.tsv", "*_morph.json", "figures", "sub-*.html")


def write_dataset_description(output_dir: Path, bids_dir: Path, version: str, labels: dict[str, str],
                              ignore: Sequence[str] = ()) -> None:
    """``dataset_description.json``, ``.bidsignore``, a ``dseg.tsv``-style label table and the README.

    ``.bidsignore`` holds :data:`BIDSIGNORE`, ``ignore`` (the run's tasks' files BIDS does not define, e.g.
    the ``ct`` folders) and every line an earlier run wrote there, so a run of another task keeps them."""
    container = {}
    if os.environ.get("NEUROSEG_CONTAINER"):
        container = {"Container": {"Type": os.environ["NEUROSEG_CONTAINER"],
                                   "Tag": f"neuroseg:{version}"}}
    description = {
        "Name": "neuroseg derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "neuroseg", "Version": version, **container}],
        "DatasetLinks": {"raw": str(bids_dir)},
    }
    write_json(output_dir / "dataset_description.json", description)
    # The tables, logs and QC reports (sub-<label>.html, figures/) are not (yet) BIDS-defined files. "figures" without a trailing slash: the
    # validator (3.0.2) still flags the folder itself with "figures/".
    try:
        earlier = (output_dir / ".bidsignore").read_text().split()
    except OSError:
        earlier = []
    lines = dict.fromkeys([*BIDSIGNORE, *ignore, *earlier])
    atomic_write_bytes(output_dir / ".bidsignore", ("\n".join(lines) + "\n").encode())
    readme = ("# neuroseg derivatives\n\nMade by neuroseg " + version + " from the dataset in DatasetLinks.raw. "
              "Soft segmentations (_probseg), masks (_mask) and morphometry tables (_morph.tsv) per source image; "
              "group_* tables and figures/ from the group level; logs/ holds each run's configuration.\n")
    atomic_write_bytes(output_dir / "README.md", readme.encode())
    rows = ["index\tname\tabbreviation"] + [f"{i}\t{name}\t{abbr}" for i, (abbr, name) in
                                            enumerate(sorted(labels.items()), start=1)]
    atomic_write_bytes(output_dir / "desc-labels_dseg.tsv", ("\n".join(rows) + "\n").encode())
    write_json(output_dir / "desc-labels_dseg.json",
               {"Description": "Labels used by neuroseg's segmentations (index, name, abbreviation = label entity)."})
