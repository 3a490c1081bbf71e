"""Diffusers pipeline -> one original-layout (LDM / A1111 / ComfyUI) `.safetensors` checkpoint.

diffusers ships the other direction only (`from_single_file`, in loaders/single_file_utils.py); the
reverse lives in repository scripts that are not part of the package. This is that reverse, written
against the same layout rules as diffusers' loader (so `from_single_file` reads our files back, which
the tests check), and parametrised by the model's config instead of hard-coding SD1.5's block counts,
so it covers SD1.x, SD2.x and SDXL, including the tiny demo models.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.errors import SdtuneError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

# Top-level UNet layers whose names do not follow the block pattern (the inverse of diffusers' table).
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",     # SDXL's size/crop conditioning MLP
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
}
_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_VAE_FIXED = {"conv_norm_out": "norm_out"}
_VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _rename(rest: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def unet_key_to_ldm(key: str, config: dict) -> str:
    """One diffusers UNet parameter name -> its name inside `model.diffusion_model.`."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise SdtuneError("Single-file export supports UNets with the same number of layers in every block.")
    per_block = layers + 1  # LDM counts each block's downsampler (or upsampler) as one more layer
    for old, new in _UNET_FIXED.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    match = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
    if match:
        side, block, kind, index, rest = match.groups()
        block, index = int(block), int(index)
        if side == "down":
            if kind == "downsamplers":
                return f"input_blocks.{1 + block * per_block + layers}.0.op.{rest.removeprefix('conv.')}"
            slot = 1 + block * per_block + index
            return (f"input_blocks.{slot}.0.{_rename(rest, _RESNET)}" if kind == "resnets"
                    else f"input_blocks.{slot}.1.{rest}")
        if kind == "upsamplers":
            # The upsampler follows the attention when the block has one (output_blocks.N.2), else the resnet.
            has_attention = config["up_block_types"][block].startswith("CrossAttn")
            return f"output_blocks.{block * per_block + layers}.{2 if has_attention else 1}.{rest}"
        slot = block * per_block + index
        return (f"output_blocks.{slot}.0.{_rename(rest, _RESNET)}" if kind == "resnets"
                else f"output_blocks.{slot}.1.{rest}")
    match = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if match:
        kind, index, rest = match.groups()
        if kind == "resnets":
            return f"middle_block.{2 * int(index)}.{_rename(rest, _RESNET)}"
        return f"middle_block.1.{rest}"
    raise SdtuneError(f"Single-file export does not know the UNet layer {key!r} (unsupported architecture).")


def vae_key_to_ldm(key: str, config: dict) -> str:
    """One diffusers VAE parameter name -> its name inside `first_stage_model.`."""
    side, _, rest = key.partition(".")
    if side in ("quant_conv", "post_quant_conv"):
        return key
    for old, new in _VAE_FIXED.items():
        if rest.startswith(old + "."):
            return f"{side}.{new}{rest[len(old):]}"
    num_up = len(config["up_block_types"])
    match = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", rest)
    if match:
        direction, block, kind, index, tail = match.groups()
        # The decoder's blocks are numbered from the bottom in LDM and from the top in diffusers.
        level = int(block) if direction == "down" else num_up - 1 - int(block)
        if kind == "resnets":
            return f"{side}.{direction}.{level}.block.{index}.{tail.replace('conv_shortcut', 'nin_shortcut')}"
        return f"{side}.{direction}.{level}.{'downsample' if direction == 'down' else 'upsample'}.{tail}"
    match = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", rest)
    if match:
        kind, index, tail = match.groups()
        if kind == "resnets":
            return f"{side}.mid.block_{int(index) + 1}.{tail.replace('conv_shortcut', 'nin_shortcut')}"
        return f"{side}.mid.attn_1.{_rename(tail, _VAE_ATTN)}"
    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    raise SdtuneError(f"Single-file export does not know the VAE layer {key!r} (unsupported architecture).")


def open_clip_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model in OpenCLIP layout (SD2's encoder, SDXL's second encoder)."""
    out: dict[str, torch.Tensor] = {}
    fixed = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    layer_names = (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                   ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))
    for key, tensor in state.items():
        if key in fixed:
            out[prefix + fixed[key]] = tensor
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()  # a Linear in transformers, a matrix in OpenCLIP
        elif match := re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)", key):
            layer, rest = match.groups()
            base = f"{prefix}transformer.resblocks.{layer}."
            if rest.startswith("self_attn.q_proj."):
                # OpenCLIP keeps q, k and v in one in_proj matrix.
                kind = rest.rsplit(".", 1)[1]
                parts = [state[f"text_model.encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"{base}attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
            elif rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                continue
            else:
                out[base + _rename(rest, layer_names)] = tensor
    return out


def transformers_clip_state(encoder: Any) -> dict[str, torch.Tensor]:
    """Text encoder weights named as in transformers 4 (`text_model.` prefix), which the original layout keeps;
    transformers 5's CLIPTextModel drops that wrapper."""
    state = {}
    for key, tensor in encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        state[key] = tensor
    return state


def pipeline_to_ldm_state(pipe: Any) -> dict[str, torch.Tensor]:
    """The whole pipeline (UNet, VAE, text encoders) as one state dict in the original layout."""
    from sdtune_ui.families import detect_family

    family = detect_family(pipe)
    unet_config, vae_config = dict(pipe.unet.config), dict(pipe.vae.config)
    state: dict[str, torch.Tensor] = {}
    for key, tensor in pipe.unet.state_dict().items():
        state[UNET_PREFIX + unet_key_to_ldm(key, unet_config)] = tensor
    for key, tensor in pipe.vae.state_dict().items():
        ldm_key = VAE_PREFIX + vae_key_to_ldm(key, vae_config)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's VAE attention uses 1x1 convolutions
        state[ldm_key] = tensor
    state.update(family.ldm_text_encoder_state(pipe))  # each family's text encoders have their own layout
    return state


def save_single_file(pipe: Any, path: str | Path, *, half: bool = False) -> Path:
    """Write the pipeline as one `.safetensors` checkpoint (fp16 when `half`, as most shared checkpoints are)."""
    from safetensors.torch import save_file

    from sdtune_ui.families import detect_family

    path = Path(path)
    family = detect_family(pipe)
    if family.kohya_original_layout:   # SD3, Flux: the transformer alone (what ComfyUI's diffusion-model loader reads)
        state = family.original_transformer_state(pipe.transformer)
    else:
        state = pipeline_to_ldm_state(pipe)
    dtype = torch.float16 if half else torch.float32
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", "generated_by": "sdtune_ui"})
    return path
