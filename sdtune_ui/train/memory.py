"""Peak GPU memory of a run, estimated before it starts, and the next memory-saving setting when it runs out.

The estimate is a small model fitted to the peaks measured on H100/H200 GPUs (benchmarks/README.md,
benchmarks/results/*.jsonl; the fit and its table: benchmarks/fit_memory.py, docs/MEMORY.md):

    peak = frozen weights on the GPU (mixed-precision dtype; encoders whose outputs are cached are offloaded)
         + trainable parameters x (fp32 weight 4 + gradient 4 + optimizer state) bytes    [/ GPUs under FSDP]
         + EMA copy (4 bytes per trainable parameter) + DDP gradient buckets (4 bytes, several GPUs)
         + images per GPU x megapixels x the family's activation GiB per megapixel (eager LoRA step)
           x full fine-tuning factor x (gradient checkpointing or compiled-UNet factor)
         + a small constant
    or, when larger, the set-up's peak while the text encoders cache the prompts (caching_peak_gib).

It estimates torch's *allocated* peak (`torch.cuda.max_memory_allocated`); the GPU also holds the CUDA
context and the allocator's slack, so `fits()` keeps a margin. Model sizes are those of each family's
standard checkpoint (a pruned or distilled model is over-estimated).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

from sdtune_ui.config import TrainConfig, optimizer_available
from sdtune_ui.families import Family, family_classes
from sdtune_ui.methods import ADAPTER, CONTROL, FULL_WEIGHTS, TOKENS, adapters
from sdtune_ui.train.quantize import BYTES_PER_PARAMETER

GIB = 2**30
# Bytes of optimizer state per trainable parameter: AdamW two fp32 moments; 8-bit AdamW two uint8 moments;
# Prodigy four fp32 tensors (moments, s, the initial weights); Adafactor factored second moments (~0).
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16, "adafactor": 1}
# Fitted to the measured peaks (benchmarks/fit_memory.py prints the fit; docs/MEMORY.md holds the table).
FULL_WEIGHTS_ACTIVATION = 0.53       # full fine-tuning keeps fewer activations than a LoRA step (no adapter inputs)
# A ControlNet copies the UNet's encoder and middle block: SD 1.5's has 361M parameters, 42% of its UNet's. Its
# activations were not measured: counted as half a UNet step's more.
CONTROLNET_SHARE = 0.42
CONTROLNET_ACTIVATION = 1.5
CHECKPOINTING_ACTIVATION = 0.133     # gradient checkpointing keeps only block inputs
COMPILED_ACTIVATION = {"whole": 0.64, "blocks": 0.82}  # torch.compile fuses intermediates away (no checkpointing)
CONSTANT_GIB = 0.04
CACHING_ACTIVATION_GIB = 0.6   # T5-XXL encoding the prompts: 0.3 (256 tokens, SD3) to 0.6 GiB (512, Flux) on an H200
# The settings the estimate reads (the app refreshes its memory line when one of them changes).
ESTIMATE_FIELDS = ("model", "method", "resolution", "train_batch_size", "rank", "lora_targets", "train_text_encoder",
                   "gradient_checkpointing", "optimizer", "mixed_precision", "use_ema", "cache_latents",
                   "cache_text_embeddings", "offload_frozen_encoders", "compile_unet", "compile_scope",
                   "max_train_steps", "bucketing")
# Beyond torch's allocated peak: the CUDA context, and the caching allocator's slack (reserved minus allocated:
# 0.1-4 GiB in the measured cases, up to 1.6x allocated for compiled SD1.5 at batch 16).
CUDA_CONTEXT_GIB = 0.5
ALLOCATOR_SLACK = 0.10


@dataclass
class MemoryEstimate:
    """Estimated peak allocated GPU memory of one process, with its parts (GiB) and caveats."""

    total_gib: float
    parts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    summary: str = ""  # what was estimated, e.g. "Stable Diffusion XL, LoRA rank 4, 1024 px, batch 1"

    @property
    def needed_gib(self) -> float:
        """What the GPU should have: the allocated peak plus the CUDA context and some allocator slack."""
        return self.total_gib * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT_GIB

    def fits(self, gpu_gib: float) -> bool:
        return self.needed_gib <= gpu_gib

    def describe(self, gpu_name: str | None = None, gpu_gib: float | None = None) -> str:
        """One line: the estimate beside the GPU's memory, and whether it fits."""
        text = f"Estimated peak GPU memory: {self.total_gib:.1f} GiB ({self.summary})"
        if gpu_gib is None or not gpu_name:
            text += "; no GPU detected"
        elif self.fits(gpu_gib):
            text += f"; {gpu_name} has {gpu_gib:.0f} GiB: fits"
        else:
            text += (f"; {gpu_name} has {gpu_gib:.0f} GiB: WILL NOT FIT (needs about {self.needed_gib:.0f} GiB with "
                     "CUDA's own share)")
        if self.notes:
            text += ". " + " ".join(self.notes)
        return text


def estimate_memory(config: TrainConfig, family: type[Family] | Family | None = None, *, processes: int = 1,
                    sharded: bool = False, compile_mode: str | None = None) -> MemoryEstimate:
    """The peak allocated GPU memory (per process) that training `config` needs.

    `family`: the base model's family (default: detected from config.model without loading weights).
    `compile_mode` / `sharded` / `processes`: how the run will execute (default: what the trainer would
    choose on one CUDA GPU).
    """
    native = None
    if family is None:
        family, native = family_for_estimate(config.model), native_resolution_of(config.model)
    profile = family.memory_for_config(denoiser_config_of(config.model)) if isinstance(family, type) else family.memory
    notes: list[str] = []
    if profile is None:
        return MemoryEstimate(0.0, notes=[f"No memory profile for {family.label}."], summary=family.label)
    coefficient = profile.activation_gib_per_megapixel
    if coefficient is None:
        coefficient = next(cls.memory.activation_gib_per_megapixel for cls in reversed(family_classes())
                           if cls.memory and cls.memory.activation_gib_per_megapixel)
        notes.append(f"{family.label} was never measured: activations assume the SD1.x figure per megapixel.")
    elif profile.activation_source:
        notes.append(f"Activations not measured on this model: {profile.activation_source}.")
    half = 4 if config.mixed_precision == "no" else 2  # "auto" is bf16 or fp16 on a GPU
    state_bytes = 4 + 4 + OPTIMIZER_STATE_BYTES.get(config.optimizer, 8)   # fp32 weight, gradient, optimizer
    encoders = sum(profile.text_encoder_params)
    keep = family.tunable_text_encoders   # encoders methods may train (CLIP); the others (T5) stay frozen
    tunable = sum(n for i, n in enumerate(profile.text_encoder_params) if keep is None or i in keep)

    frozen = 0.0      # bytes of weights on the GPU that get no gradient
    trainable = 0.0   # trainable parameters with their own fp32 weights
    embeddings = 0.0  # textual inversion: the embedding matrices (their weights are in `frozen`, in fp32)
    if config.has(FULL_WEIGHTS):
        trainable += profile.unet_params
    else:
        quantized = config.quantize_base != "none" and config.has(ADAPTER)
        frozen += profile.unet_params * (BYTES_PER_PARAMETER[config.quantize_base] if quantized else half)
    if config.has(ADAPTER):
        per_rank = profile.lora_params_per_rank.get(config.lora_targets, max(profile.lora_params_per_rank.values()))
        trainable += config.rank * per_rank
        if config.train_text_encoder:
            trainable += config.rank * profile.text_encoder_lora_params_per_rank
    if config.has(CONTROL):
        trainable += CONTROLNET_SHARE * profile.unet_params
        notes.append("ControlNet: its weights counted as 42% of the UNet's (SD 1.5's ControlNet), its activations "
                     "as half a UNet step's (not measured).")
    if config.has(TOKENS):
        # the CLIP encoders stay in fp32 (whole embedding matrices get gradients); T5, frozen, in half precision
        frozen += tunable * 4 + (encoders - tunable) * half
        embeddings = sum(profile.token_embedding_params)
    elif config.has(FULL_WEIGHTS) and config.train_text_encoder:
        trainable += encoders
    elif config.train_text_encoder or not (config.cache_text_embeddings and config.offload_frozen_encoders):
        frozen += encoders * half
    if not (config.cache_latents and config.offload_frozen_encoders):
        frozen += profile.vae_params * (4 if profile.vae_in_fp32 else half)
        if not config.cache_latents:
            notes.append("Without cached latents the VAE also encodes every step (not included).")

    state = trainable * state_bytes + embeddings * (state_bytes - 4)
    if sharded and processes > 1:
        state /= processes
    extra = 0.0
    if config.use_ema:  # an fp32 copy of what trains (the UNet, or the adapters)
        extra += trainable * 4 / (processes if sharded else 1)
    if processes > 1 and not sharded:
        extra += (trainable + embeddings) * 4  # DDP's gradient buckets

    resolution = config.resolution or native or native_resolution(family)
    megapixels = resolution * resolution / 1e6
    factor = FULL_WEIGHTS_ACTIVATION if config.has(FULL_WEIGHTS) else 1.0
    if config.has(CONTROL):
        factor = CONTROLNET_ACTIVATION
    mode = compile_mode if compile_mode is not None else planned_compile(config, family, processes, sharded)
    if config.gradient_checkpointing:
        factor *= CHECKPOINTING_ACTIVATION
    elif mode != "none":
        factor *= COMPILED_ACTIVATION[mode]
    activations = config.train_batch_size * megapixels * coefficient * factor

    parts = {"weights": frozen / GIB, "trainable state": state / GIB,
             "ema and ddp": extra / GIB, "activations": activations, "other": CONSTANT_GIB}
    total = sum(parts.values())
    turns = family.frees_cached_text_encoders
    caching = caching_peak_gib(config, profile, half, encoders_take_turns=turns)
    if caching > total:
        held = "the largest of them on the GPU" if turns else "all on the GPU at once"
        notes.append(f"The peak is the set-up's, {caching:.1f} GiB, while the text encoders cache the prompts ({held});"
                     f" the steps need {total:.1f} GiB.")
        total = caching
    what = config.method_class.label
    if config.has(ADAPTER):
        if config.adapter != adapters.DEFAULT_ADAPTER:
            label = adapters.adapter_named(config.adapter).label
            what += f" ({label})"
            notes.append(f"{label} was not measured: counted as a LoRA of the same rank and targets.")
        what += f" rank {config.rank}"
    summary = (f"{family.label}, {what}, {resolution} px, batch {config.train_batch_size}"
               f"{', gradient checkpointing' if config.gradient_checkpointing else ''}"
               f"{', ' + config.optimizer if config.optimizer != 'adamw' else ''}")
    return MemoryEstimate(round(total, 2), {k: round(v, 3) for k, v in parts.items()}, notes, summary)


def caching_peak_gib(config: TrainConfig, profile: Any, half: int, *, encoders_take_turns: bool = False) -> float:
    """The set-up's peak when the prompts are cached: the text encoders on the GPU (all at once, or the largest when
    they take turns: T5-XXL alone is 8.9 GiB in bf16), the VAE, and a quantised denoiser, which is on the GPU from
    loading (the others come after the caches). 0 when the encoders stay on the GPU for the whole run (the steps'
    estimate counts them then)."""
    trains_encoders = config.train_text_encoder or config.has(TOKENS)
    if not (config.cache_text_embeddings and config.offload_frozen_encoders) or trains_encoders:
        return 0.0
    encoders = max(profile.text_encoder_params) if encoders_take_turns else sum(profile.text_encoder_params)
    weights = encoders * half + profile.vae_params * (4 if profile.vae_in_fp32 else half)
    if config.quantize_base != "none" and config.has(ADAPTER):
        weights += profile.unet_params * BYTES_PER_PARAMETER[config.quantize_base]
    return weights / GIB + CACHING_ACTIVATION_GIB + CONSTANT_GIB


def native_resolution(family: type[Family] | Family) -> int:
    return family.native_resolution if isinstance(family, Family) else family().native_resolution


def planned_compile(config: TrainConfig, family: type[Family] | Family, processes: int, sharded: bool) -> str:
    """The compile scope the trainer would use on CUDA ("none", "whole" or "blocks"), as train/speed.py plans it."""
    from sdtune_ui.train import speed

    instance = family if isinstance(family, Family) else family()
    total_steps = config.max_train_steps or 10**6  # epochs: long enough that auto would compile
    mode, _ = speed.compile_plan(config, family=instance, device_type="cuda", total_steps=total_steps,
                                 bucket_count=2 if config.bucketing else 1, sharded=sharded, processes=processes)
    return "none" if mode == "none" else speed.compile_scope(config, instance)


@functools.lru_cache(maxsize=64)
def native_resolution_of(model: str) -> int | None:
    """The model's own resolution from its UNet and VAE configs, when they are on this machine (a folder, or
    the Hugging Face cache): SD 2.1 is 768 px where its family's default says 512. None when unknown."""
    import json
    from pathlib import Path

    from sdtune_ui.models.loading import resolve_model

    source = resolve_model(model)
    try:
        folder = Path(source).expanduser()
        if folder.is_dir():
            configs = [folder / "unet" / "config.json", folder / "vae" / "config.json"]
        else:
            import huggingface_hub

            cached = [huggingface_hub.try_to_load_from_cache(source, f"{part}/config.json") for part in ("unet", "vae")]
            configs = [Path(path) if isinstance(path, str) else None for path in cached]
        unet, vae = (json.loads(path.read_text()) if path is not None and path.exists() else None for path in configs)
    except Exception:  # noqa: BLE001 - not a folder, not cached, not an id: the family's default applies
        return None
    if not unet or "sample_size" not in unet:
        return None
    scale = 2 ** (len(vae["block_out_channels"]) - 1) if vae and "block_out_channels" in vae else 8
    return int(unet["sample_size"]) * scale


@functools.lru_cache(maxsize=64)
def denoiser_config_of(model: str) -> dict | None:
    """The base model's transformer config when it is on this machine (a folder, or the Hugging Face cache), which
    tells SD3.5 Medium from Large; None for UNet models and unknown ones."""
    import json
    from pathlib import Path

    from sdtune_ui.models.loading import resolve_model

    source = resolve_model(model)
    try:
        folder = Path(source).expanduser()
        if folder.is_dir():
            path = folder / "transformer" / "config.json"
        else:
            import huggingface_hub

            cached = huggingface_hub.try_to_load_from_cache(source, "transformer/config.json")
            path = Path(cached) if isinstance(cached, str) else None
        return json.loads(path.read_text()) if path is not None and path.exists() else None
    except Exception:  # noqa: BLE001 - not a folder, not cached, not an id: the family's standard checkpoint
        return None


@functools.lru_cache(maxsize=64)
def family_for_estimate(model: str) -> type[Family]:
    """The family of a base model from its configs (no weights loaded; remembered per model name)."""
    from sdtune_ui.families import family_of_model

    return family_of_model(model)


def is_demo_model(model: str) -> bool:
    from sdtune_ui.models import OFFLINE_MODELS

    return model in OFFLINE_MODELS


# ---------------------------------------------------------------------------------------------- out of memory
@dataclass(frozen=True)
class MemoryFallback:
    """The next setting that saves memory: the config changes and what they mean for a person."""

    changes: dict[str, Any]
    description: str

    def apply(self, config: TrainConfig) -> TrainConfig:
        return dataclasses.replace(config, **self.changes)


def next_memory_saving(config: TrainConfig, native: int | None = None) -> MemoryFallback | None:
    """The first memory saver the config does not use yet, in the order that costs the least quality and
    speed: gradient checkpointing, half the batch with twice the accumulation, 8-bit AdamW (or Adafactor
    without bitsandbytes), then a lower resolution. None when nothing is left to lower."""
    if not config.gradient_checkpointing:
        return MemoryFallback({"gradient_checkpointing": True},
                              "gradient checkpointing on (far fewer activations kept; steps ~30% slower)")
    if config.train_batch_size > 1:
        batch = config.train_batch_size // 2
        accumulation = config.gradient_accumulation_steps * config.train_batch_size // batch
        return MemoryFallback({"train_batch_size": batch, "gradient_accumulation_steps": accumulation},
                              f"batch size {config.train_batch_size} -> {batch} with gradient accumulation "
                              f"{config.gradient_accumulation_steps} -> {accumulation} (about the same images "
                              "per update)")
    if config.optimizer in ("adamw", "prodigy"):
        if optimizer_available("adamw8bit"):
            return MemoryFallback({"optimizer": "adamw8bit"}, f"optimizer {config.optimizer} -> 8-bit AdamW "
                                  "(optimizer state starts fresh)")
        return MemoryFallback({"optimizer": "adafactor"}, f"optimizer {config.optimizer} -> Adafactor (8-bit AdamW "
                              "needs bitsandbytes: pip install sdtune_ui[8bit]; optimizer state starts fresh)")
    resolution = config.resolution or native or 0
    lower = int(resolution * 0.75) // 64 * 64
    if lower >= 256:
        return MemoryFallback({"resolution": lower}, f"resolution {resolution} -> {lower} px")
    return None


def memory_line(config: TrainConfig, gpu_name: str | None, gpu_gib: float | None) -> str:
    """One line for the CLI and the app: the estimate beside the GPU's memory, and what to try if it will not fit."""
    if is_demo_model(config.model):
        return "Estimated peak GPU memory: well under 1 GiB (a built-in demo model)."
    try:
        estimate = estimate_memory(config)
    except Exception as err:  # noqa: BLE001 - an estimate must never stop a run or a form
        return f"No memory estimate ({type(err).__name__}: {err})."
    text = estimate.describe(gpu_name, gpu_gib)
    if gpu_name and gpu_gib and not estimate.fits(gpu_gib):
        fallback = next_memory_saving(config)
        if fallback is not None:
            text = f"{text.rstrip('.')}. Try: {fallback.description}."
    return text
