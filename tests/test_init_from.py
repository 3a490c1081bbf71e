"""Subjects one after another: `init_from` starts a run from an earlier run's output, records it, and refuses
with a readable message what cannot continue."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import ConfigError
from sdtune_ui.runs import RunDir
from sdtune_ui.train import train
from sdtune_ui.train.init_from import earlier_subjects
from sdtune_ui.train.setup import apply_dataset_info
from sdtune_ui.train.trainer import Trainer
from tests.concept_helpers import draw_squares, two_subjects
from tests.generate_helpers import one_torch_thread  # noqa: F401 - autouse: one torch thread
from tests.train_helpers import INSTANCE_PROMPT, losses, quick_config, run_training


@pytest.fixture
def robot_lora(toy_dataset, tmp_path):
    """A LoRA run that learned the toy robot a little (rank 4, all layers)."""
    config = quick_config(toy_dataset, max_train_steps=15, learning_rate=1e-2, lora_targets="all",
                          caption_dropout=0.0, checkpointing_steps=0)
    return run_training(config, tmp_path / "robot")


def test_a_lora_run_continues_from_an_earlier_lora(robot_lora, toy_dataset, tmp_path):
    again = quick_config(toy_dataset, max_train_steps=3, learning_rate=1e-2, lora_targets="all", caption_dropout=0.0,
                         checkpointing_steps=0)
    fresh = run_training(again, tmp_path / "fresh")
    continued = run_training(TrainConfig(**{**again.to_dict(), "init_from": str(robot_lora.path)}),
                             tmp_path / "continued")
    # Same seed, so the same batches and noise: only the starting weights differ.
    assert sum(losses(continued)) < 0.8 * sum(losses(fresh))

    assert continued.config()["init_from"] == str(robot_lora.path)
    event = next(e for e in continued.read_events() if e["kind"] == "init_from")
    assert event["loaded"] == ["LoRA pytorch_lora_weights.safetensors"] and event["run"] == str(robot_lora.path)
    # What an evaluation re-measures: the earlier subject's prompt and its training images.
    assert earlier_subjects(continued.path) == [(INSTANCE_PROMPT, str(toy_dataset.resolve()))]
    assert earlier_subjects(robot_lora.path) == []


@pytest.mark.parametrize(("settings", "words"), [
    (dict(rank=8), ["rank 4", "rank 8"]),
    (dict(lora_targets="attention"), ["lora_targets all", "lora_targets attention"]),
])
def test_a_mismatched_adapter_is_refused_with_what_to_change(robot_lora, toy_dataset, tmp_path, settings, words):
    config = quick_config(toy_dataset, **{"lora_targets": "all", **settings}, init_from=str(robot_lora.path))
    assert train(config, tmp_path / "run") == "failed"
    message = [e for e in RunDir(tmp_path / "run").read_events() if e["kind"] == "status"][-1]["message"]
    assert "init_from" in message and "same adapter" in message
    assert all(word in message for word in words)


def test_a_bare_lora_file_of_another_shape_is_refused(robot_lora, toy_dataset, tmp_path):
    lora_file = tmp_path / "downloaded.safetensors"  # a file on its own: no run settings to compare, only tensors
    shutil.copy(robot_lora.output_dir / "pytorch_lora_weights.safetensors", lora_file)
    config = quick_config(toy_dataset, lora_targets="attention", init_from=str(lora_file))
    assert train(config, tmp_path / "run") == "failed"
    message = [e for e in RunDir(tmp_path / "run").read_events() if e["kind"] == "status"][-1]["message"]
    assert "does not fit this run's adapter" in message and "rank" in message


def test_embeddings_start_their_tokens_and_earlier_tokens_ride_along(tmp_path):
    two = two_subjects(tmp_path / "two", tokens=False)
    first = run_training(quick_config(two, method="textual_inversion", learning_rate=5e-2, max_train_steps=2),
                         tmp_path / "first")
    earlier = {token: load_file(first.output_dir / name)[token] for token, name in
               (("<robot>", "learned_embeds.safetensors"), ("<square>", "learned_embeds-square.safetensors"))}

    # A second run on new pictures of the square thing only, continuing its token.
    more = draw_squares(tmp_path / "more", 4, seed=7)
    config = apply_dataset_info(quick_config(more, method="textual_inversion", placeholder_token="<square>",
                                             instance_prompt="a photo of <square>", learning_rate=5e-2,
                                             max_train_steps=2, init_from=str(first.path))).validate()
    trainer = Trainer(config, RunDir(tmp_path / "second").create())
    trainer.setup()
    tokenizer, table = trainer.parts.tokenizers[0], trainer.parts.text_encoders[0].get_input_embeddings().weight
    for token, vector in earlier.items():  # <square> starts where it ended; <robot> is carried over
        assert torch.equal(table[tokenizer.convert_tokens_to_ids(token)].detach().cpu(), vector[0])
    trainer.fit()
    trainer.save_output()
    output = trainer.run.output_dir
    assert {p.name for p in output.glob("learned_embeds*")} == {"learned_embeds.safetensors",
                                                               "learned_embeds-robot.safetensors"}
    assert torch.equal(load_file(output / "learned_embeds-robot.safetensors")["<robot>"], earlier["<robot>"])
    assert not torch.equal(load_file(output / "learned_embeds.safetensors")["<square>"], earlier["<square>"])
    assert earlier_subjects(trainer.run.path) == [("a photo of <robot>", str((two / "robot").resolve())),
                                                  ("a photo of <square>", str((two / "square").resolve()))]


def test_full_fine_tuning_continues_from_an_earlier_pipeline_only(tmp_path, toy_dataset):
    earlier = RunDir(tmp_path / "earlier").create()
    (earlier.path / "config.json").write_text(json.dumps({"method": "lora", "model": "tiny-sd1", "data": "x"}))
    earlier.output_dir.mkdir(parents=True, exist_ok=True)
    (earlier.output_dir / "model_index.json").write_text("{}")  # what a full fine-tune's output holds
    config = apply_dataset_info(TrainConfig(method="full", data=str(toy_dataset), init_from=str(earlier.path)))
    assert config.model == str(earlier.output_dir.resolve())

    lora_only = RunDir(tmp_path / "lora").create()
    (lora_only.path / "config.json").write_text(json.dumps({"method": "lora", "model": "tiny-sd1"}))
    lora_only.output_dir.mkdir(parents=True, exist_ok=True)
    lora_file = lora_only.output_dir / "pytorch_lora_weights.safetensors"
    save_file({"unet.a.lora_A.weight": torch.zeros(1, 1)}, str(lora_file))
    with pytest.raises(ConfigError, match="continues from a fine-tuned pipeline; .* holds lora"):
        apply_dataset_info(TrainConfig(method="dreambooth", data=str(toy_dataset), init_from=str(lora_only.path)))
    with pytest.raises(ConfigError, match="was not found"):
        TrainConfig(data=str(toy_dataset), init_from=str(tmp_path / "nothing")).validate()


def test_earlier_subjects_follow_a_chain_of_runs_without_loading_a_model(tmp_path, toy_dataset):
    squares = draw_squares(tmp_path / "squares", 2)

    def run_folder(name: str, **settings) -> RunDir:
        run = RunDir(tmp_path / name).create()
        TrainConfig(method="lora", **settings).save(run.config_path)
        return run

    first = run_folder("first", data=str(toy_dataset), instance_prompt=INSTANCE_PROMPT)
    second = run_folder("second", data=str(squares), instance_prompt="a photo of zwx square",
                        init_from=f"{first.path}@step-3")
    third = run_folder("third", data=str(toy_dataset), init_from=str(second.path / "output"))
    assert earlier_subjects(third.path) == [(INSTANCE_PROMPT, str(toy_dataset.resolve())),
                                            ("a photo of zwx square", str(squares.resolve()))]
    assert earlier_subjects(first.path) == []
