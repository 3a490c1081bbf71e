"""Feature extractors behind one small interface: images (and, for CLIP, texts) -> one vector each.

CLIP (`CLIPModel` + its processor) gives image features for CLIP-I and text features for CLIP-T; DINOv2
(`Dinov2Model`, its CLS token) gives the image features of the DINO metric. Any Hub id or local folder of
those architectures works; `tiny-clip` / `tiny-dino` are built offline and `demo-dino` ships trained for the
demo model's pictures (evaluate/tiny.py).

Models are loaded once per process and kept (`FeatureModels`); `release_feature_models()` frees them, e.g.
before a training run needs the GPU.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.errors import ModelLoadError, SdtuneError
from sdtune_ui.evaluate.tiny import OFFLINE_FEATURE_MODELS, offline_feature_model_path

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_DINO = "facebook/dinov2-small"
KINDS = ("clip", "dino")


class FeatureExtractor:
    """One loaded feature model. Features come back on the CPU as float32, one row per input."""

    kind = ""

    def __init__(self, model_id: str, model: Any, processor: Any, device: str):
        self.model_id = model_id
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = device

    @property
    def image_processor(self) -> Any:
        return getattr(self.processor, "image_processor", self.processor)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model sees after its processor's resize and crop."""
        crop = getattr(self.image_processor, "crop_size", None) or {}
        size = crop.get("height") or (getattr(self.image_processor, "size", None) or {}).get("shortest_edge") or 224
        return int(size), int(crop.get("width") or size)

    @torch.no_grad()
    def image_features(self, images: Sequence[Any], batch_size: int = 32) -> torch.Tensor:
        """(N, D) features of PIL images."""
        if not images:
            raise SdtuneError("No images to compare.")
        rows = []
        for start in range(0, len(images), batch_size):
            batch = [image.convert("RGB") for image in images[start:start + batch_size]]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            rows.append(self._embed_pixels(pixels.to(self.device, self.model.dtype)).float().cpu())
        return torch.cat(rows)

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        raise SdtuneError(f"{self.model_id} is an image model; text similarity (CLIP-T) needs a CLIP model.")

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.model_id}"


class ClipFeatures(FeatureExtractor):
    """CLIP's projected image and text embeddings (the space CLIP-I and CLIP-T compare in)."""

    kind = "clip"

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixels).pooler_output

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        tokens = {name: value.to(self.device) for name, value in tokens.items()}
        return self.model.get_text_features(**tokens).pooler_output.float().cpu()


class DinoFeatures(FeatureExtractor):
    """DINOv2's CLS token after the final layer norm (the DreamBooth paper's DINO metric uses the CLS token)."""

    kind = "dino"

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).pooler_output


def resolve_feature_model(model_id: str) -> str:
    """A built-in name (tiny-clip, tiny-dino, demo-dino) -> its folder; anything else (Hub id, folder) unchanged."""
    return str(offline_feature_model_path(model_id)) if model_id in OFFLINE_FEATURE_MODELS else model_id


def load_extractor(kind: str, model_id: str, device: str | None = None) -> FeatureExtractor:
    """Load a CLIP or DINOv2 model and its processor with transformers' own classes."""
    from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor

    if kind not in KINDS:
        raise SdtuneError(f"Unknown feature model kind {kind!r}; use one of {', '.join(KINDS)}.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    source = resolve_feature_model(model_id)
    try:
        if kind == "clip":
            model, processor = CLIPModel.from_pretrained(source), CLIPProcessor.from_pretrained(source)
            return ClipFeatures(model_id, model, processor, device)
        model, processor = AutoModel.from_pretrained(source), AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as err:
        offline = "" if Path(source).exists() else (
            " Without network access use a local folder, or the offline tiny-clip / tiny-dino / demo-dino.")
        raise ModelLoadError(f"Could not load the {kind.upper()} model {model_id!r}: {err}.{offline}") from err
    if not hasattr(model.config, "model_type") or "dinov2" not in model.config.model_type:
        raise ModelLoadError(f"{model_id} is a {model.config.model_type} model, not DINOv2 (e.g. {DEFAULT_DINO}).")
    return DinoFeatures(model_id, model, processor, device)


class FeatureModels:
    """The feature models of this process, loaded on first use and kept until `release()`."""

    def __init__(self, device: str | None = None):
        self.device = device
        self._loaded: dict[tuple[str, str], FeatureExtractor] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, model_id: str) -> FeatureExtractor:
        with self._lock:
            key = (kind, model_id)
            if key not in self._loaded:
                self._loaded[key] = load_extractor(kind, model_id, self.device)
            return self._loaded[key]

    def release(self) -> None:
        with self._lock:
            self._loaded.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


_default_models = FeatureModels()


def feature_models() -> FeatureModels:
    """The process-wide feature models (shared by the CLI, the app and sweeps)."""
    return _default_models


def release_feature_models() -> None:
    """Free the feature models' memory (call before a training job needs the GPU)."""
    _default_models.release()
