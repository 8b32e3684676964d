"""Top-level workflows: the app (all participants) and one participant (all tasks, all images).

Building the workflow is also where a run decides, image by image, what to do: an image whose
header is unusable, or that the BIDS validator flagged, becomes a :class:`~bids_app.failures.Failure`
(the others go on); an image whose outputs are complete and current is skipped (unless
``--overwrite``); every other image gets its task workflow, recorded as a :class:`Job` so that a
crashed node can be traced back to its participant, session and image.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from nipype.pipeline import engine as pe

from bids_app import bids, outputs
from bids_app.config import Config
from bids_app.errors import DatasetError
from bids_app.failures import Failure, Job
from bids_app.inputs import InputImageError, check_header
from bids_app.interfaces import DerivativesSink, Figures, pick
from bids_app.models import model_reference, sha256_of
from bids_app.tasks import get_task, load_function

LOGGER = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a participant-level run will do.

    ``workflow`` is ``None`` when no image needs processing; ``jobs`` maps the hierarchical name of
    each image workflow (``single_subject_<s>_wf.<task>_<stem>_wf``) to its :class:`Job`;
    ``failures`` are the images refused before running; ``skipped`` the images already done.
    """

    workflow: pe.Workflow | None
    jobs: dict[str, Job] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def init_bids_app_wf(config: Config, layout, invalid: dict[str, list[str]] | None = None) -> Plan:
    """One sub-workflow per participant with work to do.

    ``invalid`` maps dataset-relative paths to the validator's error codes (those images fail
    without running). Raises :class:`DatasetError` when the query finds no image at all.
    """
    workflow = pe.Workflow(name=f"neuroseg_{config.version.replace('.', '_')}_wf")
    workflow.base_dir = str(config.work_dir)
    plan = Plan(workflow=workflow)
    found = 0
    for subject in bids.participants(layout, config.participant_label):
        single_subject_wf, n_images = init_single_subject_wf(config, layout, subject, plan, invalid or {})
        found += n_images
        if single_subject_wf is not None:
            workflow.add_nodes([single_subject_wf])
    if not found:
        queries = "; ".join(f"{t}: {dict(get_task(t).inputs)}" for t in config.tasks)
        raise DatasetError(f"No input images found in {config.bids_dir} for tasks {', '.join(config.tasks)} "
                           f"(queries {queries}; filters {config.bids_filters or 'none'}). "
                           "Check --participant-label, --session-label and --bids-filter-file.")
    if plan.skipped:
        LOGGER.info("%d image(s) already have complete, current outputs and are skipped (--overwrite "
                    "reprocesses them).", len(plan.skipped))
    if not workflow.list_node_names():
        plan.workflow = None
    return plan


def init_single_subject_wf(config: Config, layout, subject: str, plan: Plan,
                           invalid: dict[str, list[str]]) -> tuple[pe.Workflow | None, int]:
    """All tasks for one participant: ``(workflow or None, number of images found)``.

    Fills ``plan`` with the jobs, refusals and skips of this participant.
    """
    name = f"single_subject_{_safe(subject)}_wf"
    workflow = pe.Workflow(name=name)
    found = 0
    for task_name in config.tasks:
        task = get_task(task_name)
        images = bids.collect_inputs(layout, task, subject, config.session_label,
                                     bids.task_filters(config.bids_filters, task_name))
        if not images:
            LOGGER.info("sub-%s: no input for task %s", subject, task_name)  # common: not every participant has every contrast
            continue
        init_task_wf = load_function(task.workflow)
        model_dir = config.models_dir / task.model
        model = model_reference(model_dir)
        for image in images:
            found += 1
            job = Job(participant=f"sub-{subject}", session=_session(image), image=image.relpath, task=task_name)
            refusal = _refusal(image, invalid, task.bidsignore)
            if refusal:
                plan.failures.append(job.failed(refusal))
                continue
            labels = {key: bids.find_label(config.labels_dir, image, query)
                      for key, query in task.label_queries.items() if key != "manual"}
            manual = bids.find_manual_labels(config.labels_dir, image, task.label_queries["manual"]) \
                if "manual" in task.label_queries else []
            companions = {key: found_ for key, query in task.companions.items()
                          if (found_ := bids.find_companion(layout, image, query)) is not None}
            wf_name = f"{task_name}_{_safe(image.stem)}_wf"
            level_file = labels.get("levels") or labels.get("discs")
            task_wf = init_task_wf(
                task=task, image=image, output_dir=config.output_dir, model_dir=model_dir,
                model=model, version=config.version, device=config.device,
                omp_nthreads=config.omp_nthreads, level_file=level_file,
                manual_files=manual, companions=companions, name=wf_name,
            )
            inputs = [image.path, *(c.path for c in companions.values()), *([level_file] if level_file else []),
                      *manual]
            digests = source_digests(config.bids_dir, inputs)
            sinks = [node for node in task_wf._graph.nodes() if isinstance(node.interface, DerivativesSink)]
            relpaths = [relpath for node in sinks for relpath in DerivativesSink.relpaths(node.inputs)]
            if not config.overwrite and outputs.outputs_current(config.output_dir, relpaths, digests,
                                                                model["SHA256"], config.version):
                LOGGER.debug("%s (%s): outputs complete and current; skipped", image.relpath, task_name)
                plan.skipped.append(image.relpath)
                continue
            for node in sinks:
                node.inputs.source_digests = digests
                # A sink copies a finished file into output_dir: always redo it, so that outputs
                # deleted (or never written, after a kill) since the cached run are written again.
                node.overwrite = True
            workflow.add_nodes([task_wf])
            plan.jobs[f"{name}.{wf_name}"] = job
    return (workflow if workflow.list_node_names() else None), found


def source_digests(bids_dir: Path, paths) -> dict[str, str]:
    """``{"bids:raw:<relpath>" or absolute path: sha256}`` of every file an image's result depends on."""
    digests = {}
    for path in paths:
        path = Path(path)
        try:
            key = f"bids:raw:{path.resolve().relative_to(bids_dir)}"
        except ValueError:  # a user label outside the dataset (--labels-dir)
            key = str(path)
        digests[key] = sha256_of(path)
    return digests


def _refusal(image: bids.InputImage, invalid: dict[str, list[str]], bidsignore: tuple[str, ...] = ()) -> str | None:
    """Why ``image`` cannot be processed (validator errors, unusable header), or ``None``.

    ``bidsignore``: the task's ``.bidsignore`` patterns (files BIDS does not define); a file the validator
    does not know (``NOT_INCLUDED``) is then told to list them in the dataset's ``.bidsignore``."""
    if image.relpath in invalid:
        codes = invalid[image.relpath]
        if "NOT_INCLUDED" in codes and bidsignore:
            return (f"{image.path.name}: the BIDS validator does not know this file (NOT_INCLUDED): BIDS defines no "
                    f"'{image.entities.get('datatype', '?')}' datatype. List {', '.join(bidsignore)} in the "
                    "dataset's .bidsignore (one line each) and run again, or pass --skip-bids-validation.")
        return (f"{image.path.name}: the BIDS validator reports {', '.join(codes)}; "
                "fix or replace the file.")
    try:
        check_header(image.path)
    except InputImageError as exc:
        return str(exc)
    return None


def _session(image: bids.InputImage) -> str:
    session = image.entities.get("session")
    return f"ses-{session}" if session else "n/a"


def _safe(text: str) -> str:
    """Nipype node names allow letters, digits and underscores only."""
    return re.sub(r"[^0-9a-zA-Z_]", "_", text)


def connect_figures(workflow: pe.Workflow, task, views, sink_inputs: dict, sources: list[tuple[pe.Node, str]],
                    params: dict | None = None) -> None:
    """Add a task's QC figures to its image workflow: ``<task.qc>.render(*files, **params)`` on the
    files named by ``sources`` (``(node, output)`` pairs, in the render function's order), one PNG per
    view written by a :class:`DerivativesSink` (``ds_<view>_qc``) with ``sink_inputs`` (the other sinks'
    common inputs)."""
    from nipype.interfaces.utility import Merge

    figure_inputs = pe.Node(Merge(len(sources)), name="figure_inputs", run_without_submitting=True)
    figures = pe.Node(Figures(render=f"{task.qc}.render", views=list(views), params=params or {}), name="figures")
    workflow.connect([(node, figure_inputs, [(output, f"in{i}")]) for i, (node, output) in enumerate(sources, 1)])
    workflow.connect(figure_inputs, "out", figures, "in_files")
    for i, view in enumerate(views):
        sink = pe.Node(DerivativesSink(suffix="qc", desc_extra=view, **sink_inputs), name=f"ds_{view}_qc",
                       run_without_submitting=True)
        workflow.connect(figures, ("out_files", pick, i), sink, "in_file")
