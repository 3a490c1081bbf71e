"""Model families: what differs between SD1.x, SD2.x and SDXL, in one place.

The training loop asks the family how to tokenize and encode prompts, what the UNet needs besides the
text embeddings (SDXL's pooled embeddings and size/crop time ids) and what the loss target is. The family
is read from the loaded pipeline's configs, never guessed from the model's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


class Family:
    """SD1.x / SD2.x: one CLIP text encoder, conditioning is its last hidden state."""

    name = "sd1"
    native_resolution = 512

    def __init__(self, prediction_type: str, native_resolution: int):
        self.prediction_type = prediction_type
        self.native_resolution = native_resolution

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


class SD2Family(Family):
    """SD2.x: OpenCLIP text encoder, linear attention projections, often v-prediction (the 768 models)."""

    name = "sd2"


class SDXLFamily(Family):
    """SDXL: two text encoders (hidden states concatenated), pooled embeddings and size/crop time ids."""

    name = "sdxl"

    def encode(self, text_encoders: list[Any],
               input_ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden_states = []
        pooled = None
        for encoder, ids in zip(text_encoders, input_ids):
            out = encoder(ids, output_hidden_states=True, return_dict=True)
            # SDXL conditions on the penultimate layer of both encoders, and on the second's pooled output.
            hidden_states.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(hidden_states, dim=-1), pooled

    def added_cond_kwargs(self, pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> dict | None:
        return {"text_embeds": pooled, "time_ids": time_ids}

    def time_ids(self, original_size: tuple[int, int], crop_top_left: tuple[int, int],
                 target_size: tuple[int, int]) -> torch.Tensor:
        return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)


def detect_family(pipe: Any) -> Family:
    """Read the family from the pipeline's configs (works for renamed and community models)."""
    unet_config = pipe.unet.config
    prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    native = int(unet_config.sample_size) * vae_scale
    if unet_config.get("addition_embed_type") == "text_time":
        return SDXLFamily(prediction_type, native)
    if unet_config.get("use_linear_projection"):
        return SD2Family(prediction_type, native)
    return Family(prediction_type, native)


def model_parts(pipe: Any) -> ModelParts:
    """Split a loaded pipeline into the parts the trainer uses, with a DDPM scheduler for training noise."""
    from diffusers import DDPMScheduler

    text_encoders = [enc for enc in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if enc is not None]
    tokenizers = [tok for tok in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if tok is not None]
    # Training always adds noise the DDPM way; the schedule (betas, prediction type) comes from the model.
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return ModelParts(
        family=detect_family(pipe),
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        noise_scheduler=noise_scheduler,
        pipeline=pipe,
    )
