"""Exceptions whose messages are written for a person.

The core raises these; the UI shows the message as it is (gr.Error), the CLI prints it and exits 2.
Anything else that escapes is a bug and is logged with its traceback.
"""

from __future__ import annotations

import errno
from pathlib import Path


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


class DiskFull(SdtuneError):
    """A write failed because the disk (or the user's quota) is full."""

    def __init__(self, folder: str | Path, what: str = "writing"):
        super().__init__(f"The disk is full: {what} in {folder} failed. Free some space there (old runs' "
                         "checkpoints/ folders are usually the largest), then resume the run.")


class UnreadableFile(ModelLoadError):
    """A weights file (safetensors or pickle) is damaged, cut short or not what its name says."""

    def __init__(self, path: str | Path, err: BaseException, advice: str = ""):
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        super().__init__(f"Could not read {path}: the file is damaged or not a weights file ({reason}). "
                         + (advice or "Download or copy it again, or choose another file."))


class Cancelled(Exception):
    """The user asked to stop; not an error."""


class Interrupted(Cancelled):
    """The process was asked to shut down (SIGTERM); the run stops with a checkpoint and can be resumed."""


def is_disk_full(err: BaseException) -> bool:
    """Whether an exception from a write means "no space left" (OSError, or the safetensors/torch writers'
    own errors, which carry the OS error only in their text)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def is_unreadable_file_error(err: BaseException) -> bool:
    """Whether an exception from loading weights means the file itself is bad (not a bug of ours); libraries
    often wrap the reader's error, so its causes are looked at too."""
    import pickle

    for _ in range(4):
        if err is None:
            return False
        text = str(err)
        if (isinstance(err, (pickle.UnpicklingError, EOFError)) or type(err).__name__ == "SafetensorError"
                or any(words in text for words in ("PytorchStreamReader", "invalid load key", "failed finding central",
                                                   "Error while deserializing header", "Unable to load weights from"))):
            return True
        err = err.__cause__ or err.__context__
    return False
