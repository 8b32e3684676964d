"""Reproduce neuroseg's shipped models, one sub-package per task.

    training/common/      what every task uses: repository paths, logging, export of weights, markdown
    training/spinalcord/  the contrast-agnostic cord model (``python -m training.spinalcord CONFIG``)
    training/mslesion/    the MS lesion ensemble (``python -m training.mslesion CONFIG``)

Each task keeps its configs in ``training/<task>/configs/`` and the committed measurements in
``training/<task>/results/``; run folders go to ``training_runs/`` (not committed) and exported models
to ``models/<task>/``. ``python -m training CONFIG`` dispatches to the task the config belongs to.
"""
