"""Dataset access with pybids: participants, sessions, each task's inputs and user-supplied labels.

User-supplied labels live in a ``derivatives/labels`` folder in the spine-generic naming:
``sub-<s>/[ses-<t>/]<datatype>/<source stem>_<label query>.nii.gz``, for example
``sub-01_T2w_label-disc_seg.nii.gz`` or ``sub-01_T2w_label-SC_desc-vertlevels_seg.nii.gz``.
A label drawn on another image of the same participant and session is used too (mapped through
world coordinates), so one set of disc labels serves every co-registered contrast.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bids_app.errors import ConfigError, DatasetError
from bids_app.tasks import Task

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputImage:
    """One image to process: absolute path, path relative to the dataset, and its BIDS entities."""

    path: Path
    relpath: str
    entities: dict

    @property
    def stem(self) -> str:
        return self.path.name.split(".")[0]


#: Name of the file, inside the pybids database folder, that records which dataset state it indexes.
FINGERPRINT_FILE = "neuroseg_fingerprint.json"


def dataset_fingerprint(bids_dir: Path) -> str:
    """sha256 over the relative path, size and mtime (ns) of every file pybids would index.

    ``derivatives/``, ``sourcedata/``, ``code/`` and dot-files are left out, as pybids leaves them
    out, so that writing derivatives inside the dataset does not invalidate the index. Walking a
    200-participant dataset takes well under a second; no file is read.
    """
    import hashlib

    digest = hashlib.sha256()
    skip_top = {"derivatives", "sourcedata", "code"}
    for folder, dirs, files in os.walk(bids_dir):
        rel = Path(folder).relative_to(bids_dir)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (rel == Path(".") and d in skip_top))
        for name in sorted(files):
            if name.startswith("."):
                continue
            try:
                stat = (Path(folder) / name).stat()
            except OSError:  # a dangling link: part of the state as "missing"
                digest.update(f"{rel / name}\0missing\n".encode())
                continue
            digest.update(f"{rel / name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def require_dataset(bids_dir: Path) -> None:
    """Refuse a folder without ``dataset_description.json`` (not a BIDS dataset, or not its root)."""
    if not (bids_dir / "dataset_description.json").is_file():
        raise DatasetError(f"{bids_dir} has no dataset_description.json: it is not a BIDS dataset. "
                           "Point bids_dir at the dataset root.")


def load_layout(bids_dir: Path, database_dir: Path | None = None):
    """Index ``bids_dir`` with pybids, reusing the index in ``database_dir`` only while it is valid.

    The database folder holds :data:`FINGERPRINT_FILE` with the :func:`dataset_fingerprint` and the
    dataset path it was built from; a database whose fingerprint or dataset differs (a participant
    added, a file replaced) is rebuilt, with an INFO line, so that a stale index never hides data.
    Derivatives are not indexed; labels are looked up separately. ``.bidsignore`` does not hide files from
    the index (``validate=False``), so the ``ct/`` folders of head CT (a datatype BIDS lacks) are indexed.
    """
    from bids import BIDSLayout, BIDSLayoutIndexer

    require_dataset(bids_dir)
    # pybids' default ignores (code/, sourcedata/, dot-files) apply; derivatives are not indexed.
    indexer = BIDSLayoutIndexer(validate=False)
    kwargs = {}
    stamp = {}
    if database_dir is not None:
        database_dir.mkdir(parents=True, exist_ok=True)
        stamp = {"dataset": str(bids_dir), "fingerprint": dataset_fingerprint(bids_dir)}
        stamp_file = database_dir / FINGERPRINT_FILE
        try:
            previous = json.loads(stamp_file.read_text())
        except (OSError, ValueError):
            previous = None
        reset = previous != stamp
        if reset and previous is not None:
            LOGGER.info("The dataset changed since the pybids index in %s was built; re-indexing.", database_dir)
        # Remove the stamp before re-indexing so that a run killed mid-index rebuilds next time.
        stamp_file.unlink(missing_ok=True) if reset else None
        kwargs.update(database_path=database_dir, reset_database=reset)
    try:
        layout = BIDSLayout(str(bids_dir), validate=False, indexer=indexer, **kwargs)
    except Exception as exc:  # pybids raises many types for broken datasets
        raise DatasetError(f"pybids could not index {bids_dir}: {exc}") from exc
    if stamp and not (database_dir / FINGERPRINT_FILE).is_file():
        from bids_app.outputs import write_json

        write_json(database_dir / FINGERPRINT_FILE, stamp)
    return layout


def participants(layout, requested: tuple[str, ...] = ()) -> list[str]:
    """Participant labels to process (without ``sub-``): all, or those requested, checked to exist."""
    available = sorted(layout.get_subjects())
    if not requested:
        if not available:
            raise DatasetError(f"No sub-* folders found in {layout.root}.")
        return available
    missing = sorted(set(requested) - set(available))
    if missing:
        raise DatasetError(f"Participant(s) {', '.join('sub-' + m for m in missing)} not found in {layout.root}; "
                           f"available: {', '.join(available) or 'none'}.")
    return list(requested)


def collect_inputs(layout, task: Task, subject: str, sessions: tuple[str, ...] = (),
                   filters: dict | None = None) -> list[InputImage]:
    """The images of ``task`` for one participant: the task's query merged with user ``filters``.

    A filter may itself name subjects or sessions (``{"spinalcord": {"subject": ["01", "02"]}}``: run
    that task on those participants only); the participant is then kept only if the filter lists it,
    and ``--session-label`` and a filter's sessions must both admit a session.
    """
    query = {**dict(task.inputs), **(filters or {})}
    wanted = query.pop("subject", None)
    if wanted is not None and subject not in ([wanted] if isinstance(wanted, str) else list(wanted)):
        return []
    if sessions:
        allowed = query.get("session")
        if allowed is not None and not isinstance(allowed, (str, list, tuple)):
            allowed = None  # a pybids Query (e.g. Query.NONE): --session-label wins
        admitted = [s for s in sessions if allowed is None or s in ([allowed] if isinstance(allowed, str) else allowed)]
        if not admitted:
            return []
        query["session"] = admitted
    folders = _unparsed_datatypes(layout, query)
    if folders:  # pybids cannot select these by datatype: select by the name of the file's folder instead
        query.pop("datatype")
    files = layout.get(subject=subject, return_type="object", **query)
    if folders:
        files = [f for f in files if Path(f.path).parent.name in folders]
    return [_input_image(layout, f) for f in sorted(files, key=lambda f: f.path)]


def _unparsed_datatypes(layout, query: dict) -> list[str]:
    """The datatypes a query asks for when one of them is a folder pybids' BIDS configuration does not parse
    (BIDS has no CT datatype, so ``ct/`` files are indexed without a ``datatype`` entity); ``[]`` otherwise.

    pybids indexes such files (the index is built with ``validate=False``; ``.bidsignore`` does not hide
    them from it), so they are found by their other entities and kept when their folder has the name.
    """
    wanted = query.get("datatype")
    if isinstance(wanted, str):
        wanted = [wanted]
    if not isinstance(wanted, (list, tuple)) or not wanted:
        return []  # absent, or a pybids Query
    entity = layout.get_entities(metadata=False).get("datatype")
    known = getattr(entity, "regex", None)
    if known is not None and all(known.search(f"/{name}/") for name in wanted):
        return []
    return [str(name) for name in wanted]


def _input_image(layout, f) -> InputImage:
    """A pybids file object as an :class:`InputImage` of ``layout`` (a file in a datatype folder pybids does
    not parse, such as ``ct/``, gets that folder's name as its ``datatype``)."""
    path = Path(f.path)
    entities = dict(f.get_entities())
    if "datatype" not in entities and not path.parent.name.startswith(("sub-", "ses-")):
        entities["datatype"] = path.parent.name
    return InputImage(path=path, relpath=str(path.relative_to(layout.root)), entities=entities)


def sidecar_metadata(image: Path, max_levels: int = 4) -> dict:
    """The JSON sidecar metadata of ``image`` by the BIDS inheritance principle, without pybids.

    Every ``*_<suffix>.json`` (or ``<suffix>.json``) whose entities are a subset of the image's, in the
    image's folder and up to the dataset root (the folder with ``dataset_description.json``, at most
    ``max_levels`` up), is read; the nearer file (and, in one folder, the one with more entities) wins.
    Unreadable JSON files are skipped.
    """
    image = Path(image)
    parts = image.name.split(".")[0].split("_")
    suffix, entities = parts[-1], set(parts[:-1])
    folders = [image.parent]
    while len(folders) <= max_levels and not (folders[-1] / "dataset_description.json").is_file() \
            and folders[-1].parent != folders[-1]:
        folders.append(folders[-1].parent)
    metadata: dict = {}
    for folder in reversed(folders):  # the dataset root first, the image's folder last
        found = []
        for side in folder.glob(f"*{suffix}.json"):
            names = side.name[: -len(".json")].split("_")
            if names[-1] == suffix and set(names[:-1]) <= entities:
                found.append((len(names), side))
        for _, side in sorted(found):
            try:
                content = json.loads(side.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(content, dict):
                metadata.update(content)
    return metadata


def find_companion(layout, image: InputImage, query: dict) -> InputImage | None:
    """Another image of ``image``'s participant and session matching ``query`` (e.g. the T1w beside a
    FLAIR), without a contrast agent (no ``ce-`` entity); the first in sorted order, or ``None``."""
    from bids.layout import Query

    entities = {"subject": image.entities["subject"],
                "session": image.entities.get("session", Query.NONE), "ceagent": Query.NONE}
    files = sorted(layout.get(return_type="object", **{**dict(query), **entities}), key=lambda f: f.path)
    files = [f for f in files if Path(f.path) != image.path]
    return _input_image(layout, files[0]) if files else None


def task_filters(bids_filters: dict, task_name: str) -> dict:
    """Filters for ``task_name`` from a ``--bids-filter-file``: its own key, else ``"all"``."""
    return dict(bids_filters.get(task_name, bids_filters.get("all", {})))


def find_label(labels_dir: Path | None, image: InputImage, query: str) -> Path | None:
    """A user-supplied label for ``image`` (same stem first, else another image of the same session)."""
    if labels_dir is None:
        return None
    folder = labels_dir / Path(image.relpath).parent
    exact = folder / f"{image.stem}_{query}.nii.gz"
    if exact.is_file():
        return exact
    # Labels of another image in the same folder (same participant and session), e.g. disc labels
    # drawn on the T2w serving the co-registered T1w; the first in sorted order, for reproducibility.
    others = sorted(folder.glob(f"*_{query}.nii.gz"))
    return others[0] if others else None


def find_manual_labels(labels_dir: Path | None, image: InputImage, pattern: str) -> list[Path]:
    """Manual labels drawn on ``image`` itself: ``<image stem>_<pattern>.nii.gz`` (glob), sorted.

    ``pattern`` may hold wildcards so that several raters are found, e.g. ``label-lesion*_seg``
    matches ``..._label-lesion_seg`` and ``..._label-lesion_desc-rater1_seg``.
    """
    if labels_dir is None:
        return []
    folder = labels_dir / Path(image.relpath).parent
    return sorted(folder.glob(f"{image.stem}_{pattern}.nii.gz"))


def read_filter_file(path: Path) -> dict:
    """Load a ``--bids-filter-file`` (JSON object of per-task pybids filters)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"Cannot read --bids-filter-file {path} ({exc}); it must be a JSON file, e.g. "
                          '{"spinalcord": {"suffix": ["T2w"]}}.') from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"--bids-filter-file {path} must map task names (or 'all') to pybids filters, "
                           'e.g. {"spinalcord": {"suffix": ["T2w"]}}.')
    return data


def validate_dataset(bids_dir: Path) -> dict[str, list[str]]:
    """Run the BIDS validator (``bids-validator-deno``) on ``bids_dir``.

    Errors that the validator locates in a file of a participant (``/sub-*/...``, e.g. an unreadable
    NIfTI header) do not condemn the dataset: they are returned as ``{relative path: [error codes]}``
    so that the caller skips (and reports) just those files. Any other error (no
    ``dataset_description.json``, a malformed top-level file, an error without a location) raises
    :class:`DatasetError`.
    """
    require_dataset(bids_dir)
    # The validator is installed beside the app's interpreter, which may not be on PATH.
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    exe = shutil.which("bids-validator-deno", path=search)
    if exe is None:
        LOGGER.warning("No BIDS validator found on PATH; skipping validation (install bids-validator-deno).")
        return {}
    result = subprocess.run([exe, str(bids_dir), "--json", "--ignoreWarnings"], capture_output=True, text=True)
    if result.returncode == 0:
        return {}
    try:
        issues = [i for i in json.loads(result.stdout)["issues"]["issues"] if i.get("severity") == "error"]
    except (ValueError, KeyError, TypeError):
        raise DatasetError(f"The BIDS validator could not check {bids_dir}: "
                           f"{result.stderr.strip()[-500:] or 'unknown error'}. Pass --skip-bids-validation "
                           "if you know the inputs are usable.") from None
    per_file: dict[str, list[str]] = {}
    dataset_level = set()
    for issue in issues:
        location = str(issue.get("location") or "").lstrip("/")
        if location.startswith("sub-") and "/" in location:
            per_file.setdefault(location, []).append(issue.get("code", "?"))
        else:
            dataset_level.add(f"{issue.get('code', '?')}{' (' + location + ')' if location else ''}")
    if dataset_level or (issues and not per_file):
        raise DatasetError(f"The BIDS validator found errors in {bids_dir}: {', '.join(sorted(dataset_level)) or 'unknown'}. "
                           "Fix them, or pass --skip-bids-validation if you know the inputs are usable.")
    for path, codes in sorted(per_file.items()):
        LOGGER.warning("BIDS validator: %s has errors (%s); it is skipped.", path, ", ".join(sorted(set(codes))))
    return {path: sorted(set(codes)) for path, codes in per_file.items()}
