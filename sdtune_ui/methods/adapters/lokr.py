"""LoKr (LyCORIS): each layer's change is the Kronecker product of two small factors, either of which may itself
be low-rank (peft `LoKrConfig`). Saved in peft's naming with its config in the metadata (diffusers' pipeline
loader refuses LoKr; our generator and the model card's snippet use peft); kohya files use LyCORIS' `lokr_*` keys."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from sdtune_ui.methods.adapters.base import PeftFileAdapter, register

if TYPE_CHECKING:
    from sdtune_ui.config import TrainConfig


@register
class LoKr(PeftFileAdapter):
    name = "lokr"
    label = "LoKr"
    summary = "LoKr (Kronecker-product LyCORIS adapter)"
    help = "LoKr (LyCORIS): a Kronecker product of two small factors per layer (small files, a higher learning rate)"
    card_tags: ClassVar[tuple[str, ...]] = ("lycoris", "lokr")
    # LyCORIS' guidelines: factor ~8 for a capable LoKr (-1, the smallest, transfers worse to other base models);
    # fewer trained numbers than LoRA at the same rank, so a higher learning rate.
    preset: ClassVar[dict[str, Any]] = dict(lokr_factor=8, learning_rate=4e-4)
    settings: ClassVar[tuple[str, ...]] = ("lokr_factor", "decompose_both")
    advice_notes: ClassVar[tuple[str, ...]] = (
        "LoKr: a lower lokr_factor (4-8) learns more detail, a higher one or -1 gives smaller files that follow "
        "the training images less closely; start around 4e-4 learning rate",)
    file_name = "peft_lokr_weights.safetensors"
    peft_config_class = "LoKrConfig"
    tensor_suffixes = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
    metadata_fields = ("peft_type", "r", "alpha", "rank_dropout", "module_dropout", "target_modules", "rank_pattern",
                       "alpha_pattern", "use_effective_conv2d", "decompose_both", "decompose_factor", "init_weights")

    @classmethod
    def check_settings(cls, config: TrainConfig, errors: dict[str, str]) -> None:
        if config.lokr_factor == 0 or config.lokr_factor < -1:
            errors["lokr_factor"] = "Use -1 (near-square, the smallest) or a factor of 1 or more (4-16 is typical)."

    @classmethod
    def matches(cls, keys: set[str], configs: dict[str, dict]) -> bool:
        return any(".lokr_" in key for key in keys) or any(c.get("peft_type") == "LOKR" for c in configs.values())

    def peft_config(self, target_modules: list[str]) -> Any:
        from peft import LoKrConfig

        cfg = self.config
        return LoKrConfig(r=cfg.rank, alpha=cfg.effective_lora_alpha, rank_dropout=cfg.lora_dropout,
                          decompose_factor=cfg.lokr_factor, decompose_both=cfg.decompose_both,
                          target_modules=target_modules, init_weights=True)

    @classmethod
    def kohya_tensors(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "lokr_t2" in tensors:
            # ComfyUI cannot apply the CP form (its kron gets a non-contiguous tensor and skips the layer).
            raise ValueError("LoKr with use_effective_conv2d (lokr_t2) has no kohya export")
        rank = int(config.get("r") or next(t.shape[0] for s, t in tensors.items() if s.endswith("_b")))
        alpha = float(config.get("alpha") or rank)
        out = dict(tensors)
        if not any(suffix.endswith("_b") for suffix in tensors):
            # Both factors full: A1111 and ComfyUI then ignore alpha (LyCORIS' own rule), while peft always scales
            # by alpha / r. Bake peft's scale into w1 so the tools apply the trained change.
            out["lokr_w1"] = tensors["lokr_w1"] * (alpha / rank)
        # With a low-rank factor the tools scale by alpha / that factor's rank (= r): peft's scale.
        out["alpha"] = torch.tensor(alpha)
        return out

    @classmethod
    def kohya_network(cls, config: dict[str, Any]) -> dict[str, str]:
        args = {"algo": "lokr", "factor": str(config.get("decompose_factor", -1)),
                "decompose_both": str(bool(config.get("decompose_both")))}
        return {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps(args)}
