"""Inference: one cached pipeline, trained artifacts applied on top, deterministic per seed.

`GenerationEngine` keeps one base pipeline in (GPU) memory; switching models frees the old one first.
LoRAs are peft adapters with a scale each (several at once, fusable for speed); embeddings are added
tokens; a fully fine-tuned pipeline folder replaces the base model. Changing the set of artifacts
touches only what changed, so flipping a LoRA scale or comparing with the base is cheap.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.errors import ModelLoadError, SdtuneError
from sdtune_ui.families import detect_family
from sdtune_ui.generate import editing
from sdtune_ui.generate.artifacts import Artifact, read_state_dict
from sdtune_ui.generate.options import GenerationOptions
from sdtune_ui.methods import adapters
from sdtune_ui.methods.adapters.lora import normalise_keys as _normalise_lora  # noqa: F401 - tests use it
from sdtune_ui.methods.outputs import CONTROLNET, EMBEDDING, LORA, LORA_FILE, PIPELINE
from sdtune_ui.models.cpu_threads import offline_model_threads


@dataclass
class GenerationResult:
    images: list[Any]               # PIL images
    seeds: list[int]                # image i was made with seeds[i]; re-running with it alone reproduces it
    options: GenerationOptions
    model: str
    artifacts: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)   # embedding trigger words usable in the prompt
    seconds: float = 0.0

    def captions(self) -> list[str]:
        return [f"seed {seed}" for seed in self.seeds]

    def save(self, out_dir: str | Path, prefix: str = "") -> list[Path]:
        """PNG files with the settings in a text chunk, so an image remembers how it was made."""
        from PIL.PngImagePlugin import PngInfo

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for image, seed in zip(self.images, self.seeds, strict=True):
            info = PngInfo()
            info.add_text("parameters", json_settings(self, seed))
            path = out / f"{prefix}seed-{seed}.png"
            image.save(path, pnginfo=info)
            written.append(path)
        return written


def json_settings(result: GenerationResult, seed: int) -> str:
    import json

    settings = {**asdict(result.options), "seed": seed, "num_images": 1, "model": result.model,
                "artifacts": result.artifacts}
    return json.dumps(settings)


def make_scheduler(name: str, base_config: Any) -> Any:
    """A fresh scheduler built from the model's own config (keeps its prediction type and betas)."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    classes = {"dpm++": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler,
               "euler_a": EulerAncestralDiscreteScheduler, "ddim": DDIMScheduler, "unipc": UniPCMultistepScheduler}
    if name == "default":
        return None
    extra = {"algorithm_type": "dpmsolver++"} if name == "dpm++" else {}
    return classes[name].from_config(base_config, **extra)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _adapter_name(artifact: Artifact) -> str:
    path = Path(artifact.path)
    stamp = path.stat().st_mtime_ns if path.exists() else 0
    return "a" + hashlib.sha1(f"{path.resolve() if path.exists() else artifact.path}|{stamp}".encode()).hexdigest()[:12]


def _adapter_file(path: Path) -> Path:
    """The adapter file itself, or the one a folder holds (a run's output/, an exported folder)."""
    if not path.is_dir():
        return path
    found = [path / name for name in adapters.adapter_file_names() if (path / name).exists()]
    return found[0] if found else path / LORA_FILE


class GenerationEngine:
    """One pipeline at a time, with artifacts applied; thread-safe (one generation at a time)."""

    def __init__(self, device: str | None = None, dtype: torch.dtype | None = None):
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.pipe: Any = None
        self.model_key: tuple | None = None
        self._lock = threading.RLock()
        self._scheduler_config: Any = None
        self._original_scheduler: Any = None
        self._adapters: dict[str, Artifact] = {}        # adapter name -> artifact
        self._embeddings: dict[str, list[str]] = {}     # artifact path -> its trigger tokens
        self._pristine_text: list[tuple[Any, int]] = []  # (tokenizer copy, vocab rows) before any embedding
        self._fused: tuple | None = None
        self._disabled = False                          # every loaded adapter is at scale 0 (switched off)
        self._expansions: dict[str, str] = {}          # multi-vector tokens the pipeline does not expand itself
        self._controlnet: tuple[str, Any] | None = None  # (path, ControlNetModel) last used

    # ------------------------------------------------------------------------------------ models
    def load_model(self, model: str, *, allow_pickle: bool = False) -> Any:
        """Load (or reuse) the base pipeline; a different model frees the previous one first."""
        from sdtune_ui.models import load_pipeline

        key = (model, allow_pickle, self.device, self.dtype)
        if self.pipe is not None and self.model_key == key:
            return self.pipe
        self.unload()
        pipe = load_pipeline(model, dtype=self.dtype, allow_pickle=allow_pickle)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        self.model_key = key
        self._family = detect_family(pipe)
        self._scheduler_config = copy.deepcopy(pipe.scheduler.config)
        self._original_scheduler = pipe.scheduler
        return self.pipe

    def unload(self) -> None:
        """Free the pipeline (and GPU memory) so another model, or training, can use it."""
        self.pipe = None
        self.model_key = None
        self._adapters.clear()
        self._embeddings.clear()
        self._pristine_text = []
        self._expansions = {}
        self._fused = None
        self._disabled = False
        self._controlnet = None
        from diffusers.training_utils import free_memory

        free_memory()

    @property
    def family(self) -> str:
        return self._family.name if self.pipe is not None else ""

    # ------------------------------------------------------------------------------------ artifacts
    def prepare(self, model: str, artifacts: Sequence[Artifact] = (), *, allow_pickle: bool = False,
                fuse: bool = False) -> Any:
        """The pipeline for `model` with exactly `artifacts` applied (a pipeline artifact replaces the model)."""
        with self._lock:
            folders = [a for a in artifacts if a.kind == PIPELINE]
            if len(folders) > 1:
                raise SdtuneError("Pick at most one fine-tuned model; LoRAs and embeddings can be combined freely.")
            pipe = self.load_model(folders[0].path if folders else model, allow_pickle=allow_pickle)
            self._unfuse()
            self._apply_embeddings([a for a in artifacts if a.kind == EMBEDDING], allow_pickle)
            self._apply_loras([a for a in artifacts if a.kind == LORA], allow_pickle)
            active = [name for name, a in self._adapters.items() if a.scale * a.alpha_factor != 0]
            if fuse and active:
                names = active
                pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
                self._fused = tuple(names)
            return pipe

    def _unfuse(self) -> None:
        if self._fused is not None:
            self.pipe.unfuse_lora()
            self._fused = None

    def _apply_loras(self, loras: list[Artifact], allow_pickle: bool) -> None:
        pipe = self.pipe
        wanted = {_adapter_name(a): a for a in loras}
        stale = [name for name in self._adapters if name not in wanted]
        if stale:
            pipe.delete_adapters(stale)
            for name in stale:
                del self._adapters[name]
        for name, artifact in wanted.items():
            if name not in self._adapters:
                self._load_lora(artifact, name, allow_pickle)
            self._adapters[name] = artifact
        # Scale 0 switches an adapter off rather than scaling it to nothing: a DoRA at scale 0 would still apply its
        # learned magnitudes.
        active = {name: a.scale * a.alpha_factor for name, a in wanted.items() if a.scale * a.alpha_factor != 0}
        if active:
            if self._disabled:
                pipe.enable_lora()
                self._disabled = False
            pipe.set_adapters(list(active), adapter_weights=list(active.values()))
        elif self._adapters and not self._disabled:
            pipe.disable_lora()
            self._disabled = True

    def _load_lora(self, artifact: Artifact, name: str, allow_pickle: bool) -> None:
        path = Path(artifact.path)
        try:
            if path.exists():
                # The file's adapter type (LoRA or a variant, from its keys and metadata) knows how to apply it.
                file = _adapter_file(path)
                adapter = adapters.adapter_for_file(file, allow_pickle=allow_pickle)
                adapter.apply(self.pipe, file, name, allow_pickle=allow_pickle)
            else:  # a Hub repo id: diffusers downloads and reads it
                adapters.adapter_named(adapters.DEFAULT_ADAPTER).apply_from_hub(self.pipe, artifact.path, name)
        except (ValueError, KeyError, RuntimeError, OSError) as err:
            raise ModelLoadError(
                f"Could not apply the LoRA {artifact.label}: {err}. Check that it was trained for this base "
                f"model's family ({self.family}).") from err

    def _apply_embeddings(self, embeddings: list[Artifact], allow_pickle: bool) -> None:
        wanted = [a.path for a in embeddings]
        if list(self._embeddings) == wanted:
            return
        # Added tokens cannot be removed reliably one by one, so go back to the untouched vocabulary
        # (tokenizer copy + embedding rows cut back) and add the wanted set again; embeddings are small.
        self._reset_embeddings()
        for artifact in embeddings:
            self._embeddings[artifact.path] = self._load_embedding(artifact, allow_pickle)

    def _text_pairs(self) -> list[tuple[str, str]]:
        """(tokenizer, text encoder) of the encoders that take new tokens (CLIP; not T5)."""
        return [(tok, enc) for tok, enc in self._family.tunable_components()
                if getattr(self.pipe, enc, None) is not None]

    def _reset_embeddings(self) -> None:
        if not self._pristine_text:
            self._pristine_text = [(copy.deepcopy(getattr(self.pipe, tok)),
                                    getattr(self.pipe, enc).get_input_embeddings().weight.shape[0])
                                   for tok, enc in self._text_pairs()]
        elif self._embeddings:
            for (tok_name, enc_name), (tokenizer, rows) in zip(self._text_pairs(), self._pristine_text, strict=True):
                setattr(self.pipe, tok_name, copy.deepcopy(tokenizer))
                getattr(self.pipe, enc_name).resize_token_embeddings(rows)
        self._embeddings.clear()
        self._expansions = {}

    def _load_embedding(self, artifact: Artifact, allow_pickle: bool) -> list[str]:
        path = Path(artifact.path)
        if not path.is_file():
            raise ModelLoadError(f"Embedding file {artifact.path} not found.")
        state = read_state_dict(path, allow_pickle=allow_pickle)
        token = artifact.token or path.stem
        family = self._family
        try:
            if family.embedding_keys:   # one tensor per CLIP encoder: SDXL and SD3 clip_l + clip_g, Flux clip_l
                missing = [key for key in family.embedding_keys if key not in state]
                if missing:
                    raise ModelLoadError(f"{path.name} is not a {family.label} embedding (it has no "
                                         f"{', '.join(missing)}); use one trained for {family.label}.")
                for key, (tok, enc) in zip(family.embedding_keys, self._text_pairs()):
                    self._add_embedding(state[key], token, tok, enc)
            else:
                if {"clip_l", "clip_g"} & set(state):
                    raise ModelLoadError(f"{path.name} is an embedding for two text encoders (SDXL, SD3); it cannot "
                                         f"be used with {family.label}.")
                tensor = state.get("emb_params")
                if tensor is None and "string_to_param" in state:
                    tensor = state["string_to_param"]["*"]
                if tensor is None:
                    tensor = next(iter(state.values()))
                self._add_embedding(tensor, token, "tokenizer", "text_encoder")
        except ValueError as err:
            raise ModelLoadError(f"Could not load the embedding {path.name}: {err}") from err
        return [token]

    def _add_embedding(self, tensor: torch.Tensor, token: str, tokenizer_name: str, encoder_name: str) -> None:
        """diffusers' load_textual_inversion where the pipeline has it; SD3's pipeline has none, so the token rows are
        added the same way here (and multi-vector tokens expanded in prompts, which its pipeline does not do)."""
        pipe = self.pipe
        vectors = tensor if tensor.ndim == 2 else tensor[None]
        tokenizer, encoder = getattr(pipe, tokenizer_name), getattr(pipe, encoder_name)
        if hasattr(pipe, "load_textual_inversion"):
            pipe.load_textual_inversion(vectors, token=token, text_encoder=encoder, tokenizer=tokenizer)
            return
        tokens = [token] + [f"{token}_{i}" for i in range(1, len(vectors))]
        if tokenizer.add_tokens(tokens) != len(tokens):
            raise ValueError(f"the tokenizer already has {token}")
        encoder.resize_token_embeddings(len(tokenizer))
        weight = encoder.get_input_embeddings().weight
        with torch.no_grad():
            weight[tokenizer.convert_tokens_to_ids(tokens)] = vectors.to(weight.device, weight.dtype)
        if len(tokens) > 1:
            self._expansions[token] = " ".join(tokens)

    @property
    def tokens(self) -> list[str]:
        """Trigger words of the loaded embeddings, to show next to the prompt box."""
        return [token for tokens in self._embeddings.values() for token in tokens]

    def _load_controlnet(self, artifact: Artifact) -> Any:
        """The ControlNet of an artifact (a folder or Hub id), in the engine's precision; the last one is kept."""
        from diffusers import ControlNetModel

        from sdtune_ui.models.loading import resolve_model

        if self._controlnet is not None and self._controlnet[0] == artifact.path:
            return self._controlnet[1]
        try:
            controlnet = ControlNetModel.from_pretrained(resolve_model(artifact.path), torch_dtype=self.dtype)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"Could not load the ControlNet {artifact.label}: {err}") from err
        self._controlnet = (artifact.path, controlnet.to(self.device))
        return self._controlnet[1]

    # ------------------------------------------------------------------------------------ generation
    def generate(self, model: str, artifacts: Sequence[Artifact], options: GenerationOptions, *,
                 allow_pickle: bool = False, pictures: editing.EditPictures | None = None,
                 step_callback: Callable[[int, int], None] | None = None) -> GenerationResult:
        """Images for one prompt; image i uses seed + i, so any single image can be reproduced alone.

        Inpainting (a picture and a mask) and ControlNet (a ControlNet artifact and a control picture) come from
        the options' paths or from `pictures` (generate/editing.py). `step_callback(step, steps)` runs after every
        denoising step (progress; raising there, e.g. Cancelled, stops the generation).
        """
        options.validate()
        if not options.prompt.strip():
            raise SdtuneError("Write a prompt first.")
        pictures = editing.pictures_from(options, pictures)
        controlnets = [a for a in artifacts if a.kind == CONTROLNET]
        if len(controlnets) > 1:
            raise SdtuneError("Pick at most one ControlNet.")
        with self._lock, offline_model_threads(model, self.device):
            started = time.perf_counter()
            base = self.prepare(model, [a for a in artifacts if a.kind != CONTROLNET], allow_pickle=allow_pickle,
                                fuse=options.fuse_lora)
            family = self._family
            mode = editing.mode_of(pictures, inpainting_model=family.inpainting, has_controlnet=bool(controlnets))
            if mode != editing.TEXT and family.denoiser != "unet":
                raise SdtuneError(f"Inpainting and ControlNet work with UNet models here (SD1.x/2.x, SDXL), not "
                                  f"{family.label}.")
            controlnet = self._load_controlnet(controlnets[0]) if mode == editing.CONTROL else None
            pipe = editing.editing_pipeline(base, family, mode, controlnet)
            # Flow-matching models (SD3, Flux) keep their own flow-matching sampler whatever is chosen.
            flow = family.flow_matching
            scheduler = None if flow else make_scheduler(options.scheduler, self._scheduler_config)
            pipe.scheduler = scheduler if scheduler is not None else self._original_scheduler
            seeds = [options.seed + i for i in range(options.num_images)]
            # One generator per image, on the device that draws the noise: reproducible per seed and device.
            generators = [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]
            kwargs: dict[str, Any] = {}
            if mode != editing.TEXT:
                size = editing.edit_size(options, pictures, family.native_resolution)
                kwargs.update(width=size[0], height=size[1], **editing.edit_arguments(mode, options, pictures, size))
            if options.width:
                kwargs["width"] = options.width
            if options.height:
                kwargs["height"] = options.height
            if step_callback is not None:
                def on_step(_pipe: Any, step: int, _timestep: Any, tensors: dict) -> dict:
                    step_callback(step + 1, options.steps)
                    return tensors
                kwargs["callback_on_step_end"] = on_step
            prompt = options.prompt
            for token, expanded in self._expansions.items():
                prompt = prompt.replace(token, expanded)
            try:
                images = pipe(prompt, negative_prompt=options.negative_prompt or None,
                              num_inference_steps=options.steps, guidance_scale=options.guidance,
                              num_images_per_prompt=options.num_images, generator=generators, **kwargs).images
            except torch.OutOfMemoryError as err:
                self.unload()
                raise SdtuneError("The GPU ran out of memory. Try fewer images per prompt, a smaller size, "
                                  "or stop the training that is running.") from err
            if mode == editing.INPAINT and options.keep_unmasked and pictures.image is not None:
                images = [editing.paste_outside_mask(image, pictures.image, pictures.mask) for image in images]
            return GenerationResult(images, seeds, options, self.model_key[0] if self.model_key else model,
                                    [a.label for a in artifacts], self.tokens, time.perf_counter() - started)

    def compare(self, base_model: str, artifacts: Sequence[Artifact], options: GenerationOptions, *,
                prompts: Sequence[str] | None = None, allow_pickle: bool = False,
                pictures: editing.EditPictures | None = None) -> CompareResult:
        """The same prompts and seeds without and with the artifacts, plus a labelled side-by-side image (the base
        side of a ControlNet comparison draws without the ControlNet and its control picture)."""
        import dataclasses

        from sdtune_ui.generate.grid import make_grid

        prompts = list(prompts or [options.prompt])
        pictures = editing.pictures_from(options, pictures)
        base_pictures = dataclasses.replace(pictures, control=None)
        base: list[GenerationResult] = []
        tuned: list[GenerationResult] = []
        with self._lock:
            for prompt in prompts:
                base.append(self.generate(base_model, [], options.replace(prompt=prompt, control_image=""),
                                          allow_pickle=allow_pickle, pictures=base_pictures))
            for prompt in prompts:
                tuned.append(self.generate(base_model, artifacts, options.replace(prompt=prompt),
                                           allow_pickle=allow_pickle, pictures=pictures))
        columns = [f"{p} (seed {s})" for p, r in zip(prompts, base, strict=True) for s in r.seeds]
        grid = make_grid([[im for r in base for im in r.images], [im for r in tuned for im in r.images]],
                         row_labels=["base", "tuned"], col_labels=columns)
        return CompareResult(base, tuned, grid)


@dataclass
class CompareResult:
    base: list[GenerationResult]
    tuned: list[GenerationResult]
    image: Any                      # the labelled side-by-side grid (PIL)

    def pairs(self) -> list[tuple[Any, str]]:
        """(image, caption) for a gallery: base then tuned for each prompt and seed."""
        items = []
        for base, tuned in zip(self.base, self.tuned, strict=True):
            for b_img, t_img, seed in zip(base.images, tuned.images, base.seeds, strict=True):
                items += [(b_img, f"base · seed {seed}"), (t_img, f"tuned · seed {seed}")]
        return items


_default_engine: GenerationEngine | None = None
_default_lock = threading.Lock()


def default_engine() -> GenerationEngine:
    """The process-wide engine the app and the CLI share (one pipeline in memory)."""
    global _default_engine
    with _default_lock:
        if _default_engine is None:
            _default_engine = GenerationEngine()
        return _default_engine


def release_gpu() -> None:
    """Free the shared engine's pipeline; call before a training or captioning job needs the GPU."""
    with _default_lock:
        if _default_engine is not None:
            with _default_engine._lock:
                _default_engine.unload()
