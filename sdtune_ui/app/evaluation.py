"""What the app's metrics controls do, without gradio: evaluate a run through the GPU queue, the data for a
metrics plot with the best checkpoint marked, and "use this checkpoint". Sweeps are in app/sweeps.py.

Runs are named by id inside the app's runs folder (never a path), as in app/ops.py. An evaluation runs as a
queue job (`jobs.submit_job`), so it takes turns with training, captioning and generation, shows its progress
("checkpoint 2 of 4") in the queue panel, and stops between checkpoints when its job is cancelled.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from sdtune_ui.app.ops import run_dir
from sdtune_ui.app.public_rules import HUB_ID
from sdtune_ui.app.text import escape_markdown
from sdtune_ui.errors import SdtuneError
from sdtune_ui.evaluate.evaluation import (
    EvalSettings,
    EvaluationResult,
    evaluate_run,
    select_targets,
)
from sdtune_ui.evaluate.report import LABELS, latest_records, max_drift_of, metric_rows
from sdtune_ui.evaluate.selection import (
    HIGHER_IS_BETTER,
    best_checkpoint,
    default_metric,
    promote_checkpoint,
    promoted_step,
)

# What an app caller may set; the rest of EvalSettings keeps its defaults.
SETTING_FIELDS = ("metrics", "num_images", "seed", "inference_steps", "guidance", "size", "clip_model",
                  "dino_model", "fid_features", "max_drift")
# The metrics plot: one line for the checkpoints, the base model as a flat reference line, and the trainer's
# held-out loss probes (`eval_steps`) where the plotted metric is a loss.
PLOT_SERIES = {"checkpoints": "#4c78a8", "base model": "#9d9d9d", "training probe": "#54a24b"}


# ---------------------------------------------------------------------------------------------- settings
def eval_settings(values: dict | None, *, allow_local_paths: bool = True, public: bool = False) -> EvalSettings:
    """EvalSettings from widget or API values: unknown names refused, numbers converted and within the limits of
    generation (`public`: a public app's), feature models checked (where the app may not read host paths, only
    the built-in ones or Hub ids)."""
    from sdtune_ui.evaluate.tiny import OFFLINE_FEATURE_MODELS

    if values is not None and not isinstance(values, dict):
        raise SdtuneError("Give the evaluation settings as a JSON object, e.g. {\"num_images\": 2}.")
    values = {k: v for k, v in (values or {}).items() if v is not None}
    unknown = sorted(set(values) - set(SETTING_FIELDS))
    if unknown:
        raise SdtuneError(f"Unknown evaluation setting(s) {', '.join(unknown)}; use {', '.join(SETTING_FIELDS)}.")
    defaults = EvalSettings()
    changes: dict[str, Any] = {}
    for name, value in values.items():
        default = getattr(defaults, name)
        try:
            if name == "metrics":
                parts = value.split(",") if isinstance(value, str) else list(value)
                changes[name] = tuple(str(p).strip() for p in parts if str(p).strip())
            elif isinstance(default, (int, float)):
                number = float(value)
                if isinstance(default, int) and number != int(number):
                    raise ValueError
                changes[name] = type(default)(number)
            else:
                changes[name] = str(value).strip() or default
        except (TypeError, ValueError, OverflowError):
            raise SdtuneError(f"Evaluation setting {name}: {value!r} is not a valid value "
                              f"(like {default!r}).") from None
    settings = dataclasses.replace(defaults, **changes).validate()
    _check_limits(settings, public=public)
    for kind, model in (("CLIP", settings.clip_model), ("DINO", settings.dino_model)):
        if model in OFFLINE_FEATURE_MODELS or (HUB_ID.match(model) and ".." not in model):
            continue
        if allow_local_paths and Path(model).expanduser().is_dir():
            continue
        where = ", or a local model folder" if allow_local_paths else ""
        raise SdtuneError(f"{kind} model {model[:100]!r}: give a Hub id (user/name){where}, or "
                          f"{' / '.join(OFFLINE_FEATURE_MODELS)} for the offline demo.")
    return settings


def _check_limits(settings: EvalSettings, *, public: bool) -> None:
    """An evaluation generates images like the Generate tab does: the same limits on steps, images and size."""
    from sdtune_ui.errors import ConfigError
    from sdtune_ui.generate.options import GenerationOptions

    names = {"steps": "inference_steps", "width": "size", "height": "size", "num_images": "num_images",
             "guidance": "guidance", "seed": "seed"}
    try:
        GenerationOptions(steps=settings.inference_steps, num_images=settings.num_images, width=settings.size,
                          height=settings.size, guidance=settings.guidance, seed=settings.seed).validate(public=public)
    except ConfigError as err:
        problems = {names.get(name, name): message for name, message in err.field_errors.items()}
        raise SdtuneError("Evaluation settings: " + " ".join(f"{name}: {message}" for name, message in
                                                              problems.items())) from None


# ---------------------------------------------------------------------------------------------- evaluate
def submit_evaluation(jobs: Any, runs_dir: Path, run_id: str, settings: EvalSettings | None = None, *,
                      checkpoints: str = "all", progress: Callable[[str, float], None] | None = None,
                      owner: str = "", user: str = "") -> Any:
    """Queue `evaluate` for a run; the job's result is an EvaluationResult (its error a SdtuneError).

    Settings and the checkpoint choice are checked now, not after the wait in the queue.
    """
    run = run_dir(runs_dir, run_id)
    settings = (settings or EvalSettings()).validate()
    select_targets(run, checkpoints or "all")

    def work(job: Any) -> EvaluationResult:
        total = len(select_targets(run, checkpoints or "all")) + 1   # + the base model

        def report(message: str, fraction: float) -> None:
            job.report(min(total, math.floor(fraction * total + 1e-6)), total, "checkpoint")
            if progress is not None:
                progress(message, fraction)

        return evaluate_run(run.path, checkpoints=checkpoints or "all", settings=settings, progress=report,
                            cancel=lambda: job.cancelled)

    return jobs.submit_job(f"evaluate {run_id}", work, owner=owner, user=user)


def result_summary(result: EvaluationResult) -> dict:
    """An evaluation's result for API callers: the run's id instead of its path on this machine."""
    data = result.to_dict()
    data["run"] = Path(data["run"]).name
    return data


# ---------------------------------------------------------------------------------------------- run view
def run_metrics(runs_dir: Path, run_id: str, metric: str | None = None, max_drift: float | None = None) -> dict:
    """For the run view and API callers: rows {step, source, metric, value} to plot over steps, the best
    checkpoint with its reason (None before any evaluation), and the step the output was promoted from.

    The best is chosen among the scores measured like the newest evaluation, with its drift limit by default.
    """
    run = run_dir(runs_dir, run_id)
    best = _best(latest_records(run.path), metric, max_drift)
    return {"rows": metric_rows(run.path), "best": best.to_dict() if best else None,
            "promoted_from_step": promoted_step(run.path)}


def _best(records: list[dict], metric: str | None = None, max_drift: float | None = None) -> Any:
    if not records:
        return None
    measured = sorted({name.replace("_", "-") for r in records for name in r["metrics"]})
    limit = max_drift_of(records) if max_drift is None else max_drift
    return best_checkpoint(records, metric or default_metric(measured), max_drift=limit)


def use_checkpoint(runs_dir: Path, run_id: str, step: int, reason: str = "chosen in the app") -> list[str]:
    """"Use this checkpoint": make checkpoint `step` the run's output; returns the output files' names."""
    run = run_dir(runs_dir, run_id)
    try:
        step = int(step)
    except (TypeError, ValueError):
        raise SdtuneError(f"Pick a checkpoint step (got {step!r}).") from None
    return [path.name for path in promote_checkpoint(run.path, step, reason=reason)]


@dataclasses.dataclass
class MetricsView:
    """What the run view shows about a run's scores."""

    frame: pd.DataFrame          # step, value, series: for one line plot
    choices: list[tuple[str, str]]  # (label, metric key) of the metrics measured
    metric: str | None           # the one plotted
    best_text: str               # Markdown: the best checkpoint and why, the promoted step
    steps: list[int]             # checkpoint steps a user may promote
    best_step: int | None        # the best checkpoint's step (a checkpoint, not the final output)


def empty_frame() -> pd.DataFrame:
    """Every series named, without values: Gradio fixes a plot's colours from the first data it draws."""
    return pd.DataFrame({"step": [math.nan] * len(PLOT_SERIES), "value": [math.nan] * len(PLOT_SERIES),
                         "series": list(PLOT_SERIES)})


def last_settings(run_path: Path | None) -> dict[str, Any] | None:
    """The settings (SETTING_FIELDS) of the run's newest evaluation, for "Evaluate this run" to start from: scores
    are only compared with scores measured the same way. None when the run was never evaluated."""
    records = latest_records(run_path) if run_path is not None else []
    if not records:
        return None
    settings = max(records, key=lambda r: r.get("t") or 0).get("settings") or {}
    return {name: settings[name] for name in SETTING_FIELDS if name in settings} or None


def metrics_view(run_path: Path, probes: list[dict], metric: str | None = None) -> MetricsView:
    """The metrics plot's data for `metric` (default: the one the best checkpoint is ranked by), the best line."""
    from sdtune_ui.generate.artifacts import checkpoint_steps

    records = latest_records(run_path)
    measured = [key for key in LABELS if any(r["metrics"].get(key) is not None for r in records)
                or any(p["metrics"].get(key) is not None for p in probes)]
    found = _best(records)
    best = found.to_dict() if found else None
    if metric not in measured:
        metric = best["metric"] if best and best["metric"] in measured else (measured[0] if measured else None)
    rows = []
    if metric is not None:
        steps = [r["step"] for r in records if r["source"] != "base"] + [p["step"] for p in probes]
        for r in records:
            value = r["metrics"].get(metric)
            if value is None:
                continue
            if r["source"] == "base":   # a flat reference line over the steps scored
                rows += [(s, value, "base model") for s in (0, max(steps, default=0))]
            elif r["source"] in ("checkpoint", "output"):
                rows.append((r["step"], value, "checkpoints"))
        rows += [(p["step"], p["metrics"][metric], "training probe") for p in probes
                 if p["metrics"].get(metric) is not None]
    frame = pd.DataFrame(rows, columns=["step", "value", "series"]) if rows else empty_frame()
    frame = pd.concat([frame, empty_frame()], ignore_index=True)
    available = checkpoint_steps(run_path)
    best_step = best["step"] if best and best["source"] == "checkpoint" else None
    return MetricsView(frame.sort_values(["series", "step"], na_position="last"),
                       [(LABELS[key], key) for key in measured], metric,
                       best_markdown(best, promoted_step(run_path)), available, best_step)


def best_markdown(best: dict | None, promoted_from: int | None) -> str:
    if best is None:
        text = "**Best checkpoint:** not evaluated yet (press *Evaluate this run*)."
    else:
        direction = "higher" if HIGHER_IS_BETTER[best["metric"]] else "lower"
        text = (f"**Best checkpoint: {escape_markdown(best['label'])}**: {escape_markdown(best['reason'])} "
                f"(ranked by {escape_markdown(LABELS[best['metric']])}, {direction} is better).")
    if promoted_from is not None:
        text += f"  \nThe run's output is checkpoint {promoted_from} (*Use this checkpoint*)."
    return text
