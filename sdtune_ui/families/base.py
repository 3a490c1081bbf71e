"""Model families: one class per architecture, registered by name, owning everything known about it.

A family knows how to recognise itself (from a loaded pipeline's configs, a UNet config, a single-file
checkpoint's keys), how prompts become the UNet's conditioning, what the UNet learns to predict, how it is best
compiled, which diffusers pipeline class runs it, and the key layouts other tools use for it (single-file
checkpoints, kohya LoRAs), plus what a model card says about it. Nothing outside this package names a family:
the trainer, generation and export ask the family object.

Adding a family: one module here with a `Family` subclass decorated with `@register` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch


@dataclass
class ModelParts:
    """The pieces of a pipeline the trainer works with, plus the family that knows how to drive them."""

    family: Family
    unet: Any          # the denoiser: the UNet, or the transformer of SD3 / Flux (Family.denoiser)
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    pipeline: Any = field(repr=False)
    # Pipeline component names of text_encoders, in order (text_encoder, text_encoder_2, ...).
    text_encoder_names: list[str] = field(default_factory=list)
    controlnet: Any = None    # the ControlNet a ControlNet run trains (the UNet stays frozen); None otherwise

    @property
    def tunable_text_encoders(self) -> list[Any]:
        """The text encoders a method may train (LoRA, new tokens, full): all of them, except those the family
        keeps frozen (SD3's and Flux's T5)."""
        keep = getattr(self.family, "tunable_text_encoders", None)
        return [enc for i, enc in enumerate(self.text_encoders) if keep is None or i in keep]

    @property
    def tunable_tokenizers(self) -> list[Any]:
        keep = getattr(self.family, "tunable_text_encoders", None)
        return [tok for i, tok in enumerate(self.tokenizers) if keep is None or i in keep]

    @property
    def tunable_text_encoder_names(self) -> list[str]:
        keep = getattr(self.family, "tunable_text_encoders", None)
        names = self.text_encoder_names or [f"text_encoder{'' if i == 0 else f'_{i + 1}'}"
                                            for i in range(len(self.text_encoders))]
        return [name for i, name in enumerate(names) if keep is None or i in keep]


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
    activation_source: str = ""                   # not measured on this architecture: where the figure comes from
    vae_in_fp32: bool = False                     # the VAE is kept in fp32 (SDXL's overflows in fp16)


class Family:
    """Base class. Instances carry what varies between checkpoints of one family (prediction type, size)."""

    name: ClassVar[str]
    label: ClassVar[str]
    demo_models: ClassVar[tuple[str, ...]] = ()   # the built-in offline models of this family (models/tiny.py)
    # Detection: families are tried from the highest priority down; the lowest is the fallback.
    priority: ClassVar[int] = 0
    # diffusers pipeline classes (names, so importing a family does not import diffusers)
    pipeline_class_name: ClassVar[str] = "StableDiffusionPipeline"
    text_encoder_count: ClassVar[int] = 1
    # The pipeline component that denoises (a UNet; a transformer for the DiT families) and its text encoders'
    # component names in order (those a pipeline lacks are skipped).
    denoiser: ClassVar[str] = "unet"
    # Transformer families: the denoiser's diffusers class, and the repo whose configs and other components complete a
    # single file that holds the transformer alone (models/loading.py).
    denoiser_class_name: ClassVar[str] = ""
    standard_repo: ClassVar[str] = ""
    text_encoder_components: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    # Indices of the text encoders methods may train (None: all); textual-inversion files name one tensor per
    # tunable encoder with these keys (() : one tensor under the token, the SD1/SD2 layout).
    tunable_text_encoders: ClassVar[tuple[int, ...] | None] = None
    embedding_keys: ClassVar[tuple[str, ...]] = ()
    # Big frozen text encoders (T5-XXL): once the prompts (validation prompts included) are cached they are freed
    # for the rest of the run instead of parked, and sample images are drawn from the cached embeddings.
    frees_cached_text_encoders: ClassVar[bool] = False
    # LoRA target modules of the denoiser per lora_targets choice (None: the adapter registry's UNet targets).
    denoiser_lora_targets: ClassVar[dict[str, tuple[str, ...]] | None] = None
    # Samplers: UNet families take any of the generation options' schedulers; flow-matching ones keep their own.
    flow_matching: ClassVar[bool] = False
    # False where cuDNN's attention kernel fails in training (Flux.1 at 1024 px, torch 2.11 + cuDNN 9.19 on an H200:
    # "mha_graph.execute ... is_good()" then an illegal memory access; benchmarks/kernel_check.py): the trainer
    # leaves it out and SDPA takes the flash / memory-efficient kernels.
    trains_with_cudnn_attention: ClassVar[bool] = True
    # The whole-step CUDA graph (train/graphed_step.py) was checked against the eager step on this family's models.
    cuda_graph_checked: ClassVar[bool] = True
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
    kohya_original_layout: ClassVar[bool] = False  # a transformer named by its original layout (export/kohya_flow.py)
    card_tags: ClassVar[tuple[str, ...]] = ()
    license: ClassVar[str] = ""
    license_name: ClassVar[str] = ""   # with license "other": the licence's id and where to read it (model card)
    license_link: ClassVar[str] = ""
    # Memory: sizes of the standard checkpoint and the fitted activation cost (train/memory.py).
    memory: ClassVar[MemoryProfile | None] = None
    # Memory presets of this family by GPU size (TrainConfig VRAM_PRESETS names), applied over the generic ones; each
    # chosen so that train/memory.py's estimate of a LoRA run fits (tests/test_flow_presets.py).
    memory_presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # Editing: the pipelines that inpaint with (or are steered by a ControlNet over) this family's models.
    inpaint_pipeline_class_name: ClassVar[str] = "StableDiffusionInpaintPipeline"
    controlnet_pipeline_class_name: ClassVar[str] = "StableDiffusionControlNetPipeline"
    # An inpainting variant's UNet also reads the mask and the masked picture's latents (families/inpaint.py).
    inpainting: ClassVar[bool] = False

    def __init__(self, prediction_type: str = "epsilon", native_resolution: int = 512):
        self.prediction_type = prediction_type
        self.native_resolution = native_resolution

    @classmethod
    def from_pipeline(cls, pipe: Any) -> Family:
        """An instance for a loaded pipeline: prediction type from its scheduler, native size from its configs."""
        prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
        vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        return cls(prediction_type, int(getattr(pipe, cls.denoiser).config.sample_size) * vae_scale)

    def apply_training_settings(self, config: Any) -> None:  # noqa: B027 - an optional hook
        """Take the run's settings this family's objective reads (flow matching: timestep sampling, guidance)."""

    def training_notes(self, config: Any) -> list[str]:
        """Lines for the run's log about what this family does differently with these settings."""
        return []

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
    def tunable_components(cls) -> list[tuple[str, str]]:
        """(tokenizer, text encoder) pipeline component names of the encoders that can learn (CLIP; not T5), in
        order: where textual-inversion vectors go (a pipeline may lack the later ones)."""
        keep = cls.tunable_text_encoders
        names = [name for i, name in enumerate(cls.text_encoder_components) if keep is None or i in keep]
        return [(name.replace("text_encoder", "tokenizer"), name) for name in names]

    @classmethod
    def memory_for_config(cls, config: dict | None) -> MemoryProfile | None:
        """The memory profile of a checkpoint with this denoiser config (None: unknown), e.g. SD3.5 Medium or
        Large; by default the family's standard checkpoint's."""
        return cls.memory

    @classmethod
    def pipeline_class(cls, kind: str = "") -> type:
        """The diffusers pipeline class that runs this family: text-to-image, or kind "inpaint" / "control"."""
        import diffusers

        names = {"": cls.pipeline_class_name, "inpaint": cls.inpaint_pipeline_class_name,
                 "control": cls.controlnet_pipeline_class_name}
        return getattr(diffusers, names[kind])

    @classmethod
    def inpainting_variant(cls) -> type[Family]:
        """The registered inpainting variant of this family (itself when it is one): what converting a
        text-to-image model into an inpainting one turns it into."""
        if cls.inpainting:
            return cls
        found = [other for other in _FAMILIES.values() if other.inpainting and issubclass(other, cls)
                 and other.base_family() is cls]
        if not found:
            raise ValueError(f"{cls.label} has no inpainting variant")
        return found[0]

    @classmethod
    def base_family(cls) -> type[Family]:
        """The text-to-image family this one is a variant of (itself for text-to-image families)."""
        return cls

    def as_inpainting(self) -> Family:
        """This checkpoint's family once its UNet reads the inpainting inputs (same prediction type and size)."""
        return self.inpainting_variant()(self.prediction_type, self.native_resolution)

    def unet_sample(self, noisy: torch.Tensor, mask: torch.Tensor | None,
                    masked_latents: torch.Tensor | None) -> torch.Tensor:
        """What the UNet reads as its sample: the noisy latents (inpainting variants add the mask and the masked
        picture's latents as extra channels)."""
        return noisy

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

    # ------------------------------------------------------------------ the objective (one training step)
    @classmethod
    def training_scheduler(cls, scheduler: Any) -> Any:
        """The scheduler that adds training noise: DDPM with the model's own schedule (betas, prediction type)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(scheduler.config)

    def sample_timesteps(self, noise_scheduler: Any, count: int, generator: torch.Generator, device: Any,
                         latent_size: tuple[int, int]) -> torch.Tensor:
        """One timestep per image, uniform over the training schedule."""
        return torch.randint(0, noise_scheduler.config.num_train_timesteps, (count,), generator=generator,
                             device=device)

    def noisy_latents(self, noise_scheduler: Any, latents: torch.Tensor, noise: torch.Tensor,
                      timesteps: torch.Tensor) -> torch.Tensor:
        return noise_scheduler.add_noise(latents, noise, timesteps)

    def target(self, noise_scheduler: Any, latents: torch.Tensor, noise: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet learns to predict: the noise (epsilon) or the velocity (v-prediction)."""
        if self.prediction_type == "v_prediction":
            return noise_scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def loss_weights(self, noise_scheduler: Any, timesteps: torch.Tensor, config: Any) -> torch.Tensor | None:
        """Per-image loss weights (None: unweighted). Min-SNR weighting (Hang et al. 2023) when snr_gamma is set:
        down-weight the easy, low-noise timesteps."""
        if not config.snr_gamma:
            return None
        from diffusers.training_utils import compute_snr

        snr = compute_snr(noise_scheduler, timesteps)
        denominator = snr + 1 if self.prediction_type == "v_prediction" else snr
        return torch.clamp(snr, max=config.snr_gamma) / denominator

    def predict(self, model: Any, noisy: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor,
                pooled: torch.Tensor | None, time_ids: torch.Tensor | None, **residuals: Any) -> torch.Tensor:
        """The denoiser's output for a batch, in the latents' layout (inputs already in the compute dtype);
        `residuals`: a ControlNet's additions to a UNet's skip connections and middle block."""
        return model(noisy, timesteps, hidden, added_cond_kwargs=self.added_cond_kwargs(pooled, time_ids),
                     return_dict=False, **residuals)[0]

    # ------------------------------------------------------------------ sampling with cached prompts
    def prompt_embedding_kwargs(self, hidden: torch.Tensor, pooled: torch.Tensor | None,
                                negative: tuple[torch.Tensor, torch.Tensor | None] | None) -> dict[str, Any]:
        """The pipeline call's arguments for already encoded prompts (sample images once the encoders are freed)."""
        kwargs: dict[str, Any] = {"prompt_embeds": hidden}
        if pooled is not None:
            kwargs["pooled_prompt_embeds"] = pooled
        if negative is not None:
            kwargs["negative_prompt_embeds"] = negative[0]
            if negative[1] is not None:
                kwargs["negative_pooled_prompt_embeds"] = negative[1]
        return kwargs

    def sample_size_kwargs(self, resolution: int) -> dict[str, int]:
        """Size arguments for sample images (UNet pipelines draw at their native size by default)."""
        return {}

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
    """The family of a denoiser's config (a UNet's, or a transformer's with its `_class_name`)."""
    return next(cls for cls in family_classes() if cls.matches_unet_config(dict(unet_config)))


def family_for_checkpoint_keys(keys: Iterable[str]) -> type[Family]:
    keys = set(keys)
    return next(cls for cls in family_classes() if cls.matches_checkpoint_keys(keys))


def family_of_model(model: str) -> type[Family]:
    """The family of a base model (demo name, folder, .safetensors file or Hub id) from its UNet config or its
    keys, without loading weights; the fallback family when neither can be read (offline, unknown repo)."""
    from sdtune_ui.models.loading import resolve_model
    demo_family = next((cls for cls in family_classes() if model in cls.demo_models), None)
    if demo_family is not None:   # known without building the demo model first (seconds, on its first use)
        return demo_family
    source = resolve_model(model)
    path = Path(source).expanduser()
    for denoiser in ("unet", "transformer"):
        try:
            if path.is_dir():
                return family_for_unet_config(json.loads((path / denoiser / "config.json").read_text()))
            if path.is_file() and path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as handle:
                    return family_for_checkpoint_keys(handle.keys())
        except Exception:  # noqa: BLE001 - unreadable file or unknown config: the fallback below
            continue
    if source and not path.exists():
        try:
            config = _hub_denoiser_config(source)
            if config is not None:
                return family_for_unet_config(config)
        except Exception:  # noqa: BLE001 - offline, unknown or private repo: the fallback below
            pass
    return family_classes()[-1]


def _hub_denoiser_config(repo_id: str) -> dict | None:
    """A Hub model's UNet or transformer config: from the local cache when it is there (instant, and no retries
    when the network is down), else downloaded (then cached for the next call)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    names = ("unet/config.json", "transformer/config.json")
    for name in names:
        cached = try_to_load_from_cache(repo_id, name)
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text())
    for name in names:
        try:
            return json.loads(Path(hf_hub_download(repo_id, name)).read_text())
        except LocalEntryNotFoundError:
            return None  # no network: asking for the other name would wait through the same retries
        except EntryNotFoundError:
            continue  # the repo has no such file: its denoiser has the other name
    return None


def denoiser_of(pipe: Any) -> Any:
    """A pipeline's denoising model: its UNet, or its transformer."""
    model = getattr(pipe, "unet", None)
    return model if model is not None else pipe.transformer


def detect_family(pipe: Any) -> Family:
    """The family of a loaded pipeline, read from its configs (works for renamed and community models)."""
    return family_for_unet_config(denoiser_of(pipe).config).from_pipeline(pipe)


def model_parts(pipe: Any) -> ModelParts:
    """Split a loaded pipeline into the parts the trainer uses, with the family's scheduler for training noise."""
    family = detect_family(pipe)
    names = [name for name in family.text_encoder_components if getattr(pipe, name, None) is not None]
    text_encoders = [getattr(pipe, name) for name in names]
    tokenizers = [getattr(pipe, name.replace("text_encoder", "tokenizer")) for name in names]
    return ModelParts(family=family, unet=getattr(pipe, family.denoiser), vae=pipe.vae, text_encoders=text_encoders,
                      tokenizers=tokenizers, noise_scheduler=family.training_scheduler(pipe.scheduler), pipeline=pipe,
                      text_encoder_names=names)
