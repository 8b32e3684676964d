"""Nipype workflow factories (``init_<name>_wf``)."""
