"""SD3 / SD3.5 (Medium, Large): an MMDiT transformer conditioned on CLIP-L + CLIP-G + T5-XXL, rectified flow.

The two CLIP encoders' penultimate states are concatenated, padded to T5's width and put before T5's tokens; their
pooled outputs, concatenated, condition the timestep embedding (as StableDiffusion3Pipeline.encode_prompt does).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sdtune_ui.families.base import MemoryProfile, register
from sdtune_ui.families.flow import FlowMatchingFamily

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
FEED_FORWARD = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
MODULATION = ("norm1.linear", "norm1_context.linear")
TEXT_ENCODER_PARAMS = (123_650_304, 694_659_840, 4_762_310_656)   # CLIP-L, CLIP-G (with projections), T5-XXL
VAE_PARAMS = 83_819_683                                             # 16 latent channels, no quant convs


def _profile(transformer: int, attention: int, attention_ff: int, every: int, activations: float,
             source: str = "") -> MemoryProfile:
    return MemoryProfile(
        unet_params=transformer, text_encoder_params=TEXT_ENCODER_PARAMS, vae_params=VAE_PARAMS,
        lora_params_per_rank={"attention": attention, "attention_ff": attention_ff, "all": every},
        text_encoder_lora_params_per_rank=73_728 + 327_680, token_embedding_params=(37_945_344, 63_242_240),
        activation_gib_per_megapixel=activations, activation_source=source)


# Counted on the meta device from the released configs (benchmarks/fit_memory.py way). Medium's activations: an H200
# LoRA r4 run at 1024 px peaked at 13.56 GiB allocated in its steps (benchmarks/results/h200-issue15-call3.jsonl),
# 9.30 GiB above the bf16 transformer. Large's are Medium's scaled by depth x width (38 x 2432 against 24 x 1536
# hidden units: 2.51x), not measured; SD1.x's figure would have told a 24 GB GPU that a Large LoRA fits without
# gradient checkpointing (~19 GiB estimated instead of ~37).
MEDIUM_ACTIVATIONS = 8.87
SD35_MEDIUM = _profile(2_243_171_520, 746_496, 1_468_416, 2_038_272, activations=MEDIUM_ACTIVATIONS)
SD35_LARGE = _profile(8_056_627_520, 1_473_792, 3_297_792, 4_581_888,
                      activations=round(MEDIUM_ACTIVATIONS * (38 * 2432) / (24 * 1536), 2),
                      source="SD3.5 Large's are SD3.5 Medium's (measured) scaled by depth x width")


@register
class SD3(FlowMatchingFamily):
    name = "sd3"
    demo_models = ("tiny-sd3",)
    label = "Stable Diffusion 3.5"
    priority = 30
    pipeline_class_name = "StableDiffusion3Pipeline"
    denoiser_class_name = "SD3Transformer2DModel"
    standard_repo = "stabilityai/stable-diffusion-3.5-medium"
    text_encoder_count = 3
    text_encoder_components = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tunable_text_encoders = (0, 1)          # CLIP-L and CLIP-G; T5 stays frozen
    embedding_keys = ("clip_l", "clip_g")
    denoiser_lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {
        "attention": ATTENTION, "attention_ff": ATTENTION + FEED_FORWARD,
        "all": ATTENTION + FEED_FORWARD + MODULATION}
    max_sequence_length = 256
    kohya_base_version = "sd3"
    card_tags: ClassVar[tuple[str, ...]] = ("sd3", "sd3-diffusers", "stable-diffusion-3.5")
    license = "other"
    license_name = "stabilityai-ai-community"
    license_link = "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium/blob/main/LICENSE.md"
    memory = SD35_MEDIUM
    # Measured on an H200 (issue 15, results/h200-issue15-*.jsonl), SD3.5 Medium LoRA at 1024 px, allocated peaks:
    # 13.6 GiB in the steps without gradient checkpointing; the set-up's, while T5-XXL caches the prompts (8.9 GiB in
    # bf16, the other encoders off the GPU meanwhile), 9.4 GiB, or 11.0 with an NF4 transformer already loaded, which
    # is why no preset here quantises: below 12 GB T5-XXL does not fit, so no 8 GB preset.
    memory_presets: ClassVar[dict[str, dict[str, Any]]] = {
        "12 GB": dict(mixed_precision="bf16", gradient_checkpointing=True, train_batch_size=1),
        "16 GB": dict(mixed_precision="bf16", gradient_checkpointing=False, train_batch_size=1),
        "24 GB+": dict(mixed_precision="bf16", gradient_checkpointing=False, train_batch_size=1),
    }

    def __init__(self, prediction_type: str = "flow_matching", native_resolution: int = 1024):
        super().__init__(prediction_type, native_resolution)
        self.joint_attention_dim = 4096

    @classmethod
    def from_pipeline(cls, pipe: Any) -> SD3:
        vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        family = cls(native_resolution=int(pipe.transformer.config.sample_size) * vae_scale)
        family.joint_attention_dim = int(pipe.transformer.config.joint_attention_dim)
        return family

    @classmethod
    def matches_unet_config(cls, unet_config: dict) -> bool:
        return unet_config.get("_class_name") == "SD3Transformer2DModel" or {
            "joint_attention_dim", "caption_projection_dim"} <= set(unet_config)

    @classmethod
    def matches_checkpoint_keys(cls, keys: set[str]) -> bool:
        return any("joint_blocks." in key for key in keys)

    @classmethod
    def memory_for_config(cls, config: dict | None) -> MemoryProfile:
        """Medium or Large: the deeper, wider transformer is Large."""
        return SD35_LARGE if config and int(config.get("num_layers", 24)) >= 30 else SD35_MEDIUM

    def encode(self, text_encoders: list[Any],
               input_ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        clip_states, pooled = [], []
        for encoder, ids in zip(text_encoders[:2], input_ids[:2]):
            out = encoder(ids, output_hidden_states=True)
            pooled.append(out[0])
            clip_states.append(out.hidden_states[-2])
        clip = torch.cat(clip_states, dim=-1)
        if len(text_encoders) > 2:
            t5 = text_encoders[2](input_ids[2])[0]
        else:  # loaded without T5 (text_encoder_3=None): the pipeline puts zeros in its place
            t5 = clip.new_zeros(clip.shape[0], self.max_sequence_length, self.joint_attention_dim)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat(pooled, dim=-1)

    def predict(self, model: Any, noisy: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor,
                pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> torch.Tensor:
        return model(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=hidden,
                     pooled_projections=pooled.to(hidden.dtype), return_dict=False)[0]

    single_file_prefix = "model.diffusion_model."

    @classmethod
    def original_modules(cls, config: dict) -> dict[str, Any]:
        from sdtune_ui.families.flow_layout import sd3_module_map

        return sd3_module_map(config)

    @classmethod
    def original_norms(cls, config: dict) -> dict[str, str]:
        from sdtune_ui.families.flow_layout import sd3_norm_map

        return sd3_norm_map(config)

    @classmethod
    def ldm_text_encoder_state(cls, pipe: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError("SD3 single files are exported as the transformer alone (export/flow_keys.py)")
