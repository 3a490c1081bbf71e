"""Tiny offline SD3- and Flux-shaped pipelines: flow-matching transformers with CLIP and T5 text encoders.

Built like the UNet demo models in tiny.py (same CLIP tokenizer, VAE and calibration), at toy width, so the
SD3.5 (MMDiT with dual attention and QK norm, CLIP-L + CLIP-G + T5) and Flux.1-dev (double and single stream
blocks, guidance embedding, CLIP-L + T5) code paths train, save, load and generate on a CPU in seconds.
"""

from __future__ import annotations

import string

import torch

from sdtune_ui.models.tiny import _WORDS, _calibrate_latent_scale, _clip_tokenizer, _text_encoder

T5_WIDTH = 64     # SD3 pads the two CLIP encoders' concatenated states (32 + 32) up to the T5 width
T5_MAX_LENGTH = 512


def t5_tokenizer():
    """A T5 (Unigram) tokenizer with a hand-written vocabulary: whole words plus single characters."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + word, -1.0) for word in dict.fromkeys([*_WORDS, "robot"])]
    pieces += [("\u2581", -2.0)] + [(ch, -3.0) for ch in string.ascii_lowercase + string.digits + "<>.,!?_-'"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def t5_encoder(vocab_size: int, width: int = T5_WIDTH):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=width, d_kv=16, d_ff=width * 2, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                      pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(config)


def flow_vae():
    """The VAE of the flow models: no quant convs (as in SD3's and Flux's), latents shifted and scaled to unit
    variance (their shift_factor / scaling_factor)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=16, sample_size=64, use_quant_conv=False,
                        use_post_quant_conv=False)
    _calibrate_latent_scale(vae)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        images = torch.rand(8, 3, 64, 64, generator=generator) * 2 - 1
        mean = vae.encode(images).latent_dist.mode().mean().item()
    vae.register_to_config(shift_factor=round(mean, 5))
    return vae


def build_tiny_sd3():
    """SD3.5-Medium-shaped: MMDiT-X (dual attention in the first block), RMS QK norm, shift-3 flow schedule."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = _clip_tokenizer()
    t5_tok = t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=T5_WIDTH, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm")
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=flow_vae(),
        text_encoder=_text_encoder(len(tokenizer), projection=True),
        tokenizer=tokenizer,
        text_encoder_2=_text_encoder(len(tokenizer), projection=True),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=t5_encoder(len(t5_tok)),
        tokenizer_3=t5_tok,
    )


def build_tiny_flux():
    """Flux.1-dev-shaped: one double-stream and two single-stream blocks, guidance embedding, 2x2 latent packing,
    a resolution-dependent (dynamic) shift in the sampler as Flux.1-dev's."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = _clip_tokenizer()
    t5_tok = t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=T5_WIDTH, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(
        scheduler=scheduler,
        vae=flow_vae(),
        text_encoder=_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=t5_encoder(len(t5_tok)),
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


BUILDERS = {"tiny-sd3": build_tiny_sd3, "tiny-flux": build_tiny_flux}


def build(name: str):
    torch.manual_seed(0)
    return BUILDERS[name]()
