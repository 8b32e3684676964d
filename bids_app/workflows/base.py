"""Top-level workflows: the app (all participants) and one participant (all tasks, all images)."""

from __future__ import annotations

import importlib
import logging
import re

from nipype.pipeline import engine as pe

from bids_app import bids
from bids_app.config import Config
from bids_app.errors import DatasetError
from bids_app.inference_meta import model_reference
from bids_app.tasks import get_task

LOGGER = logging.getLogger(__name__)


def init_bids_app_wf(config: Config, layout) -> pe.Workflow:
    """One sub-workflow per participant; raises :class:`DatasetError` when nothing is to be done."""
    workflow = pe.Workflow(name=f"neuroseg_{config.version.replace('.', '_')}_wf")
    workflow.base_dir = str(config.work_dir)
    for subject in bids.participants(layout, config.participant_label):
        single_subject_wf = init_single_subject_wf(config, layout, subject)
        if single_subject_wf is not None:
            workflow.add_nodes([single_subject_wf])
    if not workflow.list_node_names():
        queries = "; ".join(f"{t}: {dict(get_task(t).inputs)}" for t in config.tasks)
        raise DatasetError(f"No input images found in {config.bids_dir} for tasks {', '.join(config.tasks)} "
                           f"(queries {queries}; filters {config.bids_filters or 'none'}). "
                           "Check --participant-label, --session-label and --bids-filter-file.")
    return workflow


def init_single_subject_wf(config: Config, layout, subject: str) -> pe.Workflow | None:
    """All tasks for one participant (``None`` when the participant has no input for any task)."""
    workflow = pe.Workflow(name=f"single_subject_{_safe(subject)}_wf")
    for task_name in config.tasks:
        task = get_task(task_name)
        images = bids.collect_inputs(layout, task, subject, config.session_label,
                                     bids.task_filters(config.bids_filters, task_name))
        if not images:
            LOGGER.warning("sub-%s: no input for task %s", subject, task_name)
            continue
        module, factory = task.workflow.rsplit(".", 1)
        init_task_wf = getattr(importlib.import_module(module), factory)
        model_dir = config.models_dir / task.model
        for image in images:
            labels = {key: bids.find_label(config.labels_dir, image, query)
                      for key, query in task.label_queries.items() if key != "manual"}
            manual = bids.find_manual_labels(config.labels_dir, image, task.label_queries["manual"]) \
                if "manual" in task.label_queries else []
            companions = {key: found for key, query in task.companions.items()
                          if (found := bids.find_companion(layout, image, query)) is not None}
            task_wf = init_task_wf(
                task=task, image=image, output_dir=config.output_dir, model_dir=model_dir,
                model=model_reference(model_dir), version=config.version, device=config.device,
                omp_nthreads=config.omp_nthreads, level_file=labels.get("levels") or labels.get("discs"),
                manual_files=manual, companions=companions,
                name=f"{task_name}_{_safe(image.stem)}_wf",
            )
            workflow.add_nodes([task_wf])
    return workflow if workflow.list_node_names() else None


def _safe(text: str) -> str:
    """Nipype node names allow letters, digits and underscores only."""
    return re.sub(r"[^0-9a-zA-Z_]", "_", text)
