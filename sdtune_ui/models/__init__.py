"""Loading base models, and the built-in tiny demo models. (Families: sdtune_ui.families.)"""

from sdtune_ui.families import Family, ModelParts, detect_family, model_parts
from sdtune_ui.models.loading import KNOWN_MODELS, load_pipeline, resolve_model
from sdtune_ui.models.tiny import TINY_CONTROLNETS, TINY_MODELS, build_tiny_pipeline, tiny_model_path

__all__ = [
    "KNOWN_MODELS",
    "TINY_CONTROLNETS",
    "TINY_MODELS",
    "Family",
    "ModelParts",
    "build_tiny_pipeline",
    "detect_family",
    "load_pipeline",
    "model_parts",
    "resolve_model",
    "tiny_model_path",
]
