"""Sweeps in the app, without gradio: start one from the Train tab's settings (or an API caller's) through the
one job queue, follow it, estimate its time from speeds measured on this machine, show its results best first,
and promote its winner to a normal run.

A sweep lives in `runs/sweeps/<sweep-id>/`: one run folder per trial, `sweep.json` and `heatmap.png` when it
ends (evaluate/sweep.py), and `status.json`, written here while it is queued and running, so a reloaded page,
another client or a restarted app can tell how far it got (a sweep that was running when the app stopped
shows as interrupted). Cancelling its job stops it after the current training step or scoring.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtune_ui.app.live import format_duration, read_snapshot
from sdtune_ui.app.ops import safe_name
from sdtune_ui.app.text import escape_markdown
from sdtune_ui.errors import SdtuneError
from sdtune_ui.evaluate.evaluation import EvalSettings, read_metrics
from sdtune_ui.evaluate.sweep import (
    HEATMAP_FILE,
    SWEEP_FILE,
    SweepSpec,
    promote_sweep,
    read_sweep,
    run_sweep,
    setup_seconds,
    sweep_budget,
)
from sdtune_ui.runs import RunDir, list_runs, new_run_id

SWEEPS_FOLDER = "sweeps"   # inside the runs folder: sweeps/<sweep-id>/<trial>/ are run folders
STATUS_FILE = "status.json"
WAITING = ("queued", "running")
# Before anything was measured here: seconds per training step and per trial's setup (loading the model,
# caching latents) for the built-in tiny models, a real model on a GPU, a real model on a CPU.
ASSUMED_STEP_S = {"tiny": 0.1, "gpu": 0.5, "cpu": 30.0}
ASSUMED_SETUP_S = {"tiny": 5.0, "gpu": 30.0, "cpu": 60.0}
FEATURES_S = 2.0           # an evaluation's feature extraction and held-out loss, beyond generating its images


# ---------------------------------------------------------------------------------------------- folders
def sweeps_dir(runs_dir: Path) -> Path:
    return runs_dir / SWEEPS_FOLDER


def new_sweep_dir(runs_dir: Path, name: str = "") -> Path:
    """A new sweep folder: `<name or sweep>-<time>-<random>` (two sweeps started in one second never clash)."""
    return sweeps_dir(runs_dir) / new_run_id(safe_name(name, "sweep") if name.strip() else "sweep")


def sweep_path(runs_dir: Path, sweep_id: str) -> Path:
    """The existing sweep folder `sweep_id` (an id, never a path)."""
    if not sweep_id or safe_name(sweep_id, "") != sweep_id:
        raise SdtuneError(f"{sweep_id!r} is not a sweep id.")
    folder = sweeps_dir(runs_dir) / sweep_id
    if not ((folder / SWEEP_FILE).exists() or (folder / STATUS_FILE).exists()):
        raise SdtuneError(f"There is no sweep {sweep_id!r} (it may have been deleted).")
    return folder


def list_sweeps(runs_dir: Path) -> list[str]:
    """Sweep ids, queued, running or finished, newest first."""
    folder = sweeps_dir(runs_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if (p / SWEEP_FILE).exists() or (p / STATUS_FILE).exists()]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)]


def _write_status(folder: Path, status: str, message: str, **fields: Any) -> None:
    partial = folder / f"{STATUS_FILE}.partial"
    partial.write_text(json.dumps({"status": status, "message": message, "t": round(time.time(), 3), **fields}))
    partial.replace(folder / STATUS_FILE)


def _read_status(folder: Path) -> dict:
    try:
        return json.loads((folder / STATUS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# ---------------------------------------------------------------------------------------------- settings
def parse_numbers(value: str | Sequence[Any] | None, kind: type, what: str) -> list:
    """"5e-5, 1e-4" or [5e-5, 1e-4] -> numbers of `kind`; a readable error otherwise."""
    parts = value.replace(";", ",").split(",") if isinstance(value, str) else list(value or [])
    try:
        numbers = [kind(float(p)) if kind is int else kind(p) for p in parts if str(p).strip()]
    except (TypeError, ValueError, OverflowError):
        raise SdtuneError(f"{what}: give numbers separated by commas (got {value!r}).") from None
    if not all(math.isfinite(n) for n in numbers):
        raise SdtuneError(f"{what}: give finite numbers (got {value!r}).")
    if kind is int and any(float(p) != int(float(p)) for p in parts if str(p).strip()):
        raise SdtuneError(f"{what}: give whole numbers (got {value!r}).")
    return numbers


def make_spec(config: Any, learning_rates: Any, steps: Any, ranks: Any, metric: str, settings: EvalSettings,
              out_dir: Path) -> SweepSpec:
    """A checked sweep over a checked base config (app/ops.checked_config)."""
    spec = SweepSpec(config, parse_numbers(learning_rates, float, "Learning rates"),
                     parse_numbers(steps, int, "Steps"), out_dir, ranks=parse_numbers(ranks, int, "Ranks"),
                     metric=str(metric or "dino"), settings=settings)
    return spec.validate()


def spec_for(workspace: Any, config_values: dict, learning_rates: Any, steps: Any, ranks: Any = "",
             metric: str = "dino", settings: dict | None = None, *, public: bool,
             allow_local_paths: bool) -> SweepSpec:
    """A sweep over settings from the form or an API caller, checked like a run the app starts in `workspace`
    (app/workspace.py): what its trials may read, and which feature models its evaluations may load."""
    from sdtune_ui.app.evaluation import eval_settings
    from sdtune_ui.app.ops import checked_config
    from sdtune_ui.app.public_rules import check_workspace_rules

    config = checked_config(config_values, workspace, public=public)
    measured = eval_settings(settings, allow_local_paths=allow_local_paths, public=public)
    folder = sweeps_dir(workspace.runs_dir) / "new"   # start_sweep gives it its own folder
    spec = make_spec(config, learning_rates, steps, ranks, metric, measured, folder)
    for trial in spec.trials():   # each trial's steps, rate and rank within what this app's user may run
        check_workspace_rules(spec.trial_config(trial).validate(), workspace, public=public)
    return spec


def start_sweep(jobs: Any, runs_dir: Path, spec: SweepSpec, *, name: str = "", owner: str = "",
                user: str = "") -> tuple[str, Any]:
    """Queue the sweep in a new folder of the runs folder's sweeps; returns (its id, its job)."""
    spec = dataclasses.replace(spec, out_dir=new_sweep_dir(runs_dir, name))
    return spec.out_dir.name, submit_sweep(jobs, spec, owner=owner, user=user)


# ---------------------------------------------------------------------------------------------- estimate
@dataclass(frozen=True)
class Speeds:
    """Seconds per training step, per trial's setup and per checkpoint evaluation, and where they come from."""

    step_s: float
    setup_s: float
    evaluation_s: float
    basis: str          # "measured on 2 earlier runs ...; evaluation assumed ..."


def _kind(model: str, cuda: bool) -> str:
    from sdtune_ui.models import OFFLINE_MODELS

    return "tiny" if model in OFFLINE_MODELS else "gpu" if cuda else "cpu"


def _similar_runs(runs_dir: Path, config: Any, limit: int = 40) -> list[RunDir]:
    """Recent runs (sweep trials included) of the same base model at the same resolution."""
    folders = list_runs(runs_dir)[:limit]
    for sweep in list_sweeps(runs_dir)[:5]:
        folders += list_runs(sweeps_dir(runs_dir) / sweep)
    return [run for run in folders if run.config().get("model") == config.model
            and run.config().get("resolution") == config.resolution]


def measured_speeds(runs_dir: Path, config: Any, settings: EvalSettings, generation_step_s: tuple[float, bool],
                    *, cuda: bool) -> Speeds:
    """Speeds for an estimate: medians over similar runs here where they exist, else stated assumptions.

    `generation_step_s`: (seconds per denoising step of one image, measured?) as the Generate tab knows it.
    """
    runs = _similar_runs(runs_dir, config)
    snaps = [read_snapshot(run.path) for run in runs[:10]]
    steps = [1.0 / snap.it_s for snap in snaps if snap.it_s and snap.status == "completed"]
    setups = [s for s in (setup_seconds(run) for run in runs[:10]) if s is not None]
    wanted = {k: getattr(settings, k) for k in ("num_images", "inference_steps", "size", "clip_model", "dino_model")}
    evaluations = [r["seconds"] for run in runs[:10] for r in read_metrics(run.path)
                   if r.get("source") in ("checkpoint", "output") and r.get("seconds")
                   and all((r.get("settings") or {}).get(k) == v for k, v in wanted.items())]
    kind = _kind(config.model, cuda)
    basis = []
    if steps:
        basis.append(f"training speed measured on {len(steps)} earlier run(s) of {config.model}")
    else:
        basis.append(f"training speed assumed ({ASSUMED_STEP_S[kind]:g} s/step) until a run of {config.model} at "
                     f"{config.resolution} px finishes here")
    if evaluations:
        evaluation_s = statistics.median(evaluations)
        basis.append(f"evaluation time measured on {len(evaluations)} earlier checkpoint(s)")
    else:
        per_image_step, measured = generation_step_s
        images = sweep_budget(SweepSpec(config, [1.0], [1], Path(), settings=settings))["images_per_evaluation"]
        evaluation_s = images * settings.inference_steps * per_image_step + FEATURES_S
        basis.append("evaluation time from " + ("the generation speed measured here" if measured
                                                else "an assumed generation speed"))
    return Speeds(statistics.median(steps) if steps else ASSUMED_STEP_S[kind],
                  statistics.median(setups) if setups else ASSUMED_SETUP_S[kind], evaluation_s, "; ".join(basis))


def estimate(spec: SweepSpec, seconds_per_step: float, seconds_per_evaluation: float,
             seconds_per_trial: float = 0.0) -> dict:
    """The sweep's size and an estimate of its time from speeds (e.g. measured_speeds)."""
    budget = sweep_budget(spec.validate())
    seconds = (budget["train_steps"] * seconds_per_step + budget["evaluations"] * seconds_per_evaluation
               + budget["trials"] * seconds_per_trial)
    return {**budget, "seconds": round(seconds, 1)}


def estimate_text(spec: SweepSpec, speeds: Speeds) -> str:
    """Markdown: what the sweep will do and about how long it takes."""
    est = estimate(spec, speeds.step_s, speeds.evaluation_s, speeds.setup_s)
    per_trial = "one per learning rate" + (" and rank" if spec.ranks else "")
    return (f"**{est['trials']} trial(s)** ({per_trial}), each training {max(spec.steps)} steps "
            f"(= {est['train_steps']} steps) and scored at {len(spec.steps)} step count(s): {est['evaluations']} "
            f"evaluations of {est['images_per_evaluation']} images. About **{format_duration(est['seconds'])}** "
            f"({speeds.basis}).")


def plan(runs_dir: Path, speed: Any, spec: SweepSpec, *, cuda: bool) -> dict:
    """The estimate of a sweep: its size, seconds and a Markdown line saying what it rests on. `speed`: the
    app's generation SpeedLog (app/generation.py)."""
    speeds = measured_speeds(runs_dir, spec.base, spec.settings, speed.step_seconds(spec.base.model, cuda=cuda),
                             cuda=cuda)
    return {**estimate(spec, speeds.step_s, speeds.evaluation_s, speeds.setup_s), "basis": speeds.basis,
            "text": estimate_text(spec, speeds)}


# ---------------------------------------------------------------------------------------------- running
def _job_of(jobs: Any, sweep_id: str) -> Any:
    return next((job for job in jobs.active() if job.label == f"sweep {sweep_id}"), None)


def submit_sweep(jobs: Any, spec: SweepSpec, progress: Callable[[Any], None] | None = None, *, owner: str = "",
                 user: str = "") -> Any:
    """Queue a sweep; the job's result is sweep.json's data. `jobs.cancel_job(job)` stops it."""
    spec.validate()
    folder = spec.out_dir
    folder.mkdir(parents=True, exist_ok=True)
    _write_status(folder, "queued", "Waiting for the GPU.")

    def work(job: Any) -> dict:
        _write_status(folder, "running", "Starting.")

        def report(update: Any) -> None:
            job.report(update.trial + (update.phase == "done"), update.trials, "trial")
            trial = spec.trials()[min(update.trial, update.trials - 1)].name
            _write_status(folder, "running", update.message, phase=update.phase, trial=trial,
                          fraction=round(update.fraction, 3))
            if progress is not None:
                progress(update)

        try:
            data = run_sweep(spec, progress=report, cancel=lambda: job.cancelled)
        except Exception as err:  # noqa: BLE001 - any failure is recorded for the page, then raised as usual
            _write_status(folder, "failed", str(err) or type(err).__name__)
            raise
        failed = [t["name"] for t in data["trials"] if t["status"] == "failed"]
        message = "Cancelled." if data["status"] != "completed" else (
            f"Finished; {len(failed)} of {len(data['trials'])} trial(s) failed (see the table)." if failed
            else "Finished.")
        _write_status(folder, data["status"], message)
        return data

    return jobs.submit_job(f"sweep {folder.name}", work, owner=owner, user=user)


def cancel_sweep(jobs: Any, runs_dir: Path, sweep_id: str) -> bool:
    """Ask a queued or running sweep to stop (a running trial stops after its current step)."""
    sweep_path(runs_dir, sweep_id)
    job = _job_of(jobs, sweep_id)
    if job is None:
        raise SdtuneError(f"Sweep {sweep_id} is not queued or running in this app.")
    jobs.cancel_job(job)
    return True


def sweep_status(jobs: Any, runs_dir: Path, sweep_id: str) -> dict:
    """Where a sweep stands: status, a progress line, its place in the queue, and its results once written."""
    folder = sweep_path(runs_dir, sweep_id)
    status = _read_status(folder)
    data = read_sweep(folder) if (folder / SWEEP_FILE).exists() else None
    state = status.get("status") or (data["status"] if data else "unknown")
    message = status.get("message", "")
    job = _job_of(jobs, sweep_id)
    if state in WAITING and job is None:
        state = "interrupted"
        message = "The app stopped while this sweep was waiting or running; its finished trials are kept."
    if state == "running" and status.get("phase") == "train" and status.get("trial"):
        snap = read_snapshot(folder / status["trial"])
        if snap.status == "running" and snap.total:
            message += f" Step {snap.step} of {snap.total}."
    return {"sweep_id": sweep_id, "status": state, "message": message,
            "position": jobs.position(job) if job is not None else None, "fraction": status.get("fraction"),
            "results": data, "heatmap": (folder / HEATMAP_FILE) if (folder / HEATMAP_FILE).exists() else None}


def sweep_result(runs_dir: Path, sweep_id: str) -> tuple[dict, Path]:
    """sweep.json's data and the heatmap's path."""
    folder = sweep_path(runs_dir, sweep_id)
    return read_sweep(folder), folder / HEATMAP_FILE


def promote_winner(runs_dir: Path, sweep_id: str, name: str = "") -> str:
    """Copy the sweep's winner to a new normal run (its output the winning checkpoint); returns the run's id."""
    folder = sweep_path(runs_dir, sweep_id)
    target = runs_dir / new_run_id(safe_name(name, "") if name.strip() else f"{sweep_id}-best")
    return promote_sweep(folder, target).name


# ---------------------------------------------------------------------------------------------- showing
RESULT_COLUMNS = ["#", "trial", "learning rate", "rank", "step", "score", "class drift", "status", "reason"]


def results_rows(data: dict) -> list[list[Any]]:
    """The results table, best first: one row per scored cell, then the trials that failed before any score."""
    rows: list[list[Any]] = []
    reasons = {t["name"]: t.get("reason") or t.get("eval_error") or "" for t in data.get("trials", [])}
    for index, cell in enumerate(data.get("results", []), start=1):
        drift = cell["metrics"].get("class_drift")
        value = cell["value"]
        status = cell["trial_status"] + (" (best)" if _is_best(cell, data.get("best")) else "")
        rows.append([index, cell["trial"], f"{cell['learning_rate']:g}", cell["rank"] or "", cell["step"],
                     "-" if value is None else round(value, 4), "-" if drift is None else round(drift, 4), status,
                     reasons.get(cell["trial"], "") if cell["trial_status"] != "completed" else ""])
    scored = {cell["trial"] for cell in data.get("results", [])}
    for trial in data.get("trials", []):
        if trial["name"] not in scored:
            rows.append(["-", trial["name"], f"{trial['learning_rate']:g}", trial.get("rank") or "", "-", "-", "-",
                         trial["status"] or "not scored", reasons.get(trial["name"]) or "no checkpoint to score"])
    return rows


def _is_best(cell: dict, best: dict | None) -> bool:
    return bool(best) and (cell["trial"], cell["step"]) == (best["trial"], best["step"])


def best_text(data: dict) -> str:
    best = data.get("best")
    if not best:
        return "No trial was scored."
    return (f"**Winner: {escape_markdown(best['trial'])} at step {best['step']}**: {escape_markdown(best['reason'])}. "
            "*Promote the winner* copies it to a normal run whose output is that checkpoint.")


def public_view(data: Any, *roots: Path) -> Any:
    """`data` with every path inside the given folders (the workspace's, then the app's data folder) made relative
    to it: API callers see no host paths."""
    prefixes = sorted({f"{root}/" for root in roots} | {f"{root.resolve()}/" for root in roots}, key=len, reverse=True)
    if isinstance(data, dict):
        return {k: public_view(v, *roots) for k, v in data.items()}
    if isinstance(data, list):
        return [public_view(v, *roots) for v in data]
    if isinstance(data, Path):
        data = str(data)
    if isinstance(data, str):
        for prefix in prefixes:
            if data.startswith(prefix):
                return data[len(prefix):]
    return data
