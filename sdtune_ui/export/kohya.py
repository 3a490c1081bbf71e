"""Community formats: kohya-style LoRA (AUTOMATIC1111, ComfyUI, SD.Next, InvokeAI) and A1111 embeddings.

LoRA keys are written the way kohya's sd-scripts writes them, since that is what those tools are built
to read: `lora_unet_<module path with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`, text encoder
layers under `lora_te_` (SD1/SD2) or `lora_te1_` / `lora_te2_` (SDXL). sd-scripts names SD1/SD2 UNet
modules by their diffusers path and SDXL ones by the original (sgm) path (`input_blocks_4_1_...`), so we
do the same. diffusers' own `convert_state_dict_to_kohya` does the renaming; we add the alphas from the
training settings (it assumes alpha = rank) and the SDXL path mapping.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from sdtune_ui.errors import SdtuneError
from sdtune_ui.families import Family

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # where diffusers stores peft's LoraConfig in a file


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})


def lora_alphas(metadata: dict[str, str], fallback_alpha: float | None) -> dict[str, float | None]:
    """lora_alpha per model prefix ("unet", "text_encoder", ...) from diffusers' file metadata, else the fallback."""
    alphas: dict[str, float | None] = {}
    raw = metadata.get(LORA_ADAPTER_METADATA_KEY)
    if raw:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = {}
        for key, value in parsed.items():
            prefix, _, name = key.partition(".")
            if name == "lora_alpha":
                alphas[prefix] = float(value)
    return {"default": fallback_alpha, **alphas}


def _sgm_module_path(module: str, unet_config: dict) -> str:
    """diffusers UNet module path -> the original (sgm) path kohya uses for SDXL."""
    from sdtune_ui.export.single_file import unet_key_to_ldm

    return unet_key_to_ldm(module + ".weight", unet_config).removesuffix(".weight")


def _peft_key(key: str) -> str:
    """Normalise a diffusers LoRA key to peft naming with the original text-encoder paths.

    diffusers files mix spellings (`lora_A` for the UNet, `lora_linear_layer.down` for text encoders),
    and transformers 5 dropped the `text_model.` wrapper that kohya names (and older files) keep.
    """
    for old, new in ((".lora_linear_layer.down.", ".lora_A."), (".lora_linear_layer.up.", ".lora_B."),
                     (".lora.down.", ".lora_A."), (".lora.up.", ".lora_B.")):
        key = key.replace(old, new)
    match = re.match(r"(text_encoder(?:_2)?)\.(.+)", key)
    if match and not match.group(2).startswith(("text_model.", "text_projection.")):
        key = f"{match.group(1)}.text_model.{match.group(2)}"
    return key


def diffusers_lora_to_kohya(state: dict[str, torch.Tensor], *, family: type[Family], alphas: dict[str, float | None],
                            unet_config: dict | None = None) -> dict[str, torch.Tensor]:
    """A diffusers/peft LoRA state dict (`unet.<module>.lora_A.weight` ...) -> kohya keys with alphas."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    peft_state = {_peft_key(key): value for key, value in state.items()}
    if not any(".lora_A." in key for key in peft_state):
        raise SdtuneError("This file is not a diffusers/peft LoRA (no lora_A weights); nothing to convert.")
    if family.kohya_ldm_unet_names:
        if unet_config is None:
            raise SdtuneError(f"Converting a {family.label} LoRA needs the base model's UNet config.")
        renamed = {}
        for key, value in peft_state.items():
            if key.startswith("unet."):
                module, _, tail = key[len("unet."):].partition(".lora_")
                key = f"unet.{_sgm_module_path(module, unet_config)}.lora_{tail}"
            renamed[key] = value
        peft_state = renamed
    kohya = convert_state_dict_to_kohya(peft_state)
    out: dict[str, torch.Tensor] = {}
    for key, value in kohya.items():
        if family.text_encoder_count == 1:
            key = re.sub(r"^lora_te1_", "lora_te_", key)  # one text encoder: sd-scripts and A1111 say lora_te_
        if key.endswith(".alpha"):
            down = out.get(key.replace(".alpha", ".lora_down.weight"))
            model = "unet" if key.startswith("lora_unet_") else (
                "text_encoder_2" if key.startswith("lora_te2_") else "text_encoder")
            alpha = alphas.get(model) or alphas.get("default")
            rank = down.shape[0] if down is not None else float(value)
            value = torch.tensor(float(alpha if alpha else rank))
        out[key] = value.contiguous()
    return out


def kohya_metadata(*, family: type[Family], rank: int, alpha: float | None, base_model: str) -> dict[str, str]:
    """The few `ss_*` fields A1111 and ComfyUI show in their LoRA browsers."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha if alpha else rank),
        "ss_base_model_version": family.kohya_base_version,
        "ss_v2": str(family.kohya_is_v2),
        "ss_sd_model_name": base_model,
        "ss_training_comment": "trained with sdtune_ui",
    }


def lora_rank(state: dict[str, torch.Tensor]) -> int:
    ranks = [value.shape[0] for key, value in state.items() if "lora_A" in key or "lora_down" in key]
    return max(ranks) if ranks else 0


def save_kohya_lora(source: str | Path, target: str | Path, *, family: type[Family], fallback_alpha: float | None,
                    base_model: str = "", unet_config: dict | None = None) -> Path:
    """Convert a diffusers LoRA file into a kohya-format `.safetensors` file."""
    from safetensors.torch import save_file

    state, metadata = read_lora_file(source)
    alphas = lora_alphas(metadata, fallback_alpha)
    kohya = diffusers_lora_to_kohya(state, family=family, alphas=alphas, unet_config=unet_config)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = kohya_metadata(family=family, rank=lora_rank(state), alpha=alphas.get("unet") or alphas.get("default"),
                          base_model=base_model)
    save_file(kohya, str(target), metadata=meta)
    return target


def a1111_embedding_name(token: str) -> str:
    """A1111 names an embedding after its file, so the file name is the trigger word: keep it filename-safe."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "", token)
    return name or "embedding"


def save_a1111_embedding(source: str | Path, target_dir: str | Path, *, token: str | None = None) -> tuple[Path, str]:
    """learned_embeds.safetensors -> `<name>.safetensors` as A1111 loads it; returns (path, trigger word).

    SD1/SD2: {"emb_params": [n_vectors, dim]} (the kohya/A1111 safetensors layout; no pickle .pt).
    SDXL: {"clip_l": ..., "clip_g": ...}, which A1111 and ComfyUI read as one SDXL embedding.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = dict(handle.metadata() or {})
    token = token or metadata.get("token") or next(iter(state))
    name = a1111_embedding_name(token)
    if {"clip_l", "clip_g"} <= set(state):
        out = {"clip_l": state["clip_l"], "clip_g": state["clip_g"]}
    elif len(state) == 1:
        tensor = next(iter(state.values()))
        out = {"emb_params": tensor if tensor.ndim == 2 else tensor.unsqueeze(0)}
    else:
        raise SdtuneError(f"{Path(source).name} holds {len(state)} tensors; expected one token's embedding.")
    target = Path(target_dir) / f"{name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(target), metadata={"name": name, "token": token})
    return target, name
