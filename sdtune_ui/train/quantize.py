"""The frozen transformer kept quantised for LoRA (TrainConfig.quantize_base): NF4 or int8 through bitsandbytes.

LoRA trains small adapters beside a frozen base, so the base only has to be read: held in 4 or 8 bits it takes a
quarter or half of its bf16 memory (Flux.1's 12B transformer: ~6 or ~11 GiB instead of 22). The weights are
quantised as they load (diffusers' PipelineQuantizationConfig); peft puts the adapters on the quantised layers.
Optional: needs bitsandbytes (pip install sdtune_ui[quantize]) and a CUDA GPU; refused with a way out otherwise.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import ConfigError
from sdtune_ui.methods import ADAPTER

BACKENDS = {"nf4": ("bitsandbytes_4bit", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}),
            "int8": ("bitsandbytes_8bit", {"load_in_8bit": True})}
# The weights plus bitsandbytes' scales and the layers it leaves in bf16 (norms, embeddings): NF4 measured on Flux.1
# (6.33 GiB allocated for 11.9B parameters on an H200, issue 15); int8 counted, not measured.
BYTES_PER_PARAMETER = {"nf4": 0.571, "int8": 1.02}


def check_quantization(config: TrainConfig, family: Any, *, cuda: bool | None = None) -> None:
    """Refuse, with what to do instead, a quantised base this run cannot have."""
    if config.quantize_base == "none":
        return
    if not config.has(ADAPTER):
        raise ConfigError({"quantize_base": "A quantised base is for LoRA-like methods, which leave the base frozen; "
                                            f"{config.method} changes it: set quantize_base to none."})
    if not family.denoiser_class_name:
        raise ConfigError({"quantize_base": f"Quantised base weights are offered for the transformer models (SD3.5, "
                                            f"Flux.1); {family.label} trains in half precision: set it to none."})
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError({"quantize_base": f"{config.quantize_base} needs bitsandbytes, which is not installed: pip "
                                            "install sdtune_ui[quantize] (or pip install bitsandbytes), or set "
                                            "quantize_base to none."})
    if not (torch.cuda.is_available() if cuda is None else cuda):
        raise ConfigError({"quantize_base": "bitsandbytes quantisation needs a CUDA GPU; on this machine set "
                                            "quantize_base to none."})


def quantization_config(config: TrainConfig, family: Any, compute_dtype: torch.dtype) -> Any:
    """diffusers' PipelineQuantizationConfig for the denoiser, or None for an unquantised base."""
    if config.quantize_base == "none":
        return None
    from diffusers.quantizers import PipelineQuantizationConfig

    backend, kwargs = BACKENDS[config.quantize_base]
    if config.quantize_base == "nf4":
        kwargs = {**kwargs, "bnb_4bit_compute_dtype": compute_dtype}
    return PipelineQuantizationConfig(quant_backend=backend, quant_kwargs=kwargs,
                                      components_to_quantize=[family.denoiser])
