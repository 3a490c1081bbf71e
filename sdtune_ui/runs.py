"""The run directory contract: every run, from the app, the CLI or `accelerate launch`, owns one folder.

    runs/<run-id>/
      config.json      the validated TrainConfig
      events.jsonl     one JSON object per line: {"t", "kind": step|sample|checkpoint|output|metric|log|status, ...}
      samples/         validation images, named by step
      checkpoints/     step-N/ folders, written under a temporary name and renamed when complete
      output/          the final artifacts in standard formats (PROMOTED.json when a checkpoint was made the output)
      output-final/    the trained final output, kept when a checkpoint was promoted to output/
      metrics.jsonl    scores per checkpoint from `evaluate` (sdtune_ui/evaluate), one line per (source, step)
      eval/            the images those scores were measured on, per checkpoint (base/, step-N/, final/)
      CANCEL           present when someone asked the run to stop (checked every step)

Event kinds beyond the loop's own: `metric` {"step", "source": base|checkpoint|output|training, "metrics":
{name: value}} is written by `evaluate` for each scored checkpoint and, with `eval_steps`, by the trainer
(held-out loss); `output` also records a promoted checkpoint ({"files", "promoted_from_step", "reason"}).

Front ends never hold the truth about a run: they read this folder, so reloads, restarts and runs
started elsewhere all look the same.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")   # a run in one of these has stopped and owns no process


class EventLog:
    """Appends events to events.jsonl; each line is flushed so readers see it at once."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def emit(self, kind: str, **fields: Any) -> dict:
        event = {"t": round(time.time(), 3), "kind": kind, **fields}
        line = json.dumps(event, default=str)
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        return event


class NullEventLog(EventLog):
    """Used on non-main processes of a multi-GPU run: only the main process writes the run folder."""

    def __init__(self) -> None:
        pass

    def emit(self, kind: str, **fields: Any) -> dict:
        return {"kind": kind, **fields}


@dataclass
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # Layout
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def output_dir(self) -> Path:
        return self.path / "output"

    @property
    def cancel_path(self) -> Path:
        return self.path / "CANCEL"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    def create(self) -> RunDir:
        for folder in (self.path, self.samples_dir, self.checkpoints_dir, self.output_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def events(self) -> EventLog:
        return EventLog(self.events_path)

    # Cancel flag: a file, so another process (the app, a terminal) can ask a run to stop.
    def request_cancel(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.cancel_path.write_text(str(time.time()))

    def cancel_requested(self) -> bool:
        return self.cancel_path.exists()

    def clear_cancel(self) -> None:
        self.cancel_path.unlink(missing_ok=True)

    # Reading
    def read_events(self, since_line: int = 0) -> list[dict]:
        """Events from line `since_line` on; a partially written last line is left for next time."""
        if not self.events_path.exists():
            return []
        events = []
        with open(self.events_path, encoding="utf-8") as handle:
            for index, line in enumerate(handle):
                if index < since_line or not line.endswith("\n"):
                    continue
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return events

    def status(self) -> str:
        """The last status event's value; 'queued' before any."""
        status = "queued"
        for event in self.read_events():
            if event["kind"] == "status":
                status = event["status"]
        return status

    def config(self) -> dict:
        try:
            return json.loads(self.config_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary `.partial` folders are never listed)."""
        if not self.checkpoints_dir.exists():
            return []
        found = [p for p in self.checkpoints_dir.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def latest_checkpoint(self) -> Path | None:
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def samples(self) -> list[Path]:
        return sorted(self.samples_dir.glob("*.png"), key=os.path.getmtime) if self.samples_dir.exists() else []


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0: the one process that writes the run folder."""
    return os.environ.get("RANK", "0") == "0"


def new_run_id(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"


def list_runs(root: Path) -> list[RunDir]:
    """Every run folder under `root`, newest first (a folder with a config.json is a run)."""
    if not root.exists():
        return []
    runs = [RunDir(p) for p in root.iterdir() if (p / "config.json").exists()]
    return sorted(runs, key=lambda run: run.config_path.stat().st_mtime, reverse=True)
