"""SDXL: two text encoders (penultimate hidden states concatenated), pooled embeddings and size/crop time ids."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sdtune_ui.families.base import Family, MemoryProfile, register


@register
class SDXL(Family):
    name = "sdxl"
    demo_models = ("tiny-sdxl",)
    label = "Stable Diffusion XL"
    priority = 20
    pipeline_class_name = "StableDiffusionXLPipeline"
    inpaint_pipeline_class_name = "StableDiffusionXLInpaintPipeline"
    controlnet_pipeline_class_name = "StableDiffusionXLControlNetPipeline"
    text_encoder_count = 2
    uses_pooled_embeddings = True
    embedding_keys = ("clip_l", "clip_g")
    # Its many identical transformer blocks compile fastest one by one (80 s, 7.1 steps/s on an H100), and
    # 400 steps win that time back (0.14 s per step instead of 0.38 eager).
    auto_compile_scope = "blocks"
    auto_compile_min_steps = 400
    kohya_base_version = "sdxl_base_v1-0"
    kohya_ldm_unet_names = True
    card_tags: ClassVar[tuple[str, ...]] = ("stable-diffusion-xl", "stable-diffusion-xl-diffusers")
    license = "openrail++"
    # SDXL base 1.0's sizes; activations fitted to the H100/H200 peaks in benchmarks/README.md (fit_memory.py).
    memory = MemoryProfile(
        unet_params=2_567_463_684, text_encoder_params=(123_060_480, 694_659_840), vae_params=83_653_863,
        lora_params_per_rank={"attention": 1_451_520, "attention_ff": 2_659_840, "all": 3_045_440},
        text_encoder_lora_params_per_rank=401_408, token_embedding_params=(37_945_344, 63_242_240),
        activation_gib_per_megapixel=6.81, vae_in_fp32=True)

    def __init__(self, prediction_type: str = "epsilon", native_resolution: int = 1024):
        super().__init__(prediction_type, native_resolution)

    @classmethod
    def matches_unet_config(cls, unet_config: dict) -> bool:
        return unet_config.get("addition_embed_type") == "text_time"

    @classmethod
    def matches_checkpoint_keys(cls, keys: set[str]) -> bool:
        return any(key.startswith("conditioner.embedders.1") for key in keys)

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

    @classmethod
    def ldm_text_encoder_state(cls, pipe: Any) -> dict[str, torch.Tensor]:
        from sdtune_ui.export.single_file import open_clip_state, transformers_clip_state

        state = {"conditioner.embedders.0.transformer." + k: v
                 for k, v in transformers_clip_state(pipe.text_encoder).items()}
        state.update(open_clip_state(transformers_clip_state(pipe.text_encoder_2), "conditioner.embedders.1.model."))
        return state
