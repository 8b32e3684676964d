"""Logging of the training command lines."""

from __future__ import annotations

import logging


def setup_logging() -> None:
    """INFO and above to stderr, each line with its time and logger name."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
