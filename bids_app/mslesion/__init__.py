"""The ``mslesion`` task: multiple-sclerosis white-matter lesions on FLAIR (DeepLesionBrain-style ensemble).

``workflow`` (the Nipype workflow), ``interfaces`` (its nodes), ``predict`` (generic net and sub-volume
specialists on the template grid; torch), ``measures`` (lesions, load, agreement with manual labels),
``regions`` (lesion location), ``report`` (the participant-level tables), ``group`` (the cohort table
and figures). Uses the shared modules of :mod:`bids_app`, never another task's package.
"""
