"""What can be applied on top of a base model, and where it comes from.

An `Artifact` is one thing the generation engine applies: a LoRA (with a scale), a textual-inversion
embedding, or a fully fine-tuned pipeline folder. They come from a run's `output/`, from one of its
checkpoints (materialised once into a standard artifact with the training method's own save code), or
from files the user brings (diffusers or kohya/A1111 LoRAs, embeddings, Hub repos).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.errors import ModelLoadError, SdtuneError
from sdtune_ui.methods import adapters
from sdtune_ui.methods.outputs import (
    CONTROLNET,
    CONTROLNET_CLASS,
    EMBEDDING,
    EMBEDDINGS_FILE,
    EMBEDDINGS_GLOB,
    KINDS,
    LORA,
    PIPELINE,
    PIPELINE_MARKER,
)
from sdtune_ui.models.loading import read_state_dict, safetensors_header
from sdtune_ui.runs import RunDir

_materialize_lock = threading.Lock()


@dataclass
class Artifact:
    kind: str                       # lora | embedding | pipeline | controlnet
    path: str                       # local file or folder, or a Hub repo id
    scale: float = 1.0              # LoRA strength (0 = off)
    label: str = ""
    # diffusers LoRA files saved without alpha metadata load with alpha = rank; a run trained with another
    # alpha needs its scale multiplied back by alpha / rank to look like it did in training.
    alpha_factor: float = 1.0
    token: str | None = None        # embedding trigger word, when known before loading

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SdtuneError(f"Unknown artifact kind {self.kind!r}; use one of {', '.join(KINDS)}.")
        self.label = self.label or f"{self.kind}: {Path(self.path).name or self.path}"


@dataclass
class RunArtifacts:
    """A run's (or one checkpoint's) artifacts plus the base model they belong on."""

    run_dir: Path
    base_model: str
    artifacts: list[Artifact]
    config: dict = field(default_factory=dict)
    step: int | None = None         # None: the final output

    @property
    def label(self) -> str:
        return f"{self.run_dir.name} ({'final' if self.step is None else f'step {self.step}'})"


# ---------------------------------------------------------------------------------------------- runs
# A run's own file that is damaged: where the user finds a good copy.
DAMAGED_RUN_FILE = "Delete it, or use one of the run's checkpoints (or resume the run to write it again)."


def _lora_alpha_factor(lora_file: Path, config: dict) -> float:
    with safetensors_header(lora_file, DAMAGED_RUN_FILE) as handle:
        if adapters.METADATA_KEY in (handle.metadata() or {}):
            return 1.0
    rank = float(config.get("rank") or 0)
    alpha = float(config.get("lora_alpha") or 0) or rank
    return alpha / rank if rank else 1.0


def artifacts_in_folder(folder: str | Path, config: dict | None = None) -> list[Artifact]:
    """The standard artifacts a training output folder holds (methods/outputs.py)."""
    folder = Path(folder)
    config = config or {}
    found: list[Artifact] = []
    if (folder / PIPELINE_MARKER).exists():
        found.append(Artifact(PIPELINE, str(folder), label="fine-tuned model"))
    if is_controlnet_folder(folder):
        found.append(Artifact(CONTROLNET, str(folder), label="ControlNet"))
    for name in adapters.adapter_file_names():   # a LoRA, or a variant's file (methods/adapters)
        if (folder / name).exists():
            with safetensors_header(folder / name, DAMAGED_RUN_FILE):   # damaged: say so with the run's way out
                pass
            found.append(Artifact(LORA, str(folder / name), label=adapters.adapter_for_file(folder / name).label,
                                  alpha_factor=_lora_alpha_factor(folder / name, config)))
    # One file per token (methods/textual_inversion.py): learned_embeds.safetensors holds the first token (the
    # run's placeholder_token), learned_embeds-<token>.safetensors the others, each naming its token inside.
    for path in sorted(folder.glob(EMBEDDINGS_GLOB), key=lambda p: (p.name != EMBEDDINGS_FILE, p.name)):
        token = embedding_token(path)
        if path.name == EMBEDDINGS_FILE and config.get("placeholder_token") and token == path.stem:
            token = config["placeholder_token"]  # an older file without the token in its metadata
        found.append(Artifact(EMBEDDING, str(path), label=f"embedding {token}", token=token))
    return found


def run_artifacts(run_dir: str | Path, step: int | None = None) -> RunArtifacts:
    """The final output of a run (step=None) or the artifact of one of its checkpoints."""
    run = RunDir(Path(run_dir))
    config = run.config()
    if not config:
        raise SdtuneError(f"{run.path} is not a run folder (no readable config.json).")
    folder = run.output_dir if step is None else materialize_checkpoint(run.path, step)
    artifacts = artifacts_in_folder(folder, config)
    if not artifacts:
        hint = " It may still be training; pick a checkpoint instead." if step is None else ""
        raise SdtuneError(f"{folder} holds no trained artifact yet.{hint}")
    return RunArtifacts(run.path, config.get("model", ""), artifacts, config, step)


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in RunDir(Path(run_dir)).checkpoints()]


def materialize_checkpoint(run_dir: str | Path, step: int) -> Path:
    """Turn checkpoints/step-N/trainable.safetensors into standard artifacts in step-N/artifact/ (cached).

    The checkpoint holds the method's internal tensors (peft-wrapped names, raw embedding rows); the
    method's own prepare/load/save code turns them into exactly what the final output would have been.
    """
    from safetensors.torch import load_file

    from sdtune_ui.config import TrainConfig
    from sdtune_ui.methods import make_method
    from sdtune_ui.models import load_pipeline, model_parts

    run = RunDir(Path(run_dir))
    folder = run.checkpoints_dir / f"step-{step}"
    if not (folder / "trainable.safetensors").exists():
        available = ", ".join(str(s) for s in checkpoint_steps(run.path)) or "none"
        raise SdtuneError(f"{run.path.name} has no complete checkpoint at step {step} (available: {available}).")
    target = folder / "artifact"
    with _materialize_lock:
        if (target / ".complete").exists():
            return target
        config = TrainConfig.from_dict(json.loads((folder / "config.json").read_text()))
        pipe = load_pipeline(config.model, allow_pickle=config.allow_pickle)
        parts = model_parts(pipe)
        method = make_method(config)
        method.prepare(parts)
        method.load_trainable_state(parts, load_file(str(folder / "trainable.safetensors")))
        _apply_ema(folder, config, method.ema_parameters(parts))
        # Written under a temporary name and renamed, like checkpoints: never half an artifact.
        partial = folder / f"artifact.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        method.save_output(parts, partial)
        (partial / ".complete").write_text(str(step))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        del pipe, parts
    return target


def _apply_ema(folder: Path, config: Any, params: list[torch.nn.Parameter]) -> None:
    """Runs with EMA save the averaged weights as output (the UNet's, or the adapters'); checkpoints do the same.

    `params` is the method's averaged-weights list, built as in training, so the averages pair up by position.
    """
    ema_path = folder / "ema.pt"
    if not (config.use_ema and ema_path.exists()):
        return
    state = torch.load(ema_path, weights_only=True)
    shadow = state.get("shadow_params") if isinstance(state, dict) else None
    if not shadow:
        return
    if len(shadow) != len(params) or any(s.shape != p.shape for s, p in zip(shadow, params)):
        raise SdtuneError(f"{folder.name}: its EMA averages ({len(shadow)} tensors) do not match the "
                          f"{len(params)} weights this run averages.")
    with torch.no_grad():
        for param, value in zip(params, shadow, strict=True):
            param.copy_(value.to(param.device, param.dtype))


# ---------------------------------------------------------------------------------------------- files
def is_controlnet_folder(folder: Path) -> bool:
    """A diffusers ControlNet folder: its config.json names the ControlNet class."""
    try:
        return json.loads((folder / "config.json").read_text()).get("_class_name") == CONTROLNET_CLASS
    except (OSError, ValueError, AttributeError):
        return False


def embedding_token(path: str | Path) -> str:
    """The trigger word of an embedding file: its `token` metadata, its single key, or the file name."""
    path = Path(path)
    if path.suffix == ".safetensors":
        with safetensors_header(path, DAMAGED_RUN_FILE) as handle:
            metadata = handle.metadata() or {}
            keys = list(handle.keys())
        if metadata.get("token"):
            return metadata["token"]
        if len(keys) == 1 and keys[0] not in ("emb_params", "*"):
            return keys[0]
    return path.stem


def classify_file(path: str | Path, *, allow_pickle: bool = False) -> str:
    """'lora' or 'embedding', from a file's keys (names lie; contents don't)."""
    state = read_state_dict(path, allow_pickle=allow_pickle)
    keys = list(state)
    # Embedding layouts first: a diffusers embedding's single key is its token, which may contain "lora".
    if "string_to_param" in state or "emb_params" in state or {"clip_l", "clip_g"} <= set(keys) or len(keys) == 1:
        return EMBEDDING
    if adapters.adapter_for_keys(set(keys), {}) is not None:   # LoRA or a variant (methods/adapters)
        return LORA
    raise ModelLoadError(f"{Path(path).name} is neither a LoRA nor a textual-inversion embedding.")


def parse_spec(spec: str) -> tuple[str, float | None]:
    """'PATH[:SCALE]' -> (path, scale); a Windows drive colon or a colon in a folder name is not a scale."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and re.fullmatch(r"-?\d+(\.\d*)?|-?\.\d+", tail):
        return head, float(tail)
    return spec, None


def artifact_from_spec(spec: str, *, kind: str | None = None, allow_pickle: bool = False) -> Artifact:
    """A user-given LoRA / embedding: a file, a folder holding one, or a Hub repo id, with an optional :SCALE."""
    path_text, scale = parse_spec(spec)
    path = Path(path_text).expanduser()
    if path.is_dir():
        inner = artifacts_in_folder(path)
        if kind:
            inner = [a for a in inner if a.kind == kind]
        if not inner:
            raise ModelLoadError(f"{path} holds no {kind or 'artifact'} ({', '.join(adapters.adapter_file_names())}, "
                                 f"{EMBEDDINGS_FILE}, a pipeline or a ControlNet).")
        found = inner[0]
    elif path.is_file():
        found_kind = classify_file(path, allow_pickle=allow_pickle)
        if kind and found_kind != kind:
            raise ModelLoadError(f"{path.name} looks like a {found_kind}, not a {kind}.")
        found = Artifact(found_kind, str(path), token=embedding_token(path) if found_kind == EMBEDDING else None)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", path_text) and not path_text.startswith((".", "/")):
        found = Artifact(kind or LORA, path_text)  # a Hub repo: diffusers downloads it when loading
    else:
        raise ModelLoadError(f"{path_text} was not found (give a .safetensors file, a folder, or a Hub repo id).")
    if scale is not None:
        found.scale = scale
    return found


def controlnet_artifact(spec: str) -> Artifact:
    """A ControlNet the user names: a folder (a ControlNet run's output), a Hub id, or a tiny ControlNet's name."""
    from sdtune_ui.models import TINY_CONTROLNETS

    if spec in TINY_CONTROLNETS:
        return Artifact(CONTROLNET, spec, label=f"ControlNet {spec}")
    return artifact_from_spec(spec, kind=CONTROLNET)


def base_model_from_card(repo_or_folder: str | Path) -> str | None:
    """`base_model` from a model card (a folder's README.md, a file beside one, or a Hub repo's card)."""
    from huggingface_hub import ModelCard

    path = Path(repo_or_folder).expanduser()
    readme = path / "README.md" if path.is_dir() else path.parent / "README.md" if path.is_file() else None
    try:
        if readme is not None:
            if not readme.exists():
                return None
            card = ModelCard.load(readme)
        else:
            card = ModelCard.load(str(repo_or_folder))
    except (OSError, ValueError) as err:
        # Offline, missing or private repo: no suggestion rather than a failure.
        if readme is not None:
            raise ModelLoadError(f"Cannot read the model card {readme}: {err}") from err
        return None
    except Exception:  # noqa: BLE001 - huggingface_hub raises many HTTP error types; a hint is optional
        return None
    base = card.data.to_dict().get("base_model")
    if isinstance(base, list):
        base = base[0] if base else None
    return str(base) if base else None


# ---------------------------------------------------------------------------------------------- pickers
@dataclass
class Choice:
    label: str
    run_dir: str
    step: int | None   # None = final output

    @property
    def value(self) -> str:
        return self.run_dir if self.step is None else f"{self.run_dir}@step-{self.step}"


def parse_choice(value: str) -> tuple[str, int | None]:
    match = re.fullmatch(r"(.+)@step-(\d+)", value)
    return (match.group(1), int(match.group(2))) if match else (value, None)


def list_choices(runs_dir: str | Path) -> list[Choice]:
    """Every run output and checkpoint under runs_dir, newest run first, for the Generate tab's picker."""
    from sdtune_ui.runs import list_runs

    choices: list[Choice] = []
    for run in list_runs(Path(runs_dir)):
        config = run.config()
        name = f"{run.path.name} [{config.get('method', '?')} on {config.get('model', '?')}]"
        try:
            has_output = bool(artifacts_in_folder(run.output_dir, config))
        except ModelLoadError:   # listed all the same: using it says which file is damaged and what to do
            has_output = True
        if has_output:
            choices.append(Choice(f"{name} final", str(run.path), None))
        for checkpoint in reversed(run.checkpoints()):
            step = int(checkpoint.name.split("-")[1])
            choices.append(Choice(f"{name} step {step}", str(run.path), step))
    return choices
