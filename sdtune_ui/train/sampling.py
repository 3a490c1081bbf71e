"""Validation images during training, made with the very modules being trained."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.config import TrainConfig


def sample_images(pipe: Any, config: TrainConfig, method: Any, step: int, samples_dir: Path, accelerator: Any,
                  weight_dtype: torch.dtype, save: bool = True, *, size: dict | None = None,
                  encoded: Callable[[str], dict] | None = None,
                  extra: dict[str, Any] | None = None) -> list[tuple[Path, str]]:
    """One image per prompt (x num_validation_images), same seed every time so steps compare fairly.

    `extra`: what the pipeline needs beyond the prompt (an inpainting model's picture and mask, a ControlNet's
    condition picture).

    With save=False the images are made but not written (FSDP's other processes, which must take part).
    `size`: height/width arguments (the family's); `encoded(prompt)`: the pipeline's arguments for a cached prompt,
    used instead of the prompt's text when the text encoders were freed.
    """
    samples_dir.mkdir(parents=True, exist_ok=True)
    device = accelerator.device
    written = []
    autocast = torch.autocast(device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32)
    for prompt_index, prompt in enumerate(config.validation_prompts):
        generator = torch.Generator(device).manual_seed(config.validation_seed)
        text = method.expand_prompt(prompt)
        prompt_args = encoded(text) if encoded is not None else {"prompt": text}
        with autocast:
            images = pipe(**prompt_args, num_inference_steps=config.validation_inference_steps,
                          guidance_scale=config.validation_guidance_scale, generator=generator,
                          num_images_per_prompt=config.num_validation_images,
                          **{**(size or {}), **(extra or {})}).images
        for image_index, image in enumerate(images if save else []):
            path = samples_dir / f"step-{step:06d}-p{prompt_index}-{image_index}.png"
            image.save(path)
            written.append((path, prompt))
    return written
