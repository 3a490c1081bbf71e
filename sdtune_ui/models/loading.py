"""Load a base model from a tiny demo name, a local diffusers folder, a single file, or a Hub id.

Safetensors are preferred everywhere; pickle checkpoints (`.ckpt`, `.bin`, `.pt`) can run code when
loaded, so they are refused unless the user explicitly allows them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.errors import ModelLoadError, UnreadableFile, is_unreadable_file_error
from sdtune_ui.models.demo import DEMO_MODELS, demo_model_path
from sdtune_ui.models.tiny import TINY_CONTROLNETS, TINY_MODELS, tiny_model_path

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")

# Well-known base models offered by the app and used in docs; any other Hub id or path works too.
KNOWN_MODELS = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "SD 1.5 (512px)",
    "stabilityai/stable-diffusion-2-1": "SD 2.1 (768px, v-prediction)",
    "stabilityai/stable-diffusion-2-1-base": "SD 2.1 base (512px)",
    "stabilityai/stable-diffusion-xl-base-1.0": "SDXL 1.0 (1024px)",
    "riffusion/riffusion-model-v1": "Riffusion (SD1.x architecture)",
    "stabilityai/stable-diffusion-3.5-medium": "SD 3.5 Medium (1024px, flow matching; gated, accept its licence)",
    "stabilityai/stable-diffusion-3.5-large": "SD 3.5 Large (8B, 1024px; gated)",
    "black-forest-labs/FLUX.1-dev": "Flux.1 dev (12B, 1024px; gated, non-commercial licence)",
    "black-forest-labs/FLUX.1-schnell": "Flux.1 schnell (12B, distilled to ~4 steps; Apache-2.0)",
}


def resolve_model(name: str) -> str:
    """Map a demo name (the shipped demo model, a tiny model or tiny ControlNet) to its folder; anything else is
    returned unchanged."""
    if name in DEMO_MODELS:
        return str(demo_model_path(name))
    if name in TINY_MODELS or name in TINY_CONTROLNETS:
        return str(tiny_model_path(name))
    return name


def refuse_pickle(path: Path, allow_pickle: bool) -> None:
    """The one check before any file is opened: pickle files only when the user allowed them."""
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(
            f"{path.name} is a pickle file, which can run arbitrary code when loaded. Use a .safetensors file, "
            "or allow pickle files explicitly (--allow-pickle, or the app's 'allow pickle' box) if you trust its "
            "source.")



@contextlib.contextmanager
def safetensors_header(path: str | Path, advice: str = "") -> Iterator[Any]:
    """A .safetensors file opened for its keys and metadata (no tensors read); a damaged file is UnreadableFile,
    which names it and says what to do (`advice`)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except (SafetensorError, OSError) as err:
        raise UnreadableFile(path, err, advice) from err


def read_state_dict(path: str | Path, *, allow_pickle: bool = False) -> dict:
    """Tensors of a .safetensors file, or (only when allowed) of a pickle file, loaded as data only."""
    path = Path(path)
    refuse_pickle(path, allow_pickle)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # weights_only refuses arbitrary objects even when the user allowed pickle files.
    return torch.load(path, map_location="cpu", weights_only=True)

def _family_of_single_file(path: Path):
    """The family the checkpoint's keys belong to (no name guessing)."""
    from sdtune_ui.families import family_classes, family_for_checkpoint_keys

    if path.suffix.lower() != ".safetensors":
        return family_classes()[-1]  # pickle files are not opened just to look at their keys
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return family_for_checkpoint_keys(handle.keys())


def _from_single_file(path: Path, family: type, dtype: torch.dtype, config: str | None):
    """A pipeline from one checkpoint file. Transformer checkpoints (Flux, SD3) often hold the transformer alone:
    it is read from the file and the other components from the config folder or repo (the family's standard one
    unless `config` names another)."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    pipeline_class = family.pipeline_class()
    extra = {"config": config} if config else {}
    try:
        return pipeline_class.from_single_file(str(path), dtype=dtype, **extra)
    except SingleFileComponentError:
        if not family.denoiser_class_name:
            raise
    import diffusers

    source = config or family.standard_repo
    denoiser = getattr(diffusers, family.denoiser_class_name).from_single_file(
        str(path), config=source, subfolder=family.denoiser, dtype=dtype)
    return pipeline_class.from_pretrained(source, dtype=dtype, **{family.denoiser: denoiser})


def load_pipeline(name: str, *, dtype: torch.dtype | dict[str, torch.dtype] = torch.float32,
                  allow_pickle: bool = False, single_file_config: str | None = None, quantization: Any = None):
    """Load a pipeline of any registered family (SD1.x, SD2.x, SDXL, SD3.5, Flux.1) from any accepted source.

    `dtype` may map component names to dtypes ({"unet": torch.float32, "default": torch.bfloat16}), so each
    part is read straight into the precision it trains in (a single file is read in float32 then).
    A single-file checkpoint needs its architecture's configs; diffusers fetches the standard ones from the
    Hub unless `single_file_config` names a diffusers folder or repo to take them from (offline use).
    `quantization`: a diffusers PipelineQuantizationConfig (train/quantize.py), for folders and Hub ids.
    """
    from diffusers import DiffusionPipeline

    source = resolve_model(name)
    path = Path(source).expanduser()
    try:
        if path.is_file():
            if quantization is not None:
                raise ModelLoadError("A quantised base is loaded from a diffusers folder or Hub id; convert the single "
                                     "file first (python -m sdtune_ui train ... saves nothing quantised), or set "
                                     "quantize_base to none.")
            refuse_pickle(path, allow_pickle)
            single_dtype = torch.float32 if isinstance(dtype, dict) else dtype
            config = resolve_model(single_file_config) if single_file_config else None
            pipe = _from_single_file(path, _family_of_single_file(path), single_dtype, config)
        else:
            pipe = _from_pretrained(DiffusionPipeline, source, path, dtype, allow_pickle,
                                    **({"quantization_config": quantization} if quantization is not None else {}))
    except ModelLoadError:
        raise
    except Exception as err:
        if is_unreadable_file_error(err):  # a damaged .safetensors/.ckpt, or weights cut short in a folder
            raise UnreadableFile(source, err) from err
        if not isinstance(err, (OSError, ValueError)):
            raise
        missing = unavailable_offline(name)
        if missing:
            raise ModelLoadError(missing) from None
        raise ModelLoadError(
            f"Could not load the model {name!r}: {err}. Give a Hub id (e.g. stable-diffusion-v1-5/"
            "stable-diffusion-v1-5), a local diffusers folder, a .safetensors file, or a demo model "
            f"({', '.join((*DEMO_MODELS, *TINY_MODELS))})."
        ) from err
    if hasattr(pipe, "safety_checker"):
        pipe.safety_checker = None
    return pipe


def _from_pretrained(pipeline_class, source: str, path: Path, dtype: torch.dtype | dict[str, torch.dtype],
                     allow_pickle: bool, **extra: Any):
    if path.is_dir() and not (path / "model_index.json").exists():
        raise ModelLoadError(f"{path} is a folder but not a diffusers pipeline (no model_index.json).")
    try:
        return pipeline_class.from_pretrained(source, dtype=dtype, use_safetensors=True, **extra)
    except (OSError, ValueError) as err:
        if "safetensors" not in str(err).lower():
            raise
        if not allow_pickle:
            raise ModelLoadError(
                f"{source} has no safetensors weights, only pickle files, which can run arbitrary code "
                "when loaded. Allow pickle explicitly (--allow-pickle) if you trust its source."
            ) from err
        return pipeline_class.from_pretrained(source, dtype=dtype, use_safetensors=False, **extra)


def unavailable_offline(name: str) -> str | None:
    """Why a Hub model cannot load here (the Hub is off and it was never downloaded), or None when it may load.

    Checked before a run or a generation starts, so a model that cannot load leaves no failed run behind.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    name = (name or "").strip()
    offline_demo = name in DEMO_MODELS or name in TINY_MODELS
    if not name or offline_demo or Path(name).expanduser().exists() or not constants.HF_HUB_OFFLINE:
        return None
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        return None  # not a Hub id: loading says what is wrong with the path
    if isinstance(try_to_load_from_cache(name, "model_index.json"), str):
        return None
    return (f"{name} is not downloaded yet, and the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1). "
            "It needs the network once: start without HF_HUB_OFFLINE to download it (it is cached for later), "
            "or give a local diffusers folder or .safetensors file, or a demo model "
            f"({', '.join((*DEMO_MODELS, *TINY_MODELS))}).")
