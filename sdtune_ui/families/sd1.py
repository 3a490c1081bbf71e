"""SD1.x: one CLIP text encoder whose last hidden state conditions the UNet; epsilon prediction at 512 px."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sdtune_ui.families.base import Family, register


@register
class SD1(Family):
    name = "sd1"
    label = "Stable Diffusion 1.x"
    priority = 0                      # the fallback: any UNet another family does not claim
    kohya_base_version = "sd_v1"
    card_tags: ClassVar[tuple[str, ...]] = ("stable-diffusion", "stable-diffusion-diffusers")
    license = "creativeml-openrail-m"

    @classmethod
    def matches_unet_config(cls, unet_config: dict) -> bool:
        return True

    @classmethod
    def matches_checkpoint_keys(cls, keys: set[str]) -> bool:
        return True

    @classmethod
    def ldm_text_encoder_state(cls, pipe: Any) -> dict[str, torch.Tensor]:
        from sdtune_ui.export.single_file import transformers_clip_state

        return {"cond_stage_model.transformer." + k: v for k, v in transformers_clip_state(pipe.text_encoder).items()}
