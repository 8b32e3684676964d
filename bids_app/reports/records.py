"""What the reports know about one segmented image: found from the derivatives alone (no raw data read).

Each task's per-image table (the registry's ``participant_table``) marks one segmented image; every
other output of that image shares its name up to the ``desc`` entity, e.g. for
``sub-01/anat/sub-01_label-SC_desc-T2wlevels_morph.tsv`` the prefix is ``sub-01_label-SC_desc-T2w``
and the QC figures are ``sub-01/figures/sub-01_label-SC_desc-T2w<view>_qc.png``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from bids_app.tasks import REGISTRY, get_task

_ENTITY = re.compile(r"(sub|ses|desc)-([a-zA-Z0-9]+)")


@dataclass(frozen=True)
class ImageRecord:
    """One segmented image of one task.

    ``folder``: the datatype folder of its derivatives, relative to ``output_dir`` (``sub-01/anat``);
    ``prefix``: the file-name part shared by its outputs (``sub-01_label-SC_desc-T2w``); ``contrast``:
    the source suffix (``T2w``); ``sidecar``: the JSON sidecar of its per-image table (Sources, Model,
    GeneratedBy, summary values).
    """

    output_dir: Path
    task: str
    participant: str
    session: str | None
    contrast: str
    folder: Path
    prefix: str
    table: Path
    sidecar: dict = field(hash=False, compare=False)

    @property
    def key(self) -> str:
        """A stable identifier: the prefix (unique per image and task)."""
        return self.prefix

    @property
    def source(self) -> str:
        """Dataset-relative path of the segmented image (from ``Sources``)."""
        sources = self.sidecar.get("Sources") or ["n/a"]
        return sources[0].removeprefix("bids:raw:")

    @property
    def other_sources(self) -> list[str]:
        return [s.removeprefix("bids:raw:") for s in (self.sidecar.get("Sources") or [])[1:]]

    def output(self, desc_extra: str, suffix: str, extension: str) -> Path:
        """Relative path of one of the image's derivatives (``output("levels", "morph", ".tsv")``)."""
        return self.folder / f"{self.prefix}{desc_extra}_{suffix}{extension}"

    def figure(self, view: str) -> Path:
        """Relative path of a QC figure (``sub-01[/ses-A]/figures/<prefix><view>_qc.png``)."""
        return self.folder.parent / "figures" / f"{self.prefix}{view}_qc.png"

    def exists(self, relpath: Path) -> bool:
        return (self.output_dir / relpath).is_file()


def image_records(output_dir: Path, participant: str | None = None, tasks: tuple[str, ...] | None = None) -> list[ImageRecord]:
    """Every segmented image under ``output_dir`` (of ``participant`` ``sub-<label>`` if given), sorted
    by participant, session, task and file name."""
    records = []
    for name in tasks or tuple(REGISTRY):
        task = get_task(name)
        pattern = task.participant_table.format(label=task.label)
        own = pattern.split("desc-*", 1)[1].split("_", 1)[0]  # e.g. "levels"
        root = output_dir / participant if participant else output_dir
        for table in sorted(root.glob(("**/" if participant else "sub-*/**/") + pattern)):
            entities = dict(_ENTITY.findall(table.name))
            desc = entities["desc"][: -len(own)]
            prefix = table.name.split(f"desc-{entities['desc']}")[0] + f"desc-{desc}"
            side = table.with_suffix(".json")
            sidecar = json.loads(side.read_text()) if side.is_file() else {}
            records.append(ImageRecord(output_dir=output_dir, task=name, participant=f"sub-{entities['sub']}",
                                       session=f"ses-{entities['ses']}" if "ses" in entities else None,
                                       contrast=desc, folder=table.parent.relative_to(output_dir), prefix=prefix,
                                       table=table.relative_to(output_dir), sidecar=sidecar))
    return sorted(records, key=lambda r: (r.participant, r.session or "", r.task, r.prefix))


def participants_with_outputs(output_dir: Path) -> list[str]:
    """``sub-<label>`` of every participant with at least one segmented image."""
    return sorted({r.participant for r in image_records(output_dir)})
