"""Full-size SD1.5, SDXL, SD3.5 Medium and Flux.1-dev pipelines with random weights, built from configs in code (no
download).

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


def _t5_xxl():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                   feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                                   dense_act_fn="gelu_new"))


def _flow_vae(scaling: float, shift: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2, sample_size=1024,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=scaling, shift_factor=shift, use_quant_conv=False,
        use_post_quant_conv=False)


def build_sd35m():
    """SD3.5 Medium's shapes: MMDiT-X (dual attention in the first 13 blocks), CLIP-L, CLIP-G, T5-XXL."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from sdtune_ui.models.tiny import _clip_tokenizer
    from sdtune_ui.models.tiny_flow import t5_tokenizer

    transformer = SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
        joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_flow_vae(1.5305, 0.0609),
        text_encoder=_clip(768, 12, 12, 3072, projection=True, projection_dim=768), tokenizer=_clip_tokenizer(),
        text_encoder_2=_clip(1280, 32, 20, 5120, projection=True, projection_dim=1280, act="gelu"),
        tokenizer_2=_clip_tokenizer(), text_encoder_3=_t5_xxl(), tokenizer_3=t5_tokenizer())


def build_flux_dev():
    """Flux.1-dev's shapes: 19 double- and 38 single-stream blocks, guidance embedding, CLIP-L, T5-XXL."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from sdtune_ui.models.tiny import _clip_tokenizer
    from sdtune_ui.models.tiny_flow import t5_tokenizer

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(
        scheduler=scheduler, vae=_flow_vae(0.3611, 0.1159), text_encoder=_clip(768, 12, 12, 3072),
        tokenizer=_clip_tokenizer(), text_encoder_2=_t5_xxl(), tokenizer_2=t5_tokenizer(),
        transformer=FluxTransformer2DModel(guidance_embeds=True))


BUILDERS = {"sd15": build_sd15, "sdxl": build_sdxl, "sd35m": build_sd35m, "flux": build_flux_dev}


def build(name: str, dtype: torch.dtype = torch.float32):
    pipe = BUILDERS[name]()
    return pipe.to(dtype=dtype)
