"""The README.md model card of an exported run, written with huggingface_hub's card tools.

The card carries what the Hub and other tools read (`base_model`, tags, `instance_prompt`, a widget
gallery of sample images) and what a person needs: trigger words, how to load each file, and the
training settings. It never contains a token or the user's local paths.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sdtune_ui.config import field_info, setting_applies
from sdtune_ui.families import Family, family_of_model
from sdtune_ui.methods import TOKENS, Method, adapters, method_named, method_names

SETTINGS = ("method", "model", "data", "resolution", "max_train_steps", "train_batch_size",
            "gradient_accumulation_steps", "learning_rate", "lr_scheduler", "optimizer", "mixed_precision",
            "adapter", "rank", "lora_alpha", "lora_targets", "lokr_factor", "decompose_both", "train_text_encoder",
            "placeholder_token", "initializer_token", "num_vectors", "instance_prompt", "class_prompt",
            "with_prior_preservation", "prior_loss_weight", "snr_gamma", "use_ema", "ema_decay", "seed")


def family_of(config: dict) -> type[Family]:
    """The family of a run's base model, from its UNet config or keys (no weights are loaded)."""
    return family_of_model(str(config.get("model", "")))


def trigger_words(config: dict) -> list[str]:
    """What to type in a prompt to get the subject: the TI token, or the instance prompt."""
    words = []
    method_class = _method(config)
    if method_class is not None and method_class.has(TOKENS) and config.get("placeholder_token"):
        words.append(config["placeholder_token"])
    if config.get("instance_prompt"):
        words.append(config["instance_prompt"])
    return words


def _public_value(name: str, value: Any) -> str:
    # Local dataset paths can reveal a user name; only the folder name goes on a public card.
    if name in ("data", "model") and isinstance(value, str) and (os.path.isabs(value) or value.startswith(("~", "."))):
        value = Path(value).name
    return str(value).replace("|", "\\|")


def _method(config: dict) -> type[Method] | None:
    name = config.get("method", "")
    return method_named(name) if name in method_names() else None


def settings_table(config: dict) -> str:
    method = config.get("method", "")
    fields = {f.name: f for f in field_info()}
    rows = ["| setting | value |", "|---|---|"]
    for name in SETTINGS:
        applies = name in fields and (_method(config) is None or setting_applies(name, method, config.get("adapter")))
        if name not in config or not applies:
            continue
        value = config[name]
        if name == "lora_alpha":
            value = value or config.get("rank")   # 0 means "same as rank"
        off = name in ("with_prior_preservation", "snr_gamma", "use_ema", "decompose_both") and not value
        off = off or (name == "ema_decay" and not config.get("use_ema"))
        no_prior = name == "prior_loss_weight" and not config.get("with_prior_preservation")
        if value in ("", None) or off or no_prior:
            continue
        rows.append(f"| {name} | {_public_value(name, value)} |")
    return "\n".join(rows)


def _usage(family: type[Family], config: dict, *, pipeline: bool, lora_file: str | None,
           embedding_file: str | None, controlnet: bool = False) -> str:
    """A diffusers snippet that loads exactly the exported files."""
    pipeline_class = family.pipeline_class_name
    source = "REPO_ID" if pipeline else config.get("model", "")
    lines = ["```python", "import torch", f"from diffusers import {pipeline_class}", "",
             f'pipe = {pipeline_class}.from_pretrained("{source}", torch_dtype=torch.float16).to("cuda")']
    if controlnet:   # a ControlNet beside its base model, steered by a condition picture
        pipeline_class = family.controlnet_pipeline_class_name
        lines = ["```python", "import torch", f"from diffusers import ControlNetModel, {pipeline_class}",
                 "from diffusers.utils import load_image", "",
                 'controlnet = ControlNetModel.from_pretrained("REPO_ID", torch_dtype=torch.float16)',
                 f'pipe = {pipeline_class}.from_pretrained("{config.get("model", "")}", controlnet=controlnet, '
                 'torch_dtype=torch.float16).to("cuda")']
    if lora_file:
        lines += adapters.adapter_of_run(config).usage_lines(lora_file)
    token = config.get("placeholder_token") or "<token>"
    if embedding_file:
        if family.embedding_keys:  # one set of vectors per CLIP text encoder
            lines += ["from huggingface_hub import hf_hub_download", "from safetensors.torch import load_file",
                      f'state = load_file(hf_hub_download("REPO_ID", "{embedding_file}"))']
            pairs = list(zip(family.embedding_keys, family.tunable_components()))
            if hasattr(family.pipeline_class(), "load_textual_inversion"):
                lines += [f'pipe.load_textual_inversion(state["{key}"], token="{token}", text_encoder=pipe.{encoder}, '
                          f"tokenizer=pipe.{tokenizer})" for key, (tokenizer, encoder) in pairs]
            else:  # no textual-inversion loader on this pipeline (SD3): add the token rows directly
                lines += [f"# {pipeline_class} has no load_textual_inversion: add the token to each CLIP encoder"]
                for key, (tokenizer, encoder) in pairs:
                    lines += [f'pipe.{tokenizer}.add_tokens("{token}")',
                              f"pipe.{encoder}.resize_token_embeddings(len(pipe.{tokenizer}))",
                              f"pipe.{encoder}.get_input_embeddings().weight.data["
                              f'pipe.{tokenizer}.convert_tokens_to_ids("{token}")] = state["{key}"][0]']
        else:
            lines.append(f'pipe.load_textual_inversion("REPO_ID", weight_name="{embedding_file}", token="{token}")')
    prompt = (trigger_words(config) or ["a photo"])[-1]
    if controlnet:
        lines.append(f'image = pipe("{prompt}", image=load_image("condition.png"), num_inference_steps=25).images[0]')
    elif family.inpainting:   # white in the mask = repainted
        lines += ["from diffusers.utils import load_image",
                  f'image = pipe("{prompt}", image=load_image("picture.png"), mask_image=load_image("mask.png"), '
                  "num_inference_steps=25).images[0]"]
    else:
        lines.append(f'image = pipe("{prompt}", num_inference_steps=25).images[0]')
    lines.append("```")
    return "\n".join(lines)


def build_model_card(config: dict, *, files: list[str], samples: list[tuple[str, str]] | None = None,
                     family: type[Family] | None = None, repo_id: str | None = None, notes: list[str] | None = None,
                     lora_file: str | None = None, embedding_file: str | None = None) -> Any:
    """A huggingface_hub ModelCard for an exported run.

    files: exported file names (relative to the export folder); samples: (image path relative to the
    export folder, prompt) shown as the card's gallery.
    """
    from huggingface_hub import ModelCard, ModelCardData

    family = family or family_of(config)
    method = config.get("method", "")
    method_class = _method(config)
    if method_class is not None:
        family = method_class.output_family(family)   # a conversion's output is another family's pipeline
    tags = ["text-to-image", "diffusers", "diffusers-training", *family.card_tags,
            *(method_class.card_tags_for(config) if method_class else ()), "sdtune_ui"]
    triggers = trigger_words(config)
    data = ModelCardData(
        base_model=_public_value("model", config.get("model", "")) or None,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        license=family.license,
        **({"license_name": family.license_name, "license_link": family.license_link} if family.license_name else {}),
        tags=list(dict.fromkeys(tags)),
        instance_prompt=triggers[0] if triggers else None,
        widget=[{"text": prompt, "output": {"url": path}} for path, prompt in (samples or [])] or None,
    )
    title = repo_id.split("/")[-1] if repo_id else f"{method} on {_public_value('model', config.get('model', ''))}"
    usage = _usage(family, config, pipeline="model_index.json" in files, lora_file=lora_file,
                   embedding_file=embedding_file, controlnet="diffusion_pytorch_model.safetensors" in files,
                   ).replace("REPO_ID", repo_id or "path/to/this/folder")
    trigger_text = ("\n".join(f"- `{word}`" for word in triggers) if triggers
                    else "No trigger word: the model was trained on captions; describe the image as in them.")
    gallery = "<Gallery />\n\n" if samples else ""
    base = _public_value("model", config.get("model", ""))
    base_link = f"[{base}](https://huggingface.co/{base})" if "/" in base else f"`{base}`"
    body = f"""---
{data.to_yaml()}
---

# {title}

{gallery}A {method_class.card_summary(config) if method_class else method} of {base_link}, trained with sdtune_ui.

## Trigger words

{trigger_text}

## Files

{chr(10).join(f'- `{name}`' for name in files)}

{(chr(10) * 2).join(notes or [])}

## Use with diffusers

{usage}

## Training settings

{settings_table(config)}
"""
    return ModelCard(body)
