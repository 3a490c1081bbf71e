"""Everything a run needs before its first step: checked data, the loaded model, class images, optimizer."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.config import TrainConfig
from sdtune_ui.data.datasets import Example, load_dataset
from sdtune_ui.data.formats import read_captions, read_dataset_info
from sdtune_ui.errors import ConfigError, DatasetError
from sdtune_ui.families import ModelParts, model_parts
from sdtune_ui.methods import INSTANCE_PROMPT, TOKENS, make_method
from sdtune_ui.models.loading import load_pipeline, resolve_model
from sdtune_ui.paths import cache_dir


@dataclass
class TrainingInputs:
    parts: ModelParts
    resolution: int
    examples: list[Example]
    class_examples: list[Example]


def resolve_mixed_precision(mixed_precision: str, device_type: str | None = None) -> str:
    """'auto' -> bf16 on GPUs that have it, fp16 on older GPUs, 'no' (fp32) on the CPU; other values unchanged.

    `device_type` is the device the run trains on (default: CUDA when there is one).
    """
    if mixed_precision != "auto":
        return mixed_precision
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def weight_dtype_for(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(resolve_mixed_precision(mixed_precision),
                                                               torch.float32)


def apply_dataset_info(config: TrainConfig) -> TrainConfig:
    """Fill instance/class prompts from a DreamBooth folder's dataset_info.json when the user left them empty."""
    folder = Path(config.data).expanduser()
    info = read_dataset_info(folder) if folder.is_dir() else {}
    # A captioned dataset keeps its captions for caption-driven methods; the folder's instance prompt is
    # used for DreamBooth, or when there are no captions at all.
    uses_instance_prompt = config.has(INSTANCE_PROMPT) or not any(read_captions(folder).values()) if info else False
    updates = {}
    if not config.instance_prompt and info.get("instance_prompt") and uses_instance_prompt:
        updates["instance_prompt"] = info["instance_prompt"]
    if not config.class_prompt and info.get("class_prompt"):
        updates["class_prompt"] = info["class_prompt"]
    return replace(config, **updates) if updates else config


def check_captions(config: TrainConfig, examples: list[Example]) -> None:
    """Fail early when the prompts the method needs are not there."""
    if config.instance_prompt or (config.has(TOKENS) and config.learnable_property != "captions"):
        return
    missing = [ex.name for ex in examples if not ex.caption.strip()]
    if len(missing) == len(examples):
        raise DatasetError(
            "No image has a caption. Caption the dataset (auto-captioning) or "
            "give an instance prompt such as 'a photo of sks dog'.")
    if config.has(TOKENS):
        without = [ex.name for ex in examples if config.placeholder_token not in ex.caption]
        if without:
            raise DatasetError(
                f"{len(without)} captions do not contain the placeholder {config.placeholder_token} "
                f"(e.g. {without[0]}); textual inversion learns only from prompts that use it.")


def load_training_inputs(config: TrainConfig, accelerator: Any, log: Callable[[str], None],
                         stop_if_cancelled: Callable[[], None] = lambda: None,
                         pipeline: Any = None) -> TrainingInputs:
    # Data first: a bad dataset should fail before minutes of model loading.
    loaded = load_dataset(config.data, image_column=config.image_column, caption_column=config.caption_column)
    for warning in loaded.warnings:
        log(warning)
    check_captions(config, loaded.examples)
    log(f"Dataset: {len(loaded.examples)} images from {config.data}")

    stop_if_cancelled()
    log(f"Loading {config.model}")
    if pipeline is None:
        dtypes = component_dtypes(config, weight_dtype_for(config.mixed_precision))
        pipeline = load_pipeline(config.model, allow_pickle=config.allow_pickle, dtype=dtypes)
    pipe = pipeline
    pipe.set_progress_bar_config(disable=True)
    parts = model_parts(pipe)
    resolution = config.resolution or parts.family.native_resolution
    log(f"Model family {parts.family.name} ({parts.family.prediction_type}), resolution {resolution}")

    class_examples: list[Example] = []
    if config.with_prior_preservation:
        folder = class_images_folder(config, resolution)
        ensure_class_images(pipe, config, folder, resolution, accelerator, log, stop_if_cancelled)
        class_examples = load_dataset(str(folder)).examples[: config.num_class_images]
        class_examples = [replace(ex, caption=config.class_prompt) for ex in class_examples]
    return TrainingInputs(parts, resolution, loaded.examples, class_examples)


def component_dtypes(config: TrainConfig, weight_dtype: torch.dtype) -> torch.dtype | dict[str, torch.dtype]:
    """The precision each pipeline component is loaded in: the one it trains in, so frozen parts are never
    materialised in float32 first. Trained full-precision parts (the method says which) stay float32, and so
    does a VAE whose config asks for it (SDXL's overflows in half precision) or whose config cannot be read."""
    if weight_dtype == torch.float32:
        return torch.float32
    # Ask the method which models it keeps in full precision, with component names standing in for the models.
    probe = ModelParts(family=None, unet="unet", vae="vae", text_encoders=["text_encoder", "text_encoder_2"],
                       tokenizers=[], noise_scheduler=None, pipeline=None)
    try:
        full_precision = [name for name in make_method(config).full_precision_models(probe) if isinstance(name, str)]
    except (AttributeError, TypeError):   # a method that looks inside the models: load everything in float32
        return torch.float32
    dtypes = {"default": weight_dtype, **{name: torch.float32 for name in full_precision}}
    vae_config = Path(resolve_model(config.model)).expanduser() / "vae" / "config.json"
    try:
        upcast = json.loads(vae_config.read_text()).get("force_upcast", False)
    except (OSError, ValueError):
        upcast = True
    if upcast:
        dtypes["vae"] = torch.float32
    return dtypes


def class_images_folder(config: TrainConfig, resolution: int) -> Path:
    """The user's class folder, or a cache folder per (model, class prompt, resolution) reused across runs."""
    if config.class_data:
        return Path(config.class_data).expanduser()
    key = hashlib.sha256(f"{config.model}|{config.class_prompt}|{resolution}".encode()).hexdigest()[:16]
    return cache_dir("class_images") / key


def ensure_class_images(pipe: Any, config: TrainConfig, folder: Path, resolution: int, accelerator: Any,
                        log: Callable[[str], None], stop_if_cancelled: Callable[[], None] = lambda: None) -> None:
    """Generate the missing class images with the base model (before any weight changes)."""
    from sdtune_ui.data.images import is_image_name

    folder.mkdir(parents=True, exist_ok=True)
    existing = [p for p in folder.iterdir() if p.is_file() and is_image_name(p.name)]
    missing = config.num_class_images - len(existing)
    if missing <= 0:
        return
    if accelerator.is_main_process:
        log(f"Generating {missing} class images for {config.class_prompt!r} into {folder}")
        pipe.to(accelerator.device)
        generator = torch.Generator(accelerator.device).manual_seed(config.seed)
        dtype = weight_dtype_for(config.mixed_precision)
        with torch.autocast(accelerator.device.type, dtype=dtype, enabled=dtype != torch.float32):
            for index in range(len(existing), config.num_class_images):
                stop_if_cancelled()  # images made so far stay in the folder and are reused next time
                image = pipe(config.class_prompt, num_inference_steps=config.validation_inference_steps,
                             height=resolution, width=resolution, generator=generator).images[0]
                image.save(folder / f"class-{index:05d}.png")
                if (index + 1) % 10 == 0 or index + 1 == config.num_class_images:
                    log(f"Class images: {index + 1}/{config.num_class_images}")
    accelerator.wait_for_everyone()


def build_optimizer(config: TrainConfig, groups: list[dict], *, device: torch.device | None = None,
                    check_only: bool = False) -> Any:
    """AdamW (fused on CUDA), 8-bit AdamW (bitsandbytes), Prodigy (prodigyopt) or Adafactor (transformers)."""
    from sdtune_ui.config import OPTIONAL_OPTIMIZERS, optimizer_available

    if not optimizer_available(config.optimizer):
        module, extra = OPTIONAL_OPTIMIZERS[config.optimizer]
        raise ConfigError({"optimizer": f"{config.optimizer} needs {module}: pip install sdtune_ui[{extra}] "
                                        f"(or pip install {module}), or choose adamw or adafactor."})
    if check_only:
        return None
    kwargs = dict(betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.adam_weight_decay,
                  eps=config.adam_epsilon)
    if config.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **kwargs)
    if config.optimizer == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(groups, **kwargs)
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # The run's learning rate and schedule, not Adafactor's own relative step size.
        return Adafactor(groups, lr=config.learning_rate, relative_step=False, scale_parameter=False,
                         warmup_init=False, weight_decay=config.adam_weight_decay)
    # One fused kernel for the whole update on CUDA; the multi-tensor path elsewhere.
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(groups, fused=fused, foreach=None if fused else True, **kwargs)
