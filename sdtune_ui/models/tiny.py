"""Built-in offline demo models: tiny SD1-, SD2-v-, SDXL-, SD3- and Flux-shaped pipelines built from configs in code,
the 9-channel inpainting variants of SD1 and SDXL, and tiny ControlNets made from the tiny UNets.

Nothing here can be downloaded, so the demo, the tests and the docs use pipelines with the real
architectures at toy width. Each is built once with a fixed seed, saved with `save_pretrained` to the
cache, and from then on loaded through the same `from_pretrained` path a real Hub model takes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import string
import time
from pathlib import Path

import torch

from sdtune_ui.paths import cache_dir
from sdtune_ui.runs import is_main_process

TINY_MODELS = ("tiny-sd1", "tiny-sd2-v", "tiny-sdxl", "tiny-sd3", "tiny-flux", "tiny-sd1-inpaint", "tiny-sdxl-inpaint")
# ControlNets (not base models): made with ControlNetModel.from_unet from the named tiny model's UNet.
TINY_CONTROLNETS = {"tiny-controlnet-sd1": "tiny-sd1", "tiny-controlnet-sdxl": "tiny-sdxl"}

# A few whole words get one token each, so short prompts tokenise like real CLIP prompts and a
# textual-inversion initializer such as "dog" is a single token.
_WORDS = (
    "a an the of in on at with and photo picture painting style dog cat person man woman toy "
    "beach city forest red blue green yellow sks zwx ohwx"
).split()
_CHARS = string.ascii_lowercase + string.digits + "!\"#$%&'()*+,-./:;=?@[]_`{|}~<>"


def _clip_tokenizer(words: tuple[str, ...] | list[str] = tuple(_WORDS)):
    """A CLIP BPE tokenizer with a hand-written vocabulary: characters plus whole-word merges."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
    for ch in _CHARS:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current = symbols[0]
        for symbol in symbols[1:]:
            merged = current + symbol
            if (current, symbol) not in merges:
                merges.append((current, symbol))
            vocab.setdefault(merged, len(vocab))
            current = merged
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    # Merges apply by rank, so one word's early merge (h+o from "house") can block another's (p+h of
    # "photo"): join the pieces a word still falls into with later merges until every word is one token.
    for _ in range(10):
        broken = [pieces for pieces in (tokenizer.tokenize(word) for word in words) if len(pieces) > 1]
        if not broken:
            break
        for pieces in broken:
            current = pieces[0]
            for piece in pieces[1:]:
                if (current, piece) not in merges:
                    merges.append((current, piece))
                vocab.setdefault(current + piece, len(vocab))
                current += piece
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    return tokenizer


def _text_encoder(vocab_size: int, hidden: int = 32, projection: bool = False, projection_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _calibrate_latent_scale(vae) -> None:
    """Set scaling_factor so latents have unit variance, as SD's 0.18215 does for its trained VAE.

    Without this the random VAE's latents are ~20x smaller than the diffusion noise and the tiny UNet
    could only learn "output small numbers", never a picture.
    """
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(-1, 1, 64)
    horizontal, vertical = ramp.view(1, -1).expand(64, 64), ramp.view(-1, 1).expand(64, 64)
    smooth = torch.stack([horizontal, vertical, -horizontal])
    images = (smooth[None] * torch.rand(8, 3, 1, 1, generator=generator) * 2 - 0.5).clamp(-1, 1)
    with torch.no_grad():
        std = vae.encode(images).latent_dist.mode().std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))


def _vae(force_upcast: bool = False):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
        force_upcast=force_upcast,
    )
    _make_posterior_sharp(vae)
    _calibrate_latent_scale(vae)
    return vae


def _make_posterior_sharp(vae) -> None:
    """Give the encoder a near-zero posterior variance, as a trained VAE has (SD's is ~1e-4 of its latents').

    At random init the posterior's spread is 4x its mean's: pipelines that encode a picture by sampling (inpainting's
    masked picture, image-to-image) then read mostly noise, and nothing trained on the mode could be tested there.
    """
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:].zero_()
        vae.quant_conv.bias[channels:].fill_(-20.0)   # log-variance: std e^-10


def _unet(cross_attention_dim: int, *, linear_projection: bool = False, sdxl: bool = False, in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    extra: dict = {}
    if sdxl:
        # SDXL conditions on pooled text embeddings plus six size/crop "time ids".
        extra = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * 6 + 32,
            transformer_layers_per_block=(1, 1),
        )
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        norm_num_groups=16,
        use_linear_projection=linear_projection,
        **extra,
    )


def build_tiny_pipeline(name: str):
    """Build one of TINY_MODELS in memory, deterministically (same weights on every machine)."""
    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )

    if name in TINY_CONTROLNETS:
        return build_tiny_controlnet(name)
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {', '.join(TINY_MODELS)}")
    if name in ("tiny-sd3", "tiny-flux"):  # the flow-matching transformers (tiny_flow.py)
        from sdtune_ui.models import tiny_flow

        return tiny_flow.build(name)
    torch.manual_seed(0)
    sd_betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    tokenizer = _clip_tokenizer()
    vocab_size = len(tokenizer)
    inpaint = name.endswith("-inpaint")
    in_channels = 9 if inpaint else 4   # inpainting: + the mask and the masked picture's latents
    if name in ("tiny-sd1", "tiny-sd1-inpaint"):
        pipeline_class = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
        return pipeline_class(
            vae=_vae(),
            text_encoder=_text_encoder(vocab_size),
            tokenizer=tokenizer,
            unet=_unet(32, in_channels=in_channels),
            scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1, **sd_betas),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if name == "tiny-sd2-v":
        return StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=_text_encoder(vocab_size),
            tokenizer=tokenizer,
            unet=_unet(32, linear_projection=True),
            scheduler=DDIMScheduler(prediction_type="v_prediction", steps_offset=1, clip_sample=False,
                                    set_alpha_to_one=False, **sd_betas),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipeline_class = StableDiffusionXLInpaintPipeline if inpaint else StableDiffusionXLPipeline
    extra = dict(requires_aesthetics_score=False) if inpaint else {}
    return pipeline_class(
        vae=_vae(force_upcast=True),
        text_encoder=_text_encoder(vocab_size),
        text_encoder_2=_text_encoder(vocab_size, projection=True),
        tokenizer=tokenizer,
        tokenizer_2=_clip_tokenizer(),
        unet=_unet(64, linear_projection=True, sdxl=True, in_channels=in_channels),
        scheduler=EulerDiscreteScheduler(steps_offset=1, **sd_betas),
        **extra,
    )


def controlnet_from_unet(unet, vae_scale_factor: int):
    """A new ControlNet initialised from a UNet (diffusers' `ControlNetModel.from_unet`: the encoder's weights
    copied, zero convolutions at the outputs). Its condition encoder halves the picture once per stage after the
    first, so it needs one stage more than the VAE has halvings (SD's VAE: 8x, four stages)."""
    import math

    from diffusers import ControlNetModel

    halvings = int(math.log2(vae_scale_factor))
    channels = (16, 32, 96, 256)[: halvings + 1] if halvings <= 3 else (16, 32, 96, 256) + (256,) * (halvings - 3)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
    if int(unet.config.in_channels) != controlnet.config.in_channels:   # pragma: no cover - from_unet copies it
        raise ValueError("ControlNet and UNet disagree on input channels")
    return controlnet


def build_tiny_controlnet(name: str):
    """A tiny ControlNet from a tiny model's UNet (deterministic: the UNet is built with a fixed seed)."""
    base = build_tiny_pipeline(TINY_CONTROLNETS[name])
    torch.manual_seed(0)
    return controlnet_from_unet(base.unet, base.vae_scale_factor)


def tiny_model_path(name: str) -> Path:
    """The saved diffusers folder of a tiny model, building and saving it on first use.

    Several processes (`accelerate launch`) may ask at once: a lock file makes one build while the
    others wait, and the folder appears complete or not at all (built under a temporary name).
    """
    target = cache_dir("models") / name
    marker = "config.json" if name in TINY_CONTROLNETS else "model_index.json"
    if (target / marker).exists():
        return target
    if not is_main_process():
        # In a distributed run transformers saves weights on rank 0 only, so rank 0 builds; others wait.
        return _wait_for(target / marker, timeout_s=600)
    with _exclusive(target.with_name(target.name + ".lock")):
        if (target / marker).exists():  # another process built it while we waited
            return target
        # Building seeds torch; keep the caller's random stream as it was (a first run must equal a second).
        with torch.random.fork_rng(devices=[]):
            pipe = build_tiny_pipeline(name)
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        pipe.save_pretrained(partial, safe_serialization=True)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target


def _wait_for(marker: Path, timeout_s: float) -> Path:
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marker.parent} was not built by the main process within {timeout_s:.0f} s")
        time.sleep(0.2)
    return marker.parent


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """An inter-process lock on a file (POSIX flock; where unavailable, no lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: single-process use is the norm there
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
