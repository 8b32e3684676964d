"""The task registry: one entry per segmentation task drives the whole app.

An entry says which BIDS files the task reads (a pybids query, which ``--bids-filter-file`` refines),
which model folder it uses, which label its outputs carry, which workflow factory builds it, which
group-level table it feeds and what to cite. The CLI choices (``--tasks``), the input collection, the
output names and the group level all read this registry; nothing else lists tasks.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping


@dataclass(frozen=True)
class Task:
    """A segmentation task.

    ``inputs``: pybids query of the images to segment (one workflow per image);
    ``label``: BIDS ``label-`` entity of the outputs; ``model``: folder name under the models dir;
    ``group_table``: file name of the cohort table written at the group level; ``participant_table``:
    file-name glob of the per-image table each group row comes from (``{label}`` is replaced by
    ``label``); ``label_queries``: suffix patterns of user-supplied labels
    looked up under ``derivatives/labels`` (see :mod:`bids_app.bids`); ``companions``: other images of
    the same participant and session that the model may use beside the segmented one, by channel
    name, each a pybids query (e.g. the T1w beside a FLAIR); the first match in sorted order is used;
    ``bidsignore``: ``.bidsignore`` patterns of the task's files that BIDS does not define (a datatype
    folder such as ``ct``), which the derivatives' ``.bidsignore`` lists after the task ran and which the
    raw dataset must list too (the refusal of a file the validator does not know says so).

    The task's code is the package ``bids_app.<name>``, laid out the same way for every task: see
    :attr:`workflow`, :attr:`aggregate` and :attr:`qc`.
    """

    name: str
    description: str
    inputs: Mapping[str, object]
    label: str
    model: str
    group_table: str
    participant_table: str
    label_queries: Mapping[str, str] = field(default_factory=dict)
    companions: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    citation: str = ""
    bidsignore: tuple[str, ...] = ()

    @property
    def workflow(self) -> str:
        """Dotted path of the task's workflow factory, ``bids_app.<name>.workflow.init_<name>_wf``."""
        return f"bids_app.{self.name}.workflow.init_{self.name}_wf"

    @property
    def aggregate(self) -> str:
        """Dotted path of the group-level function ``(output_dir) -> [written paths]``."""
        return f"bids_app.{self.name}.group.aggregate"

    @property
    def qc(self) -> str:
        """Dotted path of the visual-QC module: ``render`` (the figures), ``section`` (of the participant
        report), ``summary`` (the group report's row) and ``OUTLIER_MEASURES``."""
        return f"bids_app.{self.name}.qc"


REGISTRY: Mapping[str, Task] = MappingProxyType({
    "spinalcord": Task(
        name="spinalcord",
        description="Contrast-agnostic soft spinal-cord segmentation and cross-sectional area (CSA).",
        inputs=MappingProxyType({"datatype": "anat", "suffix": ["T1w", "T2w", "T2starw", "MTS", "PDw"],
                                 "extension": [".nii", ".nii.gz"]}),
        label="SC",
        model="spinalcord",
        group_table="group_csa.tsv",
        participant_table="*_label-{label}_desc-*levels_morph.tsv",
        label_queries=MappingProxyType({"levels": "label-SC_desc-vertlevels_seg", "discs": "label-disc_seg",
                                        "manual": "label-SC_seg"}),
        citation=("Bédard S, Karthik EN, et al. Towards contrast-agnostic soft segmentation of the spinal cord. "
                  "Medical Image Analysis 2025. doi:10.1016/j.media.2025.103473"),
    ),
    "mslesion": Task(
        name="mslesion",
        description=("Multiple-sclerosis white-matter lesions on FLAIR (DeepLesionBrain-style ensemble), lesion "
                     "count, volume and regional load."),
        inputs=MappingProxyType({"datatype": "anat", "suffix": "FLAIR", "extension": [".nii", ".nii.gz"]}),
        label="lesion",
        model="mslesion",
        group_table="group_lesions.tsv",
        participant_table="*_label-{label}_desc-*summary_morph.tsv",
        label_queries=MappingProxyType({"manual": "label-lesion*_seg"}),
        # A plain (no contrast agent) T1w of the same session, co-registered to the FLAIR.
        companions=MappingProxyType({"T1w": MappingProxyType({"datatype": "anat", "suffix": "T1w",
                                                              "extension": [".nii", ".nii.gz"]})}),
        citation=("Kamraoui RA, Ta VT, Tourdias T, et al. DeepLesionBrain: Towards a broader deep-learning "
                  "generalization for multiple sclerosis lesion segmentation. Medical Image Analysis 2022;76:102312. "
                  "doi:10.1016/j.media.2021.102312"),
    ),
    "ich": Task(
        name="ich",
        description=("Intracranial haemorrhage in head CT (Hounsfield units): haemorrhage probability, mask, type "
                     "(IPH, SDH, EDH, SAH, IVH) and volumes."),
        # BIDS has no CT datatype: the convention is sub-*/[ses-*/]ct/*_ct.nii.gz in HU, with ct in .bidsignore.
        inputs=MappingProxyType({"datatype": "ct", "suffix": "ct", "extension": [".nii", ".nii.gz"]}),
        label="ICH",
        model="ich",
        group_table="group_ich.tsv",
        participant_table="*_label-{label}_desc-*volumes_morph.tsv",
        bidsignore=("ct",),
        citation=("Spahr A, Bozorgtabar B, Thiran JP. Label-efficient deep semantic segmentation of intracranial "
                  "hemorrhages in CT-scans. Frontiers in Neuroimaging 2023;2:1136181. doi:10.3389/fnimg.2023.1136181"),
    ),
})


def get_task(name: str) -> Task:
    """The registry entry for ``name`` (KeyError names the known tasks)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"Unknown task '{name}'; known tasks: {', '.join(REGISTRY)}") from None


def load_function(dotted: str) -> Callable:
    """The function named by a registry entry's dotted path (``package.module.function``).

    Task packages are imported only here, when a run needs them, so that the shared modules never
    import a task package at import time.
    """
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)
