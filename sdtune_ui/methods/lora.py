"""LoRA: low-rank adapters (peft) on the UNet's layers, and optionally the text encoders'; saved in diffusers
format (`pipe.load_lora_weights`). Also DreamBooth-style, with an instance prompt and prior preservation."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from sdtune_ui.families import ModelParts
from sdtune_ui.methods import outputs
from sdtune_ui.methods.base import ADAPTER, UNET_WEIGHTS, Method, StepAdvice, register

UNET_LORA_TARGETS = {
    "attention": ["to_q", "to_k", "to_v", "to_out.0"],
    "attention_ff": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"],
    "all": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
            "conv1", "conv2", "conv_shortcut", "time_emb_proj"],
}
TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@register
class LoRA(Method):
    name = "lora"
    label = "LoRA"
    summary = "LoRA"
    traits = frozenset({UNET_WEIGHTS, ADAPTER})
    preset: ClassVar[dict] = dict(learning_rate=1e-4, max_train_steps=500, rank=16, lora_alpha=16)
    advice = StepAdvice(5, 200, "LoRA works well from ~10 to a few hundred images", 100, 500, 3000, 0.3)
    card_tags = ("lora", "template:sd-lora")
    outputs = (outputs.LORA,)

    @classmethod
    def advice_notes(cls, subject: str, with_prior_preservation: bool | None) -> list[str]:
        return ["faces usually need the upper end of the step range"] if subject == "face" else []

    def trains_text_encoders(self) -> bool:
        return self.config.train_text_encoder

    def prepare(self, parts: ModelParts) -> None:
        from peft import LoraConfig

        super().prepare(parts)
        cfg = self.config
        parts.unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.effective_lora_alpha,
                                          lora_dropout=cfg.lora_dropout, init_lora_weights="gaussian",
                                          target_modules=UNET_LORA_TARGETS[cfg.lora_targets]))
        if self.trains_text_encoders():
            for encoder in parts.text_encoders:
                encoder.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.effective_lora_alpha,
                                               lora_dropout=cfg.lora_dropout, init_lora_weights="gaussian",
                                               target_modules=TEXT_ENCODER_LORA_TARGETS))

    def save_output(self, parts: ModelParts, out_dir: Path) -> list[Path]:
        from peft.utils import get_peft_model_state_dict

        def lora_layers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
            # peft-format keys, which diffusers loads natively. (Converting to the older diffusers key
            # format silently dropped the attention layers when conv layers were targeted too.)
            return get_peft_model_state_dict(model)

        def metadata(model: torch.nn.Module) -> dict:
            # Records rank and alpha in the file, so loaders apply the trained scale (alpha / rank).
            return model.peft_config["default"].to_dict()

        names = {"unet": parts.unet}
        if self.trains_text_encoders():
            names["text_encoder"] = parts.text_encoders[0]
            if len(parts.text_encoders) > 1:
                names["text_encoder_2"] = parts.text_encoders[1]
        arguments = {}
        for name, model in names.items():
            arguments[f"{name}_lora_layers"] = lora_layers(model)
            arguments[f"{name}_lora_adapter_metadata"] = metadata(model)
        type(parts.pipeline).save_lora_weights(str(out_dir), weight_name=outputs.LORA_FILE, safe_serialization=True,
                                               **arguments)
        return [out_dir / outputs.LORA_FILE]
