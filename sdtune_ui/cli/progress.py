"""What `python -m sdtune_ui train` shows while it trains: the run's events, as they are written, turned into
a progress line (step/total, loss, it/s, ETA, GPU memory) and the set-up messages (loading, capturing, ...)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from sdtune_ui.runs import EventLog


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(event: dict[str, Any], width: int = 24) -> str:
    """One step event as a progress line: `[#####-----] 120/400 loss 0.1234 21.3 it/s ETA 0:13 GPU 3.1 GiB`."""
    step, total = event["step"], max(event.get("total") or 1, 1)
    filled = int(width * step / total)
    parts = [f"[{'#' * filled}{'-' * (width - filled)}] {step}/{total}", f"loss {event.get('loss', float('nan')):.4f}"]
    if event.get("it_s"):
        parts.append(f"{event['it_s']:.1f} it/s" + ("" if event.get("steady", True) else " (warming up)"))
    if event.get("eta_s") is not None:
        parts.append(f"ETA {format_duration(event['eta_s'])}")
    if event.get("gpu_mem_gib") is not None:
        parts.append(f"GPU {event['gpu_mem_gib']:.1f} GiB")
    return "  ".join(parts)


class ProgressEventLog(EventLog):
    """The run's event log that also shows progress on a terminal (or as plain lines in a log file).

    On a terminal the progress line is rewritten in place; elsewhere (a pipe, a file) a line is printed every
    `every` steps and at the last step, so logs stay short.
    """

    def __init__(self, path: Path, stream: TextIO | None = None, every: int = 50):
        super().__init__(path)
        self.stream = stream or sys.stderr
        self.every = every
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._line_open = False

    def emit(self, kind: str, **fields: Any) -> dict:
        event = super().emit(kind, **fields)
        if kind == "step":
            self._show_step(event)
        elif kind == "log":
            self._print(event["message"])
        elif kind == "status" and event.get("status") not in ("running", "starting"):
            self._end_line()
        return event

    def _show_step(self, event: dict[str, Any]) -> None:
        line = progress_line(event)
        if self.interactive:
            self.stream.write("\r" + line + "\033[K")
            self.stream.flush()
            self._line_open = True
        elif event["step"] % self.every == 0 or event["step"] == event.get("total") or event["step"] == 1:
            self._print(line)

    def _print(self, text: str) -> None:
        self._end_line()
        self.stream.write(text + "\n")
        self.stream.flush()

    def _end_line(self) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False
