"""LoHa (LyCORIS, after FedPara): each layer's change is the element-wise product of two low-rank matrices, so
rank r reaches up to r² (peft `LoHaConfig`). Saved in peft's naming with its config in the metadata (diffusers'
loaders refuse LoHa; our generator and the model card's snippet use peft); kohya files use LyCORIS' `hada_*` keys."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import torch

from sdtune_ui.methods.adapters.base import PeftFileAdapter, register


@register
class LoHa(PeftFileAdapter):
    name = "loha"
    label = "LoHa"
    summary = "LoHa (Hadamard-product LyCORIS adapter)"
    help = "LoHa (LyCORIS): an element-wise product of two low-rank pairs per layer (reaches rank r²; generalises well)"
    card_tags: ClassVar[tuple[str, ...]] = ("lycoris", "loha")
    # LyCORIS' recommended range: rank up to 32, alpha from 1 to half the rank (high ranks can make the loss unstable).
    preset: ClassVar[dict[str, Any]] = dict(rank=8, lora_alpha=4)
    advice_notes: ClassVar[tuple[str, ...]] = (
        "LoHa: keep the rank at 32 or less and alpha at most half the rank; if the loss jumps or becomes NaN, lower "
        "the learning rate",)
    file_name = "peft_loha_weights.safetensors"
    peft_config_class = "LoHaConfig"
    tensor_suffixes = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
    metadata_fields = ("peft_type", "r", "alpha", "rank_dropout", "module_dropout", "target_modules", "rank_pattern",
                       "alpha_pattern", "use_effective_conv2d", "init_weights")

    @classmethod
    def matches(cls, keys: set[str], configs: dict[str, dict]) -> bool:
        return any(".hada_" in key for key in keys) or any(c.get("peft_type") == "LOHA" for c in configs.values())

    def peft_config(self, target_modules: list[str]) -> Any:
        from peft import LoHaConfig

        cfg = self.config
        return LoHaConfig(r=cfg.rank, alpha=cfg.effective_lora_alpha, rank_dropout=cfg.lora_dropout,
                          target_modules=target_modules, init_weights=True)

    @classmethod
    def kohya_tensors(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
        # Same tensors and names; the tools scale by alpha / hada_w1_b's rows (= r), as peft scales by alpha / r.
        rank = tensors["hada_w1_b"].shape[0]
        return {**tensors, "alpha": torch.tensor(float(config.get("alpha") or rank))}

    @classmethod
    def kohya_network(cls, config: dict[str, Any]) -> dict[str, str]:
        return {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "loha"})}
