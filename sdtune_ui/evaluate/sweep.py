"""Learning rate x steps (x LoRA rank) sweep, ranked by a metric.

One trial per learning rate (x rank) trains to the largest step count, checkpointing at the greatest common
divisor of the listed steps, and each listed step is then scored from its checkpoint (the largest from the
final output). So lr x steps costs #lr training runs, not #lr x #steps. Every trial is an ordinary run folder
under the sweep's folder (the app lists it, `generate --run` uses it, a rerun of the sweep reuses a completed
trial and resumes an interrupted one). A trial that runs out of memory or diverges (the trainer reports a
failed status) is recorded with its reason, its checkpoints saved before the failure are still scored, and
the sweep goes on.

Results: `sweep.json` (cells best first, trials, timing) and `heatmap.png` in the sweep folder;
`promote_sweep` copies the winner to a normal run whose output is the winning checkpoint.

The trainer keeps latents and text embeddings in memory for one run: each trial encodes its images and
prompts again at setup (and loads the base model again). `sweep.json` reports that setup time per trial, so
the overhead of the missing cross-run cache is measured rather than guessed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import Cancelled, SdtuneError
from sdtune_ui.evaluate.evaluation import EvalSettings, evaluate_run
from sdtune_ui.evaluate.selection import HIGHER_IS_BETTER, NAMES, choose_best, metric_key, promote_checkpoint
from sdtune_ui.methods import ADAPTER
from sdtune_ui.runs import RunDir

SWEEP_FILE = "sweep.json"
HEATMAP_FILE = "heatmap.png"


@dataclass
class SweepSpec:
    """A grid of trials over one base config."""

    base: TrainConfig
    learning_rates: list[float]
    steps: list[int]
    out_dir: Path
    ranks: list[int] = field(default_factory=list)       # empty: the base config's rank
    metric: str = "dino"
    settings: EvalSettings = field(default_factory=EvalSettings)

    def validate(self) -> SweepSpec:
        problems = []
        if not self.learning_rates or any(not lr > 0 for lr in self.learning_rates):
            problems.append("give one or more learning rates above 0, e.g. 5e-5,1e-4,2e-4")
        if not self.steps or any(s < 1 for s in self.steps):
            problems.append("give one or more step counts of at least 1, e.g. 200,400,800")
        if self.ranks and not self.base.has(ADAPTER):
            problems.append(f"ranks apply to LoRA methods; {self.base.method} has none")
        if any(r < 1 for r in self.ranks):
            problems.append("ranks must be at least 1")
        try:
            key = metric_key(self.metric)
        except SdtuneError as err:
            problems.append(str(err))
            key = ""
        if problems:
            raise SdtuneError("Cannot sweep: " + "; ".join(problems) + ".")
        self.steps = sorted(set(self.steps))
        self.learning_rates = list(dict.fromkeys(self.learning_rates))
        self.ranks = list(dict.fromkeys(self.ranks))
        cli_name = next(name for name, k in NAMES.items() if k == key)
        if cli_name not in self.settings.metrics:  # the ranking metric is always measured
            self.settings = dataclasses.replace(self.settings, metrics=(*self.settings.metrics, cli_name))
        self.settings.validate()
        self.base.validate()
        return self

    @property
    def checkpoint_every(self) -> int:
        """Checkpoints at every listed step: their greatest common divisor (the last step is the output)."""
        every = reduce(math.gcd, self.steps)
        return 0 if every == max(self.steps) else every

    def trials(self) -> list[Trial]:
        ranks = self.ranks or [None]
        return [Trial(lr, rank) for lr in self.learning_rates for rank in ranks]

    def trial_config(self, trial: Trial) -> TrainConfig:
        changes: dict[str, Any] = dict(learning_rate=trial.learning_rate, max_train_steps=max(self.steps),
                                       num_train_epochs=0, checkpointing_steps=self.checkpoint_every,
                                       checkpoints_total_limit=0)
        if trial.rank is not None:
            changes.update(rank=trial.rank)
            if self.base.lora_alpha:  # keep the base's alpha/rank ratio, so the rank changes capacity only
                changes.update(lora_alpha=self.base.lora_alpha * trial.rank / self.base.rank)
        return dataclasses.replace(self.base, **changes)


@dataclass(frozen=True)
class Trial:
    learning_rate: float
    rank: int | None = None

    @property
    def name(self) -> str:
        # A plain folder name (the app accepts only letters, digits, '.', '-', '_'): 1e+06 -> 1e06.
        return f"lr-{self.learning_rate:g}".replace("+", "") + (f"-rank-{self.rank}" if self.rank is not None else "")

    @property
    def label(self) -> str:
        return f"lr {self.learning_rate:g}" + (f", rank {self.rank}" if self.rank is not None else "")


@dataclass
class SweepProgress:
    message: str
    fraction: float
    trial: int            # 0-based index of the trial in progress
    trials: int
    phase: str            # train | evaluate | done


def sweep_budget(spec: SweepSpec) -> dict[str, int]:
    """What a sweep will do, for an estimate before starting: multiply by the measured step/eval times."""
    trials = len(spec.learning_rates) * max(1, len(spec.ranks))
    return {"trials": trials, "train_steps": trials * max(spec.steps),
            "evaluations": trials * len(spec.steps) + 1,   # + the base model once
            "images_per_evaluation": spec.settings.num_images * 3}


# ---------------------------------------------------------------------------------------------- running
def _train(config: TrainConfig, run_dir: Path, cancel: Callable[[], bool] | None) -> str:
    from sdtune_ui.train import train

    return train(config, run_dir, cancel=cancel)


def _release_gpu() -> None:
    """Drop the generation pipeline and feature models before a trial trains (they hold GPU memory)."""
    import torch

    if torch.cuda.is_available():
        from sdtune_ui.evaluate.features import release_feature_models
        from sdtune_ui.generate.engine import release_gpu

        release_gpu()
        release_feature_models()


def _status_message(run: RunDir) -> str:
    statuses = [e for e in run.read_events() if e.get("kind") == "status"]
    return statuses[-1].get("message", "") if statuses else ""


def setup_seconds(run: RunDir) -> float | None:
    """Seconds from the run's start to its first step: model loading, data, latent and text caching."""
    events = run.read_events()
    start = next((e["t"] for e in reversed(events) if e.get("kind") == "status" and e.get("status") == "starting"),
                 None)
    first = next((e["t"] for e in events if e.get("kind") == "step" and start is not None and e["t"] >= start), None)
    return round(first - start, 2) if start is not None and first is not None else None


def _check_earlier_trials(spec: SweepSpec, trials: list[Trial]) -> None:
    """A trial folder from an earlier sweep is reused (completed) or resumed, but only with the same settings."""
    from sdtune_ui.train.setup import apply_dataset_info

    for trial in trials:
        saved = RunDir(spec.out_dir / trial.name).config()
        if saved and saved != apply_dataset_info(spec.trial_config(trial)).validate().to_dict():
            raise SdtuneError(f"{spec.out_dir} already holds trial {trial.name} with other settings; choose a new "
                              "sweep folder (--out) or delete that one.")


def _run_trial(spec: SweepSpec, trial: Trial, train_fn: Callable[..., str],
               cancel: Callable[[], bool] | None) -> dict:
    import torch

    run = RunDir(spec.out_dir / trial.name)
    record: dict[str, Any] = {"name": trial.name, "learning_rate": trial.learning_rate, "rank": trial.rank,
                              "run_dir": str(run.path), "status": "", "reason": "", "seconds": {}}
    if run.status() == "completed":
        record.update(status="completed", reason="reused: this trial had already completed")
        return record
    started = time.perf_counter()
    try:
        status = train_fn(spec.trial_config(trial), run.path, cancel=cancel)
        reason = _status_message(run) if status != "completed" else ""
    except torch.OutOfMemoryError:  # the trainer reports these itself; a replaced train_fn may not
        status, reason = "failed", "Out of memory."
    except SdtuneError as err:
        status, reason = "failed", str(err)
    record.update(status=status, reason=reason)
    record["seconds"] = {"train": round(time.perf_counter() - started, 2), "setup": setup_seconds(run)}
    return record


def _evaluate_trial(spec: SweepSpec, record: dict, cancel: Callable[[], bool] | None) -> list[dict]:
    """Score the listed steps the trial reached; a failure to evaluate is recorded, not raised."""
    from sdtune_ui.evaluate.evaluation import select_targets

    run = RunDir(Path(record["run_dir"]))
    try:
        reached = {t.step for t in select_targets(run, "all")}
    except SdtuneError:
        return []
    steps = [s for s in spec.steps if s in reached]
    if not steps:
        return []
    started = time.perf_counter()
    try:
        result = evaluate_run(run.path, checkpoints=steps, settings=spec.settings, cancel=cancel)
    except Cancelled:
        raise
    except SdtuneError as err:
        record["eval_error"] = str(err)
        return []
    finally:
        record["seconds"]["evaluate"] = round(time.perf_counter() - started, 2)
    return result.scores


def run_sweep(spec: SweepSpec, *, progress: Callable[[SweepProgress], None] | None = None,
              cancel: Callable[[], bool] | None = None, train_fn: Callable[..., str] | None = None) -> dict:
    """Train and score every trial, write sweep.json and heatmap.png into spec.out_dir; return sweep.json's data.

    Gradio-free and queue-friendly: `progress` gets a SweepProgress per phase, `cancel` is polled by the
    trainer every step and between evaluations (a cancelled sweep still writes what it has).
    """
    spec.validate()
    trials = spec.trials()
    _check_earlier_trials(spec, trials)
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    train_fn = train_fn or _train
    records: list[dict] = []
    cells: list[dict] = []
    base: dict | None = None
    status = "completed"
    started = time.perf_counter()

    def report(message: str, index: int, phase: str, part: float) -> None:
        if progress is not None:
            progress(SweepProgress(message, (index + part) / len(trials), index, len(trials), phase))

    for index, trial in enumerate(trials):
        if cancel is not None and cancel():
            status = "cancelled"
            break
        report(f"Training {trial.label} ({index + 1}/{len(trials)})", index, "train", 0.0)
        _release_gpu()
        record = _run_trial(spec, trial, train_fn, cancel)
        records.append(record)
        if record["status"] == "cancelled":
            status = "cancelled"
            break
        report(f"Scoring {trial.label} ({index + 1}/{len(trials)})", index, "evaluate", 0.6)
        try:
            scores = _evaluate_trial(spec, record, cancel)
        except Cancelled:
            status = "cancelled"
            break
        for score in scores:
            if score["source"] == "base":
                base = base or score
                continue
            cells.append({**score, "trial": trial.name, "learning_rate": trial.learning_rate, "rank": trial.rank,
                          "run_dir": record["run_dir"], "trial_status": record["status"]})
    result = _summarise(spec, records, cells, base, status, time.perf_counter() - started)
    report("Sweep finished" if status == "completed" else "Sweep cancelled", len(trials) - 1, "done", 1.0)
    return result


# ---------------------------------------------------------------------------------------------- results
def _summarise(spec: SweepSpec, records: list[dict], cells: list[dict], base: dict | None, status: str,
               seconds: float) -> dict:
    key = metric_key(spec.metric)
    higher = HIGHER_IS_BETTER[key]
    chosen = choose_best(([base] if base else []) + cells, key, max_drift=spec.settings.max_drift)
    best = None
    if chosen is not None:
        cell, reason = chosen
        best = {"trial": cell["trial"], "run_dir": cell["run_dir"], "learning_rate": cell["learning_rate"],
                "rank": cell["rank"], "step": cell["step"], "source": cell["source"],
                "value": cell["metrics"][key], "reason": reason}
    ranked = sorted(cells, key=lambda c: _rank_key(c, key, higher))
    train_s = sum(r["seconds"].get("train") or 0 for r in records)
    eval_s = sum(r["seconds"].get("evaluate") or 0 for r in records)
    setup_s = sum(r["seconds"].get("setup") or 0 for r in records)
    data = {
        "status": status, "metric": key, "higher_is_better": higher, "max_drift": spec.settings.max_drift,
        "grid": {"learning_rates": spec.learning_rates, "steps": spec.steps, "ranks": spec.ranks,
                 "checkpoint_every": spec.checkpoint_every},
        "best": best,
        "results": [_cell_summary(c, key) for c in ranked],
        "trials": records,
        "base": {"metrics": base["metrics"]} if base else None,
        "timing": {"total_s": round(seconds, 2), "train_s": round(train_s, 2), "setup_s": round(setup_s, 2),
                   "evaluate_s": round(eval_s, 2), "other_s": round(seconds - train_s - eval_s, 2)},
        "cache_note": ("Each trial loads the base model and encodes its latents and text embeddings again at "
                       "setup (the trainer caches them per run only); setup_s is that cost, summed over trials."),
        "settings": spec.settings.to_dict(),
        "base_config": spec.base.to_dict(),
        "heatmap": HEATMAP_FILE,
    }
    (spec.out_dir / SWEEP_FILE).write_text(json.dumps(data, indent=2) + "\n")
    sweep_heatmap(data).save(spec.out_dir / HEATMAP_FILE)
    return data


def _rank_key(cell: dict, key: str, higher: bool) -> tuple:
    value = cell["metrics"].get(key)
    if value is None:
        return (1, 0.0, cell["step"])
    return (0, -value if higher else value, cell["step"])


def _cell_summary(cell: dict, key: str) -> dict:
    return {"trial": cell["trial"], "learning_rate": cell["learning_rate"], "rank": cell["rank"],
            "step": cell["step"], "source": cell["source"], "value": cell["metrics"].get(key),
            "metrics": cell["metrics"], "run_dir": cell["run_dir"], "trial_status": cell["trial_status"]}


def sweep_heatmap(data: dict) -> Any:
    """The heatmap image of a sweep.json's data: trials (rows) x steps (columns)."""
    from sdtune_ui.evaluate.heatmap import heatmap

    steps = data["grid"]["steps"]
    trials = data["trials"]
    values: dict[tuple[str, int], float | None] = {(c["trial"], c["step"]): c["value"] for c in data["results"]}
    grid = [[values.get((t["name"], s)) for s in steps] for t in trials]
    notes = [["failed" if t["status"] == "failed" and values.get((t["name"], s)) is None
              else "cancelled" if t["status"] == "cancelled" and values.get((t["name"], s)) is None else ""
              for s in steps] for t in trials]
    best = data.get("best")
    position = None
    if best:
        names = [t["name"] for t in trials]
        position = (names.index(best["trial"]), steps.index(best["step"])) if best["step"] in steps else None
    row_labels = [t["name"].replace("-", " ", 1).replace("-rank-", ", rank ") for t in trials]
    footer = f"best: {best['trial']} step {best['step']}: {best['reason']}" if best else "no trial was scored"
    return heatmap(grid, row_labels=row_labels, col_labels=[f"{s} steps" for s in steps],
                   title=f"{data['metric']} by learning rate x steps", higher_is_better=data["higher_is_better"],
                   notes=notes, best=position, footer=footer)


def read_sweep(sweep_dir: str | Path) -> dict:
    path = Path(sweep_dir) / SWEEP_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SdtuneError(f"{sweep_dir} has no readable {SWEEP_FILE} (is it a sweep folder?): {err}") from err


def promote_sweep(sweep_dir: str | Path, run_dir: str | Path) -> Path:
    """Copy the sweep's winner to a normal run folder whose output is the winning checkpoint; return it."""
    data = read_sweep(sweep_dir)
    best = data.get("best")
    if not best:
        raise SdtuneError("This sweep has no scored trial to promote.")
    source, target = Path(best["run_dir"]), Path(run_dir)
    if target.exists():
        raise SdtuneError(f"{target} already exists; choose a new run folder.")
    keep = f"step-{best['step']}"

    def skip(folder: str, names: Sequence[str]) -> list[str]:
        if Path(folder) == source / "checkpoints":  # only the winning checkpoint travels
            return [n for n in names if n != keep]
        return [n for n in names if n in ("CANCEL", "eval")] if Path(folder) == source else []

    shutil.copytree(source, target, ignore=skip)
    run = RunDir(target)
    run.events().emit("log", level="info", message=f"Copied from sweep trial {best['trial']} ({best['reason']}).")
    if best["source"] == "checkpoint":
        promote_checkpoint(target, int(best["step"]), reason=f"sweep winner: {best['reason']}")
    return target
