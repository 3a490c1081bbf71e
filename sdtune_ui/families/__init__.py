"""Model families (SD1.x, SD2.x, SDXL, SD3.5, Flux.1), one class each in a registry; see base.py."""

from sdtune_ui.families import flux, inpaint, sd1, sd2, sd3, sdxl  # noqa: F401 - importing registers the built-in families
from sdtune_ui.families.base import (
    Family,
    ModelParts,
    denoiser_of,
    detect_family,
    family_classes,
    family_for_checkpoint_keys,
    family_for_unet_config,
    family_named,
    family_names,
    family_of_model,
    model_parts,
    register,
)

__all__ = [
    "Family",
    "ModelParts",
    "denoiser_of",
    "detect_family",
    "family_classes",
    "family_for_checkpoint_keys",
    "family_for_unet_config",
    "family_named",
    "family_names",
    "family_of_model",
    "model_parts",
    "register",
]
