"""kohya-format LoRAs for the transformer families (SD3, Flux), in the original module names those tools use.

sd-scripts, ComfyUI and Forge name the transformer's modules by the original layout (families/flow_layout.py):
`lora_unet_joint_blocks_0_x_block_attn_qkv`, `lora_unet_double_blocks_0_img_attn_qkv`,
`lora_unet_single_blocks_0_linear1`, ... where diffusers has separate to_q / to_k / to_v (and Flux's proj_mlp). A
LoRA on the separate projections is written as one LoRA on the fused module, exactly: the down matrices stacked,
the up matrices block-diagonal (rank = parts x rank, alpha scaled alike, so alpha / rank stays the same), a part
that was not trained contributing zeros. This is sd-scripts' "split qkv" form, which diffusers' kohya loader also
reads back into separate projections. Modulation layers whose halves the originals keep as (shift, scale) get
their up rows swapped.
"""

from __future__ import annotations

from typing import Any

import torch

from sdtune_ui.errors import SdtuneError
from sdtune_ui.families.flow_layout import Slot, swap_halves


def flow_lora_to_kohya(modules: dict[tuple[str, str], dict[str, torch.Tensor]], configs: dict[str, dict[str, Any]],
                       adapter: Any, *, family: Any, denoiser_config: dict,
                       fallback_alpha: float | None, te_name: Any) -> dict[str, torch.Tensor]:
    """`modules`: {(component, diffusers module path): {peft suffix: tensor}} -> kohya keys and tensors."""
    slots = family.original_modules(denoiser_config)
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, tuple[Slot, dict[str, torch.Tensor]]]] = {}
    for (component, module), tensors in modules.items():
        config = dict(configs.get(component, {}))
        if fallback_alpha and not config.get(adapter.alpha_field):
            config[adapter.alpha_field] = fallback_alpha
        converted = adapter.kohya_tensors(tensors, config)
        if component != family.denoiser:
            name = te_name(component, module)
            out.update({f"{name}.{suffix}": value.contiguous() for suffix, value in converted.items()})
            continue
        slot = slots.get(module)
        if slot is None:
            raise SdtuneError(f"{module} has no place in the {family.label} layout the tools read")
        if set(converted) - {"lora_down.weight", "lora_up.weight", "alpha"}:
            raise SdtuneError(f"A {adapter.label} cannot be written in kohya form for {family.label} (only LoRA "
                              "is); ComfyUI reads the diffusers-format file directly.")
        if slot.swapped:
            converted["lora_up.weight"] = swap_halves(converted["lora_up.weight"])
        name = "lora_unet_" + slot.name.replace(".", "_")
        if slot.sizes:
            fused.setdefault(name, {})[slot.part] = (slot, converted)
        else:
            out.update({f"{name}.{suffix}": value.contiguous() for suffix, value in converted.items()})
    for name, parts in fused.items():
        out.update(_fuse(name, parts))
    return out


def _fuse(name: str, parts: dict[int, tuple[Slot, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """One LoRA on a fused module from LoRAs on its slices: stacked downs, block-diagonal ups."""
    slot, first = next(iter(parts.values()))
    rank, width = first["lora_down.weight"].shape
    alpha = float(first["alpha"])
    dtype = first["lora_down.weight"].dtype
    count = len(slot.sizes)
    down = torch.zeros(rank * count, width, dtype=dtype)
    up = torch.zeros(sum(slot.sizes), rank * count, dtype=dtype)
    row = 0
    for part, size in enumerate(slot.sizes):
        if part in parts:
            tensors = parts[part][1]
            if tensors["lora_down.weight"].shape[0] != rank or float(tensors["alpha"]) != alpha:
                raise SdtuneError(f"{name}: its parts were trained with different ranks or alphas")
            down[part * rank:(part + 1) * rank] = tensors["lora_down.weight"]
            up[row:row + size, part * rank:(part + 1) * rank] = tensors["lora_up.weight"]
        row += size
    return {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
            f"{name}.alpha": torch.tensor(alpha * count)}
