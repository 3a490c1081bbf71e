"""What every tab gets: the app's folders and the one GPU job queue (no gradio here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sdtune_ui.app.generation import SpeedLog
from sdtune_ui.app.uploads import UploadFolder
from sdtune_ui.app.workspace import Workspace, Workspaces

T = TypeVar("T")


class GpuQueue(Protocol):
    """One GPU job at a time: training, class images, captioning and generation share it."""

    def run_sync(self, label: str, fn: Callable[[], T]) -> T:
        """Wait for our turn in the queue, run `fn`, return its result (exceptions propagate)."""
        ...


@dataclass
class AppContext:
    data_dir: Path          # everything the app writes lives below this folder
    jobs: Any               # sdtune_ui.app.jobs.JobQueue (implements GpuQueue and training runs)
    is_space: bool = False
    speed: SpeedLog = field(default_factory=SpeedLog)  # measured generation speed, for grid estimates
    workspaces: Workspaces | None = None  # one shared workspace unless given (app/workspace.py)
    uploads: UploadFolder | None = None   # the app's own upload folder, when the launcher gave it one
    closers: list[Callable[[], Any]] = field(default_factory=list)  # what `close` stops besides the queue

    def __post_init__(self) -> None:
        if self.workspaces is None:
            self.workspaces = Workspaces(self.data_dir)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the queue (a running job stops at its next step with a checkpoint) and the app's helpers."""
        for stop in self.closers:
            stop()
        self.jobs.close(timeout=timeout)

    def workspace(self, user: str = "") -> Workspace:
        """Whose runs, datasets and exports the logged-in `user` sees ("" without passwords)."""
        return self.workspaces.of(user)

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"
