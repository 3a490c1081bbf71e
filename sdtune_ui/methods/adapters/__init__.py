"""Adapter types for LoRA-like methods (LoRA, DoRA, LoKr, LoHa), one class each in a registry; see base.py.
Registration order is the order offered; plain LoRA is the default."""

from typing import Any

from sdtune_ui.methods.adapters import dora, loha, lokr, lora  # noqa: F401 - importing registers them
from sdtune_ui.methods.adapters.base import (
    COMPONENTS,
    METADATA_KEY,
    TEXT_ENCODER_TARGETS,
    UNET_TARGETS,
    Adapter,
    adapter_classes,
    adapter_file_names,
    adapter_for_file,
    adapter_for_keys,
    adapter_named,
    adapter_names,
    component_configs,
    group_modules,
    read_adapter_file,
    register,
    setting_owners,
)

DEFAULT_ADAPTER = lora.LoRA.name


def adapter_of_run(config: dict[str, Any]) -> type[Adapter]:
    """The adapter type a run's settings (config.json as a dict) name; runs from before adapter types trained LoRA."""
    return adapter_named(config.get("adapter") or DEFAULT_ADAPTER)

__all__ = [
    "COMPONENTS",
    "DEFAULT_ADAPTER",
    "METADATA_KEY",
    "TEXT_ENCODER_TARGETS",
    "UNET_TARGETS",
    "Adapter",
    "adapter_classes",
    "adapter_file_names",
    "adapter_for_file",
    "adapter_for_keys",
    "adapter_named",
    "adapter_names",
    "adapter_of_run",
    "component_configs",
    "group_modules",
    "read_adapter_file",
    "register",
    "setting_owners",
]
