"""Visual QC reports, shared by every task: figures (``mosaic``), page parts (``html``), what is known
about each segmented image (``records``), the participant pages (``participant``) and the group page
(``group_page``). Each task adds its own figures and sections in ``bids_app/<task>/qc.py``.
"""
