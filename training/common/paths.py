"""Repository paths: config and result paths inside configs are relative to :data:`ROOT`."""

from __future__ import annotations

from pathlib import Path

#: The repository root (``training/common/paths.py`` is two folders below it).
ROOT = Path(__file__).resolve().parents[2]
