"""Training methods as small strategies over the one shared loop.

A method says what is trainable, how each step's prompt is built, what to do after an optimizer step
and what it saves. The loop (trainer.py) knows nothing else about methods; model-family differences
live in sdtune_ui/models.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from sdtune_ui.config import TrainConfig
from sdtune_ui.models.family import ModelParts
from sdtune_ui.train.data import OBJECT_TEMPLATES, STYLE_TEMPLATES, template_prompt

UNET_LORA_TARGETS = {
    "attention": ["to_q", "to_k", "to_v", "to_out.0"],
    "attention_ff": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"],
    "all": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
            "conv1", "conv2", "conv_shortcut", "time_emb_proj"],
}
TEXT_ENCODER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _freeze(parts: ModelParts) -> None:
    for module in (parts.unet, parts.vae, *parts.text_encoders):
        module.requires_grad_(False)


def _named_trainable(parts: ModelParts) -> dict[str, torch.nn.Parameter]:
    """Every trainable parameter under a stable prefix: unet.*, text_encoder_0.*, text_encoder_1.*."""
    modules = {"unet": parts.unet, **{f"text_encoder_{i}": te for i, te in enumerate(parts.text_encoders)}}
    return {f"{prefix}.{name}": p for prefix, module in modules.items()
            for name, p in module.named_parameters() if p.requires_grad}


class Method(ABC):
    """Base strategy; subclasses override only what differs."""

    def __init__(self, config: TrainConfig):
        self.config = config

    # Which models keep full-precision weights (the rest are cast to the mixed-precision dtype).
    def full_precision_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        return []

    def trains_text_encoders(self) -> bool:
        return False

    def prepare(self, parts: ModelParts) -> None:
        """Freeze everything, then make this method's parameters trainable (adapters, new tokens)."""
        _freeze(parts)

    def trained_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        """Models that have trainable parameters (wrapped for DDP, put in train mode)."""
        models = [parts.unet]
        if self.trains_text_encoders():
            models += parts.text_encoders
        return models

    def param_groups(self, parts: ModelParts) -> list[dict]:
        return [{"params": list(_named_trainable(parts).values()), "lr": self.config.learning_rate}]

    def prompt(self, caption: str, generator: torch.Generator) -> str:
        return caption

    def expand_prompt(self, prompt: str) -> str:
        return prompt

    def after_optimizer_step(self, parts: ModelParts) -> None:  # noqa: B027 - an optional hook
        """Called after every optimizer step; most methods need nothing here."""

    def trainable_state(self, parts: ModelParts) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in _named_trainable(parts).items()}

    def load_trainable_state(self, parts: ModelParts, state: dict[str, torch.Tensor]) -> None:
        params = _named_trainable(parts)
        missing = set(params) - set(state)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[name].to(p.device, p.dtype))

    @abstractmethod
    def save_output(self, parts: ModelParts, out_dir: Path) -> list[Path]:
        """Write the method's standard artifact(s) into out_dir; return the files written."""


class FullFineTune(Method):
    """All UNet weights (and optionally the text encoder's); saved as a diffusers pipeline folder."""

    def full_precision_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        return self.trained_models(parts)

    def trains_text_encoders(self) -> bool:
        return self.config.train_text_encoder

    def prepare(self, parts: ModelParts) -> None:
        super().prepare(parts)
        for model in self.trained_models(parts):
            model.requires_grad_(True)

    def save_output(self, parts: ModelParts, out_dir: Path) -> list[Path]:
        from sdtune_ui.models.loading import load_pipeline

        # Frozen parts may sit in half precision on the GPU; reload them untouched from the base model
        # and plug in the trained full-precision modules, so nothing is saved rounded.
        pipe = load_pipeline(self.config.model, allow_pickle=self.config.allow_pickle)
        pipe.unet = parts.unet.to("cpu", torch.float32)
        if self.trains_text_encoders():
            pipe.text_encoder = parts.text_encoders[0].to("cpu", torch.float32)
            if len(parts.text_encoders) > 1:
                pipe.text_encoder_2 = parts.text_encoders[1].to("cpu", torch.float32)
        pipe.save_pretrained(out_dir, safe_serialization=True)
        return [out_dir / "model_index.json"]


class LoRA(Method):
    """peft LoRA adapters on the UNet (and optionally the text encoders); saved in diffusers format."""

    def trains_text_encoders(self) -> bool:
        return self.config.train_text_encoder

    def prepare(self, parts: ModelParts) -> None:
        from peft import LoraConfig

        super().prepare(parts)
        cfg = self.config
        parts.unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.effective_lora_alpha,
                                          lora_dropout=cfg.lora_dropout, init_lora_weights="gaussian",
                                          target_modules=UNET_LORA_TARGETS[cfg.lora_targets]))
        if self.trains_text_encoders():
            for encoder in parts.text_encoders:
                encoder.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.effective_lora_alpha,
                                               lora_dropout=cfg.lora_dropout, init_lora_weights="gaussian",
                                               target_modules=TEXT_ENCODER_LORA_TARGETS))

    def save_output(self, parts: ModelParts, out_dir: Path) -> list[Path]:
        from peft.utils import get_peft_model_state_dict

        def lora_layers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
            # peft-format keys, which diffusers loads natively. (Converting to the older diffusers key
            # format silently dropped the attention layers when conv layers were targeted too.)
            return get_peft_model_state_dict(model)

        def metadata(model: torch.nn.Module) -> dict:
            # Records rank and alpha in the file, so loaders apply the trained scale (alpha / rank).
            return model.peft_config["default"].to_dict()

        names = {"unet": parts.unet}
        if self.trains_text_encoders():
            names["text_encoder"] = parts.text_encoders[0]
            if len(parts.text_encoders) > 1:
                names["text_encoder_2"] = parts.text_encoders[1]
        arguments = {}
        for name, model in names.items():
            arguments[f"{name}_lora_layers"] = lora_layers(model)
            arguments[f"{name}_lora_adapter_metadata"] = metadata(model)
        type(parts.pipeline).save_lora_weights(str(out_dir), safe_serialization=True, **arguments)
        return [out_dir / "pytorch_lora_weights.safetensors"]


class TextualInversion(Method):
    """New token embedding rows only; saved as learned_embeds.safetensors (diffusers and A1111 load it)."""

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.token_ids: list[list[int]] = []              # per text encoder
        self.original_embeddings: list[torch.Tensor] = []

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
        else:  # SDXL: one set of vectors per text encoder, keyed as the community formats do
            state = {"clip_l": embeddings[0], "clip_g": embeddings[1]}
        path = out_dir / "learned_embeds.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path),
                  metadata={"token": self.config.placeholder_token})
        return [path]


class PivotalTuning(TextualInversion):
    """Textual inversion and LoRA together: new token embeddings plus LoRA on the UNet."""

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.lora = LoRA(config)

    def trained_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        return [parts.unet, *parts.text_encoders]

    def prepare(self, parts: ModelParts) -> None:
        self.lora.prepare(parts)  # freezes everything, then adds the adapters
        self.add_tokens(parts)

    def param_groups(self, parts: ModelParts) -> list[dict]:
        embeddings = super().param_groups(parts)
        embedding_ids = {id(p) for group in embeddings for p in group["params"]}
        lora_params = [p for p in _named_trainable(parts).values() if id(p) not in embedding_ids]
        return [{"params": lora_params, "lr": self.config.learning_rate}, *embeddings]

    def trainable_state(self, parts: ModelParts) -> dict[str, torch.Tensor]:
        state = Method.trainable_state(self, parts)
        state.update(super().trainable_state(parts))
        return state

    def load_trainable_state(self, parts: ModelParts, state: dict[str, torch.Tensor]) -> None:
        Method.load_trainable_state(self, parts, state)
        super().load_trainable_state(parts, state)

    def save_output(self, parts: ModelParts, out_dir: Path) -> list[Path]:
        return self.lora.save_output(parts, out_dir) + super().save_output(parts, out_dir)


METHOD_CLASSES: dict[str, type[Method]] = {
    "full": FullFineTune,
    "dreambooth": FullFineTune,
    "lora": LoRA,
    "textual_inversion": TextualInversion,
    "pivotal": PivotalTuning,
}


def make_method(config: TrainConfig) -> Method:
    return METHOD_CLASSES[config.method](config)
