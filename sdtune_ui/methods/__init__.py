"""Training methods, one class each in a registry (see base.py). Import order is the order offered."""

from sdtune_ui.methods import adapters, full, lora, pivotal, textual_inversion  # noqa: F401 - importing registers them
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

# The editing methods come after the others in the app's list (import order is the order offered).
from sdtune_ui.methods import inpaint_convert, controlnet  # noqa: E402, F401, I001

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
