"""Every error a user can cause, and `user_errors()`, the tuple the CLIs print as one line.

This module imports neither torch nor ray, so a CLI's `--help` and its error path stay cheap.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value, preset, flag or run directory is wrong; the message names the field."""


class DataValidationError(ValueError):
    """The data cannot be used; the message names the file, row and field."""


class BackboneError(ValueError):
    """The backbone cannot be used; the one-line message says which path and why."""


class ClusterError(RuntimeError):
    """The Ray cluster cannot be reached or cannot run actors."""


class StorageError(OSError):
    """A results or checkpoint folder cannot be written."""

    def __str__(self) -> str:
        return self.strerror or (self.args[0] if self.args else super().__str__())


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. a full disk); the message says whether an earlier
    checkpoint exists to resume from."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # the message, without "[Errno 28] "


class RunLockedError(ConfigError):
    """Another live driver holds the run directory."""


class NonFiniteLossError(FloatingPointError):
    """Raised with the step and the group losses so a diverged trial explains itself."""


class CacheError(RuntimeError):
    """The encoder cache on disk does not match what it claims to hold."""


def user_errors() -> tuple[type[Exception], ...]:
    """Bad input the CLIs report as one line (exit 2), not as a traceback."""
    return (
        ConfigError,
        DataValidationError,
        BackboneError,
        ClusterError,
        StorageError,
        CheckpointWriteError,
    )
