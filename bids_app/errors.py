"""Errors that map to the documented exit codes of the ``neuroseg`` command line.

| code | meaning |
|------|---------|
| 0 | success |
| 1 | unexpected internal error (a bug: please report it with the log) |
| 2 | invalid command line or configuration, folders that cannot be written (argparse also uses 2) |
| 3 | the BIDS dataset is invalid or has no input for the requested tasks |
| 4 | a model could not be loaded (missing, corrupt, wrong sha256, another task's) or the device is unavailable |
| 5 | at least one image failed (input checks or a node); the others finished (``logs/failed.tsv``) |
| 6 | group level: nothing to aggregate in ``output_dir`` |
"""

from __future__ import annotations


class NeurosegError(Exception):
    """Base class: a message for the user and the exit code to return."""

    exit_code = 1


class ConfigError(NeurosegError):
    exit_code = 2


class DatasetError(NeurosegError):
    exit_code = 3


class ModelError(NeurosegError):
    exit_code = 4


class WorkflowError(NeurosegError):
    exit_code = 5


class NothingToAggregateError(NeurosegError):
    exit_code = 6
