"""Reading a run folder into what the app shows: curves, progress line, samples, log tail, outputs.

Pure functions over the run directory contract (no gradio), so the live view, the Runs tab and the tests
all read a run the same way, whether it was started by this app, the CLI or another process.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sdtune_ui.app.text import escape_markdown
from sdtune_ui.runs import ACTIVE, FINISHED, RunDir, interrupted_message, list_runs

MAX_PLOT_POINTS = 1000  # the browser draws every point: keep long runs light


@dataclass
class RunSnapshot:
    """Everything the UI shows about one run, read from its folder at one moment."""

    run_id: str
    path: Path
    status: str = "queued"
    message: str = ""
    method: str = ""
    model: str = ""
    data: str = ""
    step: int = 0
    total: int = 0
    it_s: float | None = None
    eta_s: float | None = None
    gpu_mem_gib: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    lrs: list[tuple[int, float]] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)      # {"step", "path" (absolute), "prompt"}
    logs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)       # paths relative to the run folder
    probes: list[dict] = field(default_factory=list)       # the trainer's held-out loss ({"step", "metrics"})
    started: float | None = None
    updated: float | None = None
    event_count: int = 0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def signature(self) -> tuple:
        """Changes whenever anything shown would change (lets the UI skip identical refreshes)."""
        return (str(self.path), self.event_count, len(self.samples), len(self.outputs))


def read_snapshot(run_dir: str | Path) -> RunSnapshot:
    """The run as its folder tells it now. Unchanged folders are not parsed again: every open page polls
    every run's events every few seconds, and a long run has tens of thousands of lines."""
    run = RunDir(Path(run_dir))
    snap = _read_cached(str(run.path), _stamp(run.events_path), _stamp(run.config_path))
    if snap.status in ACTIVE:
        reason = run.owner_gone()  # killed without a final status: shown as what it is (Resume marks it so)
        if reason is not None:
            return dataclasses.replace(snap, status="interrupted",
                                       message=interrupted_message(run, f"The run stopped: {reason}"))
    return snap


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _read_cached(path: str, events_stamp: tuple[int, int], config_stamp: tuple[int, int]) -> RunSnapshot:
    # The stamps are part of the cache key only: any write to the folder's files makes a new entry.
    return _read(RunDir(Path(path)))


def _read(run: RunDir) -> RunSnapshot:
    config = run.config()
    snap = RunSnapshot(run_id=run.path.name, path=run.path, method=str(config.get("method", "")),
                       model=str(config.get("model", "")), total=int(config.get("max_train_steps") or 0),
                       data=str(config.get("data", "")))
    events = run.read_events()
    snap.event_count = len(events)
    for event in events:
        _apply(snap, event, run.path)
    return snap


def _apply(snap: RunSnapshot, event: dict, root: Path) -> None:
    kind = event.get("kind")
    stamp = event.get("t")
    if stamp is not None:
        snap.started = snap.started if snap.started is not None else stamp
        snap.updated = stamp
    if kind == "status":
        snap.status = event.get("status", snap.status)
        snap.message = event.get("message", "")
        snap.method = event.get("method", snap.method)
        snap.total = int(event.get("total") or snap.total)
        snap.step = int(event.get("step") or snap.step)
        if snap.message:
            snap.logs.append(f"[{snap.status}] {snap.message}")
    elif kind == "step":
        step = int(event.get("step", 0))
        if snap.losses and step <= snap.losses[-1][0]:
            # A resumed run repeats steps after its last checkpoint: the newer values replace the old ones.
            snap.losses = [point for point in snap.losses if point[0] < step]
            snap.lrs = [point for point in snap.lrs if point[0] < step]
        snap.step, snap.total = step, int(event.get("total") or snap.total)
        if _finite(event.get("loss")):
            snap.losses.append((step, float(event["loss"])))
        if _finite(event.get("lr")):
            snap.lrs.append((step, float(event["lr"])))
        snap.it_s, snap.eta_s = event.get("it_s"), event.get("eta_s")
        snap.gpu_mem_gib = event.get("gpu_mem_gib")
    elif kind == "sample":
        snap.samples.append({"step": int(event.get("step", 0)), "path": str(root / event.get("path", "")),
                             "prompt": event.get("prompt", "")})
    elif kind == "checkpoint":
        snap.logs.append(f"checkpoint saved at step {event.get('step')}: {event.get('path')}")
    elif kind == "output":
        snap.outputs = [str(name) for name in event.get("files", [])]
        snap.logs.append("output: " + ", ".join(snap.outputs))
    elif kind == "metric" and event.get("source") == "training":
        step = int(event.get("step", 0))
        # As for losses: a resumed run measures again from its checkpoint, the newer values count.
        snap.probes = [probe for probe in snap.probes if probe["step"] < step]
        snap.probes.append({"step": step, "metrics": dict(event.get("metrics") or {})})
    elif kind == "log":
        snap.logs.append(f"{event.get('level', 'info')}: {event.get('message', '')}")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ---------------------------------------------------------------------------- plots
def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing), so early points are not
    dragged towards zero."""
    out, average = [], 0.0
    for index, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**index))
    return out


def _thin(points: list[tuple[int, float]], limit: int = MAX_PLOT_POINTS) -> list[tuple[int, float]]:
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def loss_frame(snap: RunSnapshot, weight: float = 0.9) -> pd.DataFrame:
    """Long-format frame (step, loss, series) with a raw and a smoothed series, for one line plot.

    Before the first loss it still names both series (in rows without values, which the plot skips):
    Gradio's plot fixes its colour scale from the data it first draws, and an empty first frame would leave
    every later line without a colour, i.e. invisible.
    """
    if not snap.losses:
        return pd.DataFrame({"step": [math.nan, math.nan], "loss": [math.nan, math.nan],
                             "series": ["raw", "smoothed"]})
    steps = [step for step, _ in snap.losses]
    smoothed = list(zip(steps, smooth([value for _, value in snap.losses], weight), strict=True))
    raw_rows = [(step, value, "raw") for step, value in _thin(snap.losses)]
    smooth_rows = [(step, value, "smoothed") for step, value in _thin(smoothed)]
    return pd.DataFrame(raw_rows + smooth_rows, columns=["step", "loss", "series"])


def lr_frame(snap: RunSnapshot) -> pd.DataFrame:
    points = _thin(snap.lrs)
    # Explicit dtypes: an empty frame must still read as numbers, the plot fixes its axis types on first draw.
    return pd.DataFrame({"step": pd.Series([p[0] for p in points], dtype=float),
                         "lr": pd.Series([p[1] for p in points], dtype=float)})


# ---------------------------------------------------------------------------- text and files
def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_markdown(snap: RunSnapshot, position: int | None = None, now: float | None = None) -> str:
    """One status block: run, status (queue position), step/total, it/s, ETA, GPU memory, last message."""
    now = now or time.time()
    status = snap.status
    if status == "queued" and position:
        status = f"queued: {position} job(s) ahead"
    parts = [f"**{escape_markdown(snap.run_id)}** · {status}"]
    if snap.total:
        percent = 100 * snap.step / snap.total
        parts.append(f"step {snap.step}/{snap.total} ({percent:.0f}%)")
    if snap.it_s:
        parts.append(f"{snap.it_s:.2f} it/s")
    if snap.status == "running" and snap.eta_s is not None:
        parts.append(f"ETA {format_duration(snap.eta_s)}")
    parts.append("GPU " + (f"{snap.gpu_mem_gib:.1f} GiB" if snap.gpu_mem_gib is not None else "-"))
    if snap.updated and not snap.finished:
        parts.append(f"last update {format_duration(now - snap.updated)} ago")
    text = " · ".join(parts)
    if snap.message:
        text += f"\n\n{escape_markdown(snap.message)}"  # may quote the user's prompts or tokens
    return text


def gallery_items(snap: RunSnapshot) -> list[tuple[str, str]]:
    """Sample images newest first, captioned with their step (and prompt); missing files are skipped."""
    items = [(s["path"], f"step {s['step']}: {s['prompt']}") for s in snap.samples if Path(s["path"]).is_file()]
    return items[::-1]


def log_tail(snap: RunSnapshot, lines: int = 40) -> str:
    return "\n".join(snap.logs[-lines:])


def output_files(snap: RunSnapshot) -> list[str]:
    """Absolute paths of the final artifact files (folders are listed file by file)."""
    found: list[str] = []
    for name in snap.outputs:
        path = snap.path / name
        if path.is_file():
            found.append(str(path))
        elif path.is_dir():
            found.extend(str(p) for p in sorted(path.rglob("*")) if p.is_file())
    return found


RUN_COLUMNS = ["run", "status", "method", "model", "dataset", "steps", "final loss", "started"]


def final_loss(snap: RunSnapshot) -> str:
    """The smoothed loss at the last logged step (one step's raw loss is too noisy to compare runs by)."""
    if not snap.losses:
        return "-"
    return f"{smooth([value for _, value in snap.losses])[-1]:.4g}"


def dataset_name(data: str) -> str:
    """A dataset folder by its name (the app's datasets all live in one folder), a Hub dataset by its id."""
    path = Path(data).expanduser()
    return path.name if data and (path.is_absolute() or path.exists()) else data


def runs_table(roots: str | Path | list[Path]) -> pd.DataFrame:
    """Every run under `roots` (one runs folder or several), newest first: run id, status, method, model, dataset,
    steps done/total, the final (smoothed) loss, start time."""
    rows = []
    folders = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(root) for root in roots]
    found = [run for folder in folders for run in list_runs(folder)]
    found.sort(key=lambda run: run.config_path.stat().st_mtime, reverse=True)
    for run in found:
        snap = read_snapshot(run.path)
        started = snap.started or run.config_path.stat().st_mtime
        rows.append([snap.run_id, snap.status, snap.method, snap.model, dataset_name(snap.data),
                     f"{snap.step}/{snap.total}", final_loss(snap),
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(started))])
    return pd.DataFrame(rows, columns=RUN_COLUMNS)
