"""LoRA: two low-rank matrices per layer (peft `LoraConfig`), saved in diffusers' format, which diffusers,
ComfyUI (after export) and every LoRA tool read; kohya files name them `lora_down` / `lora_up` / `alpha`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.methods.adapters.base import METADATA_KEY, Adapter, register

_LORA_KEY = re.compile(r"lora[_.]")   # lora_A / lora_down / lora.up / lora_unet_...: a LoRA file's keys
# peft-format spellings, and the older diffusers ones found in files made elsewhere
_PEFT_SPELLINGS = ((".lora_linear_layer.down.", ".lora_A."), (".lora_linear_layer.up.", ".lora_B."),
                   (".lora.down.", ".lora_A."), (".lora.up.", ".lora_B."))


@register
class LoRA(Adapter):
    name = "lora"
    label = "LoRA"
    summary = "LoRA"
    help = "LoRA: two low-rank matrices per layer (the standard)"
    priority = 0   # the fallback: any file with LoRA keys that no variant claims
    peft_config_class = "LoraConfig"
    tensor_suffixes = ("lora_A.weight", "lora_B.weight")
    # The LoraConfig fields diffusers 0.35 / peft 0.17 read (0.35 reads rank_pattern and target_modules without
    # a default); newer fields such as peft_version make LoraConfig(**metadata) fail there.
    metadata_fields = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "lora_dropout", "bias",
                       "use_rslora", "use_dora", "lora_bias", "init_lora_weights", "fan_in_fan_out")
    diffusers_reads_kohya = True

    @classmethod
    def matches(cls, keys: set[str], configs: dict[str, dict]) -> bool:
        return any(_LORA_KEY.search(key) for key in keys)

    def peft_config(self, target_modules: list[str]) -> Any:
        from peft import LoraConfig

        cfg = self.config
        return LoraConfig(r=cfg.rank, lora_alpha=cfg.effective_lora_alpha, lora_dropout=cfg.lora_dropout,
                          init_lora_weights="gaussian", target_modules=target_modules, **self.variant_options())

    def variant_options(self) -> dict[str, Any]:
        """Extra LoraConfig arguments of a LoRA variant (DoRA)."""
        return {}

    @classmethod
    def apply(cls, pipe: Any, file: Path, adapter_name: str, *, allow_pickle: bool = False) -> None:
        """diffusers' own loader, which also reads kohya, A1111 and older diffusers files."""
        if has_adapter_metadata(file):
            # Loading by path lets diffusers read rank/alpha (and use_dora) from the file's metadata.
            pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=adapter_name)
        else:  # kohya, A1111 and older diffusers files: diffusers converts them
            from sdtune_ui.models.loading import read_state_dict

            state = normalise_keys(read_state_dict(file, allow_pickle=allow_pickle))
            pipe.load_lora_weights(state, adapter_name=adapter_name)

    @classmethod
    def apply_from_hub(cls, pipe: Any, repo_id: str, adapter_name: str) -> None:
        pipe.load_lora_weights(repo_id, adapter_name=adapter_name)

    @classmethod
    def kohya_tensors(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
        down, up = tensors["lora_A.weight"], tensors["lora_B.weight"]
        # Loaders scale by alpha / lora_down's rows, as peft scales by lora_alpha / r.
        alpha = float(config.get("lora_alpha") or down.shape[0])
        return {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(alpha)}


def has_adapter_metadata(file: Path) -> bool:
    """True for LoRA files that carry diffusers' adapter metadata (rank, alpha), e.g. ours since alpha is saved."""
    if file.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as handle:
        return METADATA_KEY in (handle.metadata() or {})


def normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give every UNet key one spelling (peft's lora_A/lora_B).

    diffusers' convert_state_dict_to_diffusers renames only attention layers, so a LoRA that also covers
    convolutions or feed-forward layers is saved with two spellings; diffusers' loader then judges the
    format from the first key and silently drops the other half. kohya files are left to diffusers.
    """
    if not any(key.startswith("unet.") for key in state):
        return state
    return {(key.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B.")
             if key.startswith("unet.") else key): value for key, value in state.items()}


def peft_spelling(key: str) -> str:
    """A diffusers LoRA key in peft naming (`lora_A.weight`), whichever diffusers release wrote it."""
    for old, new in _PEFT_SPELLINGS:
        key = key.replace(old, new)
    return key
