"""How a run behaves: caption dropout, what textual inversion may touch, resume, faults and bad data."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sdtune_ui.runs import RunDir
from sdtune_ui.train import train
from sdtune_ui.train.trainer import Trainer
from tests.train_helpers import TI_PROMPT, losses, quick_config, run_training


def step_logged(run_dir, step: int) -> bool:
    return any(e["kind"] == "step" and e["step"] >= step for e in RunDir(run_dir).read_events())


def last_status(run_dir) -> dict:
    return [e for e in RunDir(run_dir).read_events() if e["kind"] == "status"][-1]


def test_caption_dropout_empties_the_configured_fraction_of_prompts(toy_dataset, tmp_path):
    trainer = Trainer(quick_config(toy_dataset, caption_dropout=0.25, train_batch_size=4),
                      RunDir(tmp_path / "run").create())
    trainer.setup()
    prompts = [p for micro in range(400) for p in trainer._batch(micro).prompts]
    assert len(prompts) == 1600
    assert prompts.count("") / len(prompts) == pytest.approx(0.25, abs=0.03)
    assert all(p.startswith("a photo of sks robot") for p in prompts if p)


def test_textual_inversion_changes_only_the_new_embedding_rows(toy_dataset, tmp_path):
    trainer = Trainer(quick_config(toy_dataset, method="textual_inversion", instance_prompt=TI_PROMPT,
                                   num_vectors=2, learning_rate=5e-2, adam_weight_decay=0.1),
                      RunDir(tmp_path / "run").create())
    trainer.setup()
    encoder = trainer.parts.text_encoders[0]
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    unet_before = [p.detach().clone() for p in trainer.parts.unet.parameters()]
    trainer.fit()

    new_rows = trainer.parts.tokenizers[0].convert_tokens_to_ids(["<sks>", "<sks>_1"])
    embedding_name = next(n for n, p in encoder.named_parameters() if p is encoder.get_input_embeddings().weight)
    for name, param in encoder.named_parameters():
        if name == embedding_name:
            changed = (param != before[name]).any(dim=1).nonzero().flatten().tolist()
            assert changed == new_rows          # both vectors learned, every other row bit-identical
        else:
            assert torch.equal(param, before[name]), name
    assert all(torch.equal(a, b) for a, b in zip(unet_before, trainer.parts.unet.parameters()))


def test_resumed_run_equals_an_uninterrupted_one(toy_dataset, tmp_path):
    config = quick_config(toy_dataset, max_train_steps=6, checkpointing_steps=3, random_flip=True,
                          caption_dropout=0.5, lr_scheduler="cosine", lr_warmup_steps=2, learning_rate=1e-2)
    straight = run_training(config, tmp_path / "straight")

    # Cancel is checked after every step; step 3's loss is logged before step 4's check, so it stops at 4.
    status = train(config, tmp_path / "resumed", cancel=lambda: step_logged(tmp_path / "resumed", 3))
    assert status == "cancelled"
    assert "resume" in last_status(tmp_path / "resumed")["message"]
    assert [p.name for p in RunDir(tmp_path / "resumed").checkpoints()] == ["step-3", "step-4"]
    resumed = run_training(config, tmp_path / "resumed")

    assert losses(resumed)[-2:] == pytest.approx(losses(straight)[-2:], rel=1e-5)
    a = load_file(straight.output_dir / "pytorch_lora_weights.safetensors")
    b = load_file(resumed.output_dir / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


def test_cancel_file_from_another_process_stops_the_run_with_a_checkpoint(toy_dataset, tmp_path):
    run = RunDir(tmp_path / "run")

    def someone_clicks_cancel() -> bool:
        if step_logged(run.path, 1):
            run.request_cancel()  # what the app or a terminal does: write the CANCEL file
        return False

    assert train(quick_config(toy_dataset, max_train_steps=50), run.path, cancel=someone_clicks_cancel) == "cancelled"
    assert run.latest_checkpoint().name == "step-2"


def test_non_finite_loss_stops_and_names_the_step_and_the_images(toy_dataset, tmp_path, monkeypatch):
    original = Trainer.compute_loss

    def loss_goes_nan_at_step_3(self, batch):
        loss = original(self, batch)
        return loss * float("nan") if self.step == 2 else loss

    monkeypatch.setattr(Trainer, "compute_loss", loss_goes_nan_at_step_3)
    status = train(quick_config(toy_dataset, max_train_steps=5, checkpointing_steps=2), tmp_path / "run")
    message = last_status(tmp_path / "run")["message"]
    assert status == "failed"
    assert "step 3" in message and "robot_0" in message and "step-2" in message
    assert [p.name for p in RunDir(tmp_path / "run").checkpoints()] == ["step-2"]


def test_out_of_memory_ends_with_concrete_advice(toy_dataset, tmp_path, monkeypatch):
    def no_memory(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "compute_loss", no_memory)
    assert train(quick_config(toy_dataset), tmp_path / "run") == "failed"
    message = last_status(tmp_path / "run")["message"]
    assert "gradient checkpointing" in message and "batch size" in message and "LoRA" in message
    assert "Traceback" in (tmp_path / "run" / "train.log").read_text()


def test_unreadable_images_are_skipped_with_a_warning_naming_them(toy_dataset, tmp_path):
    (toy_dataset / "broken.png").write_bytes(b"not really a png")
    run = run_training(quick_config(toy_dataset, max_train_steps=1), tmp_path / "run")
    logs = [e["message"] for e in run.read_events() if e["kind"] == "log"]
    assert any("broken.png" in line for line in logs)


@pytest.mark.parametrize(
    ("prepare", "words"),
    [
        (lambda folder: [p.unlink() for p in folder.glob("*.png")], "No usable image"),
        (lambda folder: [p.write_bytes(b"junk") for p in folder.glob("*.png")], "No usable image"),
        (lambda folder: [p.unlink() for p in folder.glob("*") if p.suffix in (".txt", ".jsonl", ".json")],
         "No image has a caption"),
    ],
)
def test_unusable_datasets_fail_before_training_with_a_message(toy_dataset, tmp_path, prepare, words):
    prepare(toy_dataset)
    assert train(quick_config(toy_dataset), tmp_path / "run") == "failed"
    assert words in last_status(tmp_path / "run")["message"]
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_missing_dataset_folder_is_reported(tmp_path):
    assert train(quick_config(tmp_path / "nowhere"), tmp_path / "run") == "failed"
    assert "does not exist" in last_status(tmp_path / "run")["message"]


def test_textual_inversion_captions_must_use_the_placeholder(toy_dataset, tmp_path):
    config = quick_config(toy_dataset, method="textual_inversion", learnable_property="captions")
    assert train(config, tmp_path / "run") == "failed"
    assert "<sks>" in last_status(tmp_path / "run")["message"]


def test_dreambooth_folder_supplies_its_prompts(toy_dataset, tmp_path):
    # dataset_info.json holds instance_prompt / class_prompt (as SageMaker JumpStart writes it).
    run = run_training(quick_config(toy_dataset, method="dreambooth", max_train_steps=1), tmp_path / "run")
    assert run.config()["instance_prompt"] == "a photo of sks robot"
    assert run.config()["class_prompt"] == "a photo of a robot"


def test_cancel_during_setup_stops_before_the_first_step(toy_dataset, tmp_path):
    assert train(quick_config(toy_dataset), tmp_path / "run", cancel=lambda: True) == "cancelled"
    assert not step_logged(tmp_path / "run", 1)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_speed_ups_do_not_change_results(toy_dataset, tmp_path, method):
    """Cached latents and text embeddings give the same losses and weights as encoding every step."""
    common = dict(method=method, max_train_steps=4, random_flip=True, caption_dropout=0.3, learning_rate=1e-3,
                  checkpointing_steps=3)
    fast = run_training(quick_config(toy_dataset, **common), tmp_path / "fast")
    plain = run_training(quick_config(toy_dataset, cache_latents=False, cache_text_embeddings=False, **common),
                         tmp_path / "plain")
    assert losses(fast) == pytest.approx(losses(plain), rel=1e-4)
    a = load_file(fast.checkpoints()[-1] / "trainable.safetensors")
    b = load_file(plain.checkpoints()[-1] / "trainable.safetensors")
    # Float rounding differs between the paths; Adam divides by the gradient's own size, so an element with
    # an almost-zero gradient can still move by up to one learning-rate step. Nearly all must agree exactly.
    differences = torch.cat([(a[key] - b[key]).abs().flatten() for key in a])
    assert (differences > 1e-5).float().mean() < 1e-3
    assert differences.max() <= common["learning_rate"]


def test_the_compiled_step_gives_the_same_losses_and_weights(toy_dataset, tmp_path, monkeypatch):
    """torch.compile (on by default for long CUDA runs) fuses ops; it must not change what is learned.
    CPU inductor here, compiling the whole UNet as the SD1.x default does (~40 s)."""
    from torch._dynamo.utils import counters

    from sdtune_ui.train import speed

    common = dict(method="lora", max_train_steps=4, learning_rate=1e-3, checkpointing_steps=3, compile_scope="whole")
    plain = run_training(quick_config(toy_dataset, compile_unet="none", **common), tmp_path / "plain")
    counters.clear()
    monkeypatch.setattr(speed, "compile_plan", lambda config, **_: ("default", "forced by the test"))
    compiled = run_training(quick_config(toy_dataset, **common), tmp_path / "compiled")
    assert counters["stats"]["unique_graphs"] > 0  # the step really ran through compiled graphs
    assert losses(compiled) == pytest.approx(losses(plain), rel=1e-4)
    a = load_file(compiled.checkpoints()[-1] / "trainable.safetensors")
    b = load_file(plain.checkpoints()[-1] / "trainable.safetensors")
    differences = torch.cat([(a[key] - b[key]).abs().flatten() for key in a])
    assert (differences > 1e-5).float().mean() < 1e-3 and differences.max() <= common["learning_rate"]
