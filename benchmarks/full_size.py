"""Full-size SD1.5 and SDXL pipelines with random weights, built from configs in code (no download).

Same shapes, so the same compute and memory, as the real checkpoints; the tokenizer is the tiny demo
tokenizer (token ids stay inside the real vocabulary size, which is all the compute depends on).
"""

from __future__ import annotations

import torch


def _vae(force_upcast: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.13025 if force_upcast else 0.18215, force_upcast=force_upcast,
    )


def _clip(hidden: int, layers: int, heads: int, intermediate: int, projection: bool = False,
          projection_dim: int = 768, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=77,
                            projection_dim=projection_dim, hidden_act=act, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def build_sd15():
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from sdtune_ui.models.tiny import _clip_tokenizer

    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    return StableDiffusionPipeline(
        vae=_vae(False), text_encoder=_clip(768, 12, 12, 3072), tokenizer=_clip_tokenizer(), unet=unet,
        scheduler=DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from sdtune_ui.models.tiny import _clip_tokenizer

    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=2048,
        block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(True), text_encoder=_clip(768, 12, 12, 3072),
        text_encoder_2=_clip(1280, 32, 20, 5120, projection=True, projection_dim=1280, act="gelu"),
        tokenizer=_clip_tokenizer(), tokenizer_2=_clip_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1),
    )


def build(name: str, dtype: torch.dtype = torch.float32):
    pipe = {"sd15": build_sd15, "sdxl": build_sdxl}[name]()
    return pipe.to(dtype=dtype)
