"""SD3 and Flux train with every method that applies to them, through the one shared loop.

Each run takes a few steps on the tiny offline models and leaves its artifact; the artifact loads back with
diffusers' own loaders and changes what the model generates. Resume equals an uninterrupted run, and the text
encoders (T5 above all) are freed while the steps train from cached prompts.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sdtune_ui.config import TrainConfig
from sdtune_ui.models import load_pipeline
from sdtune_ui.runs import RunDir
from sdtune_ui.train import train
from sdtune_ui.train.trainer import Trainer
from tests.flow_helpers import COMMON, FLOW_MODELS, METHOD_SETTINGS, latents, load_result, one_torch_thread
from tests.train_helpers import INSTANCE_PROMPT, TI_PROMPT, losses, run_training

__all__ = ["one_torch_thread"]


def config(model: str, data, **settings) -> TrainConfig:
    return TrainConfig(model=model, data=str(data), **{**COMMON, **settings})


@pytest.mark.parametrize("method", list(METHOD_SETTINGS))
@pytest.mark.parametrize("model", FLOW_MODELS)
def test_method_trains_and_its_artifact_loads_in_diffusers_and_changes_generation(model, method, toy_dataset,
                                                                                  tmp_path):
    settings = dict(METHOD_SETTINGS[method])
    if method == "dreambooth_lora":
        settings["class_data"] = str(tmp_path / "class_images")
    run = run_training(config(model, toy_dataset, **settings), tmp_path / "run")

    assert all(torch.isfinite(torch.tensor(losses(run))))
    if method == "dreambooth_lora":   # the base model drew the class images the prior loss trains on
        assert len(list((tmp_path / "class_images").glob("*.png"))) == 2
    prompt = TI_PROMPT if method in ("textual_inversion", "pivotal") else INSTANCE_PROMPT
    tuned = load_result(model, method, run.output_dir)
    base = load_pipeline(model)
    if method == "textual_inversion":   # before training, <sks> was its initializer word
        base_prompt = "a photo of dog"
    else:
        base_prompt = prompt
    difference = (latents(tuned, prompt) - latents(base, base_prompt)).abs().max()
    assert difference > 1e-4


def test_textual_inversion_learns_clip_tokens_only_and_leaves_t5_alone(toy_dataset, tmp_path):
    run = run_training(config("tiny-sd3", toy_dataset, **METHOD_SETTINGS["textual_inversion"]), tmp_path / "run")
    state = load_file(run.output_dir / "learned_embeds.safetensors")
    assert set(state) == {"clip_l", "clip_g"}   # one vector set per CLIP encoder, none for T5
    assert [t.shape for t in state.values()] == [torch.Size([1, 32]), torch.Size([1, 32])]
    messages = " ".join(e.get("message", "") for e in run.read_events() if e["kind"] == "log")
    assert "T5" in messages and "new token" in messages   # the run says why T5 gets no token


@pytest.mark.parametrize("model", FLOW_MODELS)
def test_text_encoders_are_freed_during_steps_that_train_on_cached_prompts(model, toy_dataset, tmp_path,
                                                                           monkeypatch):
    seen: list[set[str]] = []
    original = Trainer.compute_loss

    def recording(self, batch):
        seen.append({p.device.type for encoder in self.parts.text_encoders for p in encoder.parameters()})
        return original(self, batch)

    monkeypatch.setattr(Trainer, "compute_loss", recording)
    run = run_training(config(model, toy_dataset, method="lora", instance_prompt=INSTANCE_PROMPT,
                              validation_prompts=[INSTANCE_PROMPT], validation_steps=2, eval_steps=2),
                       tmp_path / "run")
    assert len(seen) == 3 and all(devices == {"meta"} for devices in seen)   # no weights left anywhere
    # Sample images and the held-out loss still work, from the cached prompts.
    assert len([e for e in run.read_events() if e["kind"] == "sample"]) == 2
    assert len([e for e in run.read_events() if e["kind"] == "metric"]) == 2


@pytest.mark.parametrize("model", FLOW_MODELS)
def test_resumed_run_equals_an_uninterrupted_one(model, toy_dataset, tmp_path):
    settings = config(model, toy_dataset, method="lora", instance_prompt=INSTANCE_PROMPT, max_train_steps=4,
                      checkpointing_steps=2, learning_rate=1e-2, caption_dropout=0.5, lr_scheduler="cosine")
    straight = run_training(settings, tmp_path / "straight")

    def step_logged(step: int) -> bool:
        return any(e["kind"] == "step" and e["step"] >= step for e in RunDir(tmp_path / "resumed").read_events())

    assert train(settings, tmp_path / "resumed", cancel=lambda: step_logged(2)) == "cancelled"
    resumed = run_training(settings, tmp_path / "resumed")
    assert losses(resumed)[-2:] == pytest.approx(losses(straight)[-2:], rel=1e-5)
    a = load_file(straight.output_dir / "pytorch_lora_weights.safetensors")
    b = load_file(resumed.output_dir / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(k.startswith("transformer.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("model", FLOW_MODELS)
def test_text_encoders_take_turns_on_the_gpu_while_the_prompts_are_cached(model, toy_dataset, tmp_path, monkeypatch):
    # The set-up's peak is then T5-XXL alone (8.9 GiB), not every encoder together: each comes to the device once for
    # a batch of prompts, and a batch encodes each prompt exactly as encoding it alone would.
    import sdtune_ui.train.caches as caches

    arrivals: list[str] = []
    move = caches.move_to_device
    monkeypatch.setattr(caches, "move_to_device",
                        lambda module, *args: (arrivals.append(type(module).__name__), move(module, *args))[1])
    compared: list[float] = []
    encode_all = Trainer._encode_all_prompts

    def encode_and_compare(self):
        cache = encode_all(self)
        family, parts = self.parts.family, self.parts
        for prompt, (hidden, pooled) in cache.items():
            alone, alone_pooled = family.encode(parts.text_encoders, family.tokenize(parts.tokenizers, [prompt]))
            compared.append(float((alone[0].to(hidden.dtype) - hidden).abs().max()))
            compared.append(float((alone_pooled[0].to(pooled.dtype) - pooled).abs().max()))
        return cache

    monkeypatch.setattr(Trainer, "_encode_all_prompts", encode_and_compare)
    run_training(config(model, toy_dataset, method="lora", instance_prompt=INSTANCE_PROMPT,
                        validation_prompts=[INSTANCE_PROMPT, "a robot"]), tmp_path / "run")
    encoders = ["CLIPTextModelWithProjection"] * 2 + ["T5EncoderModel"] if model == "tiny-sd3" else [
        "CLIPTextModel", "T5EncoderModel"]
    assert arrivals == encoders   # one visit each: four prompts are one batch
    assert compared and max(compared) < 1e-5
