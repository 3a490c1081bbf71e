"""SD2.x: an OpenCLIP text encoder and linear attention projections, often v-prediction (the 768 px models)."""

from __future__ import annotations

from typing import Any

import torch

from sdtune_ui.families.base import MemoryProfile, register
from sdtune_ui.families.sd1 import SD1


@register
class SD2(SD1):
    name = "sd2"
    demo_models = ("tiny-sd2-v",)
    label = "Stable Diffusion 2.x"
    priority = 10
    kohya_base_version = "sd_v2"
    kohya_is_v2 = True
    # SD 2.1's sizes (OpenCLIP-H text encoder); no SD2 peak was measured, so activations are not known here.
    memory = MemoryProfile(
        unet_params=865_910_724, text_encoder_params=(340_387_840,), vae_params=83_653_863,
        lora_params_per_rank={"attention": 207_488, "attention_ff": 432_128, "all": 1_004_608},
        text_encoder_lora_params_per_rank=188_416, token_embedding_params=(50_593_792,),
        activation_gib_per_megapixel=None)

    @classmethod
    def matches_unet_config(cls, unet_config: dict) -> bool:
        return bool(unet_config.get("use_linear_projection")) and unet_config.get("addition_embed_type") is None

    @classmethod
    def matches_checkpoint_keys(cls, keys: set[str]) -> bool:
        return any(key.startswith("cond_stage_model.model.") for key in keys)

    @classmethod
    def ldm_text_encoder_state(cls, pipe: Any) -> dict[str, torch.Tensor]:
        from sdtune_ui.export.single_file import open_clip_state, transformers_clip_state

        return open_clip_state(transformers_clip_state(pipe.text_encoder), "cond_stage_model.model.")
