"""Reproduce neuroseg's shipped models: ``python -m training <config.json> [--export]``."""
