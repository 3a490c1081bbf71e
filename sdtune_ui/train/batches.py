"""The batches a step trains on: which images (a pure function of the step, so resumes and several processes agree),
their prompts, flips, noise and timesteps, and what the UNet reads beyond them (train/conditioning.py). A mixin of
Trainer; `Batch` is what the step (and the captured CUDA graph) consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    latents: torch.Tensor
    hidden: torch.Tensor | None
    pooled: torch.Tensor | None
    input_ids: list[torch.Tensor] | None
    time_ids: torch.Tensor | None
    noise: torch.Tensor
    timesteps: torch.Tensor
    num_class: int
    names: list[str]
    prompts: list[str]
    # Beyond latents and prompts (train/conditioning.py); None where the run has no use for them.
    inpaint_mask: torch.Tensor | None = None     # [B, 1, h, w] where an inpainting model repaints
    masked_latents: torch.Tensor | None = None   # [B, 4, h, w] latents of the picture with that region blanked
    loss_mask: torch.Tensor | None = None        # [B, 1, h, w] weights of the masked loss
    control: torch.Tensor | None = None          # [B, 3, H, W] ControlNet condition pictures in [0, 1]


class Batches:
    def _batch(self, micro_step: int) -> Batch:
        """The global batch for this micro-step, sliced to this process; randomness drawn for all of it."""
        cfg, acc, data = self.config, self.accelerator, self.data
        epoch, position = data.locate(micro_step, self.global_batch)
        indices = data.epoch_batches(epoch, self.global_batch)[position]
        num_class = len(indices) if data.class_items else 0
        all_items = [data.items[i] for i in indices]
        all_items += [data.class_items[i] for i in data.class_indices(micro_step, indices)]
        # Host-side choices for the whole global batch, so every process draws the same numbers.
        flips = torch.randint(len(all_items[0].pixels), (len(all_items),), generator=self.data_generator).tolist()
        drops = (torch.rand(len(all_items), generator=self.data_generator) < cfg.caption_dropout).tolist()
        variants = self._draw_mask_variants(len(all_items))
        prompts = []
        for item, drop in zip(all_items, drops):
            if drop:
                prompts.append("")
            elif item.is_class:
                prompts.append(item.caption)  # its class set's prompt
            else:  # the prompt setup chose for it (train/setup.py: training_prompts), through the method
                prompts.append(self.method.prompt(item.caption, self.data_generator, token=item.token))
        width, height = all_items[0].bucket
        latent_shape = (len(all_items), self.parts.vae.config.latent_channels, height // self._vae_scale,
                        width // self._vae_scale)
        noise = torch.randn(latent_shape, generator=self.noise_generator, device=acc.device)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn(latent_shape[:2] + (1, 1), generator=self.noise_generator,
                                                           device=acc.device)
        timesteps = self.parts.family.sample_timesteps(self.parts.noise_scheduler, len(all_items), self.noise_generator,
                                                       acc.device, latent_shape[2:])

        # This process's slice: its share of the instance items and of the class items.
        rank, world = acc.process_index, acc.num_processes
        per = len(indices) // world
        mine = list(range(rank * per, (rank + 1) * per))
        if num_class:
            mine += [len(indices) + i for i in range(rank * per, (rank + 1) * per)]
        items = [all_items[i] for i in mine]
        picks = torch.tensor(mine, device=acc.device)
        return self._assemble(items, [flips[i] for i in mine], [prompts[i] for i in mine],
                              noise[picks], timesteps[picks], per if num_class else 0,
                              None if variants is None else [variants[i] for i in mine])

    def _assemble(self, items, flips, prompts, noise, timesteps, num_class, variants=None) -> Batch:
        parts, family, device = self.parts, self.parts.family, self.accelerator.device
        if self.latent_cache is not None:
            latents = torch.stack([self.latent_cache[self._cache_index[id(it)]][f] for it, f in zip(items, flips)])
        else:
            latents = self._encode_latents(torch.stack([it.pixels[f] for it, f in zip(items, flips)]))
        hidden = pooled = input_ids = None
        if self.text_cache is not None:
            hidden = torch.stack([self.text_cache[p][0] for p in prompts])
            if family.uses_pooled_embeddings:
                pooled = torch.stack([self.text_cache[p][1] for p in prompts])
        else:
            input_ids = [ids.to(device) for ids in family.tokenize(parts.tokenizers, prompts)]
        # SDXL: the image's size and crop condition the UNet too (families without time ids give None)
        sizes = [family.time_ids(it.original_size, it.crop_top_left, it.bucket[::-1]) for it in items]
        time_ids = torch.stack(sizes).to(device) if sizes[0] is not None else None
        extra = self._conditioning_inputs(items, flips, variants, tuple(latents.shape[-2:]))
        return Batch(latents.to(device), hidden, pooled, input_ids, time_ids, noise, timesteps, num_class,
                     [it.name for it in items], prompts, **extra)

    @property
    def _vae_scale(self) -> int:
        return 2 ** (len(self.parts.vae.config.block_out_channels) - 1)
