"""The app's upload folder (where Gradio puts uploaded files and the files it serves): uploads are removed once
handled, and a sweep removes what was left (uploaded but never used, old served copies) and keeps the folder's
total under a cap, oldest first.

No gradio here: the launcher gives the app a folder of its own (never a folder other programs share) and runs
the sweep on a schedule and before each upload.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE_S = 3600.0   # an upload not used within an hour is not going to be
DEFAULT_CAP = "2gb"          # the folder's total; the largest single upload is --max-file-size
SWEEP_EVERY_S = 60.0
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of "500mb", "2gb", "1.5GB" or "1000" (bytes)."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 500mb or 2gb)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_kmgt".index(unit.lower() or "_"))


@dataclass
class UploadFolder:
    """One folder that only this app writes to (Gradio's GRADIO_TEMP_DIR for it)."""

    root: Path
    max_age_s: float = DEFAULT_MAX_AGE_S
    max_bytes: int = parse_size(DEFAULT_CAP)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._lock = threading.Lock()

    def discard(self, paths: Iterable[str | Path | None]) -> int:
        """Remove handled uploads (only files inside this folder), with the per-upload folder Gradio made for
        each; returns how many files went."""
        return discard_uploads(paths, self.root)

    def total_bytes(self) -> int:
        return sum(size for _, _, size in self._files())

    def sweep(self, incoming: int = 0, now: float | None = None) -> int:
        """Remove files older than max_age_s, then the oldest until the total (plus `incoming` bytes about to be
        written) fits under max_bytes. Returns how many files were removed."""
        now = time.time() if now is None else now
        removed = 0
        with self._lock:
            files = sorted(self._files(), key=lambda item: item[1])  # oldest first
            total = sum(size for _, _, size in files)
            for path, mtime, size in files:
                too_old = now - mtime > self.max_age_s
                if not too_old and total + incoming <= self.max_bytes:
                    continue
                try:
                    path.unlink()
                except OSError:
                    continue
                removed += 1
                total -= size
                _remove_empty_parents(path.parent, self.root)
        if removed:
            log.info("Upload folder %s: removed %d file(s), %d bytes left", self.root, removed, total)
        return removed

    def _files(self) -> list[tuple[Path, float, int]]:
        found = []
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = Path(folder) / name
                try:
                    stat = path.lstat()
                except OSError:
                    continue
                found.append((path, stat.st_mtime, stat.st_size))
        return found


def discard_uploads(paths: Iterable[str | Path | None], root: str | Path) -> int:
    """Remove uploaded files that were handled (only those inside the upload folder `root`)."""
    root = Path(root).resolve()
    removed = 0
    for item in paths or []:
        if not item:
            continue
        path = Path(str(getattr(item, "name", item))).resolve()
        if not path.is_relative_to(root) or path == root or not path.is_file():
            continue
        try:
            path.unlink()
        except OSError:
            continue
        removed += 1
        _remove_empty_parents(path.parent, root)
    return removed


def _remove_empty_parents(folder: Path, root: Path) -> None:
    """Gradio puts each upload in a folder of its own (named by its hash): remove it once empty."""
    root = root.resolve()
    folder = folder.resolve()
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


class Sweeper:
    """Runs `folder.sweep()` every `every_s` seconds in a daemon thread until stopped."""

    def __init__(self, folder: UploadFolder, every_s: float = SWEEP_EVERY_S):
        self.folder, self.every_s = folder, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sdtune-upload-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.folder.sweep()
            except OSError:  # a vanished folder or file: try again next time
                log.exception("Sweeping the upload folder %s failed", self.folder.root)


def app_upload_folder(data_dir: Path) -> Path:
    """A folder of the system's temporary folder that only the app with this data folder uses (so sweeping it
    never touches another program's files)."""
    import hashlib
    import tempfile

    digest = hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"sdtune_ui-uploads-{digest}"

