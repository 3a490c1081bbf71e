"""Image captioners behind one interface, through transformers' native classes (never trust_remote_code).

    captioner = get_captioner("blip-base")          # a registry name, a Hub id or a local folder
    captioner.caption([img1, img2])                  # -> ["a dog on a beach", "a red car"]

Models are loaded once per (source, device, dtype, task) and kept for the next call; `unload_captioners()`
frees their memory (do it before training on the same GPU).
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sdtune_ui.caption.tiny import TINY_BLIP, ensure_tiny_blip
from sdtune_ui.data.ingest import CancelLike, is_cancelled
from sdtune_ui.errors import Cancelled, ModelLoadError

FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")


@dataclass(frozen=True)
class CaptionerSpec:
    name: str
    source: str | None  # Hub id; None = built locally (tiny-blip)
    family: str  # "blip" | "blip2" | "florence2" | "git"
    description: str
    task: str | None = None  # Florence-2 task token


CAPTIONERS: dict[str, CaptionerSpec] = {
    spec.name: spec
    for spec in (
        CaptionerSpec("blip-base", "Salesforce/blip-image-captioning-base", "blip", "BLIP base: short captions, ~1 GB"),
        CaptionerSpec("blip-large", "Salesforce/blip-image-captioning-large", "blip",
                      "BLIP large: better short captions, ~2 GB"),
        CaptionerSpec("blip2", "Salesforce/blip2-opt-2.7b", "blip2", "BLIP-2 (OPT 2.7B): fluent captions, ~8 GB GPU"),
        CaptionerSpec("florence2-base", "florence-community/Florence-2-base", "florence2",
                      "Florence-2 base: caption / detailed caption tasks, ~0.5 GB", "<CAPTION>"),
        CaptionerSpec("florence2-large", "florence-community/Florence-2-large", "florence2",
                      "Florence-2 large: caption / detailed caption tasks, ~1.5 GB", "<DETAILED_CAPTION>"),
        CaptionerSpec("git-base", "microsoft/git-base-coco", "git", "GIT base (COCO): short captions, ~0.7 GB"),
        CaptionerSpec(TINY_BLIP, None, "blip", "Offline demo: a tiny random BLIP (random words, instant)"),
    )
}
_FAMILY_BY_MODEL_TYPE = {"blip": "blip", "blip-2": "blip2", "blip_2": "blip2", "florence2": "florence2", "git": "git"}
# BLIP's well-known hallucinated filler words ("arafed", "araffe" ...) that never help a caption.
_BLIP_FILLER = re.compile(r"\bara+f+\w*\b\s*", re.IGNORECASE)


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class Captioner(ABC):
    """Turns images into captions; batches on the accelerator; `caption` reports progress and can be cancelled."""

    name: str = ""
    device: str = "cpu"
    default_batch_size: int = 4

    def caption(
        self,
        images: Sequence[Image.Image],
        *,
        max_length: int | None = None,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        cancel: CancelLike = None,
    ) -> list[str]:
        """One caption per image (same order). `max_length` caps new tokens. Raises Cancelled when cancelled."""
        size = max(1, batch_size or self.default_batch_size)
        results: list[str] = []
        for start in range(0, len(images), size):
            if is_cancelled(cancel):
                raise Cancelled("captioning cancelled")
            batch = [image.convert("RGB") if image.mode != "RGB" else image for image in images[start:start + size]]
            results.extend(_clean(text) for text in self._caption_batch(batch, max_length))
            if progress:
                for done in range(start + 1, len(results) + 1):
                    progress(done, len(images))
        return results

    @abstractmethod
    def _caption_batch(self, images: list[Image.Image], max_length: int | None) -> list[str]:
        """Captions for one batch of RGB images."""


def _clean(text: str) -> str:
    text = _BLIP_FILLER.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


class HFCaptioner(Captioner):
    """A transformers model of a supported family, loaded with `from_pretrained` (Hub id or local folder)."""

    def __init__(self, name: str, source: str, family: str, *, device: str, dtype: Any = None,
                 task: str | None = None):
        import torch
        import transformers

        self.name, self.source, self.family, self.device, self.task = name, source, family, device, task
        if dtype is None:
            # Half precision on GPUs (these models are trained for it); full on CPU, where fp16 is slow/unsupported.
            dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.dtype = dtype
        model_class = {
            "blip": transformers.BlipForConditionalGeneration,
            "blip2": transformers.Blip2ForConditionalGeneration,
            "florence2": getattr(transformers, "Florence2ForConditionalGeneration", None),
            "git": transformers.GitForCausalLM,
        }[family]
        if model_class is None:
            raise ModelLoadError(f"This transformers version ({transformers.__version__}) has no native Florence-2; "
                                 "upgrade transformers or choose another captioner.")
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(source)
            self.model = model_class.from_pretrained(source, dtype=dtype).to(device).eval()
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(
                f"Could not load the captioner {name!r} from {source}: {err}. The first use downloads it "
                "(needs internet once); or give a local folder saved with save_pretrained."
            ) from None
        self.default_batch_size = 8 if device.startswith("cuda") else 2
        if self.model.num_parameters() < 10_000_000:  # demo-sized models: batch everything
            self.default_batch_size = 16
        gen = self.model.generation_config
        # Settings a checkpoint ships for decoding (tiny-blip forces a few words, never special tokens); BLIP's
        # generate forwards to its text decoder, which would not see them otherwise.
        self._gen_defaults = {k: getattr(gen, k) for k in ("min_new_tokens", "suppress_tokens")
                              if getattr(gen, k, None)}

    def _inputs(self, **kwargs: Any) -> Any:
        inputs = self.processor(return_tensors="pt", **kwargs).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def _caption_batch(self, images: list[Image.Image], max_length: int | None) -> list[str]:
        import torch

        gen = {"max_new_tokens": max_length or (128 if self.family == "florence2" else 40), **self._gen_defaults}
        with torch.inference_mode():
            if self.family == "florence2":
                task = self.task or "<CAPTION>"
                inputs = self._inputs(text=[task] * len(images), images=images)
                ids = self.model.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                                          num_beams=3, do_sample=False, **gen)
                # Caption tasks are plain text: decoding without special tokens is all the task's
                # post-processing does (post_process_generation matters for boxes/polygons only).
                return self.processor.batch_decode(ids, skip_special_tokens=True)
            if self.family == "git":
                inputs = self._inputs(images=images)
                ids = self.model.generate(pixel_values=inputs["pixel_values"], **gen)
            else:
                ids = self.model.generate(**self._inputs(images=images), **gen)
        return self.processor.batch_decode(ids, skip_special_tokens=True)


_LOADED: dict[tuple, Captioner] = {}
_LOCK = threading.Lock()


def resolve(name_or_source: str) -> tuple[str, str, str, str | None]:
    """(name, source to load, family, default task) for a registry name, a local folder or a Hub id."""
    spec = CAPTIONERS.get(name_or_source)
    if spec is not None:
        source = str(ensure_tiny_blip()) if spec.source is None else spec.source
        return spec.name, source, spec.family, spec.task
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_source)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"Unknown captioner {name_or_source!r}: not one of {', '.join(CAPTIONERS)}, and not a loadable "
            f"model ({err})."
        ) from None
    family = _FAMILY_BY_MODEL_TYPE.get(config.model_type)
    if family is None:
        raise ModelLoadError(f"{name_or_source} is a {config.model_type!r} model; supported captioner families are "
                             "BLIP, BLIP-2, Florence-2 and GIT.")
    return Path(name_or_source).name or name_or_source, name_or_source, family, (
        "<CAPTION>" if family == "florence2" else None)


def get_captioner(name: str = TINY_BLIP, *, device: str | None = None, dtype: Any = None,
                  task: str | None = None) -> Captioner:
    """A loaded captioner (cached). `task` picks the Florence-2 task, e.g. "<DETAILED_CAPTION>"."""
    display, source, family, default_task = resolve(name)
    if task is not None and family != "florence2":
        raise ModelLoadError(f"The task option is for Florence-2 captioners; {display} is {family}.")
    if task is not None and task not in FLORENCE_TASKS:
        raise ModelLoadError(f"Unknown Florence-2 task {task!r}; choose one of {', '.join(FLORENCE_TASKS)}.")
    device = device or default_device()
    key = (source, family, device, str(dtype), task or default_task)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = HFCaptioner(display, source, family, device=device, dtype=dtype, task=task or default_task)
        return _LOADED[key]


def unload_captioners() -> None:
    """Forget loaded captioners and release their (GPU) memory."""
    with _LOCK:
        _LOADED.clear()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
