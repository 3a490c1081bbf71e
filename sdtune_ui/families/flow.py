"""The rectified-flow (flow-matching) objective shared by the transformer families (SD3, Flux).

Training draws a noise level sigma in [0, 1] per image (logit-normal, mode or uniform, then shifted toward noise
as the model's sampler shifts it), mixes x_sigma = (1 - sigma) * latents + sigma * noise, and the transformer
learns the velocity noise - latents, optionally weighted per sigma (sigma_sqrt, cosmap). The timestep the model
sees is sigma x 1000, as in the pipelines. The sampling and weighting functions are diffusers' own
(`compute_density_for_timestep_sampling`, `compute_loss_weighting_for_sd3`), as its SD3/Flux trainers use them.

These families keep big frozen text encoders (T5-XXL, 4.7B parameters): once prompts are cached, the encoders
are freed for the rest of the run (Family.frees_cached_text_encoders), and only the CLIP encoders can be trained
(LoRA, new tokens); T5 stays frozen.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from sdtune_ui.families.base import Family

FLOW = "flow_matching"   # the prediction type the log and the model card show


class FlowMatchingFamily(Family):
    flow_matching = True
    kohya_original_layout = True
    uses_pooled_embeddings = True       # the transformer takes a pooled text vector (the trainer caches it)
    denoiser = "transformer"
    frees_cached_text_encoders = True
    cuda_graph_checked = False          # not yet compared with the eager step on a GPU (benchmarks/graph_check.py)
    auto_compile_scope = "blocks"
    auto_compile_min_steps = 10**9      # never guessed: compiles only once this machine measured that it pays
    max_sequence_length: ClassVar[int] = 256   # T5 tokens, as the pipeline's default (generation must match)

    def __init__(self, prediction_type: str = FLOW, native_resolution: int = 1024):
        super().__init__(FLOW, native_resolution)
        self.timestep_sampling = "logit_normal"
        self.logit_mean, self.logit_std, self.mode_scale = 0.0, 1.0, 1.29
        self.shift = 0.0          # 0: the model's own (its scheduler's shift, or Flux's resolution-dependent one)
        self.loss_weighting = "none"

    def apply_training_settings(self, config: Any) -> None:
        self.timestep_sampling = config.timestep_sampling
        self.logit_mean, self.logit_std, self.mode_scale = config.logit_mean, config.logit_std, config.mode_scale
        self.shift = config.flow_shift
        self.loss_weighting = config.flow_loss_weighting

    def training_notes(self, config: Any) -> list[str]:
        notes = [f"Flow matching: timesteps {config.timestep_sampling}, shift "
                 f"{config.flow_shift or 'of the model'}, loss weighting {config.flow_loss_weighting}"]
        if config.snr_gamma:
            notes.append("snr_gamma (min-SNR) is for noise-prediction models; flow matching uses "
                         "flow_loss_weighting instead, so it is ignored here.")
        from sdtune_ui.methods import TOKENS

        if config.has(TOKENS):
            notes.append("Textual inversion learns the new token in the CLIP encoder(s) only: T5 gets no new token "
                         "(not supported for T5; it reads the token as plain text).")
        if config.train_text_encoder:
            notes.append("train_text_encoder trains the CLIP encoder(s); T5 stays frozen (training it is not "
                         "supported).")
        if config.noise_offset:
            notes.append("noise_offset was made for noise-prediction models; on flow matching it shifts the "
                         "target too (use with care).")
        return notes

    # ------------------------------------------------------------------ the objective
    @classmethod
    def training_scheduler(cls, scheduler: Any) -> Any:
        """The model's own flow-matching scheduler (a copy): its config says the shift and the training length."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)

    def sigma_shift(self, noise_scheduler: Any, latent_size: tuple[int, int]) -> float:
        """How far sigmas are pushed toward noise: the setting, else what the model's sampler uses at this size
        (a fixed shift, e.g. SD3's 3.0; or Flux's, which grows with the image's token count)."""
        if self.shift:
            return float(self.shift)
        config = noise_scheduler.config
        if not config.get("use_dynamic_shifting"):
            return float(config.get("shift", 1.0))
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        tokens = (latent_size[0] // 2) * (latent_size[1] // 2)   # 2x2 latent patches per token
        mu = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        return math.exp(mu)

    def sample_timesteps(self, noise_scheduler: Any, count: int, generator: torch.Generator, device: Any,
                         latent_size: tuple[int, int]) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling(self.timestep_sampling, count, logit_mean=self.logit_mean,
                                                  logit_std=self.logit_std, mode_scale=self.mode_scale,
                                                  device=device, generator=generator)
        shift = self.sigma_shift(noise_scheduler, latent_size)
        sigmas = shift * u / (1 + (shift - 1) * u)
        return sigmas * noise_scheduler.config.num_train_timesteps

    @staticmethod
    def sigmas(noise_scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
        return timesteps.float() / noise_scheduler.config.num_train_timesteps

    def noisy_latents(self, noise_scheduler: Any, latents: torch.Tensor, noise: torch.Tensor,
                      timesteps: torch.Tensor) -> torch.Tensor:
        sigmas = self.sigmas(noise_scheduler, timesteps).to(latents.device).view(-1, 1, 1, 1)
        return (1 - sigmas) * latents + sigmas * noise

    def target(self, noise_scheduler: Any, latents: torch.Tensor, noise: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
        return noise - latents

    def loss_weights(self, noise_scheduler: Any, timesteps: torch.Tensor, config: Any) -> torch.Tensor | None:
        if self.loss_weighting == "none":
            return None
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        return compute_loss_weighting_for_sd3(self.loss_weighting, self.sigmas(noise_scheduler, timesteps))

    # ------------------------------------------------------------------ conditioning
    def tokenize(self, tokenizers: list[Any], prompts: list[str]) -> list[torch.Tensor]:
        """CLIP ids at 77 positions, T5 ids at max_sequence_length (as the pipelines pad them)."""
        ids = []
        for tokenizer in tokenizers:
            t5 = "T5" in type(tokenizer).__name__
            length = self.max_sequence_length if t5 else tokenizer.model_max_length
            ids.append(tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                                 return_tensors="pt").input_ids)
        return ids

    def sample_size_kwargs(self, resolution: int) -> dict[str, int]:
        return {"height": resolution, "width": resolution}

    # ------------------------------------------------------------------ the original layout (families/flow_layout.py)
    single_file_prefix: ClassVar[str] = ""

    @classmethod
    def original_modules(cls, config: dict) -> dict[str, Any]:
        """diffusers module path -> flow_layout.Slot (its module, or slice, in the original layout)."""
        raise NotImplementedError

    @classmethod
    def original_norms(cls, config: dict) -> dict[str, str]:
        raise NotImplementedError

    @classmethod
    def original_transformer_state(cls, transformer: Any) -> dict[str, torch.Tensor]:
        """The transformer's weights as a single-file checkpoint in the original layout has them."""
        from sdtune_ui.families.flow_layout import original_state

        config = dict(transformer.config)
        return original_state(transformer.state_dict(), cls.original_modules(config), cls.original_norms(config),
                              cls.single_file_prefix)
