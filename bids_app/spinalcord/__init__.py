"""The ``spinalcord`` task: contrast-agnostic soft spinal-cord segmentation and cross-sectional area.

``workflow`` (the Nipype workflow), ``interfaces`` (its nodes), ``predict`` (the 2D network on axial
slices; torch), ``measures`` (CSA per slice and per vertebral level; numpy), ``group`` (the cohort
table and figure). Uses the shared modules of :mod:`bids_app`, never another task's package.
"""
