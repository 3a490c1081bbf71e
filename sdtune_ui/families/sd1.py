"""SD1.x: one CLIP text encoder whose last hidden state conditions the UNet; epsilon prediction at 512 px."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sdtune_ui.families.base import Family, MemoryProfile, register


@register
class SD1(Family):
    name = "sd1"
    demo_models = ("tiny-sd1",)
    label = "Stable Diffusion 1.x"
    priority = 0                      # the fallback: any UNet another family does not claim
    kohya_base_version = "sd_v1"
    card_tags: ClassVar[tuple[str, ...]] = ("stable-diffusion", "stable-diffusion-diffusers")
    license = "creativeml-openrail-m"
    # SD 1.5's sizes; activations fitted to the H100/H200 peaks in benchmarks/README.md (fit_memory.py).
    memory = MemoryProfile(
        unet_params=859_520_964, text_encoder_params=(123_060_480,), vae_params=83_653_863,
        lora_params_per_rank={"attention": 199_296, "attention_ff": 423_936, "all": 996_416},
        text_encoder_lora_params_per_rank=73_728, token_embedding_params=(37_945_344,),
        activation_gib_per_megapixel=4.04)

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
