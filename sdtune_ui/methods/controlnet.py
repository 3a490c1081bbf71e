"""ControlNet: a trainable copy of the UNet's encoder that reads a condition picture (edges, depth, a pose ...)
and steers the frozen UNet through zero-initialised convolutions (Zhang et al. 2023). A new ControlNet starts from
the base model's UNet (diffusers' `ControlNetModel.from_unet`); an existing one (`controlnet_model`) is
fine-tuned on new pairs. Each picture trains with its condition picture (`a-condlabel.png` beside `a.png`, or
computed at the start: TrainConfig.conditioning). The result loads with `ControlNetModel.from_pretrained` and the
ControlNet pipelines of its family."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from sdtune_ui.errors import ModelLoadError, SdtuneError
from sdtune_ui.families import ModelParts
from sdtune_ui.methods import outputs
from sdtune_ui.methods.base import CONTROL, Method, StepAdvice, freeze, register

if TYPE_CHECKING:
    from sdtune_ui.config import TrainConfig


@register
class ControlNetTraining(Method):
    name = "controlnet"
    label = "ControlNet"
    summary = "ControlNet"
    traits = frozenset({CONTROL})
    # The paper replaces half the prompts by empty ones, so the ControlNet learns to read the condition itself;
    # diffusers' example trains at 1e-5 with batch 4.
    preset: ClassVar[dict] = dict(learning_rate=1e-5, max_train_steps=5000, train_batch_size=4, caption_dropout=0.5)
    # The CPU demo (not measured for learning): the UNet-copy learns at a full fine-tune's rate, no class images.
    demo_preset: ClassVar[dict] = dict(learning_rate=5e-5, with_prior_preservation=False, train_text_encoder=False,
                                       caption_dropout=0.5)
    advice = StepAdvice(100, 10**9, "A new ControlNet learns from thousands of picture + condition pairs; "
                        "fine-tuning an existing one from a few hundred", 0, 5000, 50000, 0.45)
    card_tags = ("controlnet",)
    outputs = (outputs.CONTROLNET,)

    @classmethod
    def check_settings(cls, config: TrainConfig, errors: dict[str, str]) -> None:
        if config.with_prior_preservation:
            errors["with_prior_preservation"] = ("A ControlNet trains on picture + condition pairs; class images "
                                                 "have no condition. Turn prior preservation off.")
        if config.train_text_encoder:
            errors["train_text_encoder"] = "ControlNet training keeps the text encoder frozen: turn this off."

    @classmethod
    def advice_notes(cls, subject: str, with_prior_preservation: bool | None) -> list[str]:
        return ["every picture needs its condition picture (a-condlabel.png), or let the run compute Canny "
                "edges or depth (conditioning)"]

    def full_precision_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        return [parts.controlnet]

    def trained_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        return [parts.controlnet]

    def prepare(self, parts: ModelParts) -> None:
        freeze(parts)
        if parts.family.denoiser != "unet":
            raise SdtuneError(f"ControlNet training works with UNet models here (SD1.x/2.x, SDXL), not "
                              f"{parts.family.label}.")
        if parts.family.inpainting:
            raise SdtuneError(f"{self.config.model} is an inpainting model: train the ControlNet on its "
                              "text-to-image base model (ControlNets steer text-to-image UNets).")
        if parts.controlnet is None:
            parts.controlnet = self._existing() if self.config.controlnet_model else self._new(parts)
        parts.controlnet.to(torch.float32).requires_grad_(True)
        parts.controlnet.train()

    def _existing(self) -> Any:
        from diffusers import ControlNetModel

        from sdtune_ui.models.loading import resolve_model

        try:
            return ControlNetModel.from_pretrained(resolve_model(self.config.controlnet_model),
                                                   torch_dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"Could not load the ControlNet {self.config.controlnet_model!r}: {err}. Give a "
                                 "diffusers ControlNet folder or Hub id, or leave it empty for a new one.") from err

    def _new(self, parts: ModelParts) -> Any:
        from sdtune_ui.models.tiny import controlnet_from_unet

        scale = 2 ** (len(parts.vae.config.block_out_channels) - 1)
        return controlnet_from_unet(self._full_precision_unet(parts), scale)

    def _full_precision_unet(self, parts: ModelParts) -> Any:
        """The base UNet in float32 to copy from: frozen UNets are loaded in half precision, and a copy of those
        would start the ControlNet from rounded weights. Single files have no separate UNet to read."""
        if parts.unet.dtype == torch.float32:
            return parts.unet
        from diffusers import UNet2DConditionModel

        from sdtune_ui.models.loading import resolve_model

        source = resolve_model(self.config.model)
        try:
            return UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=torch.float32)
        except (OSError, ValueError):
            return parts.unet

    def save_output(self, parts: ModelParts, out_dir: Path) -> list[Path]:
        parts.controlnet.to("cpu", torch.float32).save_pretrained(out_dir, safe_serialization=True)
        return sorted(p for p in out_dir.iterdir() if p.name in ("config.json", "diffusion_pytorch_model.safetensors"))
