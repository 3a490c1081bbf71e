"""Measure what a model learned: how well it denoises an image under a prompt, on noise it never saw."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

PROBE_TIMESTEPS = (100, 300, 500, 700, 900)


@torch.no_grad()
def denoising_error(pipe, prompt: str, latents: torch.Tensor, seed: int = 1234, draws: int = 4) -> float:
    """Mean squared error of the UNet's noise prediction for `latents` under `prompt`.

    This is the training objective, evaluated on fresh noise (a seed the training never used) at fixed
    timesteps: a model that learned the picture for the prompt denoises it better than the base does, and
    better than it denoises other pictures.
    """
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    hidden = pipe.text_encoder(ids)[0]
    batch = latents[None].repeat(len(PROBE_TIMESTEPS) * draws, 1, 1, 1)
    timesteps = torch.tensor(PROBE_TIMESTEPS * draws)
    noise = torch.randn(batch.shape, generator=generator)
    noisy = scheduler.add_noise(batch, noise, timesteps)
    prediction = pipe.unet(noisy, timesteps, hidden.expand(len(batch), -1, -1)).sample
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    target = scheduler.get_velocity(batch, noise, timesteps) if v_prediction else noise
    return float(((prediction - target) ** 2).mean())
