"""Flux.1 (dev, schnell): a 12B double/single-stream transformer on 2x2-packed latents, conditioned on T5-XXL's
states and CLIP-L's pooled vector, rectified flow; dev also embeds a guidance value (guidance distillation).

The latents are packed into tokens of 2x2 patches and positioned by (0, row, column) ids, text tokens by zeros,
as FluxPipeline does; training feeds dev's guidance embedding the run's train_guidance_scale.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sdtune_ui.families.base import MemoryProfile, register
from sdtune_ui.families.flow import FlowMatchingFamily
from sdtune_ui.families.sd3 import ATTENTION, FEED_FORWARD, VAE_PARAMS


@register
class Flux(FlowMatchingFamily):
    name = "flux"
    demo_models = ("tiny-flux",)
    label = "Flux.1"
    priority = 40
    pipeline_class_name = "FluxPipeline"
    denoiser_class_name = "FluxTransformer2DModel"
    standard_repo = "black-forest-labs/FLUX.1-dev"
    text_encoder_count = 2
    text_encoder_components = ("text_encoder", "text_encoder_2")
    tunable_text_encoders = (0,)            # CLIP-L; T5 stays frozen
    embedding_keys = ("clip_l",)
    denoiser_lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {
        "attention": ATTENTION, "attention_ff": ATTENTION + FEED_FORWARD + ("proj_mlp",),
        "all": ATTENTION + FEED_FORWARD + ("proj_mlp", "proj_out", "norm1.linear", "norm1_context.linear",
                                           "norm.linear")}
    max_sequence_length = 512
    kohya_base_version = "flux1"
    card_tags: ClassVar[tuple[str, ...]] = ("flux", "flux-diffusers")
    license = "other"
    license_name = "flux-1-dev-non-commercial-license"
    license_link = "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"
    # Flux.1-dev's sizes (CLIP-L without projection, T5-XXL), counted on the meta device. Activations: an H200 LoRA r4
    # run at 1024 px peaked at 46.5 GiB allocated in its steps, 24.2 above the bf16 transformer
    # (benchmarks/results/h200-issue15-call3.jsonl).
    memory = MemoryProfile(
        unet_params=11_901_408_320, text_encoder_params=(123_060_480, 4_762_310_656), vae_params=VAE_PARAMS,
        lora_params_per_rank={"attention": 1_634_304, "attention_ff": 3_385_344, "all": 5_372_992},
        text_encoder_lora_params_per_rank=73_728, token_embedding_params=(37_945_344,),
        activation_gib_per_megapixel=23.1)
    trains_with_cudnn_attention = False   # its joint attention crashes cuDNN's kernel in backward (base.py)
    # Measured (issue 15): with an NF4 transformer and gradient checkpointing the run peaked at 15.9 GiB allocated
    # (17.1 GB on the whole GPU), in the set-up, while T5-XXL cached the prompts beside the quantised transformer,
    # which loads onto the GPU. A bf16 base with checkpointing needs ~26 GiB. So one preset: 24 GB, NF4.
    memory_presets: ClassVar[dict[str, dict[str, Any]]] = {
        "24 GB+": dict(mixed_precision="bf16", gradient_checkpointing=True, train_batch_size=1, quantize_base="nf4"),
    }

    def __init__(self, prediction_type: str = "flow_matching", native_resolution: int = 1024):
        super().__init__(prediction_type, native_resolution)
        self.guidance_embeds = True
        self.train_guidance = 3.5

    @classmethod
    def from_pipeline(cls, pipe: Any) -> Flux:
        # FluxPipeline draws at 128 latent rows per side unless told otherwise.
        family = cls(native_resolution=128 * 2 ** (len(pipe.vae.config.block_out_channels) - 1))
        family.guidance_embeds = bool(pipe.transformer.config.guidance_embeds)
        return family

    def apply_training_settings(self, config: Any) -> None:
        super().apply_training_settings(config)
        self.train_guidance = config.train_guidance_scale

    def training_notes(self, config: Any) -> list[str]:
        notes = super().training_notes(config)
        from sdtune_ui.methods import ADAPTER, TOKENS

        if config.has(TOKENS) and not config.has(ADAPTER):
            notes.append("Flux reads CLIP-L only through its pooled vector, so a token learned there alone has a weak "
                         "effect: pivotal tuning (LoRA + token) teaches Flux a concept better.")
        if self.guidance_embeds:
            notes.append(f"Guidance embedding (Flux.1-dev): trained at guidance {config.train_guidance_scale}")
        return notes

    @classmethod
    def matches_unet_config(cls, unet_config: dict) -> bool:
        return unet_config.get("_class_name") == "FluxTransformer2DModel" or {
            "num_single_layers", "joint_attention_dim"} <= set(unet_config)

    @classmethod
    def matches_checkpoint_keys(cls, keys: set[str]) -> bool:
        return any("double_blocks." in key for key in keys)

    @classmethod
    def memory_for_config(cls, config: dict | None) -> MemoryProfile:
        return cls.memory

    def encode(self, text_encoders: list[Any],
               input_ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        pooled = text_encoders[0](input_ids[0], output_hidden_states=False).pooler_output
        hidden = text_encoders[1](input_ids[1], output_hidden_states=False)[0]
        return hidden, pooled.to(hidden.dtype)

    def predict(self, model: Any, noisy: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor,
                pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> torch.Tensor:
        batch, channels, height, width = noisy.shape
        packed = pack_latents(noisy)
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((batch,), self.train_guidance, device=noisy.device, dtype=torch.float32)
        out = model(hidden_states=packed, timestep=timesteps.to(noisy.dtype) / 1000, guidance=guidance,
                    pooled_projections=pooled.to(hidden.dtype), encoder_hidden_states=hidden,
                    txt_ids=torch.zeros(hidden.shape[1], 3, device=noisy.device, dtype=noisy.dtype),
                    img_ids=latent_ids(height // 2, width // 2, noisy.device, noisy.dtype), return_dict=False)[0]
        return unpack_latents(out, channels, height, width)

    def prompt_embedding_kwargs(self, hidden: torch.Tensor, pooled: torch.Tensor | None,
                                negative: tuple[torch.Tensor, torch.Tensor | None] | None) -> dict[str, Any]:
        # FluxPipeline reads a negative prompt only for true CFG (true_cfg_scale > 1), which samples do not use.
        return {"prompt_embeds": hidden, "pooled_prompt_embeds": pooled}

    @classmethod
    def original_modules(cls, config: dict) -> dict[str, Any]:
        from sdtune_ui.families.flow_layout import flux_module_map

        return flux_module_map(config)

    @classmethod
    def original_norms(cls, config: dict) -> dict[str, str]:
        from sdtune_ui.families.flow_layout import flux_norm_map

        return flux_norm_map(config)

    @classmethod
    def ldm_text_encoder_state(cls, pipe: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError("Flux single files hold the transformer alone (export/flow_keys.py)")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C * 4): one token per 2x2 patch, channels then patch rows then columns."""
    batch, channels, height, width = latents.shape
    patches = latents.reshape(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    batch = tokens.shape[0]
    patches = tokens.reshape(batch, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, channels, height, width)


def latent_ids(rows: int, columns: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """Each packed token's position (0, row, column), as the transformer's rotary embedding reads it."""
    ids = torch.zeros(rows, columns, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(rows, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(columns, device=device, dtype=dtype)[None, :]
    return ids.reshape(rows * columns, 3)
