"""DoRA (Liu et al. 2024, "weight-decomposed LoRA"): a LoRA whose result is renormalised per output channel to a
learned magnitude (peft `LoraConfig(use_dora=True)`). diffusers loads our file (`use_dora` is in its metadata);
kohya files carry the magnitude as `dora_scale`, the way LyCORIS (3.1.1 and later) writes output-axis DoRA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch

from sdtune_ui.methods.adapters.base import load_with_peft, peft_usage_lines, register
from sdtune_ui.methods.adapters.lora import LoRA, has_adapter_metadata


@register
class DoRA(LoRA):
    name = "dora"
    label = "DoRA"
    summary = "DoRA (weight-decomposed LoRA)"
    help = "DoRA: LoRA plus a learned magnitude per output channel (often closer to full fine-tuning; slower steps)"
    card_tags: ClassVar[tuple[str, ...]] = ("dora",)
    advice_notes: ClassVar[tuple[str, ...]] = (
        "DoRA starts well from LoRA's learning rate and rank; each step costs more than LoRA's (a weight norm per "
        "layer)",)
    priority = 5
    tensor_suffixes = (*LoRA.tensor_suffixes, "lora_magnitude_vector")
    diffusers_reads_kohya = False   # diffusers drops kohya's dora_scale and would apply a plain LoRA

    @classmethod
    def matches(cls, keys: set[str], configs: dict[str, dict]) -> bool:
        return (any(key.endswith(".lora_magnitude_vector") for key in keys)
                or any(config.get("use_dora") for config in configs.values()))

    def variant_options(self) -> dict[str, Any]:
        return {"use_dora": True}

    @classmethod
    def apply(cls, pipe: Any, file: Path, adapter_name: str, *, allow_pickle: bool = False) -> None:
        # diffusers 0.42's load_lora_weights drops text-encoder magnitudes under transformers 5 (it looks for
        # `lora_magnitude_vector.<name>.weight` without the `.weight`), so our files, which carry their config,
        # load through peft directly; files without metadata go to diffusers.
        if has_adapter_metadata(file):
            load_with_peft(pipe, file, adapter_name, cls.peft_config_class, allow_pickle=allow_pickle)
        else:
            super().apply(pipe, file, adapter_name, allow_pickle=allow_pickle)

    @classmethod
    def usage_lines(cls, weight_name: str) -> list[str]:
        return ["# diffusers' load_lora_weights loses the text encoders' DoRA magnitudes; peft reads them all:",
                *peft_usage_lines(cls.peft_config_class, weight_name)]

    @classmethod
    def kohya_tensors(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = super().kohya_tensors(tensors, config)
        up = tensors["lora_B.weight"]
        # One magnitude per output row, shaped (out, 1[, 1, 1]): ComfyUI picks its output-axis branch by the first
        # dimension, and a 1-D tensor would broadcast along the wrong axis there.
        out["dora_scale"] = tensors["lora_magnitude_vector"].reshape(up.shape[0], *[1] * (up.ndim - 1))
        return out

    @classmethod
    def kohya_note(cls, file_name: str) -> str:
        stem = Path(file_name).stem
        return (f"a kohya-format DoRA (`dora_scale` per output channel, as LyCORIS 3.1.1+ writes it) for ComfyUI "
                f"(`<lora:{stem}:1>`; ComfyUI's DoRA maths differs from training by a few percent of the change). "
                "AUTOMATIC1111 (1.10) applies DoRA scales along the other axis, so it cannot use this file")

    @classmethod
    def kohya_network(cls, config: dict[str, Any]) -> dict[str, str]:
        return {"ss_network_module": "lycoris.kohya",
                "ss_network_args": json.dumps({"algo": "lora", "dora_wd": "True", "wd_on_output": "True"})}
