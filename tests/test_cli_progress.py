"""The CLI's progress display (sdtune_ui.cli.progress): what a terminal and a log file show of a run."""

from __future__ import annotations

import io
import json

from sdtune_ui.cli.progress import ProgressEventLog, progress_line


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def step(n, total=100, **changes):
    event = dict(step=n, total=total, loss=0.25, lr=1e-4, it_s=20.0, eta_s=(total - n) / 20.0, steady=True,
                 gpu_mem_gib=3.25)
    return event | changes


def test_a_progress_line_has_step_loss_rate_eta_and_memory():
    line = progress_line(step(40))
    assert "40/100" in line and "loss 0.2500" in line and "20.0 it/s" in line and "ETA 0:03" in line
    assert "GPU 3.2 GiB" in line or "GPU 3.3 GiB" in line
    warming = progress_line(step(1, steady=False, eta_s=None))
    assert "(warming up)" in warming and "ETA" not in warming


def test_a_terminal_gets_one_line_rewritten_and_messages_above_it(tmp_path):
    terminal = Terminal()
    events = ProgressEventLog(tmp_path / "events.jsonl", stream=terminal)
    events.emit("step", **step(1))
    events.emit("log", level="info", message="Captured the training step as a CUDA graph in 1.2 s")
    events.emit("step", **step(2))
    events.emit("status", status="completed", message="Training finished.")
    text = terminal.getvalue()
    assert text.count("\r") == 2 and "\nCaptured the training step" in text and text.endswith("\n")
    # Everything is still written to the run's event log.
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert kinds == ["step", "log", "step", "status"]


def test_a_log_file_gets_a_line_every_n_steps_and_the_last_one(tmp_path):
    out = io.StringIO()
    events = ProgressEventLog(tmp_path / "events.jsonl", stream=out, every=50)
    for n in range(1, 121):
        events.emit("step", **step(n, total=120))
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["1/120", "50/120", "100/120", "120/120"]
    assert "\r" not in out.getvalue()
