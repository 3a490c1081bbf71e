"""Loading base models, the shipped pre-trained demo model and the random tiny ones. (Families: sdtune_ui.families.)"""

from sdtune_ui.families import Family, ModelParts, detect_family, model_parts
from sdtune_ui.models.demo import DEMO_MODELS
from sdtune_ui.models.loading import KNOWN_MODELS, load_pipeline, resolve_model
from sdtune_ui.models.tiny import TINY_CONTROLNETS, TINY_MODELS, build_tiny_pipeline, tiny_model_path

# Names that load without a download: the pre-trained demo model(s) first, then the random tiny ones.
OFFLINE_MODELS = (*DEMO_MODELS, *TINY_MODELS)

__all__ = [
    "DEMO_MODELS",
    "OFFLINE_MODELS",
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
