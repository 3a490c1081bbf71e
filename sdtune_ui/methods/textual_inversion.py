"""Textual inversion: only new token embedding rows learn; saved as learned_embeds.safetensors, which diffusers
(`load_textual_inversion`) and, after export, A1111 and ComfyUI load."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from sdtune_ui.families import ModelParts
from sdtune_ui.methods import outputs
from sdtune_ui.methods.base import TOKENS, Method, StepAdvice, register

if TYPE_CHECKING:
    from sdtune_ui.config import TrainConfig

OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of my {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a good photo of the {}", "a photo of one {}", "a rendition of the {}", "a photo of the nice {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a picture in the style of {}",
    "a close-up painting in the style of {}", "a good painting in the style of {}",
)


def template_prompt(templates: tuple[str, ...], token_text: str, generator: torch.Generator) -> str:
    """A textual-inversion prompt: a random template filled with the placeholder token(s)."""
    index = int(torch.randint(len(templates), (1,), generator=generator))
    return templates[index].format(token_text)


def check_token_settings(config: TrainConfig, errors: dict[str, str]) -> None:
    """The checks every method that learns a new token shares."""
    token = config.placeholder_token.strip()
    if not token or " " in token:
        errors["placeholder_token"] = "Give one new token without spaces, e.g. <sks>."
    if not config.initializer_token.strip():
        errors["initializer_token"] = "Give a word to start from, e.g. the class: dog."
    if config.num_vectors < 1:
        errors["num_vectors"] = "Must be at least 1."
    if config.instance_prompt and token not in config.instance_prompt:
        errors["instance_prompt"] = (
            f"The instance prompt must contain the placeholder token {token}, e.g. 'a photo of {token}'.")
    for prompt in config.validation_prompts:
        if token and token not in prompt:
            errors["validation_prompts"] = f"Validation prompt {prompt!r} does not contain {token}."


@register
class TextualInversion(Method):
    name = "textual_inversion"
    label = "Textual inversion"
    summary = "textual-inversion embedding"
    traits = frozenset({TOKENS})
    preset: ClassVar[dict] = dict(learning_rate=5e-4, scale_lr=True, max_train_steps=2000, train_batch_size=1,
                                  caption_dropout=0.0)
    advice = StepAdvice(3, 20, "Textual inversion needs only 3-10 images of the concept", 0, 2000, 3000, 0.25)
    card_tags = ("textual_inversion",)
    outputs = (outputs.EMBEDDING,)
    reads_captions = False

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.token_ids: list[list[int]] = []              # per text encoder
        self.original_embeddings: list[torch.Tensor] = []

    @classmethod
    def check_settings(cls, config: TrainConfig, errors: dict[str, str]) -> None:
        check_token_settings(config, errors)
        if config.with_prior_preservation:
            errors["with_prior_preservation"] = "Textual inversion changes no weights; it needs no prior."

    @classmethod
    def advice_notes(cls, subject: str, with_prior_preservation: bool | None) -> list[str]:
        return ["textual inversion learns one new word; it cannot teach the model new details"]

    def full_precision_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        return list(parts.text_encoders)

    def trains_text_encoders(self) -> bool:
        return True

    def trained_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        return list(parts.text_encoders)

    def prepare(self, parts: ModelParts) -> None:
        super().prepare(parts)
        self.add_tokens(parts)

    def add_tokens(self, parts: ModelParts) -> None:
        """Add the placeholder token(s) to every tokenizer and make only their embedding rows learn."""
        tokens = self.config.placeholder_tokens()
        for tokenizer, encoder in zip(parts.tokenizers, parts.text_encoders):
            added = tokenizer.add_tokens(tokens)
            if added != len(tokens):
                raise ValueError(f"The tokenizer already has {self.config.placeholder_token}; pick another token.")
            ids = tokenizer.convert_tokens_to_ids(tokens)
            init_ids = tokenizer(self.config.initializer_token, add_special_tokens=False).input_ids
            encoder.resize_token_embeddings(len(tokenizer))
            weight = encoder.get_input_embeddings().weight
            with torch.no_grad():
                # A multi-token initializer starts from the mean of its tokens' embeddings.
                weight[ids] = weight[init_ids].mean(dim=0, keepdim=True).expand(len(ids), -1)
            weight.requires_grad_(True)
            self.token_ids.append(ids)
            self.original_embeddings.append(weight.detach().clone())

    def param_groups(self, parts: ModelParts) -> list[dict]:
        embeddings = [enc.get_input_embeddings().weight for enc in parts.text_encoders]
        return [{"params": embeddings, "lr": self.config.ti_learning_rate or self.config.learning_rate}]

    def prompt(self, caption: str, generator: torch.Generator) -> str:
        cfg = self.config
        if cfg.instance_prompt:
            text = cfg.instance_prompt
        elif cfg.learnable_property == "captions":
            text = caption
        else:
            templates = STYLE_TEMPLATES if cfg.learnable_property == "style" else OBJECT_TEMPLATES
            text = template_prompt(templates, cfg.placeholder_token, generator)
        return self.expand_prompt(text)

    def expand_prompt(self, prompt: str) -> str:
        """`<sks>` -> `<sks> <sks>_1 ...` so every vector of a multi-vector token is used."""
        tokens = self.config.placeholder_tokens()
        return prompt.replace(self.config.placeholder_token, " ".join(tokens)) if len(tokens) > 1 else prompt

    def after_optimizer_step(self, parts: ModelParts) -> None:
        # Weight decay and Adam touch every row of the embedding matrix; put the old rows back.
        with torch.no_grad():
            for encoder, ids, original in zip(parts.text_encoders, self.token_ids, self.original_embeddings):
                weight = encoder.get_input_embeddings().weight
                keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
                keep[ids] = False
                weight[keep] = original.to(weight.device, weight.dtype)[keep]

    def learned_embeddings(self, parts: ModelParts) -> list[torch.Tensor]:
        return [enc.get_input_embeddings().weight[ids].detach().float().cpu()
                for enc, ids in zip(parts.text_encoders, self.token_ids)]

    def trainable_state(self, parts: ModelParts) -> dict[str, torch.Tensor]:
        return {f"embeddings_{i}": emb for i, emb in enumerate(self.learned_embeddings(parts))}

    def load_trainable_state(self, parts: ModelParts, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, (encoder, ids) in enumerate(zip(parts.text_encoders, self.token_ids)):
                weight = encoder.get_input_embeddings().weight
                weight[ids] = state[f"embeddings_{i}"].to(weight.device, weight.dtype)

    def save_output(self, parts: ModelParts, out_dir: Path) -> list[Path]:
        from safetensors.torch import save_file

        embeddings = self.learned_embeddings(parts)
        if len(embeddings) == 1:
            state = {self.config.placeholder_token: embeddings[0]}
        else:  # two text encoders (SDXL): one set of vectors each, keyed as the community formats do
            state = {"clip_l": embeddings[0], "clip_g": embeddings[1]}
        path = out_dir / outputs.EMBEDDINGS_FILE
        save_file({k: v.contiguous() for k, v in state.items()}, str(path),
                  metadata={"token": self.config.placeholder_token})
        return [path]
