"""LoRA: low-rank adapters (peft) on the UNet's layers, and optionally the text encoders'. Also DreamBooth-style,
with an instance prompt and prior preservation. The adapter type (plain LoRA or a variant: DoRA, LoKr, LoHa)
comes from the adapter registry (methods/adapters), which also builds its peft config and saves its file."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from sdtune_ui.families import ModelParts
from sdtune_ui.methods import outputs
from sdtune_ui.methods.adapters import Adapter, adapter_named
from sdtune_ui.methods.base import ADAPTER, UNET_WEIGHTS, Method, StepAdvice, named_trainable, register


@register
class LoRA(Method):
    name = "lora"
    label = "LoRA"
    summary = "{adapter}"
    traits = frozenset({UNET_WEIGHTS, ADAPTER})
    # ema_decay: an adapter run of a few thousand steps never reaches 0.9999 (EMA's warm-up is (1+t)/(10+t)).
    preset: ClassVar[dict] = dict(learning_rate=1e-4, max_train_steps=500, rank=16, lora_alpha=16, ema_decay=0.999)
    advice = StepAdvice(5, 200, "LoRA works well from ~10 to a few hundred images", 100, 500, 3000, 0.3)
    card_tags = ("lora", "template:sd-lora")
    outputs = (outputs.LORA,)

    @classmethod
    def advice_notes(cls, subject: str, with_prior_preservation: bool | None) -> list[str]:
        return ["faces usually need the upper end of the step range"] if subject == "face" else []

    def trains_text_encoders(self) -> bool:
        return self.config.train_text_encoder

    @property
    def adapter(self) -> Adapter:
        return adapter_named(self.config.adapter)(self.config)

    def prepare(self, parts: ModelParts) -> None:
        super().prepare(parts)
        self.adapter.add_to(parts, text_encoders=self.trains_text_encoders())

    def ema_parameters(self, parts: ModelParts) -> list[torch.nn.Parameter]:
        return list(named_trainable(parts).values())

    def save_output(self, parts: ModelParts, out_dir: Path) -> list[Path]:
        models = {parts.family.denoiser: parts.unet}
        if self.trains_text_encoders():
            models.update(zip(parts.tunable_text_encoder_names, parts.tunable_text_encoders))
        return [self.adapter.save(models, type(parts.pipeline), out_dir)]
