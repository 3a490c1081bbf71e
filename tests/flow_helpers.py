"""Shared pieces of the SD3 / Flux tests: quick settings per method, loading a result the way a diffusers user
would, and generating latents to compare."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from sdtune_ui.models import load_pipeline
from tests.generate_helpers import one_torch_thread  # noqa: F401 - the SD3 / Flux tests import the fixture from here
from tests.train_helpers import INSTANCE_PROMPT, TI_PROMPT

FLOW_MODELS = ["tiny-sd3", "tiny-flux"]
# Every method that applies to the transformer families; "dreambooth_lora" is LoRA on one instance prompt with prior
# preservation (class images made by the base model).
METHOD_SETTINGS = {
    "lora": dict(method="lora", train_text_encoder=True, learning_rate=1e-2, lora_targets="all",
                 instance_prompt=INSTANCE_PROMPT),
    "dreambooth_lora": dict(method="lora", learning_rate=1e-2, instance_prompt=INSTANCE_PROMPT,
                            with_prior_preservation=True, class_prompt="a photo of a robot", num_class_images=2),
    "textual_inversion": dict(method="textual_inversion", instance_prompt=TI_PROMPT, learning_rate=5e-2),
    "pivotal": dict(method="pivotal", instance_prompt=TI_PROMPT, learning_rate=1e-2, ti_learning_rate=5e-2),
    "full": dict(method="full", learning_rate=1e-3, instance_prompt=INSTANCE_PROMPT),
}
COMMON = dict(resolution=32, max_train_steps=3, log_every=1, checkpointing_steps=2, validation_steps=0,
              validation_inference_steps=2, caption_dropout=0.0)


def add_embedding(pipe, state: dict, token: str = "<sks>") -> None:
    """A learned_embeds.safetensors of SD3 (clip_l, clip_g) or Flux (clip_l): diffusers' load_textual_inversion where
    the pipeline has it (Flux); SD3's pipeline has none, so its rows are added with the plain transformers calls."""
    pairs = [("clip_l", pipe.tokenizer, pipe.text_encoder)]
    if "clip_g" in state:
        pairs.append(("clip_g", pipe.tokenizer_2, pipe.text_encoder_2))
    for key, tokenizer, encoder in pairs:
        if hasattr(pipe, "load_textual_inversion"):
            pipe.load_textual_inversion(state[key], token=token, text_encoder=encoder, tokenizer=tokenizer)
        else:
            tokenizer.add_tokens(token)
            encoder.resize_token_embeddings(len(tokenizer))
            encoder.get_input_embeddings().weight.data[tokenizer.convert_tokens_to_ids(token)] = state[key][0]


def load_result(model: str, method: str, output: Path):
    """The trained result loaded with diffusers' own loaders, as a user would."""
    if method == "full":
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(output, use_safetensors=True)
    pipe = load_pipeline(model)
    if method in ("lora", "dreambooth_lora", "pivotal"):
        pipe.load_lora_weights(output)
    if method in ("textual_inversion", "pivotal"):
        add_embedding(pipe, load_file(output / "learned_embeds.safetensors"))
    return pipe


def latents(pipe, prompt: str, seed: int = 0) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, num_inference_steps=2, height=32, width=32, guidance_scale=1.0,
                generator=torch.Generator().manual_seed(seed), output_type="latent").images[0]
