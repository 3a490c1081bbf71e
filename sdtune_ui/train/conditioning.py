"""What a step feeds the UNet beyond noisy latents and prompts, and the masked loss. A mixin of Trainer.

- Inpainting models (a family with `inpainting`, or a model being converted into one) read two more inputs: the
  inpainting mask at latent size and the latents of the picture with the masked region blanked out. Each picture
  has a fixed set of masks (its own `a-masklabel.png`, else `mask_variants` synthetic ones, seeded per picture);
  each step picks one with the trainer's data generator, so runs and resumes repeat exactly. With cached latents the
  masked pictures are encoded once at the start, like the latents.
- A ControlNet run adds the ControlNet's residuals to the frozen UNet; the condition picture of each image comes in
  the batch, in [0, 1] as the ControlNet pipelines give it.
- Masked loss: the squared error is averaged only over what the mask covers (latent-size weights: the share of each
  latent pixel's patch inside the mask); with `unmasked_weight` > 0 the rest counts that much.

Everything here is a tensor of a fixed shape per bucket, drawn outside the step, so the captured CUDA graph
(graphed_step.py) copies it in like the latents.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sdtune_ui.data.masks import mask_seed, synthetic_mask


def masked_mean(errors: torch.Tensor, loss_mask: torch.Tensor | None, unmasked_weight: float = 0.0) -> torch.Tensor:
    """Per-sample mean of `errors` [B, C, h, w], weighted by `loss_mask` [B, 1, h, w] (None: a plain mean).

    The weights are normalised per sample, so a small mask does not shrink the loss; a mask with nothing inside
    contributes nothing (and no gradient)."""
    if loss_mask is None:
        return errors.mean(dim=(1, 2, 3))
    weights = unmasked_weight + (1.0 - unmasked_weight) * loss_mask.to(errors.dtype)
    weights = weights.expand_as(errors)
    return (errors * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp_min(1e-8)


def sample_box(width: int, height: int) -> np.ndarray:
    """The mask sample images use when the picture has none: the middle quarter (half the width and height)."""
    mask = np.zeros((height, width), np.float32)
    mask[height // 4: height // 4 + height // 2, width // 4: width // 4 + width // 2] = 1.0
    return mask


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """A [3, H, W] tensor in [-1, 1] as a PIL picture."""
    array = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


class Conditioning:
    # ------------------------------------------------------------------ set-up
    def _prepare_conditioning(self) -> None:
        """After the method prepared the model (a conversion widens the UNet): cache the inpainting inputs."""
        self.inpaint_cache: dict[int, list[list[tuple[torch.Tensor, torch.Tensor]]]] | None = None
        if self.parts.family.inpainting and self.latent_cache is not None:
            self.log(f"Encoding the masked pictures once ({self.config.mask_variants} synthetic masks per picture "
                     "without its own mask)")
            self.inpaint_cache = {}
            for item in self.data.items + self.data.class_items:
                self.inpaint_cache[id(item)] = [
                    [self._inpaint_pair(item, flip, variant) for variant in range(self._variants(item))]
                    for flip in range(len(item.pixels))]

    def _variants(self, item: Any) -> int:
        return 1 if item.mask is not None else self.config.mask_variants

    def _draw_mask_variants(self, count: int) -> list[int] | None:
        """Which of its masks each image of the global batch uses this step (None: not an inpainting model)."""
        if not self.parts.family.inpainting:
            return None
        return torch.randint(self.config.mask_variants, (count,), generator=self.data_generator).tolist()

    # ------------------------------------------------------------------ per item
    def _pixel_mask(self, item: Any, flip: int, variant: int) -> torch.Tensor:
        """[1, H, W] of 0/1: the picture's own mask (binarised, as the pipelines binarise), else a synthetic one."""
        if item.mask is not None:
            return (item.mask[flip] >= 0.5).float()
        width, height = item.bucket
        seed = mask_seed(self.config.seed, item.index, variant)
        return torch.from_numpy(synthetic_mask(width, height, seed, whole_share=self.config.whole_mask_share))[None]

    def _inpaint_pair(self, item: Any, flip: int, variant: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask at latent size [1, h, w], latents of the masked picture [4, h, w]) for one picture and mask."""
        mask = self._pixel_mask(item, flip, variant)
        masked = item.pixels[flip] * (mask < 0.5)   # blanked to 0 (mid grey), as diffusers' pipelines do
        latents = self._encode_latents(masked[None])[0]
        latent_mask = F.interpolate(mask[None], size=latents.shape[-2:])[0]   # nearest, as the pipelines do
        return latent_mask.to(latents.device, latents.dtype), latents

    def _loss_mask(self, item: Any, flip: int, latent_size: tuple[int, int]) -> torch.Tensor:
        """[1, h, w] weights of a picture's own mask at latent size (ones when it has none)."""
        if item.mask is None:
            return torch.ones((1, *latent_size))
        return F.interpolate(item.mask[flip][None], size=latent_size, mode="area")[0]

    # ------------------------------------------------------------------ per batch
    def _conditioning_inputs(self, items: list, flips: list[int], variants: list[int] | None,
                             latent_size: tuple[int, int]) -> dict[str, torch.Tensor | None]:
        """The Batch fields beyond latents and prompts: inpaint_mask, masked_latents, loss_mask, control."""
        device = self.accelerator.device
        inputs: dict[str, torch.Tensor | None] = dict(inpaint_mask=None, masked_latents=None, loss_mask=None,
                                                      control=None)
        if variants is not None:
            pairs = []
            for item, flip, variant in zip(items, flips, variants):
                variant = variant % self._variants(item)
                if self.inpaint_cache is not None:
                    pairs.append(self.inpaint_cache[id(item)][flip][variant])
                else:
                    pairs.append(self._inpaint_pair(item, flip, variant))
            inputs["inpaint_mask"] = torch.stack([mask for mask, _ in pairs]).to(device)
            inputs["masked_latents"] = torch.stack([latents for _, latents in pairs]).to(device)
        if self.config.masked_loss:
            if inputs["inpaint_mask"] is not None:   # an inpainting model learns where it paints
                inputs["loss_mask"] = inputs["inpaint_mask"].float()
            else:
                inputs["loss_mask"] = torch.stack([self._loss_mask(item, flip, latent_size)
                                                   for item, flip in zip(items, flips)]).to(device)
        if self.parts.controlnet is not None:
            inputs["control"] = torch.stack([item.condition[flip] for item, flip in zip(items, flips)]).to(device)
        return inputs

    # ------------------------------------------------------------------ in the step
    def _controlnet_residuals(self, noisy: torch.Tensor, batch: Any, hidden: torch.Tensor, added: dict | None,
                              dtype: torch.dtype) -> dict[str, Any]:
        """The ControlNet's additions to the UNet's skip connections and middle block ({} without a ControlNet)."""
        if batch.control is None:
            return {}
        down, mid = self.controlnet(noisy.to(dtype), batch.timesteps, hidden.to(dtype),
                                    controlnet_cond=batch.control.to(dtype), added_cond_kwargs=added,
                                    return_dict=False)
        return {"down_block_additional_residuals": [d.to(dtype) for d in down],
                "mid_block_additional_residual": mid.to(dtype)}

    # ------------------------------------------------------------------ sample images
    def _sampling_pipeline(self) -> tuple[Any, dict[str, Any]]:
        """The pipeline sample images are made with and what it needs beyond the prompt: for an inpainting model
        the first picture and its mask (its own, else the middle quarter), for a ControlNet its condition."""
        parts, family = self.parts, self.parts.family
        pipe, extra = parts.pipeline, {}
        item = self.data.items[0]
        width, height = item.bucket
        if family.inpainting:
            inpaint_class = family.pipeline_class()
            pipe = pipe if isinstance(pipe, inpaint_class) else inpaint_class.from_pipe(pipe)
            mask = item.mask[0][0].numpy() >= 0.5 if item.mask is not None else sample_box(width, height) > 0
            extra = dict(image=to_pil(item.pixels[0]), mask_image=Image.fromarray((mask * 255).astype(np.uint8), "L"),
                         width=width, height=height)
        if parts.controlnet is not None:
            pipe = family.pipeline_class("control").from_pipe(pipe, controlnet=parts.controlnet)
            condition = (item.condition[0].float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            extra = dict(image=Image.fromarray(condition, "RGB"), width=width, height=height)
        return pipe, extra
