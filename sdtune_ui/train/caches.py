"""The caches a run builds once before its first step: latents (VAE) and prompt embeddings (text encoders), and
the frozen encoders parked in CPU memory afterwards, or freed when the family says they are too big to keep (T5-XXL:
SD3, Flux). A mixin of Trainer (it reads the trainer's parts and data)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from sdtune_ui.train.setup import move_to_device

PROMPTS_PER_BATCH = 16  # prompts encoded together when the encoders take turns (T5-XXL's activations stay small)


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
        prompts = {""} | {item.caption for item in self.data.items + self.data.class_items}
        if self.parts.family.frees_cached_text_encoders:  # sample images are drawn from cached prompts then
            prompts.update(self.method.expand_prompt(p) for p in self.config.validation_prompts)
        return prompts

    @property
    def encoders_take_turns(self) -> bool:
        """The families whose text encoders are freed once the prompts are cached (T5-XXL: SD3, Flux) bring them to
        the GPU one at a time, so the set-up's peak is the largest encoder, not all of them together."""
        cfg = self.config
        return bool(cfg.cache_text_embeddings and cfg.offload_frozen_encoders and not self.method.trains_text_encoders()
                    and self.parts.family.frees_cached_text_encoders)

    @contextlib.contextmanager
    def _one_encoder_on_the_gpu(self) -> Iterator[None]:
        """Each encoder comes to the GPU when it is called and sends the one before it back to CPU memory."""
        resident: list[torch.nn.Module] = []

        def arrive(module: torch.nn.Module, args: tuple) -> None:
            if resident and resident[0] is not module:
                resident.pop().to("cpu")
            if not resident:
                move_to_device(module, self.accelerator.device, self.weight_dtype)
                resident.append(module)

        handles = [encoder.register_forward_pre_hook(arrive) for encoder in self.parts.text_encoders]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def _encode_all_prompts(self) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        family, parts = self.parts.family, self.parts
        prompts = sorted(self._all_prompts())
        # Taking turns, the prompts go in batches, so each encoder visits the GPU once per batch, not per prompt
        # (padded to the encoders' fixed lengths, a prompt encodes the same alone or in a batch).
        taking_turns = self.encoders_take_turns
        size = PROMPTS_PER_BATCH if taking_turns else 1
        turns = self._one_encoder_on_the_gpu() if taking_turns else contextlib.nullcontext()
        cache = {}
        with turns:
            for start in range(0, len(prompts), size):
                batch = prompts[start:start + size]
                ids = [ids.to(self.accelerator.device) for ids in family.tokenize(parts.tokenizers, batch)]
                hidden, pooled = family.encode(parts.text_encoders, ids)
                for i, prompt in enumerate(batch):
                    cache[prompt] = (hidden[i].to(self.weight_dtype),
                                     None if pooled is None else pooled[i].to(self.weight_dtype))
        return cache

    def _park_cached_encoders(self) -> list[torch.nn.Module]:
        """Move the encoders whose outputs are cached off the GPU (or free the text encoders, see _free...)."""
        text_encoders = list(self.parts.text_encoders) if self.text_cache is not None else []
        if text_encoders and self.parts.family.frees_cached_text_encoders:
            self._free_text_encoders()
            text_encoders = []
        if self.accelerator.device.type != "cuda":
            return []
        parked = ([self.parts.vae] if self.latent_cache is not None else []) + text_encoders
        for module in parked:
            module.to("cpu")
        torch.cuda.empty_cache()
        return parked

    def _free_text_encoders(self) -> None:
        """Release the frozen text encoders' weights for the rest of the run, on the GPU and in CPU memory alike
        (their modules stay, on the meta device; the pipeline has none): everything they would encode is cached."""
        for name, encoder in zip(self.parts.text_encoder_names, self.parts.text_encoders):
            encoder.to("meta")
            setattr(self.parts.pipeline, name, None)   # sampling finds its device from the modules it has
        self.log(f"Prompts cached; the text encoders ({', '.join(self.parts.text_encoder_names)}) are freed until "
                 "the run ends (sample images use the cached prompts)")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    @property
    def text_encoders_freed(self) -> bool:
        return self.text_cache is not None and self.parts.family.frees_cached_text_encoders

    def cached_prompt_kwargs(self, prompt: str) -> dict:
        """The pipeline's arguments for a cached prompt and the empty negative prompt (batch of one)."""
        hidden, pooled = self.text_cache[prompt]
        empty_hidden, empty_pooled = self.text_cache[""]

        def one(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[None]

        return self.parts.family.prompt_embedding_kwargs(one(hidden), one(pooled), (one(empty_hidden),
                                                                                    one(empty_pooled)))
