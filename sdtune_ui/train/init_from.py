"""Subjects one after another: a run that starts from an earlier run's output (`init_from`).

What continues depends on what the run trains: LoRA weights load into this run's adapter (same adapter
settings, else a readable refusal), textual-inversion embeddings start the tokens of the same name (other
earlier tokens ride along frozen and are saved with the output), and a full fine-tune takes the earlier
pipeline as its base model (train/setup.py: apply_dataset_info). The run's config keeps `init_from`; an
`init_from` event records what was loaded and which earlier subjects the new run may have overwritten, so
an evaluation can re-measure them (`earlier_subjects`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.config import TrainConfig, field_info
from sdtune_ui.errors import ConfigError, SdtuneError
from sdtune_ui.generate.artifacts import Artifact, artifact_from_spec, artifacts_in_folder, parse_choice, run_artifacts
from sdtune_ui.methods import ADAPTER, FULL_WEIGHTS, TOKENS, Method, method_named, method_names
from sdtune_ui.methods.outputs import EMBEDDING, LORA, PIPELINE
from sdtune_ui.runs import RunDir

EVENT = "init_from"
_TEXT_ENCODER_PREFIXES = ("text_encoder", "text_encoder_2")


@dataclass
class InitSource:
    """What an `init_from` value points at."""

    spec: str                       # as the user gave it
    path: Path                      # the file or folder holding the artifacts
    artifacts: list[Artifact]
    run_dir: Path | None = None     # the earlier run, when the artifacts belong to one
    step: int | None = None         # its checkpoint, when one was named (RUN@step-N)
    config: dict = field(default_factory=dict)  # the earlier run's settings ({} for a bare file)

    def of_kind(self, kind: str) -> list[Artifact]:
        return [a for a in self.artifacts if a.kind == kind]

    @property
    def kinds(self) -> str:
        return ", ".join(sorted({a.kind for a in self.artifacts})) or "nothing trained"


def _refuse(message: str) -> ConfigError:
    return ConfigError({"init_from": message})


def missing_source(spec: str) -> str | None:
    """Why `init_from` cannot be used, checked without loading anything (config validation); None if it may."""
    path = Path(parse_choice(spec.strip())[0]).expanduser()
    if not path.exists():
        return (f"{spec} was not found: give an earlier run folder, RUN@step-N, or a LoRA / embedding file "
                "or a fine-tuned pipeline folder.")
    return None


def resolve_source(spec: str) -> InitSource:
    """The artifacts `spec` names: a run's output (or checkpoint with @step-N), a run's output folder, a
    pipeline folder, or a LoRA / embedding file."""
    problem = missing_source(spec)
    if problem:
        raise _refuse(problem)
    path_text, step = parse_choice(spec.strip())
    path = Path(path_text).expanduser().resolve()
    run_dir = _run_folder(path if path.is_dir() else path.parent)  # a file in a run's output/ belongs to it
    try:
        if run_dir == path:
            found = run_artifacts(path, step)
            folder = path / "output" if step is None else path / "checkpoints" / f"step-{step}" / "artifact"
            return InitSource(spec, folder, found.artifacts, path, step, found.config)
        if step is not None:
            raise _refuse(f"{spec}: @step-N names a checkpoint of a run folder; {path} is not one.")
        config = RunDir(run_dir).config() if run_dir else {}
        artifacts = artifacts_in_folder(path, config) if path.is_dir() else [artifact_from_spec(str(path))]
    except ConfigError:
        raise
    except SdtuneError as err:
        raise _refuse(f"Cannot start from {spec}: {err}") from err
    if not artifacts:
        raise _refuse(f"{spec} holds no LoRA, embedding or pipeline to start from.")
    return InitSource(spec, path, artifacts, run_dir, None, config)


def _run_folder(path: Path) -> Path | None:
    """The run a path belongs to: the run folder itself, or the run whose output/ it is."""
    for candidate in (path, path.parent if path.name == "output" else None):
        if candidate is not None and candidate.is_dir() and RunDir(candidate).config():
            return candidate
    return None


def pipeline_to_continue(spec: str) -> str:
    """The fine-tuned pipeline folder a full fine-tune / DreamBooth run continues from (its base model)."""
    source = resolve_source(spec)
    pipelines = source.of_kind(PIPELINE)
    if not pipelines:
        raise _refuse(f"Full fine-tuning continues from a fine-tuned pipeline; {spec} holds {source.kinds}. "
                      "Continue it with a LoRA method instead, or give a fine-tuned model's folder.")
    return pipelines[0].path


# ---------------------------------------------------------------------------------------------- loading
def start_from(config: TrainConfig, method: Method, parts: Any, log: Callable[[str], None],
               emit: Callable[..., None]) -> None:
    """Load what the earlier output holds into this run's freshly prepared method (after method.prepare,
    before caches and the optimizer), log it and record it as an `init_from` event."""
    source = resolve_source(config.init_from)
    loaded: list[str] = []
    loras, embeddings = source.of_kind(LORA), source.of_kind(EMBEDDING)
    if config.has(ADAPTER) and loras:
        check_adapter_settings(config, source)
        load_lora(parts, loras[0].path, source.spec)
        loaded.append(f"LoRA {Path(loras[0].path).name}")
    if config.has(TOKENS) and embeddings:
        tensors = {token: vectors for artifact in embeddings for token, vectors in read_embedding(artifact).items()}
        started = method.start_tokens_from(parts, tensors)
        loaded += [f"embedding {token}" + ("" if token in started else " (carried, frozen)") for token in tensors]
    if config.has(FULL_WEIGHTS):
        if source.of_kind(PIPELINE) and config.model == source.of_kind(PIPELINE)[0].path:
            loaded.append(f"pipeline {config.model} as the base model")
        else:
            raise _refuse(f"Full fine-tuning continues from a fine-tuned pipeline; {source.spec} holds "
                          f"{source.kinds}.")
    unused = [kind for kind, trait in ((LORA, ADAPTER), (EMBEDDING, TOKENS)) if source.of_kind(kind)
              and not config.has(trait)]
    if unused and loaded:
        log(f"Not used from {source.spec}: its {' and '.join(unused)} (this method does not train one).")
    if not loaded:
        wanted = " and ".join(what for trait, what in ((ADAPTER, "a LoRA"), (TOKENS, "embeddings"))
                              if config.has(trait)) or "a pipeline"
        raise _refuse(f"{source.spec} holds {source.kinds}; this method continues from {wanted}.")
    earlier_model = source.config.get("model")
    if earlier_model and earlier_model != config.model and not config.has(FULL_WEIGHTS):
        log(f"Note: {source.spec} was trained on {earlier_model}, this run trains on {config.model}.")
    subjects = subjects_before(source)
    log(f"Starting from {source.spec}: {', '.join(loaded)}"
        + (f"; earlier subjects to re-measure: {', '.join(p for p, _ in subjects)}" if subjects else ""))
    emit(EVENT, source=source.spec, path=str(source.path),
         run=str(source.run_dir) if source.run_dir else None, step=source.step, loaded=loaded,
         subjects=[list(subject) for subject in subjects])


def adapter_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings that shape an adapter's weights: its type, rank, alpha (as applied), targets, which models
    carry it, and its type's own settings (e.g. LoKr's factor); not dropout or learning rates."""
    values: dict[str, Any] = {"train_text_encoder": config.train_text_encoder}
    for f in field_info():
        needs = f.metadata.get("needs") or ()
        if (ADAPTER in needs and TOKENS not in needs and not re.search(r"dropout|learning_rate", f.name)
                and config.applies(f.name)):
            values[f.name] = getattr(config, f.name)
    values["lora_alpha"] = config.effective_lora_alpha
    return values


def check_adapter_settings(config: TrainConfig, source: InitSource) -> None:
    """Refuse, naming the differences, when the earlier run's adapter has other settings than this run's."""
    if not source.config:
        return  # a bare file: load_lora compares its tensors with the adapter's
    earlier = _config_from(source.config)
    if earlier is None or earlier.method not in method_names() or not method_named(earlier.method).has(ADAPTER):
        return
    ours, theirs = adapter_settings(config), adapter_settings(earlier)
    different = [name for name in ours if theirs.get(name) != ours[name]]
    if different:
        there = ", ".join(f"{name} {theirs.get(name)}" for name in different)
        here = ", ".join(f"{name} {ours[name]}" for name in different)
        raise _refuse(f"{source.spec} has an adapter with {there}; this run's has {here}. LoRA weights continue "
                      f"only in the same adapter: set {there} (or start without init_from).")


def load_lora(parts: Any, path: str, spec: str) -> None:
    """Copy a diffusers-format adapter file's tensors (LoRA or a variant, as methods/adapters saves them) into
    the adapters prepared on the UNet (and text encoders), after checking that every tensor fits."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    from sdtune_ui.methods.adapters.base import native_keys, read_adapter_file, split_components

    try:
        components = split_components(read_adapter_file(path)[0])
    except ValueError as err:
        raise _refuse(f"Cannot continue from {spec}: {err}.") from err
    models = {"unet": parts.unet, **dict(zip(_TEXT_ENCODER_PREFIXES, parts.text_encoders))}
    unknown = sorted(set(components) - set(models))
    if unknown:
        raise _refuse(f"{spec} has {unknown[0]} weights but this model has no {unknown[0]}.")
    for prefix, model in models.items():
        theirs = native_keys(model, components.get(prefix, {}))
        ours = get_peft_model_state_dict(model) if getattr(model, "peft_config", None) else {}
        if not theirs and not ours:
            continue
        if theirs.keys() != ours.keys() or any(theirs[k].shape != ours[k].shape for k in ours):
            raise _refuse(_mismatch(spec, prefix, theirs, ours))
        set_peft_model_state_dict(model, theirs, adapter_name="default")
        reloaded = get_peft_model_state_dict(model)
        if any(not torch.equal(reloaded[k].cpu(), theirs[k].to(reloaded[k].dtype)) for k in theirs):
            raise _refuse(f"{spec}: the {prefix} adapter weights did not load into this run's adapter.")


def _mismatch(spec: str, prefix: str, theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> str:
    if not ours:
        return (f"{spec} has LoRA layers on the {prefix.replace('_', ' ')} and this run has none there: "
                "use the same train_text_encoder setting as the earlier run.")
    if not theirs:
        return (f"{spec} has no LoRA layers on the {prefix.replace('_', ' ')} and this run adds some: use the "
                "same train_text_encoder setting as the earlier run.")
    rank_there = next((v.shape[0] for k, v in theirs.items() if "lora_A" in k), "?")
    rank_here = next((v.shape[0] for k, v in ours.items() if "lora_A" in k), "?")
    return (f"{spec}'s LoRA does not fit this run's adapter on the {prefix.replace('_', ' ')} "
            f"({len(theirs)} tensors, rank {rank_there} there; {len(ours)} tensors, rank {rank_here} here): "
            "use the earlier run's rank, lora_alpha and lora_targets.")


def read_embedding(artifact: Artifact) -> dict[str, list[torch.Tensor]]:
    """An embedding file as {token: per text encoder [vectors, dim]} (our files, diffusers', A1111's)."""
    from sdtune_ui.generate.artifacts import embedding_token, read_state_dict

    state = read_state_dict(artifact.path)
    token = artifact.token or embedding_token(artifact.path)
    if {"clip_l", "clip_g"} <= set(state):
        return {token: [state["clip_l"], state["clip_g"]]}
    if "emb_params" in state:
        return {token: [state["emb_params"]]}
    if len(state) == 1:
        tensor = next(iter(state.values()))
        return {token: [tensor if tensor.ndim == 2 else tensor[None]]}
    raise _refuse(f"{Path(artifact.path).name} is not a one-token embedding file.")


# ---------------------------------------------------------------------------------------------- subjects
def earlier_subjects(run_dir: str | Path, _depth: int = 0) -> list[tuple[str, str]]:
    """(prompt, folder of its training images) for each subject the runs before this one learned (the run it
    started from, and the runs that one started from), oldest first: what an evaluation re-measures to show
    whether a run forgot them. [] for a run that did not start from another. Gradio-free; loads no model
    (the `init_from` event's record, else the earlier runs' configs and dataset layouts)."""
    run = RunDir(Path(run_dir))
    recorded = [e for e in run.read_events() if e.get("kind") == EVENT]
    if recorded:
        return [(str(prompt), str(folder)) for prompt, folder in recorded[-1].get("subjects") or []]
    spec = run.config().get("init_from")
    earlier = _run_named(spec) if spec else None
    if earlier is None or _depth > 20:  # (a chain that loops back on itself ends somewhere)
        return []
    return _subjects_up_to(earlier, _depth + 1)


def subjects_before(source: InitSource) -> list[tuple[str, str]]:
    """The subjects learned up to and including the earlier run a source belongs to."""
    return _subjects_up_to(source.run_dir, 0) if source.run_dir is not None else []


def _subjects_up_to(run_dir: Path, depth: int) -> list[tuple[str, str]]:
    subjects = earlier_subjects(run_dir, depth)
    for subject in run_subjects(RunDir(run_dir).config()):
        if subject not in subjects:
            subjects.append(subject)
    return subjects


def _run_named(spec: str) -> Path | None:
    """The run folder an init_from value belongs to (RUN, RUN@step-N, RUN/output, a file in it), if any."""
    path = Path(parse_choice(spec.strip())[0]).expanduser().resolve()
    if path.is_file():
        path = path.parent
    return _run_folder(path) if path.exists() else None


def run_subjects(config_values: dict) -> list[tuple[str, str]]:
    """(prompt, training image folder) per subject a run's own dataset teaches (one per concept)."""
    from sdtune_ui.train.data import dataset_scan
    from sdtune_ui.train.setup import concept_subjects

    config = _config_from(config_values)
    if config is None:
        return []
    scan = dataset_scan(config.data, config.caption_column)
    return concept_subjects(config, scan) if scan is not None else []


def _config_from(values: dict) -> TrainConfig | None:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:  # settings of other versions are left out rather than refused: only the subjects are needed here
        return TrainConfig.from_dict({k: v for k, v in values.items() if k in known})
    except (ConfigError, TypeError):
        return None
