"""What the Generate tab shows about runs, without gradio: the run picker's entries, each run's real trigger
words, and how long a grid will take on this machine (measured seconds per image, or an assumption)."""

from __future__ import annotations

import math
import re
import statistics
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

from sdtune_ui.app.live import format_duration
from sdtune_ui.methods import ADAPTER, TOKENS, method_named, method_names

NONE = ""   # "no trained result": the base model alone
GRID_BUDGET_S = 120.0  # the default grid is sized to take about this long on this machine
# Seconds per denoising step of one image before anything was measured here: the built-in tiny models
# (any device), a GPU at native size, a CPU with a real model.
ASSUMED_STEP_S = {"tiny": 0.02, "gpu": 0.06, "cpu": 3.0}
_ARTICLE = re.compile(r"^(a|an|the)\s+((photo|picture|painting|rendering|drawing|image)\s+of\s+)?((a|an|the|my)\s+)?",
                      re.IGNORECASE)


def method_traits(config: dict) -> tuple[bool, bool]:
    """(trains adapters, learns tokens) of a run's method, False for an unknown method."""
    method = str(config.get("method", ""))
    if method not in method_names():
        return False, False
    cls = method_named(method)
    return cls.has(ADAPTER), cls.has(TOKENS)


def instance_token(prompt: str) -> str:
    """The rare word of a DreamBooth-style prompt: "a photo of sks dog" -> "sks" (the word before the class)."""
    rest = _ARTICLE.sub("", prompt.strip()).split()
    return rest[0] if len(rest) >= 2 else (rest[0] if rest else "")


def trigger_words(config: dict) -> list[str]:
    """The words a prompt needs to call up what the run learned: its new tokens, or the rare word of its instance
    prompt (and of its dataset's concepts); nothing for a run trained on plain captions."""
    _, tokens = method_traits(config)
    words: list[str] = []
    if tokens and config.get("placeholder_token"):
        words.append(str(config["placeholder_token"]))
    instance = str(config.get("instance_prompt") or "").strip()
    if instance and not tokens:
        words.append(instance_token(instance))
    if not tokens:
        words += _concept_tokens(str(config.get("data") or ""))
    return [w for w in dict.fromkeys(words) if w]


def _concept_tokens(data: str) -> list[str]:
    from sdtune_ui.data.layouts import scan_dataset
    from sdtune_ui.errors import DatasetError

    folder = Path(data).expanduser() if data else None
    if folder is None or not folder.is_dir():
        return []
    try:
        scan = scan_dataset(folder, strict=False)
    except (DatasetError, OSError):
        return []
    return [concept.token for concept in scan.concepts if concept.token]


def source_label(run_id: str, config: dict, step: int | None) -> str:
    """One entry of the run picker: "robot-lora-20261130-1200-ab12 · LoRA on tiny-sd1 · step 20"."""
    method = str(config.get("method", "?"))
    label = method_named(method).label if method in method_names() else method
    where = "final" if step is None else f"step {step}"
    return f"{run_id} · {label} on {config.get('model', '?')} · {where}"


def source_choices(runs_dirs: str | Path | list[Path]) -> list[tuple[str, str]]:
    """The run picker over one runs folder or several: (label, value), value `run-id` or `run-id@step-N`; the base
    model alone first."""
    from sdtune_ui.generate.artifacts import list_choices
    from sdtune_ui.runs import RunDir

    choices = [("(none: base model only)", NONE)]
    configs: dict[str, dict] = {}
    folders = [runs_dirs] if isinstance(runs_dirs, (str, Path)) else list(runs_dirs)
    for choice in [choice for folder in folders for choice in list_choices(folder)]:
        name = Path(choice.run_dir).name
        config = configs.setdefault(name, RunDir(Path(choice.run_dir)).config())
        value = name if choice.step is None else f"{name}@step-{choice.step}"
        choices.append((source_label(name, config, choice.step), value))
    return choices


# ---------------------------------------------------------------------------------------------- grid sizes
class StepTimer:
    """A generation's step callback that also times the denoising steps (the first step's start is unknown,
    so the steps after it are timed): seconds per step, loading and decoding left out."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def tick(self) -> None:
        import time

        self.marks.append(time.perf_counter())

    def seconds_per_step(self) -> float | None:
        if len(self.marks) < 2:
            return None
        return (self.marks[-1] - self.marks[0]) / (len(self.marks) - 1)


class SpeedLog:
    """Seconds per denoising step of one image, measured on this machine per base model (thread-safe)."""

    def __init__(self, keep: int = 5):
        self._seen: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=keep))
        self._lock = threading.Lock()

    def record(self, model: str, seconds_per_step: float) -> None:
        """One measurement: seconds one denoising step of one image took (loading time excluded)."""
        if seconds_per_step > 0:
            with self._lock:
                self._seen[model].append(seconds_per_step)

    def step_seconds(self, model: str, *, cuda: bool) -> tuple[float, bool]:
        """(seconds per image step, measured?) for `model`: the median of the last measurements, else assumed."""
        with self._lock:
            seen = list(self._seen.get(model, ()))
        if seen:
            return statistics.median(seen), True
        from sdtune_ui.models import OFFLINE_MODELS

        return ASSUMED_STEP_S["tiny" if model in OFFLINE_MODELS else "gpu" if cuda else "cpu"], False


@dataclass(frozen=True)
class GridPlan:
    rows: int
    columns: int
    seconds_per_image: float
    measured: bool

    @property
    def images(self) -> int:
        return self.rows * self.columns

    @property
    def seconds(self) -> float:
        return self.images * self.seconds_per_image

    def text(self) -> str:
        basis = "measured here" if self.measured else "assumed until a first generation is measured"
        return (f"{self.rows} row(s) x {self.columns} prompt(s) = **{self.images} images** x "
                f"~{self.seconds_per_image:.2g} s ({basis}) = about **{format_duration(self.seconds)}**.")


def plan_grid(checkpoints: int, scales: int, prompts: int, steps: int, step_seconds: float, measured: bool) -> GridPlan:
    return GridPlan(max(1, checkpoints) * max(1, scales), max(1, prompts), step_seconds * max(1, steps), measured)


def default_checkpoints(available: list[str], row_seconds: float, budget_s: float = GRID_BUDGET_S) -> list[str]:
    """Checkpoints for a grid that fits the budget: spread evenly over the run, always ending with the last."""
    if not available:
        return []
    fits = max(1, min(len(available), math.floor(budget_s / max(row_seconds, 1e-6))))
    if fits >= len(available):
        return list(available)
    if fits == 1:
        return [available[-1]]
    picks = {round(i * (len(available) - 1) / (fits - 1)) for i in range(fits)}
    return [available[i] for i in sorted(picks)]


def parse_scales(text: str) -> list[float]:
    from sdtune_ui.errors import SdtuneError

    try:
        return [float(x) for x in (text or "").replace(";", ",").split(",") if x.strip()]
    except ValueError as err:
        raise SdtuneError("LoRA scales: numbers separated by commas, e.g. 0.5, 1.0.") from err


def grid_rows_wanted(ticked: list[str] | None) -> list[int | None] | None:
    """The grid's checkpoint choice ("final" or a step) as overfitting_grid takes it (None: all)."""
    return [None if s == "final" else int(s) for s in (ticked or [])] or None
