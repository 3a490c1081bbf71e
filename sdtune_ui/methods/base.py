"""Training methods: one class per method, registered by name, owning everything known about the method.

A method class says what it trains (its traits), its recommended settings (preset), the dataset doctor's
advice (how many images and steps), how its settings are checked, what a model card says about it, which
artifacts it writes; and, as a strategy over the one shared loop (train/trainer.py), what is trainable, how
each step's prompt is built, what happens after an optimizer step and how its artifacts are saved. Nothing
outside this package names a method: config, CLI, app, doctor, generation and export ask the registry.

Adding a method: one module here with a `Method` subclass decorated with `@register` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from sdtune_ui.families import ModelParts

if TYPE_CHECKING:
    from sdtune_ui.config import TrainConfig

# Traits: what a method trains. Settings in TrainConfig name the traits they need (`needs=`), so a form,
# a model card or a validation rule can tell whether a setting applies to a method without naming methods.
UNET_WEIGHTS = "unet_weights"    # changes UNet weights (all of them, or adapters on them)
FULL_WEIGHTS = "full_weights"    # trains every UNet weight (saved as a whole pipeline)
ADAPTER = "adapter"              # trains adapter layers (LoRA and its variants)
TOKENS = "tokens"                # learns new token embeddings (textual inversion)
INSTANCE_PROMPT = "instance_prompt"  # trains every image on one instance prompt (DreamBooth)
CONTROL = "control"              # trains a ControlNet on picture + condition pairs (the UNet stays frozen)
TRAIT_TEXT = {UNET_WEIGHTS: "methods that change UNet weights", FULL_WEIGHTS: "full fine-tuning",
              ADAPTER: "adapter training (LoRA)", TOKENS: "textual inversion (new tokens)",
              INSTANCE_PROMPT: "DreamBooth-style training", CONTROL: "ControlNet training"}


@dataclass(frozen=True)
class StepAdvice:
    """The dataset doctor's starting points for a method (advice shown to the user, never enforced).

    Gathered from the method papers, diffusers' example scripts and the DreamBooth training guide.
    """

    images_low: int          # below this: a warning
    images_high: int         # above this: a note (more images rarely help; another method may fit better)
    images_text: str
    steps_per_image: int     # 0: a fixed step count (steps_min)
    steps_min: int
    steps_max: int
    # Seconds per optimizer step at 512 px, batch 1, on a 24 GB consumer GPU (RTX 3090/4090 class), for an
    # SD 1.x-sized UNet: an assumption for the time estimate, replaced by a measured value when one is given.
    seconds_per_step_512: float


class Method(ABC):
    """Base strategy; subclasses declare their knowledge as class attributes and override what differs."""

    name: ClassVar[str]
    label: ClassVar[str]                      # the method selector's text
    summary: ClassVar[str]                    # the model card's "A <summary> of <base model>"; {adapter}: its type
    traits: ClassVar[frozenset[str]]
    preset: ClassVar[dict[str, Any]] = {}     # recommended settings (from papers and diffusers' examples)
    # Over the CPU demo's settings (app/ops.py DEMO_SETTINGS, a LoRA): what this method needs to visibly learn the
    # example subject on the offline demo-sd1 in about a minute (tests/test_learning.py trains with them).
    demo_preset: ClassVar[dict[str, Any]] = {}
    advice: ClassVar[StepAdvice]
    card_tags: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()   # artifact kinds written (methods/outputs.py)
    reads_captions: ClassVar[bool] = True     # False: trains on prompt templates unless told otherwise
    shardable: ClassVar[bool] = False         # can train under FSDP (each process holds a slice of the UNet)

    def __init__(self, config: TrainConfig):
        self.config = config

    # ------------------------------------------------------------------ knowledge (no model needed)
    @classmethod
    def has(cls, trait: str) -> bool:
        return trait in cls.traits

    @classmethod  # noqa: B027 - an optional hook
    def check_settings(cls, config: TrainConfig, errors: dict[str, str]) -> None:
        """Add this method's complaints about `config` to `errors` (field -> message for a person)."""

    @classmethod
    def card_summary(cls, config: dict) -> str:
        """The model card's words for a run with these settings (config.json as a dict)."""
        if cls.has(ADAPTER):
            from sdtune_ui.methods.adapters import adapter_of_run

            return cls.summary.format(adapter=adapter_of_run(config).summary)
        return cls.summary

    @classmethod
    def card_tags_for(cls, config: dict) -> tuple[str, ...]:
        """The model card's tags for a run with these settings: the method's, plus its adapter type's."""
        if cls.has(ADAPTER):
            from sdtune_ui.methods.adapters import adapter_of_run

            return (*cls.card_tags, *adapter_of_run(config).card_tags)
        return cls.card_tags

    @classmethod
    def output_family(cls, family: Any) -> Any:
        """The family of what the method outputs, given the base model's (a conversion changes it)."""
        return family

    @classmethod
    def recommended_steps(cls, image_count: int, subject: str, batch_size: int) -> tuple[int, int, int]:
        """(steps, low, high) for `image_count` images of a subject (object, face, style)."""
        advice = cls.advice
        steps = max(image_count, 1) * advice.steps_per_image if advice.steps_per_image else advice.steps_min
        return int(min(max(steps, advice.steps_min), advice.steps_max)), advice.steps_min, advice.steps_max

    @classmethod
    def advice_notes(cls, subject: str, with_prior_preservation: bool | None) -> list[str]:
        """Method-specific hints shown with the step recommendation."""
        return []

    @classmethod
    def dataset_warnings(cls, subject: str, with_prior_preservation: bool | None) -> list[tuple[str, str]]:
        """(code, message) warnings the dataset doctor raises for this method and subject."""
        return []

    # ------------------------------------------------------------------ strategy (one run)
    def full_precision_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        """Models that keep full-precision weights (the rest are cast to the mixed-precision dtype)."""
        return []

    def trains_text_encoders(self) -> bool:
        return False

    def prepare(self, parts: ModelParts) -> None:
        """Freeze everything, then make this method's parameters trainable (adapters, new tokens)."""
        freeze(parts)

    def trained_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        """Models that have trainable parameters (wrapped for DDP, put in train mode)."""
        models = [parts.unet]
        if self.trains_text_encoders():
            models += parts.tunable_text_encoders
        return models

    def param_groups(self, parts: ModelParts) -> list[dict]:
        return [{"params": list(named_trainable(parts).values()), "lr": self.config.learning_rate}]

    def ema_parameters(self, parts: ModelParts) -> list[torch.nn.Parameter]:
        """The weights `use_ema` averages, in a fixed order (EMAModel pairs averages and weights by position):
        the whole UNet for full fine-tuning; adapter methods average their adapter weights only."""
        return list(parts.unet.parameters())

    def prompt(self, caption: str, generator: torch.Generator, token: str = "") -> str:
        """The prompt an image trains with this step; `token`: its concept's new token (several concepts)."""
        return caption

    def expand_prompt(self, prompt: str) -> str:
        return prompt

    def after_optimizer_step(self, parts: ModelParts) -> None:  # noqa: B027 - an optional hook
        """Called after every optimizer step; most methods need nothing here."""

    def trainable_state(self, parts: ModelParts) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in named_trainable(parts).items()}

    def load_trainable_state(self, parts: ModelParts, state: dict[str, torch.Tensor]) -> None:
        params = named_trainable(parts)
        missing = set(params) - set(state)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[name].to(p.device, p.dtype))

    @abstractmethod
    def save_output(self, parts: ModelParts, out_dir: Path) -> list[Path]:
        """Write the method's standard artifact(s) into out_dir; return the files written."""


def freeze(parts: ModelParts) -> None:
    for module in (parts.unet, parts.vae, *parts.text_encoders, *([parts.controlnet] if parts.controlnet else [])):
        module.requires_grad_(False)


def named_trainable(parts: ModelParts) -> dict[str, torch.nn.Parameter]:
    """Every trainable parameter under a stable prefix: unet.*, text_encoder_0.*, text_encoder_1.*, controlnet.*."""
    modules = {"unet": parts.unet, **{f"text_encoder_{i}": te for i, te in enumerate(parts.text_encoders)}}
    if parts.controlnet is not None:
        modules["controlnet"] = parts.controlnet
    return {f"{prefix}.{name}": p for prefix, module in modules.items()
            for name, p in module.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------- registry
_METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method known by its name, in the order methods are offered."""
    _METHODS[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def method_classes() -> list[type[Method]]:
    return list(_METHODS.values())


def method_named(name: str) -> type[Method]:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(_METHODS)}") from None


def methods_with(trait: str) -> tuple[str, ...]:
    return tuple(name for name, cls in _METHODS.items() if cls.has(trait))


def make_method(config: TrainConfig) -> Method:
    return method_named(config.method)(config)
