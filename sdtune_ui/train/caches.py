"""The caches a run builds once before its first step: latents (VAE) and prompt embeddings (text encoders), and
the frozen encoders parked in CPU memory afterwards. A mixin of Trainer (it reads the trainer's parts and data)."""

from __future__ import annotations

import torch


class Caches:
    @torch.no_grad()
    def _encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.parts.vae
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
        shift = vae.config.get("shift_factor") or 0.0
        return ((latents - shift) * vae.config.scaling_factor).to(self.weight_dtype)

    def _encode_all_latents(self) -> list[torch.Tensor]:
        self.log("Encoding images with the VAE once (cache_latents)")
        items = self.data.items + self.data.class_items
        self._cache_index = {id(item): i for i, item in enumerate(items)}
        return [self._encode_latents(torch.stack(item.pixels)) for item in items]

    def _all_prompts(self) -> set[str]:
        # Items carry the prompts they train with (train/setup.py: per concept; class items their set's).
        return {""} | {item.caption for item in self.data.items + self.data.class_items}

    @torch.no_grad()
    def _encode_all_prompts(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        family, parts = self.parts.family, self.parts
        cache = {}
        for prompt in sorted(self._all_prompts()):
            ids = [ids.to(self.accelerator.device) for ids in family.tokenize(parts.tokenizers, [prompt])]
            hidden, pooled = family.encode(parts.text_encoders, ids)
            pooled = None if pooled is None else pooled[0].to(self.weight_dtype)
            cache[prompt] = (hidden[0].to(self.weight_dtype), pooled)
        return cache

    def _park_cached_encoders(self) -> list[torch.nn.Module]:
        if self.accelerator.device.type != "cuda":
            return []
        parked = ([self.parts.vae] if self.latent_cache is not None else []) + (
            list(self.parts.text_encoders) if self.text_cache is not None else [])
        for module in parked:
            module.to("cpu")
        torch.cuda.empty_cache()
        return parked
