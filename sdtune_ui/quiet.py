"""Silence library messages a user cannot act on, in the app's and the CLI's terminal.

They are about the libraries' own calls, not the user's settings: diffusers' notice that a `.to(dtype)` cast
could keep some modules in float32 (printed with an empty list for every model we cast), "No LoRA keys
associated to CLIPTextModel" for every LoRA that trains only the UNet (as most do), and deprecation warnings
raised inside diffusers / transformers / peft.
"""

from __future__ import annotations

import logging
import warnings

_NOISE = ("that should be kept in float32", "No LoRA keys associated to")
_LOGGERS = ("diffusers.models.modeling_utils", "diffusers.loaders.lora_base", "diffusers.loaders.peft",
            "diffusers.loaders.lora_pipeline")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in _NOISE)


def install() -> None:
    """Idempotent: filters once per logger."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(diffusers|transformers|peft)(\.|$)")
