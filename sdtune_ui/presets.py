"""Presets as data: recommended settings per method (each method's class holds its own), per adapter type, and
per GPU memory (generic, or the base model's family's own), merged in one place for TrainConfig presets, the CLI's
--preset and the app's preset buttons."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from typing import Any

from sdtune_ui import methods
from sdtune_ui.config import TrainConfig, installed_optimizer
from sdtune_ui.methods import ADAPTER, adapters

# Memory-aware settings by GPU memory (GiB). Picked from measured peaks; see benchmarks/README.md. Precision "auto":
# bf16 where the card has it (Ampere and newer; the step can then be captured), fp16 on older cards such as the T4.
VRAM_PRESETS: dict[str, dict[str, Any]] = {
    "8 GB": dict(mixed_precision="auto", gradient_checkpointing=True, train_batch_size=1, optimizer="adamw8bit"),
    "12 GB": dict(mixed_precision="auto", gradient_checkpointing=True, train_batch_size=1),
    "16 GB": dict(mixed_precision="auto", gradient_checkpointing=False, train_batch_size=2),
    "24 GB+": dict(mixed_precision="auto", gradient_checkpointing=False, train_batch_size=4),
    "CPU": dict(mixed_precision="no", gradient_checkpointing=False, train_batch_size=1),
}


def family_memory_preset(model: str | None, vram: str, method: str | None) -> dict[str, Any]:
    """The base model's family's memory preset for this GPU size ({} when it has none). A quantised base is for
    adapter methods only, and only when bitsandbytes is installed (else the preset says so and goes without)."""
    if not model:
        return {}
    from sdtune_ui.families import family_of_model

    values = dict(family_of_model(model).memory_presets.get(vram, {}))
    adapter_method = method is None or methods.method_named(method).has(ADAPTER)
    if values.get("quantize_base", "none") != "none":
        if not adapter_method:
            values.pop("quantize_base")
        elif importlib.util.find_spec("bitsandbytes") is None:
            logging.getLogger(__name__).warning(
                "Preset: a %s base needs bitsandbytes, which is not installed: the base stays in half precision and "
                "may not fit this GPU (pip install sdtune_ui[quantize]).", values["quantize_base"])
            values["quantize_base"] = "none"
    return values


def method_presets() -> dict[str, dict[str, Any]]:
    """Recommended starting points per method (each method's class holds its own)."""
    return {cls.name: dict(cls.preset) for cls in methods.method_classes()}


def preset_values(method: str | None = None, vram: str | None = None, adapter: str | None = None,
                  model: str | None = None) -> dict[str, Any]:
    """The settings presets change: the method's recommended values, its adapter type's adjustments (for methods
    that train adapters), then the memory preset's (in that order): the base model's family's own for that GPU size
    where it has one (SD3.5, Flux.1), else the generic one.

    The one place presets are merged: TrainConfig presets, the CLI's --preset and the app's preset buttons.
    """
    values: dict[str, Any] = dict(methods.method_named(method).preset) if method else {}
    if method and adapter and methods.method_named(method).has(ADAPTER):
        values.update(adapters.adapter_named(adapter).preset)
    if vram:
        values.update(VRAM_PRESETS[vram])
        values.update(family_memory_preset(model, vram, method))
    if "optimizer" in values:
        values["optimizer"], why = installed_optimizer(values["optimizer"])
        if why:
            logging.getLogger(__name__).warning("Preset: %s", why)
    return values


def preset_switch_values(previous: str | None, method: str, vram: str | None = None,
                         adapter: str | None = None, model: str | None = None) -> dict[str, Any]:
    """The values a method switch with presets applies: the new method's preset, and the defaults back for what
    only the previous method's preset set (full's EMA must not follow the user into LoRA)."""
    defaults = dataclasses.asdict(TrainConfig())
    left_over = methods.method_named(previous).preset if previous in methods.method_names() else {}
    return {**{name: defaults[name] for name in left_over if name in defaults},
            **preset_values(method, vram, adapter, model)}


def preset(method: str, vram: str | None = None, **overrides: Any) -> TrainConfig:
    """A config with the method's (and its adapter type's) recommended defaults, optionally a memory preset, then
    overrides."""
    values = preset_values(method, vram, overrides.get("adapter"))
    return TrainConfig.from_dict({"method": method, **values, **overrides})
