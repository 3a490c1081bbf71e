"""Every method on every model family trains a few steps and leaves an artifact plain diffusers loads."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from sdtune_ui.models import load_pipeline
from tests.train_helpers import INSTANCE_PROMPT, TI_PROMPT, generate_latents, quick_config, run_training

FAMILIES = ["tiny-sd1", "tiny-sd2-v", "tiny-sdxl"]
METHODS = ["full", "dreambooth", "lora", "textual_inversion", "pivotal"]


def method_settings(method: str) -> dict:
    if method == "dreambooth":
        return dict(instance_prompt=INSTANCE_PROMPT, with_prior_preservation=True,
                    class_prompt="a photo of a robot", num_class_images=2, train_text_encoder=True)
    if method in ("textual_inversion", "pivotal"):
        return dict(instance_prompt=TI_PROMPT, learning_rate=5e-2)
    if method == "full":
        return dict(use_ema=True, ema_decay=0.9)
    return dict(train_text_encoder=True, learning_rate=1e-2, lora_targets="all")


def load_with_artifact(model: str, method: str, output):
    """Load the trained result with diffusers' own loaders, exactly as a user would."""
    if method in ("full", "dreambooth"):
        return DiffusionPipeline.from_pretrained(output, use_safetensors=True)
    pipe = load_pipeline(model)
    if method in ("lora", "pivotal"):
        pipe.load_lora_weights(output)
    if method in ("textual_inversion", "pivotal"):
        embeds = output / "learned_embeds.safetensors"
        if hasattr(pipe, "text_encoder_2"):
            state = load_file(embeds)
            pipe.load_textual_inversion(state["clip_l"], token="<sks>", text_encoder=pipe.text_encoder,
                                        tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(state["clip_g"], token="<sks>", text_encoder=pipe.text_encoder_2,
                                        tokenizer=pipe.tokenizer_2)
        else:
            pipe.load_textual_inversion(embeds)
    return pipe


@pytest.mark.parametrize("model", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_method_trains_and_its_artifact_loads_in_diffusers(model, method, toy_dataset, tmp_path):
    config = quick_config(toy_dataset, model=model, method=method, validation_prompts=[
        TI_PROMPT if method in ("textual_inversion", "pivotal") else INSTANCE_PROMPT],
        validation_steps=2, validation_inference_steps=2, **method_settings(method))
    run = run_training(config, tmp_path / "run")

    events = run.read_events()
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2, 3]
    assert any(e["kind"] == "sample" for e in events) and run.samples()
    assert [p.name for p in run.checkpoints()] == ["step-2"]
    assert json.loads(run.config_path.read_text())["method"] == method

    prompt = TI_PROMPT if method in ("textual_inversion", "pivotal") else INSTANCE_PROMPT
    tuned = load_with_artifact(model, method, run.output_dir)
    base = load_pipeline(model)
    if method in ("textual_inversion", "pivotal"):  # the base has no <sks>; compare with its initializer word
        prompt_for_base = prompt.replace("<sks>", "dog")
    else:
        prompt_for_base = prompt
    tuned_latents = generate_latents(tuned, prompt, steps=2)
    assert not torch.allclose(tuned_latents, generate_latents(base, prompt_for_base, steps=2))


def test_saved_lora_loads_back_with_every_trained_weight(toy_dataset, tmp_path):
    from peft.utils import get_peft_model_state_dict

    config = quick_config(toy_dataset, lora_targets="all", train_text_encoder=True, learning_rate=1e-2)
    run = run_training(config, tmp_path / "run")
    trained = load_file(run.checkpoints()[-1] / "trainable.safetensors")
    pipe = load_pipeline("tiny-sd1")
    pipe.load_lora_weights(run.output_dir)
    adapter = list(pipe.unet.peft_config)[0]
    unet_loaded = get_peft_model_state_dict(pipe.unet, adapter_name=adapter)
    te_loaded = get_peft_model_state_dict(pipe.text_encoder, adapter_name=adapter)
    unet_trained = {k for k in trained if k.startswith("unet.")}
    te_trained = {k for k in trained if k.startswith("text_encoder_0.")}
    # Every LoRA matrix that was trained (conv, attention and feed-forward; UNet and text encoder) is loaded.
    assert len(unet_loaded) == len(unet_trained) > 0
    assert len(te_loaded) == len(te_trained) > 0
    assert any("attn1.to_q" in k for k in unet_loaded) and any("conv1" in k for k in unet_loaded)
