"""Pivotal tuning: textual inversion and LoRA together (new token embeddings plus LoRA on the UNet)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from sdtune_ui.families import ModelParts
from sdtune_ui.methods import outputs
from sdtune_ui.methods.base import ADAPTER, TOKENS, UNET_WEIGHTS, Method, StepAdvice, named_trainable, register
from sdtune_ui.methods.lora import LoRA
from sdtune_ui.methods.textual_inversion import TextualInversion, check_token_settings

if TYPE_CHECKING:
    from sdtune_ui.config import TrainConfig


@register
class PivotalTuning(TextualInversion):
    name = "pivotal"
    label = "Pivotal tuning"
    summary = "pivotal-tuning {adapter} with a textual-inversion embedding"
    traits = frozenset({UNET_WEIGHTS, ADAPTER, TOKENS})
    preset: ClassVar[dict] = dict(learning_rate=1e-4, ti_learning_rate=5e-4, max_train_steps=1000, rank=16,
                                  lora_alpha=16, ema_decay=0.999)
    # Over the LoRA demo; the token at 5e-3 (demo-sd1's embeddings are ~0.03 per element: 5e-2 overshoots).
    demo_preset: ClassVar[dict] = dict(ti_learning_rate=5e-3, instance_prompt="a photo of <sks>",
                                       placeholder_token="<sks>", initializer_token="robot",
                                       validation_prompts=["a photo of <sks>"])
    advice = StepAdvice(4, 50, "Pivotal tuning works best with 5-30 images of the concept", 100, 800, 2000, 0.3)
    card_tags = ("lora", "textual_inversion", "pivotal-tuning", "template:sd-lora")
    outputs = (outputs.LORA, outputs.EMBEDDING)
    reads_captions = True

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.lora = LoRA(config)

    @classmethod
    def check_settings(cls, config: TrainConfig, errors: dict[str, str]) -> None:
        check_token_settings(config, errors)   # prior preservation is fine: the LoRA half changes weights

    @classmethod
    def advice_notes(cls, subject: str, with_prior_preservation: bool | None) -> list[str]:
        return LoRA.advice_notes(subject, with_prior_preservation)

    def trained_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        return [parts.unet, *parts.tunable_text_encoders]

    def prepare(self, parts: ModelParts) -> None:
        self.lora.prepare(parts)  # freezes everything, then adds the adapters
        self.add_tokens(parts)

    def ema_parameters(self, parts: ModelParts) -> list[torch.nn.Parameter]:
        return self.param_groups(parts)[0]["params"]   # the adapter weights (the embeddings keep no average)

    def param_groups(self, parts: ModelParts) -> list[dict]:
        embeddings = super().param_groups(parts)
        embedding_ids = {id(p) for group in embeddings for p in group["params"]}
        lora_params = [p for p in named_trainable(parts).values() if id(p) not in embedding_ids]
        return [{"params": lora_params, "lr": self.config.learning_rate}, *embeddings]

    def trainable_state(self, parts: ModelParts) -> dict[str, torch.Tensor]:
        state = Method.trainable_state(self, parts)
        state.update(super().trainable_state(parts))
        return state

    def load_trainable_state(self, parts: ModelParts, state: dict[str, torch.Tensor]) -> None:
        Method.load_trainable_state(self, parts, state)
        super().load_trainable_state(parts, state)

    def save_output(self, parts: ModelParts, out_dir: Path) -> list[Path]:
        return self.lora.save_output(parts, out_dir) + super().save_output(parts, out_dir)
