"""SD2.x: an OpenCLIP text encoder and linear attention projections, often v-prediction (the 768 px models)."""

from __future__ import annotations

from typing import Any

import torch

from sdtune_ui.families.base import register
from sdtune_ui.families.sd1 import SD1


@register
class SD2(SD1):
    name = "sd2"
    label = "Stable Diffusion 2.x"
    priority = 10
    kohya_base_version = "sd_v2"
    kohya_is_v2 = True

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
