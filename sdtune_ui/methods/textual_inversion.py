"""Textual inversion: only new token embedding rows learn; saved as learned_embeds.safetensors, which diffusers
(`load_textual_inversion`) and, after export, A1111 and ComfyUI load.

With several concepts each concept has its own token (`concept_tokens`), and each token is saved as a file of
its own (the first as learned_embeds.safetensors, the others learned_embeds-<token>.safetensors), the one-token
layout every loader reads. Tokens of an earlier run this one continues from (init_from) that this run does not
learn ride along frozen ("carried") and are saved too, so the output holds every subject learned so far.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from sdtune_ui.errors import ConfigError
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


CARRIED = "carried:"  # trainable-state key prefix of a carried token's vectors: "carried:<token>:<encoder>"


def token_plan(config: TrainConfig) -> list[tuple[str, str]]:
    """(token, initializer word) of each new token the run learns: one per concept (`concept_tokens`, entries
    TOKEN or TOKEN=INITIALIZER), else the placeholder token."""
    if not config.concept_tokens:
        return [(config.placeholder_token, config.initializer_token)]
    plan = []
    for entry in config.concept_tokens:
        token, _, initializer = entry.partition("=")
        plan.append((token.strip(), initializer.strip() or config.initializer_token))
    return plan


def vector_names(token: str, num_vectors: int) -> list[str]:
    """The tokens one embedding adds: `<sks>`, then `<sks>_1` ... (as diffusers names a multi-vector file's)."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def check_token_settings(config: TrainConfig, errors: dict[str, str]) -> None:
    """The checks every method that learns a new token shares."""
    tokens = [token for token, _ in token_plan(config)]
    field = "concept_tokens" if config.concept_tokens else "placeholder_token"
    if any(not token or " " in token for token in tokens):
        errors[field] = "Give one new token without spaces, e.g. <sks>" + (" (one per concept)." if
                                                                          config.concept_tokens else ".")
    elif len(set(tokens)) < len(tokens):
        errors[field] = f"Each concept needs a token of its own; {', '.join(tokens)} repeats one."
    if not config.initializer_token.strip() and any(not init.strip() for _, init in token_plan(config)):
        errors["initializer_token"] = "Give a word to start from, e.g. the class: dog."
    if config.num_vectors < 1:
        errors["num_vectors"] = "Must be at least 1."
    named = " or ".join(t for t in tokens if t)
    if config.instance_prompt and tokens and not any(t and t in config.instance_prompt for t in tokens):
        errors["instance_prompt"] = (
            f"The instance prompt must contain the placeholder token {named}, e.g. 'a photo of {tokens[0]}'.")
    for prompt in config.validation_prompts:
        if named and not any(t and t in prompt for t in tokens):
            errors["validation_prompts"] = f"Validation prompt {prompt!r} does not contain {named}."


@register
class TextualInversion(Method):
    name = "textual_inversion"
    label = "Textual inversion"
    summary = "textual-inversion embedding"
    traits = frozenset({TOKENS})
    preset: ClassVar[dict] = dict(learning_rate=5e-4, scale_lr=True, max_train_steps=2000, train_batch_size=1,
                                  caption_dropout=0.0)
    # demo-sd1 cannot draw the subject's shape and the token lands on what fits best by the objective: a house
    # from lr 1e-3 on, robots still at 3e-4 (tests/test_learning.py). Not a visible demo on this model.
    demo_preset: ClassVar[dict] = dict(learning_rate=5e-4, max_train_steps=150, scale_lr=False,
                                       train_text_encoder=False, with_prior_preservation=False,
                                       instance_prompt="a photo of <sks>", placeholder_token="<sks>",
                                       initializer_token="robot", validation_prompts=["a photo of <sks>"])
    advice = StepAdvice(3, 20, "Textual inversion needs only 3-10 images of the concept", 0, 2000, 3000, 0.25)
    card_tags = ("textual_inversion",)
    outputs = (outputs.EMBEDDING,)
    reads_captions = False

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.token_ids: list[list[int]] = []              # per text encoder: the learned rows, token by token
        self.original_embeddings: list[torch.Tensor] = []
        self.tokens = [token for token, _ in token_plan(config)]
        self.carried: dict[str, list[torch.Tensor]] = {}  # token -> per text encoder [vectors, dim], frozen

    @classmethod
    def check_settings(cls, config: TrainConfig, errors: dict[str, str]) -> None:
        check_token_settings(config, errors)
        if config.with_prior_preservation:
            errors["with_prior_preservation"] = "Textual inversion changes no weights; it needs no prior."

    @classmethod
    def advice_notes(cls, subject: str, with_prior_preservation: bool | None) -> list[str]:
        return ["textual inversion learns one new word; it cannot teach the model new details"]

    def full_precision_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        return list(parts.tunable_text_encoders)

    def trains_text_encoders(self) -> bool:
        return True

    def trained_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        return list(parts.tunable_text_encoders)

    def prepare(self, parts: ModelParts) -> None:
        super().prepare(parts)
        self.add_tokens(parts)

    def add_tokens(self, parts: ModelParts) -> None:
        """Add the placeholder token(s) to every tokenizer whose encoder can learn (CLIP; not T5) and make only their
        embedding rows learn."""
        plan = token_plan(self.config)
        for tokenizer, encoder in zip(parts.tunable_tokenizers, parts.tunable_text_encoders):
            starts = []
            for token, initializer in plan:
                names = vector_names(token, self.config.num_vectors)
                if tokenizer.add_tokens(names) != len(names):
                    raise ConfigError({"placeholder_token": f"The tokenizer already has {token}; pick another "
                                                            "token (e.g. <sks>)."})
                starts.append((tokenizer.convert_tokens_to_ids(names),
                               tokenizer(initializer, add_special_tokens=False).input_ids))
            encoder.resize_token_embeddings(len(tokenizer))
            weight = encoder.get_input_embeddings().weight
            with torch.no_grad():
                for ids, init_ids in starts:
                    # A multi-token initializer starts from the mean of its tokens' embeddings.
                    weight[ids] = weight[init_ids].mean(dim=0, keepdim=True).expand(len(ids), -1)
            weight.requires_grad_(True)
            self.token_ids.append([i for ids, _ in starts for i in ids])
            self.original_embeddings.append(weight.detach().clone())

    def start_tokens_from(self, parts: ModelParts, embeddings: dict[str, list[torch.Tensor]]) -> list[str]:
        """Earlier embeddings (token -> per text encoder [vectors, dim]): tokens this run learns start from them;
        the others are added frozen and saved with the output. Returns the tokens that start learned.
        Call after prepare() and before the optimizer is built (carrying a token resizes the embeddings)."""
        started = []
        for token, tensors in embeddings.items():
            if len(tensors) != len(parts.tunable_text_encoders):
                raise ConfigError({"init_from": f"The embedding of {token} is for {len(tensors)} text encoder(s); "
                                                f"this model has {len(parts.tunable_text_encoders)}."})
            if token in self.tokens:
                if tensors[0].shape[0] != self.config.num_vectors:
                    raise ConfigError({"init_from": f"{token} has {tensors[0].shape[0]} vector(s) there and "
                                                    f"{self.config.num_vectors} here: set num_vectors to "
                                                    f"{tensors[0].shape[0]}."})
                rows = self._rows_of(token)
                with torch.no_grad():
                    for encoder, ids, tensor in zip(parts.tunable_text_encoders, self.token_ids, tensors):
                        weight = encoder.get_input_embeddings().weight
                        weight[ids[rows]] = tensor.to(weight.device, weight.dtype)
                started.append(token)
            elif token not in self.carried:
                self._carry(parts, token, tensors)
        return started

    def _rows_of(self, token: str) -> slice:
        index = self.tokens.index(token)
        return slice(index * self.config.num_vectors, (index + 1) * self.config.num_vectors)

    def _carry(self, parts: ModelParts, token: str, tensors: list[torch.Tensor]) -> None:
        for k, (tokenizer, encoder, tensor) in enumerate(zip(parts.tunable_tokenizers, parts.tunable_text_encoders,
                                                             tensors)):
            names = vector_names(token, tensor.shape[0])
            if tokenizer.add_tokens(names) != len(names):
                raise ConfigError({"init_from": f"The tokenizer already has {token}; it cannot be carried over."})
            encoder.resize_token_embeddings(len(tokenizer))
            weight = encoder.get_input_embeddings().weight
            with torch.no_grad():
                weight[tokenizer.convert_tokens_to_ids(names)] = tensor.to(weight.device, weight.dtype)
            weight.requires_grad_(True)  # resizing made a new matrix: it still learns this run's rows
            if k < len(self.original_embeddings):  # the frozen rows, restored after every step
                self.original_embeddings[k] = weight.detach().clone()
        self.carried[token] = [t.detach().float().cpu() for t in tensors]

    def param_groups(self, parts: ModelParts) -> list[dict]:
        embeddings = [enc.get_input_embeddings().weight for enc in parts.tunable_text_encoders]
        return [{"params": embeddings, "lr": self.config.ti_learning_rate or self.config.learning_rate}]

    def prompt(self, caption: str, generator: torch.Generator, token: str = "") -> str:
        """`token`: the image's concept's token in a run with several concepts (train/setup.py then passes the
        concept's instance prompt naming it as `caption`, or "" for a template)."""
        cfg = self.config
        if cfg.learnable_property == "captions":
            text = caption
        elif token:
            text = caption or template_prompt(self._templates(), token, generator)
        elif cfg.instance_prompt:
            text = cfg.instance_prompt
        else:
            text = template_prompt(self._templates(), cfg.placeholder_token, generator)
        return self.expand_prompt(text)

    def _templates(self) -> tuple[str, ...]:
        return STYLE_TEMPLATES if self.config.learnable_property == "style" else OBJECT_TEMPLATES

    def expand_prompt(self, prompt: str) -> str:
        """`<sks>` -> `<sks> <sks>_1 ...` so every vector of a multi-vector token is used."""
        vectors = {token: self.config.num_vectors for token in self.tokens}
        vectors.update({token: tensors[0].shape[0] for token, tensors in self.carried.items()})
        for token, count in vectors.items():
            if count > 1:
                prompt = _replace_word(prompt, token, " ".join(vector_names(token, count)))
        return prompt

    def after_optimizer_step(self, parts: ModelParts) -> None:
        # Weight decay and Adam touch every row of the embedding matrix; put the old rows back.
        with torch.no_grad():
            for encoder, ids, original in zip(parts.tunable_text_encoders, self.token_ids, self.original_embeddings):
                weight = encoder.get_input_embeddings().weight
                keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
                keep[ids] = False
                weight[keep] = original.to(weight.device, weight.dtype)[keep]

    def learned_embeddings(self, parts: ModelParts) -> list[torch.Tensor]:
        return [enc.get_input_embeddings().weight[ids].detach().float().cpu()
                for enc, ids in zip(parts.tunable_text_encoders, self.token_ids)]

    def trainable_state(self, parts: ModelParts) -> dict[str, torch.Tensor]:
        state = {f"embeddings_{i}": emb for i, emb in enumerate(self.learned_embeddings(parts))}
        for token, tensors in self.carried.items():  # so a checkpoint alone rebuilds the whole output
            state.update({f"{CARRIED}{token}:{k}": tensor for k, tensor in enumerate(tensors)})
        return state

    def load_trainable_state(self, parts: ModelParts, state: dict[str, torch.Tensor]) -> None:
        carried: dict[str, list[torch.Tensor]] = {}
        for key in sorted(k for k in state if k.startswith(CARRIED)):
            token = key[len(CARRIED):].rpartition(":")[0]
            carried.setdefault(token, []).append(state[key])
        for token, tensors in carried.items():
            if token not in self.carried:
                self._carry(parts, token, tensors)
        with torch.no_grad():
            for i, (encoder, ids) in enumerate(zip(parts.tunable_text_encoders, self.token_ids)):
                weight = encoder.get_input_embeddings().weight
                weight[ids] = state[f"embeddings_{i}"].to(weight.device, weight.dtype)

    def save_output(self, parts: ModelParts, out_dir: Path) -> list[Path]:
        """One standard single-token embedding file per token (learned first, then carried ones)."""
        from safetensors.torch import save_file

        learned = self.learned_embeddings(parts)
        per_token = {token: [emb[self._rows_of(token)] for emb in learned] for token in self.tokens}
        per_token.update(self.carried)
        paths: list[Path] = []
        keys = parts.family.embedding_keys
        for token, tensors in per_token.items():
            if keys:  # one set of vectors per CLIP encoder (SDXL, SD3: clip_l, clip_g; Flux: clip_l), as tools key them
                state = dict(zip(keys, tensors, strict=True))
            else:
                state = {token: tensors[0]}
            path = out_dir / outputs.embeddings_file(token, first=not paths, taken=[p.name for p in paths])
            save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"token": token})
            paths.append(path)
        return paths


def _replace_word(prompt: str, token: str, replacement: str) -> str:
    """Replace `token` where it stands alone (not inside a longer token such as `<sks>_1` or `<sks2>`)."""
    import re

    return re.sub(rf"(?<!\w){re.escape(token)}(?!\w)", lambda _: replacement, prompt)
