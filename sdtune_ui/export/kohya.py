"""Community formats: kohya/LyCORIS adapter files (AUTOMATIC1111, ComfyUI, SD.Next, InvokeAI) and A1111 embeddings.

Module names are written the way kohya's sd-scripts writes them, since that is what those tools are built to
read: `lora_unet_<module path with _>`, text encoder layers under `lora_te_` (SD1/SD2) or `lora_te1_` / `lora_te2_`
(SDXL), with the `text_model_` level that transformers 4 had. sd-scripts names SD1/SD2 UNet modules by their
diffusers path and SDXL ones by the original (sgm) path (`input_blocks_4_1_...`); the family says which. The
tensors under each name come from the file's adapter type (methods/adapters): `lora_down.weight` /
`lora_up.weight` / `alpha` for LoRA, plus `dora_scale` for DoRA, LyCORIS' `lokr_*` / `hada_*` and `alpha` for
LoKr / LoHa, with the scale the adapter trained with (alphas from the file's metadata or the run's settings).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.errors import SdtuneError
from sdtune_ui.families import Family
from sdtune_ui.methods import adapters
from sdtune_ui.methods.adapters.lora import peft_spelling

LORA_ADAPTER_METADATA_KEY = adapters.METADATA_KEY  # where diffusers stores peft's config in a file


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})


def _sgm_module_path(module: str, unet_config: dict) -> str:
    """diffusers UNet module path -> the original (sgm) path kohya uses for SDXL."""
    from sdtune_ui.export.single_file import unet_key_to_ldm

    return unet_key_to_ldm(module + ".weight", unet_config).removesuffix(".weight")


def kohya_module_name(component: str, module: str, *, family: type[Family] | Family,
                      unet_config: dict | None = None) -> str:
    """A diffusers module path of one component -> the module name kohya-format files use for it."""
    if component == "unet":
        if family.kohya_ldm_unet_names:
            if unet_config is None:
                raise SdtuneError(f"Converting a {family.label} LoRA needs the base model's UNet config.")
            module = _sgm_module_path(module, unet_config)
        prefix = "lora_unet"
    else:
        # One text encoder: sd-scripts and A1111 say lora_te_; SDXL's two are lora_te1_ and lora_te2_.
        prefix = "lora_te2" if component == "text_encoder_2" else (
            "lora_te" if family.text_encoder_count == 1 else "lora_te1")
        if not module.startswith(("text_model.", "text_projection.")):
            module = f"text_model.{module}"
    return f"{prefix}_{module.replace('.', '_')}"


def adapter_to_kohya(state: dict[str, torch.Tensor], configs: dict[str, dict[str, Any]],
                     adapter: type[adapters.Adapter], *, family: type[Family] | Family,
                     fallback_alpha: float | None = None, unet_config: dict | None = None) -> dict[str, torch.Tensor]:
    """A diffusers-format adapter file's tensors (`unet.<module>.<suffix>` ...) -> kohya/LyCORIS keys."""
    peft_state = {peft_spelling(key): value for key, value in state.items()}
    try:
        modules = adapters.group_modules(peft_state, adapter.tensor_suffixes)
    except ValueError as err:
        raise SdtuneError(f"This file is not a diffusers/peft {adapter.label} file ({err}); nothing to "
                          "convert.") from err
    if family.kohya_original_layout:   # SD3, Flux: the original transformer layout, fused projections
        from sdtune_ui.export.kohya_flow import flow_lora_to_kohya

        if unet_config is None:
            raise SdtuneError(f"Converting a {family.label} LoRA needs the base model's transformer config.")
        return flow_lora_to_kohya(modules, configs, adapter, family=family, denoiser_config=unet_config,
                                  fallback_alpha=fallback_alpha,
                                  te_name=lambda component, module: kohya_module_name(component, module,
                                                                                      family=family))
    out: dict[str, torch.Tensor] = {}
    for (component, module), tensors in modules.items():
        config = dict(configs.get(component, {}))
        if fallback_alpha and not config.get(adapter.alpha_field):
            config[adapter.alpha_field] = fallback_alpha   # files without metadata: the run's settings
        name = kohya_module_name(component, module, family=family, unet_config=unet_config)
        try:
            converted = adapter.kohya_tensors(tensors, config)
        except ValueError as err:
            raise SdtuneError(f"{name}: {err}") from err
        for suffix, value in converted.items():
            out[f"{name}.{suffix}"] = value.contiguous()
    return out


def kohya_metadata(*, family: type[Family] | Family, rank: int, alpha: float | None,
                   base_model: str) -> dict[str, str]:
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


def save_kohya_lora(source: str | Path, target: str | Path, *, family: type[Family] | Family,
                    fallback_alpha: float | None, base_model: str = "", unet_config: dict | None = None) -> Path:
    """Convert a diffusers-format adapter file (LoRA or a variant) into a kohya/LyCORIS `.safetensors` file."""
    from safetensors.torch import save_file

    state, metadata = read_lora_file(source)
    configs = adapters.component_configs(metadata)
    adapter = adapters.adapter_for_keys(set(state), configs)
    if adapter is None:
        raise SdtuneError(f"{Path(source).name} holds no LoRA or other adapter weights; nothing to convert.")
    kohya = adapter_to_kohya(state, configs, adapter, family=family, fallback_alpha=fallback_alpha,
                             unet_config=unet_config)
    unet_config_values = configs.get(family.denoiser, {})
    alpha = unet_config_values.get(adapter.alpha_field) or fallback_alpha
    meta = kohya_metadata(family=family, rank=int(unet_config_values.get("r") or lora_rank(state)),
                          alpha=float(alpha) if alpha else None, base_model=base_model)
    meta.update(adapter.kohya_network(unet_config_values))
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
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
