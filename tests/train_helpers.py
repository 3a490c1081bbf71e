"""Small helpers shared by the training tests: quick configs and reading a run's results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdtune_ui.config import TrainConfig
from sdtune_ui.runs import RunDir
from sdtune_ui.train import train

TI_PROMPT = "a photo of <sks>"
INSTANCE_PROMPT = "a photo of sks robot"


def quick_config(data: Path, **overrides) -> TrainConfig:
    """A few CPU-friendly steps with everything the loop does switched on at least once."""
    values = dict(model="tiny-sd1", method="lora", data=str(data), max_train_steps=3, log_every=1,
                  checkpointing_steps=2, validation_steps=0, learning_rate=1e-3)
    values.update(overrides)
    return TrainConfig(**values)


def run_training(config: TrainConfig, run_dir: Path) -> RunDir:
    status = train(config, run_dir)
    run = RunDir(run_dir)
    last = [e for e in run.read_events() if e["kind"] == "status"][-1]
    assert status == "completed", last.get("message")
    return run


def losses(run: RunDir) -> list[float]:
    return [e["loss"] for e in run.read_events() if e["kind"] == "step"]


def generate_latents(pipe, prompt: str, seed: int = 0, steps: int = 10) -> torch.Tensor:
    """Latents, not pixels: the tiny random VAE decoder squashes differences in pixel space."""
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, guidance_scale=1.0, generator=generator,
                output_type="latent").images[0]


def image_latents(pipe, image_path: Path) -> torch.Tensor:
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    image = Image.open(image_path).convert("RGB").resize((size, size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        return (pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor)[0]
