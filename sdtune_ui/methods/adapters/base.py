"""Adapter types: the layers a LoRA-like method adds to the model (LoRA and its variants), one class each.

An adapter class owns everything known about its type: its peft config (built from a TrainConfig), how its
trained weights are saved (one safetensors file, the peft config of each component in the metadata), how such
a file is recognised and applied for generation, its kohya/LyCORIS tensor names for AUTOMATIC1111 and ComfyUI,
what a model card says about it, and how it adjusts a method's preset. Methods with the ADAPTER trait (LoRA,
pivotal tuning) ask `adapter_named(config.adapter)`; nothing outside this package names an adapter type.

Adding an adapter type: one module here with an `Adapter` subclass decorated with `@register`, imported in
`__init__.py` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from sdtune_ui.families import ModelParts
from sdtune_ui.methods.outputs import LORA_FILE

if TYPE_CHECKING:
    from sdtune_ui.config import TrainConfig

METADATA_KEY = "lora_adapter_metadata"   # diffusers' metadata key: the peft config of each component, flattened
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")   # the key prefixes of a diffusers LoRA file
DENOISERS = ("unet", "transformer")

UNET_TARGETS = {
    "attention": ["to_q", "to_k", "to_v", "to_out.0"],
    "attention_ff": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"],
    "all": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
            "conv1", "conv2", "conv_shortcut", "time_emb_proj"],
}
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


class Adapter:
    """Base class: the peft-format file every type shares; subclasses declare their knowledge as class attributes."""

    name: ClassVar[str]
    label: ClassVar[str]                       # the adapter selector's text and artifact labels
    summary: ClassVar[str]                     # the model card's "A <summary> of <base model>"
    help: ClassVar[str]                        # one line for the setting's help text
    card_tags: ClassVar[tuple[str, ...]] = ()
    preset: ClassVar[dict[str, Any]] = {}      # adjustments applied after the method's preset
    settings: ClassVar[tuple[str, ...]] = ()   # TrainConfig fields only this type reads
    advice_notes: ClassVar[tuple[str, ...]] = ()   # the dataset doctor's hints for this type
    priority: ClassVar[int] = 10               # file recognition order (highest first); the fallback is lowest
    file_name: ClassVar[str] = LORA_FILE
    peft_config_class: ClassVar[str]   # the peft config class's name (files, generation, the card's snippet)
    alpha_field: ClassVar[str] = "lora_alpha"   # its peft config's name for alpha (scale = alpha / r)
    tensor_suffixes: ClassVar[tuple[str, ...]]  # a peft key = <component>.<module path>.<suffix>
    # Config fields written into a file: only those older peft releases understand, since loaders call
    # Config(**metadata) and any unknown field is an error there.
    metadata_fields: ClassVar[tuple[str, ...]]
    diffusers_reads_kohya: ClassVar[bool] = False  # diffusers' load_lora_weights applies our kohya file correctly

    def __init__(self, config: TrainConfig):
        self.config = config

    # ------------------------------------------------------------------ knowledge (no model needed)
    @classmethod  # noqa: B027 - an optional hook
    def check_settings(cls, config: TrainConfig, errors: dict[str, str]) -> None:
        """Add this type's complaints about its own settings to `errors` (field -> message for a person)."""

    @classmethod
    def matches(cls, keys: set[str], configs: dict[str, dict]) -> bool:
        """True when a file with these tensor names and per-component configs holds this adapter type."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def peft_config(self, target_modules: list[str]) -> Any:
        """The peft config for one model (UNet or text encoder) with the run's rank, alpha and targets."""
        raise NotImplementedError

    def add_to(self, parts: ModelParts, *, text_encoders: bool) -> None:
        """Add trainable adapters to the denoiser (and the text encoders that can train: CLIP, not T5)."""
        targets = (parts.family.denoiser_lora_targets or UNET_TARGETS)[self.config.lora_targets]
        parts.unet.add_adapter(self.peft_config(list(targets)))
        for encoder in parts.tunable_text_encoders if text_encoders else []:
            encoder.add_adapter(self.peft_config(TEXT_ENCODER_TARGETS))

    def save(self, models: dict[str, torch.nn.Module], pipeline_class: Any, out_dir: Path) -> Path:
        """Write the adapters of `models` (component name -> model) into one file with diffusers' saver."""
        from peft.utils import get_peft_model_state_dict

        arguments: dict[str, Any] = {}
        for component, model in models.items():
            # Adapters only: a resized vocabulary (pivotal tuning's new tokens) would otherwise put the whole token
            # embedding into the file; the tokens are saved as their own embedding file.
            layers = get_peft_model_state_dict(model, save_embedding_layers=False)
            arguments[f"{component}_lora_layers"] = portable_keys(component, layers)
            arguments[f"{component}_lora_adapter_metadata"] = self.file_config(model.peft_config["default"])
        pipeline_class.save_lora_weights(str(out_dir), weight_name=self.file_name, safe_serialization=True,
                                         **arguments)
        return out_dir / self.file_name

    @classmethod
    def file_config(cls, peft_config: Any) -> dict[str, Any]:
        values = peft_config.to_dict()
        kept = {key: values[key] for key in cls.metadata_fields if key in values}
        if "target_modules" in kept and not isinstance(kept["target_modules"], str):
            kept["target_modules"] = sorted(kept["target_modules"])
        if "peft_type" in kept:
            kept["peft_type"] = str(getattr(kept["peft_type"], "value", kept["peft_type"]))
        return kept

    # ------------------------------------------------------------------ generation
    @classmethod
    def apply(cls, pipe: Any, file: Path, adapter_name: str, *, allow_pickle: bool = False) -> None:
        """Add the file's adapters to the pipeline under `adapter_name`, so diffusers' set_adapters (scale),
        fuse_lora, delete_adapters and disable_lora work on them like on a LoRA.

        The config is rebuilt from the file's metadata (this type's peft config class), the adapter added with
        `add_adapter` and the tensors loaded with peft's `set_peft_model_state_dict`: exact for every type.
        """
        load_with_peft(pipe, file, adapter_name, cls.peft_config_class, allow_pickle=allow_pickle)

    # ------------------------------------------------------------------ kohya / LyCORIS files
    @classmethod
    def kohya_tensors(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One module's tensors (peft suffix -> tensor) as the suffixes A1111 and ComfyUI read, with `alpha`."""
        raise NotImplementedError

    @classmethod
    def kohya_network(cls, config: dict[str, Any]) -> dict[str, str]:
        """`ss_network_module` / `ss_network_args` metadata (what trained it, for the tools' LoRA browsers)."""
        return {"ss_network_module": "networks.lora"}

    # ------------------------------------------------------------------ model card and the output folder's README
    @classmethod
    def usage_lines(cls, weight_name: str) -> list[str]:
        """Python lines (after `pipe = ...`) that apply the file `weight_name` from REPO_ID with diffusers."""
        return [f'pipe.load_lora_weights("REPO_ID", weight_name="{weight_name}")']

    @classmethod
    def diffusers_hint(cls) -> str:
        """Which tools read the diffusers-format file."""
        return "diffusers (pipe.load_lora_weights) and this app's Generate tab"

    @classmethod
    def kohya_note(cls, file_name: str) -> str:
        """Which tools read the kohya-format file `file_name`, and how."""
        stem = Path(file_name).stem
        return f"a kohya-format {cls.label} for AUTOMATIC1111 / ComfyUI (`<lora:{stem}:1>`)"



class PeftFileAdapter(Adapter):
    """A type diffusers' pipeline loaders refuse (LyCORIS types): its file is read back with peft itself."""

    priority = 5
    alpha_field = "alpha"

    @classmethod
    def diffusers_hint(cls) -> str:
        return (f"this app's Generate tab, and diffusers with peft (the model card's snippet; diffusers' "
                f"load_lora_weights does not read {cls.label})")

    @classmethod
    def kohya_note(cls, file_name: str) -> str:
        stem = Path(file_name).stem
        return (f"a LyCORIS-format {cls.label} for AUTOMATIC1111 (1.5 or later) and ComfyUI, loaded like a LoRA "
                f"(`<lora:{stem}:1>`)")

    @classmethod
    def usage_lines(cls, weight_name: str) -> list[str]:
        return ["# diffusers' load_lora_weights does not read this adapter type; peft does:",
                *peft_usage_lines(cls.peft_config_class, weight_name)]


# ---------------------------------------------------------------------------------------------- files
def peft_usage_lines(config_class: str, weight_name: str) -> list[str]:
    """A model card's lines that apply our file with peft alone (after `pipe = ...`; REPO_ID: the repo)."""
    return [
        "import json",
        "from huggingface_hub import hf_hub_download",
        f"from peft import {config_class}, set_peft_model_state_dict",
        "from safetensors import safe_open",
        "",
        f'with safe_open(hf_hub_download("REPO_ID", "{weight_name}"), "pt") as file:',
        f'    settings = json.loads(file.metadata()["{METADATA_KEY}"])',
        "    weights = {key: file.get_tensor(key) for key in file.keys()}",
        'for part in ("unet", "transformer", "text_encoder", "text_encoder_2"):',
        '    tensors = {k[len(part) + 1:]: v for k, v in weights.items() if k.startswith(part + ".")}',
        "    if tensors:",
        "        model = getattr(pipe, part)",
        '        if not hasattr(model, "text_model"):  # transformers 5 dropped that level of CLIPTextModel',
        '            tensors = {k.removeprefix("text_model."): v for k, v in tensors.items()}',
        '        config = {k[len(part) + 1:]: v for k, v in settings.items() if k.startswith(part + ".")}',
        '        config.pop("peft_type", None)',
        f"        model.add_adapter({config_class}(**config))",
        "        set_peft_model_state_dict(model, tensors)",
    ]


def load_with_peft(pipe: Any, file: Path, adapter_name: str, config_class: str, *, allow_pickle: bool = False) -> None:
    """Each component's adapter from our file: `add_adapter(<config_class>(**its metadata))`, then peft's
    `set_peft_model_state_dict` (exact; diffusers' set_adapters, fuse_lora and delete_adapters work on it)."""
    import peft

    state, configs = read_adapter_file(file, allow_pickle=allow_pickle)
    components = split_components(state)
    for component in components:   # before anything is added: never half an adapter
        if getattr(pipe, component, None) is None:
            raise ValueError(f"the file has {component} weights but this model has no {component} "
                             "(a file for another model family?)")
    for component, tensors in components.items():
        model = getattr(pipe, component)
        config = dict(configs.get(component) or {})
        if not config:
            raise ValueError(f"the file has no adapter settings for {component} in its metadata")
        config.pop("peft_type", None)
        tensors = native_keys(model, tensors)
        model.add_adapter(getattr(peft, config_class)(**config), adapter_name=adapter_name)
        result = peft.set_peft_model_state_dict(model, tensors, adapter_name=adapter_name)
        unexpected = list(result.unexpected_keys)
        missing = [key for key in result.missing_keys if f".{adapter_name}." in f"{key}."]   # its own tensors
        if unexpected or missing:
            raise ValueError(f"{len(unexpected) + len(missing)} {component} tensors do not fit this model, "
                             f"e.g. {(unexpected + missing)[0]}")


def portable_keys(component: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Text-encoder keys in the `text_model.` spelling every diffusers release and ComfyUI read.

    transformers 5 dropped CLIPTextModel's `text_model` wrapper, so peft now names its layers `encoder.layers…`;
    diffusers 0.35 (transformers 4) and ComfyUI only know `text_model.encoder.layers…`, and diffusers 0.42 strips
    the prefix again where the model lacks it.
    """
    if component in DENOISERS:
        return state
    return {key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}": value
            for key, value in state.items()}


def native_keys(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of portable_keys for a loaded text encoder (transformers 5 has no `text_model.` level)."""
    if hasattr(model, "text_model"):
        return state
    return {key.removeprefix("text_model."): value for key, value in state.items()}


def split_components(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A diffusers-format adapter file's tensors by component (`unet.`, `text_encoder.`, `text_encoder_2.`)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        component, _, rest = key.partition(".")
        if component not in COMPONENTS:
            raise ValueError(f"unexpected tensor {key!r}: not a diffusers-format adapter file (kohya/LyCORIS-format "
                             "files are for AUTOMATIC1111 and ComfyUI; use the run's diffusers-format file here)")
        parts.setdefault(component, {})[rest] = value
    return parts


def component_configs(metadata: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The flat `lora_adapter_metadata` JSON ({"unet.r": 4, ...}) as one config dict per component."""
    raw = metadata.get(METADATA_KEY)
    try:
        flat = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        flat = {}
    configs: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {})[field] = value
    return configs


def read_adapter_file(path: str | Path, *, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor],
                                                                                dict[str, dict[str, Any]]]:
    """Tensors and per-component configs of an adapter file (a pickle only when allowed, as data only)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return ({key: handle.get_tensor(key) for key in handle.keys()},
                    component_configs(dict(handle.metadata() or {})))
    from sdtune_ui.models.loading import read_state_dict

    return read_state_dict(path, allow_pickle=allow_pickle), {}


def file_keys(path: str | Path, *, allow_pickle: bool = False) -> tuple[set[str], dict[str, dict[str, Any]]]:
    """Tensor names and per-component configs, without reading tensors where the format allows."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from sdtune_ui.models.loading import safetensors_header

        with safetensors_header(path) as handle:
            return set(handle.keys()), component_configs(dict(handle.metadata() or {}))
    state, configs = read_adapter_file(path, allow_pickle=allow_pickle)
    return set(state), configs


def group_modules(state: dict[str, torch.Tensor], suffixes: tuple[str, ...]
                  ) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
    """peft keys `<component>.<module path>.<suffix>` -> {(component, module path): {suffix: tensor}}."""
    pattern = re.compile(r"(\w+)\.(.+)\.(" + "|".join(re.escape(s) for s in sorted(suffixes, key=len, reverse=True))
                         + r")$")
    modules: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = pattern.match(key)
        if match is None:
            raise ValueError(f"unexpected tensor {key!r} for this adapter type")
        component, module, suffix = match.groups()
        modules.setdefault((component, module), {})[suffix] = value
    return modules


# ---------------------------------------------------------------------------------------------- registry
_ADAPTERS: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter type known by its name, in the order offered."""
    _ADAPTERS[cls.name] = cls
    return cls


def adapter_names() -> tuple[str, ...]:
    return tuple(_ADAPTERS)


def adapter_classes() -> list[type[Adapter]]:
    return list(_ADAPTERS.values())


def adapter_named(name: str) -> type[Adapter]:
    try:
        return _ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown adapter type {name!r}; choose one of {', '.join(_ADAPTERS)}") from None


def setting_owners() -> dict[str, tuple[str, ...]]:
    """TrainConfig fields that belong to some adapter types only -> those types' names."""
    owners: dict[str, tuple[str, ...]] = {}
    for cls in _ADAPTERS.values():
        for setting in cls.settings:
            owners[setting] = (*owners.get(setting, ()), cls.name)
    return owners


def adapter_for_keys(keys: set[str], configs: dict[str, dict[str, Any]]) -> type[Adapter] | None:
    """The adapter type of a file with these tensor names and configs; None when it holds no adapter."""
    for cls in sorted(_ADAPTERS.values(), key=lambda c: -c.priority):
        if cls.matches(keys, configs):
            return cls
    return None


def adapter_for_file(path: str | Path, *, allow_pickle: bool = False) -> type[Adapter]:
    keys, configs = file_keys(path, allow_pickle=allow_pickle)
    found = adapter_for_keys(keys, configs)
    if found is None:
        raise ValueError(f"{Path(path).name} holds no LoRA or other adapter weights")
    return found


def adapter_file_names() -> tuple[str, ...]:
    """The file names adapter types save under (what a run's output folder may hold)."""
    return tuple(dict.fromkeys(cls.file_name for cls in _ADAPTERS.values()))

