"""What every tab gets: the app's folders and the one GPU job queue (no gradio here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sdtune_ui.app.generation import SpeedLog

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

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"
