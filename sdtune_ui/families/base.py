"""Model families: one class per architecture, registered by name, owning everything known about it.

A family knows how to recognise itself (from a loaded pipeline's configs, a UNet config, a single-file
checkpoint's keys), how prompts become the UNet's conditioning, what the UNet learns to predict, how it is best
compiled, which diffusers pipeline class runs it, and the key layouts other tools use for it (single-file
checkpoints, kohya LoRAs), plus what a model card says about it. Nothing outside this package names a family:
the trainer, generation and export ask the family object.

Adding a family: one module here with a `Family` subclass decorated with `@register` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class ModelParts:
    """The pieces of a pipeline the trainer works with, plus the family that knows how to drive them."""

    family: Family
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    pipeline: Any = field(repr=False)


@dataclass(frozen=True)
class MemoryProfile:
    """What the memory estimate (train/memory.py) needs to know about a family's standard checkpoint.

    Parameter counts are of the standard architecture (counted on the meta device from its configs,
    benchmarks/fit_memory.py); the activation coefficient is fitted to the GPU peaks measured in
    benchmarks/results (None: not measured, the estimate borrows the SD1.x value and says so).
    """

    unet_params: int
    text_encoder_params: tuple[int, ...]
    vae_params: int
    lora_params_per_rank: dict[str, int]          # per lora_targets choice: sum of (in + out) of adapted layers
    text_encoder_lora_params_per_rank: int        # all text encoders together
    token_embedding_params: tuple[int, ...]       # vocabulary x width, per text encoder (textual inversion)
    activation_gib_per_megapixel: float | None    # eager step, batch 1, LoRA, no gradient checkpointing
    vae_in_fp32: bool = False                     # the VAE is kept in fp32 (SDXL's overflows in fp16)


class Family:
    """Base class. Instances carry what varies between checkpoints of one family (prediction type, size)."""

    name: ClassVar[str]
    label: ClassVar[str]
    # Detection: families are tried from the highest priority down; the lowest is the fallback.
    priority: ClassVar[int] = 0
    # diffusers pipeline classes (names, so importing a family does not import diffusers)
    pipeline_class_name: ClassVar[str] = "StableDiffusionPipeline"
    text_encoder_count: ClassVar[int] = 1
    # Conditioning: SDXL-like families add pooled text embeddings and size/crop time ids.
    uses_pooled_embeddings: ClassVar[bool] = False
    # Speed (train/speed.py): what compile_scope "auto" compiles, and from how many steps "auto" compiles at all
    # (the measured break-even run length, benchmarks/README.md).
    auto_compile_scope: ClassVar[str] = "whole"
    auto_compile_min_steps: ClassVar[int] = 1000
    # Files that travel: kohya metadata and naming, model card tags and licence.
    kohya_base_version: ClassVar[str] = ""
    kohya_is_v2: ClassVar[bool] = False
    kohya_ldm_unet_names: ClassVar[bool] = False   # kohya names this family's UNet modules by the original layout
    card_tags: ClassVar[tuple[str, ...]] = ()
    license: ClassVar[str] = ""
    # Memory: sizes of the standard checkpoint and the fitted activation cost (train/memory.py).
    memory: ClassVar[MemoryProfile | None] = None

    def __init__(self, prediction_type: str = "epsilon", native_resolution: int = 512):
        self.prediction_type = prediction_type
        self.native_resolution = native_resolution

    # ------------------------------------------------------------------ detection
    @classmethod
    def matches_unet_config(cls, unet_config: dict) -> bool:
        """True when a UNet config (a dict) is this family's; the fallback family matches everything."""
        raise NotImplementedError

    @classmethod
    def matches_checkpoint_keys(cls, keys: set[str]) -> bool:
        """True when a single-file (original layout) checkpoint with these keys is this family's."""
        raise NotImplementedError

    @classmethod
    def pipeline_class(cls) -> type:
        import diffusers

        return getattr(diffusers, cls.pipeline_class_name)

    # ------------------------------------------------------------------ conditioning
    def tokenize(self, tokenizers: list[Any], prompts: list[str]) -> list[torch.Tensor]:
        """Token ids per tokenizer, padded/truncated to the encoder's 77 positions."""
        return [
            tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                return_tensors="pt").input_ids
            for tok in tokenizers
        ]

    def encode(self, text_encoders: list[Any],
               input_ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (encoder_hidden_states, pooled_embeddings or None); input ids are on the encoders' device."""
        return text_encoders[0](input_ids[0], return_dict=False)[0], None

    def added_cond_kwargs(self, pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> dict | None:
        return None

    def time_ids(self, original_size: tuple[int, int], crop_top_left: tuple[int, int],
                 target_size: tuple[int, int]) -> torch.Tensor | None:
        return None

    def target(self, noise_scheduler: Any, latents: torch.Tensor, noise: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet learns to predict: the noise (epsilon) or the velocity (v-prediction)."""
        if self.prediction_type == "v_prediction":
            return noise_scheduler.get_velocity(latents, noise, timesteps)
        return noise

    # ------------------------------------------------------------------ key layouts
    @classmethod
    def ldm_text_encoder_state(cls, pipe: Any) -> dict[str, torch.Tensor]:
        """The text encoder(s) in the original single-file layout (export/single_file.py does the renaming)."""
        raise NotImplementedError


_FAMILIES: dict[str, type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family known by its name (and to detection)."""
    _FAMILIES[cls.name] = cls
    return cls


def family_classes() -> list[type[Family]]:
    """Every registered family, most specific (highest priority) first."""
    return sorted(_FAMILIES.values(), key=lambda cls: -cls.priority)


def family_names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def family_named(name: str) -> type[Family]:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(_FAMILIES)}") from None


def family_for_unet_config(unet_config: dict) -> type[Family]:
    return next(cls for cls in family_classes() if cls.matches_unet_config(dict(unet_config)))


def family_for_checkpoint_keys(keys: Iterable[str]) -> type[Family]:
    keys = set(keys)
    return next(cls for cls in family_classes() if cls.matches_checkpoint_keys(keys))


def family_of_model(model: str) -> type[Family]:
    """The family of a base model (demo name, folder, .safetensors file or Hub id) from its UNet config or its
    keys, without loading weights; the fallback family when neither can be read (offline, unknown repo)."""
    import json
    from pathlib import Path

    from sdtune_ui.models.loading import resolve_model

    source = resolve_model(model)
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            return family_for_unet_config(json.loads((path / "unet" / "config.json").read_text()))
        if path.is_file() and path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return family_for_checkpoint_keys(handle.keys())
        if source:
            from huggingface_hub import hf_hub_download

            return family_for_unet_config(json.loads(Path(hf_hub_download(source, "unet/config.json")).read_text()))
    except Exception:  # noqa: BLE001 - offline, unknown or private repo, unreadable file: the fallback below
        pass
    return family_classes()[-1]


def detect_family(pipe: Any) -> Family:
    """The family of a loaded pipeline, read from its configs (works for renamed and community models)."""
    prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    native = int(pipe.unet.config.sample_size) * vae_scale
    return family_for_unet_config(pipe.unet.config)(prediction_type, native)


def model_parts(pipe: Any) -> ModelParts:
    """Split a loaded pipeline into the parts the trainer uses, with a DDPM scheduler for training noise."""
    from diffusers import DDPMScheduler

    text_encoders = [enc for enc in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if enc is not None]
    tokenizers = [tok for tok in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if tok is not None]
    # Training always adds noise the DDPM way; the schedule (betas, prediction type) comes from the model.
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return ModelParts(family=detect_family(pipe), unet=pipe.unet, vae=pipe.vae, text_encoders=text_encoders,
                      tokenizers=tokenizers, noise_scheduler=noise_scheduler, pipeline=pipe)
