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
a half-written file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger(__name__)

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def write_output(output_dir: Path, in_file: Path, relpath: Path, sidecar_content: dict[str, Any]) -> Path:
    """Copy ``in_file`` to ``output_dir/relpath`` and write its sidecar next to it; returns the path."""
    dst = output_dir / relpath
    atomic_copy(in_file, dst)
    name = dst.name
    for ext in (".nii.gz", ".nii", ".tsv"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    write_json(dst.with_name(name + ".json"), sidecar_content)
    LOGGER.debug("wrote %s", dst)
    return dst


def write_dataset_description(output_dir: Path, bids_dir: Path, version: str, labels: dict[str, str]) -> None:
    """``dataset_description.json``, ``.bidsignore``, a ``dseg.tsv``-style label table and the README."""
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
    # The tables and logs are not (yet) BIDS-defined files. "figures" without a trailing slash: the
    # validator (3.0.2) still flags the folder itself with "figures/".
    atomic_write_bytes(output_dir / ".bidsignore", b"logs/\ngroup_*\n*_morph.tsv\n*_morph.json\nfigures\n")
    readme = ("# neuroseg derivatives\n\nMade by neuroseg " + version + " from the dataset in DatasetLinks.raw. "
              "Soft segmentations (_probseg), masks (_mask) and morphometry tables (_morph.tsv) per source image; "
              "group_* tables and figures/ from the group level; logs/ holds each run's configuration.\n")
    atomic_write_bytes(output_dir / "README.md", readme.encode())
    rows = ["index\tname\tabbreviation"] + [f"{i}\t{name}\t{abbr}" for i, (abbr, name) in
                                            enumerate(sorted(labels.items()), start=1)]
    atomic_write_bytes(output_dir / "desc-labels_dseg.tsv", ("\n".join(rows) + "\n").encode())
    write_json(output_dir / "desc-labels_dseg.json",
               {"Description": "Labels used by neuroseg's segmentations (index, name, abbreviation = label entity)."})
