"""Held-out denoising loss: the training objective on fixed, seeded noise and timesteps. No generation.

Every checkpoint of a run is scored on the same noise at the same timesteps, so the numbers are comparable
across checkpoints (a training step's loss is not: it sees one random timestep per image). The images are
the run's training images (and its class images, scored separately): it says how well the model denoises
the pictures it was shown, under their prompts; a falling instance loss with a rising class loss is the
model bending the class toward the subject. It is cheap (a few UNet calls per image), so it can run at every
validation step during training. Plain MSE against the family's target (noise or velocity), unweighted
(no min-SNR weighting), so runs with different loss settings compare.

Everything model-specific goes through the family API (tokenize / encode / added_cond_kwargs / time_ids /
target), so SD1.x, SD2.x v-prediction and SDXL all work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_TIMESTEPS_PER_IMAGE = 4


@dataclass
class HeldOutSet:
    """Encoded images with their prompts, and the fixed noise and timesteps each is scored at."""

    latents: torch.Tensor           # (N, C, h, w), CPU float32
    prompts: list[str]
    is_class: list[bool]
    noise: torch.Tensor             # (N * K, C, h, w): row r scores image r // K
    timesteps: torch.Tensor         # (N * K,)
    pixel_size: tuple[int, int]     # (height, width) of the images, for SDXL's size conditioning

    @property
    def per_image(self) -> int:
        return len(self.timesteps) // max(1, len(self.prompts))


def loss_prompt(method: Any, config: dict, caption: str, index: int) -> str:
    """The prompt an image trains under, as the method builds it (a template picked by a fixed seed for
    textual inversion's random ones; multi-vector tokens expanded)."""
    return method.prompt(config.get("instance_prompt") or caption, torch.Generator().manual_seed(index))


@torch.no_grad()
def encode_pixels(vae: Any, pixels: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """VAE latents of [-1, 1] pixel tensors (N, 3, H, W), scaled as the trainer scales them."""
    rows = []
    device = next(vae.parameters()).device
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start:start + batch_size].to(device, vae.dtype)
        rows.append(vae.encode(batch).latent_dist.mode().float().cpu())
    shift = vae.config.get("shift_factor") or 0.0
    return (torch.cat(rows) - shift) * vae.config.scaling_factor


def build_heldout_set(latents: torch.Tensor, prompts: Sequence[str], is_class: Sequence[bool], *,
                      num_train_timesteps: int, pixel_size: tuple[int, int], seed: int = 0,
                      timesteps_per_image: int = DEFAULT_TIMESTEPS_PER_IMAGE) -> HeldOutSet:
    """Fix the noise (seeded) and the timesteps (evenly spread over the schedule, the same for every image)."""
    count, per = len(latents), timesteps_per_image
    if count != len(prompts) or count != len(is_class):
        raise ValueError("one prompt and one is_class flag per image")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((count * per, *latents.shape[1:]), generator=generator)
    spread = [int((k + 0.5) * num_train_timesteps / per) for k in range(per)]
    timesteps = torch.tensor(spread * count, dtype=torch.long)
    return HeldOutSet(latents.float().cpu(), list(prompts), list(is_class), noise, timesteps, pixel_size)


@torch.no_grad()
def heldout_loss(parts: Any, held: HeldOutSet, *, unet: Any = None, text_encoders: Sequence[Any] | None = None,
                 batch_size: int = 8, dtype: torch.dtype | None = None,
                 encoded: Callable[[str], tuple[torch.Tensor, torch.Tensor | None]] | None = None) -> dict[str, float]:
    """{"loss": mean over training images, "loss_class": mean over class images (when there are any)}.

    `parts` is a ModelParts (family, tokenizers, noise scheduler); `unet` / `text_encoders` default to its
    own. `dtype`: the UNet's input dtype (default: its first parameter's; mixed-precision training passes the
    compute dtype and runs this under autocast). `encoded(prompt)`: (hidden, pooled) of an already encoded prompt
    (batch of one), for runs whose text encoders were freed. Deterministic: same weights and set -> same numbers.
    """
    family, scheduler = parts.family, parts.noise_scheduler
    if family.inpainting or parts.controlnet is not None:
        from sdtune_ui.errors import SdtuneError

        raise SdtuneError("The held-out loss is not measured for inpainting models and ControlNets yet: leave out "
                          "the 'loss' metric for this run.")
    unet = unet if unet is not None else parts.unet
    encoders = list(text_encoders) if text_encoders is not None else list(parts.text_encoders)
    first = next(unet.parameters())
    device, dtype = first.device, dtype or first.dtype
    was_training = unet.training
    unet.eval()
    conditioning = {}
    for prompt in dict.fromkeys(held.prompts):
        if encoded is not None:
            hidden, pooled = encoded(prompt)
        else:
            ids = family.tokenize(parts.tokenizers, [prompt])
            ids = [token_ids.to(next(encoder.parameters()).device) for token_ids, encoder in zip(ids, encoders)]
            hidden, pooled = family.encode(encoders, ids)
        conditioning[prompt] = (hidden.to(device), None if pooled is None else pooled.to(device))
    time_ids = family.time_ids(held.pixel_size, (0, 0), held.pixel_size)
    per = held.per_image
    losses = torch.empty(len(held.timesteps))
    for start in range(0, len(held.timesteps), batch_size):
        rows = list(range(start, min(start + batch_size, len(held.timesteps))))
        images = [row // per for row in rows]
        latents = held.latents[images].to(device)
        noise = held.noise[rows].to(device)
        timesteps = held.timesteps[rows].to(device)
        hidden = torch.cat([conditioning[held.prompts[i]][0] for i in images]).to(dtype)
        pooled = None
        if conditioning[held.prompts[images[0]]][1] is not None:
            pooled = torch.cat([conditioning[held.prompts[i]][1] for i in images]).to(dtype)
        batch_time_ids = None if time_ids is None else time_ids.expand(len(rows), -1).to(device, dtype)
        noisy = family.noisy_latents(scheduler, latents, noise, timesteps)
        prediction = family.predict(unet, noisy.to(dtype), timesteps, hidden, pooled, batch_time_ids)
        target = family.target(scheduler, latents, noise, timesteps)
        losses[start:start + len(rows)] = ((prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3)).cpu()
    unet.train(was_training)
    by_image = losses.view(len(held.prompts), per).mean(dim=1)
    flags = torch.tensor(held.is_class)
    result = {"loss": float(by_image[~flags].mean())}
    if flags.any():
        result["loss_class"] = float(by_image[flags].mean())
    return result


class TrainingProbe:
    """The held-out loss during training (`eval_steps`): the set is built once from the trainer's prepared
    images (its latent cache when there is one), then scored on the trainer's own modules.

    Runs on the main process with the plain modules (a DDP replica holds the same weights); a sharded (FSDP)
    UNet needs every process for each forward, so there it is not measured.
    """

    MAX_IMAGES = 16

    def __init__(self, trainer: Any):
        data, parts = trainer.data, trainer.parts
        bucket = data.items[0].bucket
        items = [it for it in data.items if it.bucket == bucket][: self.MAX_IMAGES]
        class_items = [it for it in data.class_items if it.bucket == bucket][: self.MAX_IMAGES]
        chosen = items + class_items
        if trainer.latent_cache is not None:
            latents = torch.stack([trainer.latent_cache[trainer._cache_index[id(it)]][0] for it in chosen]).float()
        else:
            latents = encode_pixels(parts.vae, torch.stack([it.pixels[0] for it in chosen]))
        config = trainer.config.to_dict()
        prompts = [config["class_prompt"] if it.is_class else loss_prompt(trainer.method, config, it.caption, i)
                   for i, it in enumerate(chosen)]
        self.held = build_heldout_set(latents, prompts, [it.is_class for it in chosen],
                                      num_train_timesteps=parts.noise_scheduler.config.num_train_timesteps,
                                      pixel_size=(bucket[1], bucket[0]), seed=trainer.config.seed)

    def __call__(self, trainer: Any) -> dict[str, float]:
        from sdtune_ui.train import speed

        with speed.eager(), trainer.accelerator.autocast():
            mixed = trainer.accelerator.mixed_precision != "no"
            encoded = None
            if trainer.text_encoders_freed:
                def encoded(prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
                    hidden, pooled = trainer.text_cache[prompt]
                    return hidden[None], None if pooled is None else pooled[None]
            return heldout_loss(trainer.parts, self.held, dtype=trainer.weight_dtype if mixed else None,
                                encoded=encoded)
