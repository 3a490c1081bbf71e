"""Score a run's checkpoints: generate a fixed, seeded set of images per checkpoint and measure them.

For each chosen checkpoint (and the final output) the same prompts (evaluate/prompts.py) are generated
with the same seeds through the generation engine, on the checkpoint's artifact as `run_artifacts`
materialises it; the base model is generated once (cached on disk, so sweeps over one base share it).
The scores go to `metrics.jsonl` in the run folder (one line per checkpoint, rewritten on re-evaluation)
and, as `metric` events, to events.jsonl. `best_checkpoint` (selection.py) picks one with a reason.

A run of several subjects, or one that continued an earlier run (`init_from`), is also scored per subject
(evaluate/subjects.py): each record then has `subjects`, its subject fidelity is the mean over the run's own
subjects, and the earlier output it started from is scored too (source `start`), so forgetting shows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.errors import Cancelled, SdtuneError
from sdtune_ui.evaluate.features import DEFAULT_CLIP, DEFAULT_DINO, FeatureExtractor, FeatureModels, feature_models
from sdtune_ui.evaluate.prompts import eval_prompts
from sdtune_ui.evaluate.subjects import SubjectScores, mean_of_own, run_subject_list, start_artifacts
from sdtune_ui.paths import cache_dir
from sdtune_ui.runs import RunDir

METRICS = ("dino", "clip-i", "clip-t", "drift", "kid", "fid", "loss")
IMAGE_METRICS = {"dino", "clip-i", "clip-t", "drift", "kid", "fid"}  # what needs generated images
FID_FEATURES = ("auto", "inception", "dino", "clip")
METRICS_FILE = "metrics.jsonl"
Progress = Callable[[str, float], None]


@dataclass
class EvalSettings:
    """What an evaluation measures and how its images are made (recorded with every score)."""

    metrics: tuple[str, ...] = METRICS
    num_images: int = 4              # per prompt; image i uses seed + i
    seed: int = 0
    inference_steps: int = 20
    guidance: float = 7.5
    scheduler: str = "dpm++"
    size: int = 0                    # 0 = the model's native size
    clip_model: str = DEFAULT_CLIP
    dino_model: str = DEFAULT_DINO
    fid_features: str = "auto"       # auto = Inception when torch-fidelity is installed and online, else DINO
    loss_timesteps: int = 4
    max_reference_images: int = 16   # training images compared against (and scored by the held-out loss)
    max_drift: float = 0.05          # the best checkpoint must drift less than this toward the subject

    def validate(self) -> EvalSettings:
        unknown = [m for m in self.metrics if m not in METRICS]
        problems = [f"unknown metric(s) {', '.join(unknown)} (choose from {', '.join(METRICS)})"] if unknown else []
        if not self.metrics:
            problems.append("choose at least one metric")
        if self.num_images < 1:
            problems.append("--num-images must be at least 1")
        if ("fid" in self.metrics or "kid" in self.metrics) and self.num_images * 2 < 2:
            problems.append("FID/KID need at least 2 generated images")
        if self.fid_features not in FID_FEATURES:
            problems.append(f"fid features must be one of {', '.join(FID_FEATURES)}")
        if self.loss_timesteps < 1 or self.max_reference_images < 1:
            problems.append("loss timesteps and reference images must be at least 1")
        if problems:
            raise SdtuneError("Cannot evaluate: " + "; ".join(problems) + ".")
        return self

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "metrics": list(self.metrics)}   # as JSON reads it back

    def generation_key(self) -> dict:
        return {k: getattr(self, k) for k in ("num_images", "seed", "inference_steps", "guidance", "scheduler",
                                              "size")}


@dataclass
class Target:
    """One thing to score: the base model, a checkpoint, or the run's final output."""

    source: str                      # base | start (what init_from loaded) | checkpoint | output
    step: int

    @property
    def label(self) -> str:
        return {"base": "base", "start": "start", "output": "final"}.get(self.source, f"step-{self.step}")


@dataclass
class EvaluationResult:
    run_dir: Path
    scores: list[dict]               # one record per target, base first (as written to metrics.jsonl)
    best: Any                        # selection.BestCheckpoint or None
    settings: EvalSettings
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"run": str(self.run_dir), "scores": self.scores,
                "best": self.best.to_dict() if self.best is not None else None,
                "settings": self.settings.to_dict(), "seconds": round(self.seconds, 2)}


# ---------------------------------------------------------------------------------------------- targets
def output_step(run: RunDir) -> int:
    """The step the final output was saved at: the last logged step, else the configured steps."""
    steps = [event["step"] for event in run.read_events() if event.get("kind") == "step"]
    return max(steps) if steps else int(run.config().get("max_train_steps") or 0)


def select_targets(run: RunDir, checkpoints: str | Sequence[int] = "all") -> list[Target]:
    """"all" (every checkpoint + the output), "last" (the output, else the latest checkpoint) or steps "N,M"."""
    from sdtune_ui.evaluate.selection import promoted_step
    from sdtune_ui.generate.artifacts import artifacts_in_folder, checkpoint_steps

    available = [Target("checkpoint", step) for step in checkpoint_steps(run.path)]
    # A promoted output is a copy of a checkpoint, which is scored as itself.
    if promoted_step(run.path) is None and artifacts_in_folder(run.output_dir, run.config()):
        final = Target("output", output_step(run))
        available = [t for t in available if t.step != final.step] + [final]
    if not available:
        raise SdtuneError(f"{run.path.name} has no checkpoint or output to evaluate yet.")
    if checkpoints == "all":
        return available
    if checkpoints == "last":
        return available[-1:]
    wanted = _parse_steps(checkpoints) if isinstance(checkpoints, str) else [int(s) for s in checkpoints]
    by_step = {t.step: t for t in available}
    missing = [s for s in wanted if s not in by_step]
    if missing:
        have = ", ".join(str(t.step) for t in available)
        raise SdtuneError(f"{run.path.name} has nothing saved at step(s) {', '.join(map(str, missing))} "
                          f"(available: {have}).")
    return [by_step[s] for s in wanted]


def _parse_steps(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as err:
        raise SdtuneError(f"--checkpoints takes all, last, or step numbers like 200,400 (got {text!r}).") from err


# ---------------------------------------------------------------------------------------------- images
def _generate(engine: Any, model: str, artifacts: list, prompts: Sequence[str], settings: EvalSettings,
              allow_pickle: bool) -> list[list[Any]]:
    """Images per prompt, seeds seed..seed+N-1 (the same for every target)."""
    from sdtune_ui.generate.engine import GenerationOptions

    options = dict(steps=settings.inference_steps, guidance=settings.guidance, scheduler=settings.scheduler,
                   width=settings.size, height=settings.size, seed=settings.seed, num_images=settings.num_images)
    return [engine.generate(model, artifacts, GenerationOptions(prompt=prompt, **options),
                            allow_pickle=allow_pickle).images for prompt in prompts]


def _model_stamp(model: str) -> int:
    """A local model's modification time (a folder rebuilt or replaced under the same name is another model)."""
    from sdtune_ui.models import resolve_model

    path = Path(resolve_model(model)).expanduser()
    marker = path / "model_index.json" if path.is_dir() else path
    return marker.stat().st_mtime_ns if marker.exists() else 0


def _base_images(engine: Any, model: str, prompts: Sequence[str], settings: EvalSettings,
                 allow_pickle: bool) -> list[list[Any]]:
    """The base model's images, cached on disk per (model, prompts, generation settings, device)."""
    from PIL import Image

    key = json.dumps({"model": model, "stamp": _model_stamp(model), "prompts": list(prompts),
                      **settings.generation_key(), "device": engine.device, "dtype": str(engine.dtype)},
                     sort_keys=True)
    folder = cache_dir("eval_base") / hashlib.sha256(key.encode()).hexdigest()[:16]
    names = [[f"p{p}-seed-{settings.seed + i}.png" for i in range(settings.num_images)]
             for p in range(len(prompts))]
    if (folder / "key.json").exists():
        return [[Image.open(folder / name).convert("RGB") for name in row] for row in names]
    images = _generate(engine, model, [], prompts, settings, allow_pickle)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    for row, row_names in zip(images, names, strict=True):
        for image, name in zip(row, row_names, strict=True):
            image.save(partial / name)
    (partial / "key.json").write_text(key)
    if (folder / "key.json").exists():  # written meanwhile by another process
        shutil.rmtree(partial, ignore_errors=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return images


def _save_images(folder: Path, prompts: Sequence[str], images: list[list[Any]], seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(images):
        for offset, image in enumerate(row):
            image.save(folder / f"p{index}-seed-{seed + offset}.png")
    (folder / "prompts.json").write_text(json.dumps(list(prompts), indent=1))


def reference_images(config: dict, limit: int) -> list[Any]:
    """The run's training images (the first `limit`), as the metrics compare against them."""
    from sdtune_ui.data.datasets import load_dataset

    loaded = load_dataset(config.get("data", ""), image_column=config.get("image_column", "image"),
                          caption_column=config.get("caption_column", ""))
    return loaded.examples[:limit]


# ---------------------------------------------------------------------------------------------- scoring
class _Scorer:
    """Holds what every target shares: prompts, training images and their features, base images, models."""

    def __init__(self, run: RunDir, settings: EvalSettings, engine: Any, models: FeatureModels):
        self.run, self.settings, self.engine, self.models = run, settings, engine, models
        self.config = run.config()
        if not self.config:
            raise SdtuneError(f"{run.path} is not a run folder (no config.json).")
        self.model = self.config.get("model", "")
        self.allow_pickle = bool(self.config.get("allow_pickle"))
        self.prompts = eval_prompts(self.config)
        self.examples = reference_images(self.config, settings.max_reference_images)
        self.training = [ex.image for ex in self.examples]
        self._features: dict[tuple[str, str], torch.Tensor] = {}
        self._base: list[list[Any]] | None = None
        self._held: Any = None
        wanted = set(settings.metrics)
        self.dino = models.get("dino", settings.dino_model) if wanted & {"dino", "drift"} else None
        self.clip = models.get("clip", settings.clip_model) if wanted & {"clip-i", "clip-t"} else None
        self.fid_features = self._fid_features() if wanted & {"fid", "kid"} else None
        self.subjects = SubjectScores(
            run_subject_list(run.path, self.config), limit=settings.max_reference_images, features=self.features,
            encode=self._encode, seed=settings.seed, timesteps_per_image=settings.loss_timesteps,
            num_train_timesteps=lambda: self._base_pipe().scheduler.config.num_train_timesteps)
        # Every target generates the run-wide prompts, then any subject prompt not among them.
        self.generated = [*self.prompts.all(),
                          *(p for p in self.subjects.prompts if p not in self.prompts.all())]
        self.start = start_artifacts(self.config) if self.subjects.subjects else None

    def _fid_features(self) -> FeatureExtractor | str:
        from sdtune_ui.evaluate.metrics import inception_available

        choice = self.settings.fid_features
        if choice == "auto":  # Inception when torch-fidelity and its weights are at hand, else DINO
            choice = "inception" if os.environ.get("HF_HUB_OFFLINE") != "1" and inception_available() else "dino"
        if choice == "inception":
            return "inception"
        return self.models.get(choice, self.settings.dino_model if choice == "dino" else self.settings.clip_model)

    def features(self, extractor: FeatureExtractor, name: str, images: Sequence[Any]) -> torch.Tensor:
        """`images`' features, computed once per (extractor, name): "training", "base-class", a subject's name."""
        key = (extractor.label, name)
        if key not in self._features:
            self._features[key] = extractor.image_features(list(images))
        return self._features[key]

    def base_images(self) -> list[list[Any]]:
        if self._base is None:
            self._base = _base_images(self.engine, self.model, self.generated, self.settings, self.allow_pickle)
        return self._base

    def heldout(self) -> Any:
        """The fixed noise/timesteps set, built once from the base model's VAE."""
        if self._held is None:
            self._held = self._build_heldout()
        return self._held

    def _base_pipe(self) -> Any:
        return self.engine.prepare(self.model, [], allow_pickle=self.allow_pickle)

    def _resolution(self) -> int:
        from sdtune_ui.models import detect_family

        return int(self.config.get("resolution") or 0) or detect_family(self._base_pipe()).native_resolution

    def _encode(self, images: Sequence[Any]) -> tuple[torch.Tensor, tuple[int, int]]:
        """Latents of images center-cropped to the run's resolution (the base model's VAE), and that size."""
        from sdtune_ui.evaluate.heldout import encode_pixels
        from sdtune_ui.train.data import prepare_image

        resolution, rng = self._resolution(), random.Random(0)
        pixels = torch.stack([prepare_image(image, (resolution, resolution), True, rng)[0] for image in images])
        return encode_pixels(self._base_pipe().vae, pixels), (resolution, resolution)

    def _build_heldout(self) -> Any:
        from sdtune_ui.config import TrainConfig
        from sdtune_ui.evaluate.heldout import build_heldout_set, loss_prompt
        from sdtune_ui.methods import make_method

        method = make_method(TrainConfig.from_dict(self.config))
        images = [(ex.image, loss_prompt(method, self.config, ex.caption, i), False)
                  for i, ex in enumerate(self.examples)]
        images += [(image, self.config["class_prompt"], True) for image in self._class_images(self._resolution())]
        latents, size = self._encode([image for image, _, _ in images])
        return build_heldout_set(latents, [p for _, p, _ in images], [c for _, _, c in images],
                                 num_train_timesteps=self._base_pipe().scheduler.config.num_train_timesteps,
                                 pixel_size=size, seed=self.settings.seed,
                                 timesteps_per_image=self.settings.loss_timesteps)

    def _class_images(self, resolution: int) -> list[Any]:
        if not self.config.get("with_prior_preservation") or not self.config.get("class_prompt"):
            return []
        from sdtune_ui.config import TrainConfig
        from sdtune_ui.data.datasets import load_dataset
        from sdtune_ui.train.setup import class_images_folder

        folder = class_images_folder(TrainConfig.from_dict(self.config), resolution)
        if not folder.is_dir() or not any(folder.iterdir()):
            return []
        return [ex.image for ex in load_dataset(str(folder)).examples[: self.settings.max_reference_images]]

    # ------------------------------------------------------------------ one target
    def score(self, target: Target) -> dict:
        from sdtune_ui.evaluate import metrics as m

        started = time.perf_counter()
        settings, wanted, prompts = self.settings, set(self.settings.metrics), self.prompts
        artifacts: list = [] if target.source == "base" else self._artifacts(target)
        if not wanted & IMAGE_METRICS:  # the held-out loss alone needs no image
            generated: list[list[Any]] = [[] for _ in self.generated]
        elif target.source == "base":
            generated = self.base_images()
        else:
            generated = _generate(self.engine, self.model, artifacts, self.generated, settings, self.allow_pickle)
        _save_images(self.run.path / "eval" / target.label, self.generated, generated, settings.seed)
        images = generated[: len(prompts.all())]
        subject = [image for row in images[:-1] for image in row]
        subject_texts = [text for text, row in zip(prompts.clip_text, images[:-1]) for _ in row]
        class_images = images[-1]
        scores: dict[str, float | None] = {}
        extra: dict[str, Any] = {}
        if self.dino is not None:
            training = self.features(self.dino, "training", self.training)
            if "dino" in wanted:
                scores["dino"] = m.subject_fidelity(self.dino, subject, training)
            if "drift" in wanted:
                tuned_rows = self.dino.image_features(class_images)
                base_rows = self.features(self.dino, "base-class", self.base_images()[len(images) - 1])
                scores["class_preservation"] = m.class_preservation(self.dino, tuned_rows, base_rows)
                scores["class_drift"] = m.class_drift(self.dino, tuned_rows, base_rows, training)
        if self.clip is not None:
            subject_rows = self.clip.image_features(subject)
            if "clip-i" in wanted:
                scores["clip_i"] = m.subject_fidelity(self.clip, subject_rows,
                                                      self.features(self.clip, "training", self.training))
            if "clip-t" in wanted:
                scores["clip_t"] = m.prompt_fidelity(self.clip, subject_rows, subject_texts)
        if self.fid_features is not None:
            which = [name for name in ("fid", "kid") if name in wanted]
            distance = m.distribution_distance(self.training, subject, self.fid_features, which=which,
                                               seed=settings.seed)
            if "fid" in which:
                scores["fid"] = distance.fid
            if "kid" in which:
                scores["kid"], scores["kid_std"] = distance.kid, distance.kid_std
            extra["fid_kid"] = {k: v for k, v in distance.to_dict().items() if k not in ("fid", "kid", "kid_std")}
        if "loss" in wanted:
            scores.update(self._loss(artifacts))
        if self.subjects.subjects:
            extra["subjects"] = self._subject_scores(dict(zip(self.generated, generated, strict=True)), artifacts)
            for key in ("dino", "clip_i", "clip_t"):  # a run of several subjects is as good as their mean
                if key in scores and len([e for e in extra["subjects"] if not e["earlier"]]) > 1:
                    scores[key] = mean_of_own(extra["subjects"], key)
        return {"step": target.step, "source": target.source, "label": target.label,
                "metrics": {k: (round(v, 6) if v is not None else None) for k, v in scores.items()},
                "images": {"subject": len(subject), "class": len(class_images), "training": len(self.training),
                           "per_prompt": settings.num_images},
                "prompts": {"subject": list(prompts.subject), "clip_text": list(prompts.clip_text),
                            "class": prompts.class_prompt},
                **extra,
                "features": {"dino": self.dino.label if self.dino else None,
                             "clip": self.clip.label if self.clip else None},
                "settings": settings.to_dict(), "seconds": round(time.perf_counter() - started, 3),
                "t": round(time.time(), 3)}

    def _artifacts(self, target: Target) -> list:
        from sdtune_ui.generate.artifacts import run_artifacts

        if target.source == "start":
            return list(self.start or [])
        return run_artifacts(self.run.path, None if target.source == "output" else target.step).artifacts

    def _subject_scores(self, images: dict[str, list[Any]], artifacts: list) -> list[dict]:
        from sdtune_ui.evaluate.heldout import heldout_loss
        from sdtune_ui.evaluate.subjects import clip_text
        from sdtune_ui.models import model_parts

        pipe = self.engine.prepare(self.model, artifacts, allow_pickle=self.allow_pickle)
        parts = model_parts(pipe)
        expand = getattr(pipe, "maybe_convert_prompt", None)  # multi-vector tokens of loaded embeddings

        def loss_of(held: Any) -> float:
            if expand is not None:
                held = dataclasses.replace(held, prompts=[expand(p, pipe.tokenizer) for p in held.prompts])
            return heldout_loss(parts, held)["loss"]

        return self.subjects.score(images, dino=self.dino, clip=self.clip,
                                   clip_text=lambda prompt: clip_text(prompt, self.config),
                                   wanted=set(self.settings.metrics), loss_of=loss_of)

    def _loss(self, artifacts: list) -> dict[str, float]:
        from sdtune_ui.evaluate.heldout import heldout_loss
        from sdtune_ui.models import model_parts

        held = self.heldout()
        pipe = self.engine.prepare(self.model, artifacts, allow_pickle=self.allow_pickle)
        return heldout_loss(model_parts(pipe), held)


# ---------------------------------------------------------------------------------------------- files
def comparable(record: dict, settings: EvalSettings) -> bool:
    """True when a record was measured like `settings` would measure (same images, same feature models)."""
    same = ("num_images", "seed", "inference_steps", "guidance", "scheduler", "size", "clip_model", "dino_model",
            "fid_features", "loss_timesteps", "max_reference_images")
    recorded = record.get("settings") or {}
    return all(recorded.get(name) == getattr(settings, name) for name in same)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of metrics.jsonl, base first then by step (an unreadable line is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return sorted(records, key=_order)


def _order(record: dict) -> tuple[int, int, int]:
    return (record.get("source") != "base", int(record.get("step") or 0), record.get("source") == "output")


def write_metrics(run_dir: str | Path, records: Sequence[dict], *, drop: Sequence[tuple[str, int]] = ()) -> Path:
    """Merge records into metrics.jsonl: one line per (source, step), newer replacing older; atomic."""
    path = Path(run_dir) / METRICS_FILE
    merged = {(r["source"], r["step"]): r for r in read_metrics(run_dir)}
    for key in drop:
        merged.pop(key, None)
    merged.update({(r["source"], r["step"]): r for r in records})
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    partial.write_text("".join(json.dumps(r) + "\n" for r in sorted(merged.values(), key=_order)), encoding="utf-8")
    partial.replace(path)
    return path


# ---------------------------------------------------------------------------------------------- entry point
def evaluate_run(run_dir: str | Path, *, checkpoints: str | Sequence[int] = "all",
                 settings: EvalSettings | None = None, engine: Any = None, models: FeatureModels | None = None,
                 progress: Progress | None = None, cancel: Callable[[], bool] | None = None,
                 include_base: bool = True) -> EvaluationResult:
    """Score the chosen checkpoints (and the base model) of a run; write metrics.jsonl and metric events.

    Returns every record written plus the best checkpoint (selection.best_checkpoint) for the settings'
    drift limit, ranked by DINO when measured, else CLIP-I, CLIP-T, KID, FID or the held-out loss.
    """
    from sdtune_ui.evaluate.selection import best_checkpoint, default_metric
    from sdtune_ui.generate.engine import default_engine

    settings = (settings or EvalSettings()).validate()
    run = RunDir(Path(run_dir))
    targets = select_targets(run, checkpoints)
    started = time.perf_counter()
    scorer = _Scorer(run, settings, engine or default_engine(), models or feature_models())
    if include_base:
        targets = [Target("base", 0), *([Target("start", 0)] if scorer.start else []), *targets]
    events = run.events()
    records = []
    for index, target in enumerate(targets):
        if cancel is not None and cancel():
            raise Cancelled()
        if progress is not None:
            progress(f"Scoring {target.label} ({index + 1}/{len(targets)})", index / len(targets))
        record = scorer.score(target)
        records.append(record)
        events.emit("metric", step=record["step"], source=record["source"], metrics=record["metrics"])
    write_metrics(run.path, records)
    if progress is not None:
        progress("Evaluation finished", 1.0)
    scored = [r for r in read_metrics(run.path) if comparable(r, settings)]
    best = best_checkpoint(scored, default_metric(settings.metrics), max_drift=settings.max_drift)
    return EvaluationResult(run.path, records, best, settings, time.perf_counter() - started)

