"""What the app's metrics and sweep controls do, without gradio: evaluate a run through the GPU queue, the
data for a metrics plot with the best checkpoint marked, "use this checkpoint", and sweeps.

Runs are named by id inside the app's runs folder (never a path), as in app/ops.py. Evaluation and sweeps
run as queue jobs (`jobs.submit`), so they take turns with training, captioning and generation; cancelling a
sweep's job (`jobs.cancel_job(job)`) stops it after the current training step or scoring.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdtune_ui.app.ops import run_dir, safe_name
from sdtune_ui.errors import SdtuneError
from sdtune_ui.evaluate.evaluation import EvalSettings, EvaluationResult, evaluate_run, read_metrics
from sdtune_ui.evaluate.report import metric_rows
from sdtune_ui.evaluate.selection import best_checkpoint, default_metric, promote_checkpoint, promoted_step
from sdtune_ui.evaluate.sweep import HEATMAP_FILE, SWEEP_FILE, SweepSpec, read_sweep, run_sweep, sweep_budget

SWEEPS_FOLDER = "sweeps"   # inside the runs folder: sweeps/<sweep-id>/<trial>/ are run folders


def submit_evaluation(jobs: Any, runs_dir: Path, run_id: str, settings: EvalSettings | None = None, *,
                      checkpoints: str = "all", progress: Callable[[str, float], None] | None = None) -> Any:
    """Queue `evaluate` for a run; the job's result is an EvaluationResult (its error a SdtuneError)."""
    run = run_dir(runs_dir, run_id)
    settings = (settings or EvalSettings()).validate()   # bad settings fail now, not after the queue
    box: list[Any] = []

    def work() -> EvaluationResult:
        return evaluate_run(run.path, checkpoints=checkpoints, settings=settings, progress=progress,
                            cancel=lambda: bool(box) and box[0].cancelled)

    job = jobs.submit(f"evaluate {run_id}", work)
    box.append(job)
    return job


def run_metrics(runs_dir: Path, run_id: str, metric: str | None = None, max_drift: float = 0.05) -> dict:
    """For the run view: rows {step, source, metric, value} to plot over steps, the best checkpoint with its
    reason (None before any evaluation), and the step the output was promoted from (None if not)."""
    run = run_dir(runs_dir, run_id)
    records = read_metrics(run.path)
    measured = sorted({name.replace("_", "-") for r in records for name in r["metrics"]})
    best = best_checkpoint(records, metric or default_metric(measured), max_drift=max_drift) if records else None
    return {"rows": metric_rows(run.path), "best": best.to_dict() if best else None,
            "promoted_from_step": promoted_step(run.path)}


def use_checkpoint(runs_dir: Path, run_id: str, step: int, reason: str = "chosen in the app") -> list[str]:
    """"Use this checkpoint": make checkpoint `step` the run's output; returns the output files' names."""
    run = run_dir(runs_dir, run_id)
    return [path.name for path in promote_checkpoint(run.path, int(step), reason=reason)]


# ---------------------------------------------------------------------------------------------- sweeps
def sweeps_dir(runs_dir: Path) -> Path:
    return runs_dir / SWEEPS_FOLDER


def new_sweep_dir(runs_dir: Path) -> Path:
    return sweeps_dir(runs_dir) / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"


def list_sweeps(runs_dir: Path) -> list[str]:
    """Sweep ids with results, newest first."""
    folder = sweeps_dir(runs_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if (p / SWEEP_FILE).exists()]
    return [p.name for p in sorted(found, key=lambda p: (p / SWEEP_FILE).stat().st_mtime, reverse=True)]


def sweep_path(runs_dir: Path, sweep_id: str) -> Path:
    if not sweep_id or safe_name(sweep_id, "") != sweep_id:
        raise SdtuneError(f"{sweep_id!r} is not a sweep id.")
    return sweeps_dir(runs_dir) / sweep_id


def estimate(spec: SweepSpec, seconds_per_step: float, seconds_per_evaluation: float) -> dict:
    """The sweep's size and an estimate of its time from measured speeds (e.g. a run's it/s)."""
    budget = sweep_budget(spec.validate())
    seconds = budget["train_steps"] * seconds_per_step + budget["evaluations"] * seconds_per_evaluation
    return {**budget, "seconds": round(seconds, 1)}


def submit_sweep(jobs: Any, spec: SweepSpec, progress: Callable[[Any], None] | None = None) -> Any:
    """Queue a sweep; the job's result is sweep.json's data. `jobs.cancel_job(job)` stops it."""
    spec.validate()
    box: list[Any] = []
    job = jobs.submit(f"sweep {spec.out_dir.name}",
                      lambda: run_sweep(spec, progress=progress, cancel=lambda: bool(box) and box[0].cancelled))
    box.append(job)
    return job


def sweep_result(runs_dir: Path, sweep_id: str) -> tuple[dict, Path]:
    """sweep.json's data and the heatmap's path."""
    folder = sweep_path(runs_dir, sweep_id)
    return read_sweep(folder), folder / HEATMAP_FILE
