"""The original (Stability / Black Forest Labs) layouts of the SD3 and Flux transformers, which single-file
checkpoints, kohya-format LoRAs (sd-scripts, ComfyUI, Forge) and ComfyUI's loaders use.

diffusers splits what the originals fuse: one `qkv` projection becomes to_q / to_k / to_v, and a Flux single
block's `linear1` is [q, k, v, mlp]; its final (and SD3's last context) modulation keeps (scale, shift) where the
originals keep (shift, scale). `module_map` says, for every diffusers Linear/Conv module path, which original
module it is and which slice of it; `original_state` rebuilds an original-layout state dict from a diffusers one
(checked by loading it back with diffusers' own single-file converter, tests/test_flow_export.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Slot:
    """Where a diffusers module lives in the original layout: a module, or one slice of a fused one."""

    name: str                          # original module path, e.g. joint_blocks.0.x_block.attn.qkv
    part: int = 0                      # which slice (rows) of the fused module
    sizes: tuple[int, ...] = ()        # row counts of all slices; () = not fused
    swapped: bool = False              # output rows are (shift, scale) in the original, (scale, shift) in diffusers


def _fused(name: str, modules: tuple[str, ...], sizes: tuple[int, ...]) -> dict[str, Slot]:
    return {module: Slot(name, part, sizes) for part, module in enumerate(modules)}


def sd3_module_map(config: dict) -> dict[str, Slot]:
    """diffusers SD3Transformer2DModel module -> original MMDiT (SD3 / SD3.5) module."""
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    depth = int(config["num_layers"])
    dual = set(config.get("dual_attention_layers") or ())
    slots: dict[str, Slot] = {
        "pos_embed.proj": Slot("x_embedder.proj"),
        "context_embedder": Slot("context_embedder"),
        "time_text_embed.timestep_embedder.linear_1": Slot("t_embedder.mlp.0"),
        "time_text_embed.timestep_embedder.linear_2": Slot("t_embedder.mlp.2"),
        "time_text_embed.text_embedder.linear_1": Slot("y_embedder.mlp.0"),
        "time_text_embed.text_embedder.linear_2": Slot("y_embedder.mlp.2"),
        "norm_out.linear": Slot("final_layer.adaLN_modulation.1", swapped=True),
        "proj_out": Slot("final_layer.linear"),
    }
    qkv = (inner, inner, inner)
    for i in range(depth):
        ours, theirs = f"transformer_blocks.{i}", f"joint_blocks.{i}"
        last = i == depth - 1   # its context stream only feeds attention (context_pre_only)
        slots.update(_fused(f"{theirs}.x_block.attn.qkv", tuple(f"{ours}.attn.to_{x}" for x in "qkv"), qkv))
        slots.update(_fused(f"{theirs}.context_block.attn.qkv",
                            tuple(f"{ours}.attn.add_{x}_proj" for x in "qkv"), qkv))
        slots[f"{ours}.attn.to_out.0"] = Slot(f"{theirs}.x_block.attn.proj")
        slots[f"{ours}.ff.net.0.proj"] = Slot(f"{theirs}.x_block.mlp.fc1")
        slots[f"{ours}.ff.net.2"] = Slot(f"{theirs}.x_block.mlp.fc2")
        slots[f"{ours}.norm1.linear"] = Slot(f"{theirs}.x_block.adaLN_modulation.1")
        slots[f"{ours}.norm1_context.linear"] = Slot(f"{theirs}.context_block.adaLN_modulation.1", swapped=last)
        if not last:
            slots[f"{ours}.attn.to_add_out"] = Slot(f"{theirs}.context_block.attn.proj")
            slots[f"{ours}.ff_context.net.0.proj"] = Slot(f"{theirs}.context_block.mlp.fc1")
            slots[f"{ours}.ff_context.net.2"] = Slot(f"{theirs}.context_block.mlp.fc2")
        if i in dual:   # SD3.5's MMDiT-X: a second, image-only attention
            slots.update(_fused(f"{theirs}.x_block.attn2.qkv", tuple(f"{ours}.attn2.to_{x}" for x in "qkv"), qkv))
            slots[f"{ours}.attn2.to_out.0"] = Slot(f"{theirs}.x_block.attn2.proj")
    return slots


def sd3_norm_map(config: dict) -> dict[str, str]:
    """QK-norm weights (SD3.5) and the position table: diffusers tensor -> original tensor."""
    names = {"pos_embed.pos_embed": "pos_embed"}
    for i in range(int(config["num_layers"])):
        ours, theirs = f"transformer_blocks.{i}", f"joint_blocks.{i}"
        for mine, original in (("attn.norm_q", "x_block.attn.ln_q"), ("attn.norm_k", "x_block.attn.ln_k"),
                               ("attn.norm_added_q", "context_block.attn.ln_q"),
                               ("attn.norm_added_k", "context_block.attn.ln_k"),
                               ("attn2.norm_q", "x_block.attn2.ln_q"), ("attn2.norm_k", "x_block.attn2.ln_k")):
            names[f"{ours}.{mine}.weight"] = f"{theirs}.{original}.weight"
    return names


def flux_module_map(config: dict) -> dict[str, Slot]:
    """diffusers FluxTransformer2DModel module -> original Flux.1 (BFL) module."""
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    qkv = (inner, inner, inner)
    slots: dict[str, Slot] = {
        "x_embedder": Slot("img_in"),
        "context_embedder": Slot("txt_in"),
        "time_text_embed.timestep_embedder.linear_1": Slot("time_in.in_layer"),
        "time_text_embed.timestep_embedder.linear_2": Slot("time_in.out_layer"),
        "time_text_embed.text_embedder.linear_1": Slot("vector_in.in_layer"),
        "time_text_embed.text_embedder.linear_2": Slot("vector_in.out_layer"),
        "time_text_embed.guidance_embedder.linear_1": Slot("guidance_in.in_layer"),
        "time_text_embed.guidance_embedder.linear_2": Slot("guidance_in.out_layer"),
        "norm_out.linear": Slot("final_layer.adaLN_modulation.1", swapped=True),
        "proj_out": Slot("final_layer.linear"),
    }
    for i in range(int(config["num_layers"])):
        ours, theirs = f"transformer_blocks.{i}", f"double_blocks.{i}"
        slots.update(_fused(f"{theirs}.img_attn.qkv", tuple(f"{ours}.attn.to_{x}" for x in "qkv"), qkv))
        slots.update(_fused(f"{theirs}.txt_attn.qkv", tuple(f"{ours}.attn.add_{x}_proj" for x in "qkv"), qkv))
        for mine, original in (("attn.to_out.0", "img_attn.proj"), ("attn.to_add_out", "txt_attn.proj"),
                               ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"),
                               ("ff_context.net.0.proj", "txt_mlp.0"), ("ff_context.net.2", "txt_mlp.2"),
                               ("norm1.linear", "img_mod.lin"), ("norm1_context.linear", "txt_mod.lin")):
            slots[f"{ours}.{mine}"] = Slot(f"{theirs}.{original}")
    mlp = int(inner * 4)
    for i in range(int(config["num_single_layers"])):
        ours, theirs = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        parts = (*(f"{ours}.attn.to_{x}" for x in "qkv"), f"{ours}.proj_mlp")
        slots.update(_fused(f"{theirs}.linear1", parts, (*qkv, mlp)))
        slots[f"{ours}.proj_out"] = Slot(f"{theirs}.linear2")
        slots[f"{ours}.norm.linear"] = Slot(f"{theirs}.modulation.lin")
    return slots


def flux_norm_map(config: dict) -> dict[str, str]:
    names = {}
    for i in range(int(config["num_layers"])):
        ours, theirs = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for mine, original in (("norm_q", "img_attn.norm.query_norm"), ("norm_k", "img_attn.norm.key_norm"),
                               ("norm_added_q", "txt_attn.norm.query_norm"),
                               ("norm_added_k", "txt_attn.norm.key_norm")):
            names[f"{ours}.attn.{mine}.weight"] = f"{theirs}.{original}.scale"
    for i in range(int(config["num_single_layers"])):
        ours, theirs = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        names[f"{ours}.attn.norm_q.weight"] = f"{theirs}.norm.query_norm.scale"
        names[f"{ours}.attn.norm_k.weight"] = f"{theirs}.norm.key_norm.scale"
    return names


def swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """(scale, shift) rows <-> (shift, scale) rows: the same operation both ways."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def original_state(state: dict[str, torch.Tensor], slots: dict[str, Slot], norms: dict[str, str],
                   prefix: str = "") -> dict[str, torch.Tensor]:
    """A diffusers transformer state dict in the original layout (fused projections concatenated in order)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        if key in norms:
            out[prefix + norms[key]] = value
            continue
        module, _, kind = key.rpartition(".")
        slot = slots.get(module)
        if slot is None:
            raise ValueError(f"{key} has no place in the original layout")
        name = f"{prefix}{slot.name}.{kind}"
        value = swap_halves(value) if slot.swapped else value
        if slot.sizes:
            fused.setdefault(name, {})[slot.part] = value
        else:
            out[name] = value
    for name, parts in fused.items():
        out[name] = torch.cat([parts[i] for i in sorted(parts)], dim=0)
    return out
