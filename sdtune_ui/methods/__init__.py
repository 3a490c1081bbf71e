"""Training methods, one class each in a registry (see base.py). Import order is the order offered."""

from sdtune_ui.methods import adapters, controlnet, full, inpaint_convert, lora, pivotal, textual_inversion  # noqa: F401 - importing registers them  # noqa: F401, I001 - offered after the others
from sdtune_ui.methods.base import (
    ADAPTER,
    CONTROL,
    FULL_WEIGHTS,
    INSTANCE_PROMPT,
    TOKENS,
    TRAIT_TEXT,
    UNET_WEIGHTS,
    Method,
    StepAdvice,
    make_method,
    method_classes,
    method_named,
    method_names,
    methods_with,
    register,
)

DEFAULT_METHOD = lora.LoRA.name

__all__ = [
    "ADAPTER",
    "CONTROL",
    "DEFAULT_METHOD",
    "FULL_WEIGHTS",
    "INSTANCE_PROMPT",
    "TOKENS",
    "TRAIT_TEXT",
    "UNET_WEIGHTS",
    "Method",
    "StepAdvice",
    "make_method",
    "method_classes",
    "method_named",
    "method_names",
    "methods_with",
    "register",
]
