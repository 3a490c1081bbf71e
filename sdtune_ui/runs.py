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
      CANCEL           present when someone asked the run to stop (checked every step); "interrupt ..." when
                       a shutdown signal asked (the run then ends "interrupted", not "cancelled")
      owner.json       the process training it: pid, host, boot id and process start time
      heartbeat        touched every HEARTBEAT_S seconds while that process lives; removed when it ends

Event kinds beyond the loop's own: `metric` {"step", "source": base|checkpoint|output|training, "metrics":
{name: value}} is written by `evaluate` for each scored checkpoint and, with `eval_steps`, by the trainer
(held-out loss); `output` also records a promoted checkpoint ({"files", "promoted_from_step", "reason"}).

Front ends never hold the truth about a run: they read this folder, so reloads, restarts and runs
started elsewhere all look the same. A run that says "running" but whose owner is gone (its process is
dead on this host, or its heartbeat stopped) was killed: `mark_if_interrupted` records it as "interrupted",
naming the checkpoint a resume continues from.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
FINISHED = ("completed", "failed", "cancelled", "interrupted")  # stopped: owns no process, may be resumed
ACTIVE = ("starting", "running")  # a process is training it (if that process still lives)
HEARTBEAT_S = 10.0       # how often a running process touches <run>/heartbeat
STALE_AFTER_S = 120.0    # a heartbeat older than this means its owner is gone (other hosts; same host asks the OS)


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

    @property
    def owner_path(self) -> Path:
        return self.path / "owner.json"

    @property
    def heartbeat_path(self) -> Path:
        return self.path / "heartbeat"

    # Cancel flag: a file, so another process (the app, a terminal) can ask a run to stop.
    def request_cancel(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.interrupt_requested():  # a shutdown's interrupt stays an interrupt
            self.cancel_path.write_text(str(time.time()))

    def request_interrupt(self) -> None:
        """Ask the run to stop because its process is shutting down (SIGTERM): it ends "interrupted"."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.cancel_path.write_text(f"interrupt {time.time()}")

    def cancel_requested(self) -> bool:
        return self.cancel_path.exists()

    def interrupt_requested(self) -> bool:
        try:
            return self.cancel_path.read_text().startswith("interrupt")
        except OSError:
            return False

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

    # Owner: which process trains this run, and whether it still lives.
    def claim(self) -> Heartbeat:
        """Record this process as the run's owner and start its heartbeat (stop it when the run ends)."""
        self.owner_path.write_text(json.dumps({**this_process(), "started": round(time.time(), 3)}))
        return Heartbeat(self.heartbeat_path).start()

    def owner(self) -> dict | None:
        try:
            return json.loads(self.owner_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def owner_gone(self, now: float | None = None) -> str | None:
        """Why the process that owns this run is gone, or None while it lives (or when the folder names no owner,
        as runs from before owner files did)."""
        owner = self.owner()
        if owner is None:
            return None
        pid = owner.get("pid")
        try:
            beat = self.heartbeat_path.stat().st_mtime
        except OSError:
            return f"its process (PID {pid}) ended without a final status"
        me = this_process()
        if owner.get("host") == me["host"]:
            if owner.get("boot") != me["boot"]:
                return f"this machine restarted since its process (PID {pid}) started"
            alive = process_alive(int(pid), owner.get("process_start"))
            if alive is not None:
                return None if alive else f"its process (PID {pid}) is no longer running"
        age = (now or time.time()) - beat
        if age > STALE_AFTER_S:
            return f"no heartbeat from its process (PID {pid} on {owner.get('host')}) for {age:.0f} s"
        return None

    def owner_alive(self) -> bool:
        """A process owns this run right now (its heartbeat file exists and the process has not gone)."""
        return self.owner() is not None and self.heartbeat_path.exists() and self.owner_gone() is None

    def owner_text(self) -> str:
        owner = self.owner() or {}
        return f"PID {owner.get('pid')} on {owner.get('host')}"

    def resume_point(self) -> str:
        """Where a resume continues, for messages: the last complete checkpoint, or the start."""
        latest = self.latest_checkpoint()
        return (f"resume continues from checkpoint {latest.name}" if latest
                else "there is no checkpoint yet, so a resume starts from the beginning")


class Heartbeat:
    """Touches a file every HEARTBEAT_S seconds from a daemon thread, until stopped (then removes it).

    A thread, not the training loop: setup (model loading, class images, compiling) can take minutes
    without a step, and a killed process stops beating at once.
    """

    def __init__(self, path: Path, interval: float = HEARTBEAT_S):
        self.path, self.interval = path, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {path.parent.name}", daemon=True)

    def start(self) -> Heartbeat:
        self.path.write_text(str(os.getpid()))
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                os.utime(self.path)  # needs no free disk space
            except OSError:
                pass  # the folder was deleted or the disk is gone; the run reports its own errors

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


def this_process() -> dict:
    """This process as owner.json records it: pid, host, boot id and start time (PIDs are reused)."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "boot": _boot_id(), "process_start": _process_start(pid)}


def process_alive(pid: int, started: str | None = None) -> bool | None:
    """Whether process `pid` (started at `started`, as _process_start reads it) runs on this machine; None when
    this OS cannot tell (then the heartbeat decides)."""
    if os.name == "nt":
        return None  # os.kill(pid, 0) would terminate the process on Windows
    stat = _proc_stat(pid)
    if stat is not None:
        state, start = stat
        return state not in ("Z", "X") and (started is None or start == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return True


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) from /proc on Linux; None elsewhere or when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ("X", "") if Path("/proc/self/stat").exists() else None
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], fields[19]


def _process_start(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def mark_if_interrupted(run: RunDir) -> bool:
    """If `run` says it is running but its owner is gone (killed: SIGKILL, a crash, a power cut), record it as
    "interrupted", naming the checkpoint a resume continues from. Returns True when it did."""
    if run.status() not in ACTIVE:
        return False
    reason = run.owner_gone()
    if reason is None:
        return False
    run.events().emit("status", status="interrupted", message=interrupted_message(run, f"The run stopped: {reason}"))
    return True


def interrupted_message(run: RunDir, what: str) -> str:
    return f"{what}; {run.resume_point()}. Press Resume (or run the same train command again)."


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
