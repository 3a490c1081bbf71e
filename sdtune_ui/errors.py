"""Exceptions whose messages are written for a person.

The core raises these; the UI shows the message as it is (gr.Error), the CLI prints it and exits 2.
Anything else that escapes is a bug and is logged with its traceback.
"""

from __future__ import annotations


class SdtuneError(Exception):
    """A problem the user can fix; `str(err)` says what happened and what to do."""


class ConfigError(SdtuneError):
    """One or more settings are invalid. `field_errors` maps each field name to its message."""

    def __init__(self, field_errors: dict[str, str]):
        self.field_errors = dict(field_errors)
        lines = [f"- {name}: {message}" for name, message in self.field_errors.items()]
        super().__init__("Invalid settings:\n" + "\n".join(lines))


class DatasetError(SdtuneError):
    """The dataset cannot be used as it is (no usable image, unreadable metadata ...)."""


class ModelLoadError(SdtuneError):
    """The base model or an artifact could not be loaded (not found, unsafe format, unknown family)."""


class TrainingStopped(SdtuneError):
    """Training ended early for a reason the user should see (non-finite loss, out of memory)."""


class Cancelled(Exception):
    """The user asked to stop; not an error."""
