"""Several subjects in one run: the dataset's epoch order in batches, prompts, class images and tokens per
concept, and resume that stays exact."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sdtune_ui.config import TrainConfig
from sdtune_ui.data.datasets import Example, load_dataset
from sdtune_ui.errors import ConfigError
from sdtune_ui.runs import RunDir
from sdtune_ui.train import train
from sdtune_ui.train.data import TrainingData
from sdtune_ui.train.setup import apply_dataset_info, training_prompts
from sdtune_ui.train.trainer import Trainer
from tests.concept_helpers import ROBOT_PROMPT, SQUARE_PROMPT, draw_squares, kohya_two_subjects, two_subjects
from tests.generate_helpers import one_torch_thread  # noqa: F401 - autouse: one torch thread
from tests.train_helpers import losses, quick_config, run_training


def examples(spec: list[tuple[str, int, tuple[int, int]]], per_concept: int) -> list[Example]:
    """(concept, repeats, image size) -> that many small examples of the concept."""
    rng = random.Random(0)
    return [Example(f"{concept}/{i}.png", Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3))),
                    f"a photo of {concept}", concept, repeats)
            for concept, repeats, size in spec for i in range(per_concept)]


def batches_before_concepts(count: int, seed: int, epoch: int, global_batch: int) -> list[list[int]]:
    """The trainer's batches of one bucket as drawn before concepts existed (randperm, padded, shuffled)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    indices = torch.randperm(count, generator=generator).tolist()
    padded = indices + [indices[i % len(indices)] for i in range((-len(indices)) % global_batch)]
    batches = [padded[i:i + global_batch] for i in range(0, len(padded), global_batch)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def data_for(items: list[Example], sampling: str = "repeats", bucketing: bool = False) -> TrainingData:
    return TrainingData(items, [], resolution=64, bucketing=bucketing, center_crop=True, random_flip=False, seed=3,
                        sampling=sampling)


def test_one_concept_keeps_the_batches_runs_had_before_concepts():
    data = data_for(examples([("", 1, (64, 64))], per_concept=7))
    for epoch in range(4):
        assert data.epoch_batches(epoch, 2) == batches_before_concepts(7, seed=3, epoch=epoch, global_batch=2)


def test_an_epoch_visits_each_image_its_repeats_or_each_concept_equally():
    items = examples([("few", 3, (64, 64)), ("many", 1, (64, 64))], per_concept=2) + examples(
        [("many", 1, (64, 64))], per_concept=4)
    repeats = Counter(i for batch in data_for(items, "repeats").epoch_batches(0, 1) for i in batch)
    assert repeats == {index: item.repeats for index, item in enumerate(items)}

    few, many = [0, 1], list(range(2, 8))  # 2 images x 3 repeats vs 6 images x 1: balanced gives 6 visits each
    balanced = data_for(items, "balanced")
    for epoch in range(3):
        visits = Counter(items[i].concept for batch in balanced.epoch_batches(epoch, 1) for i in batch)
        assert visits == {"few": 6, "many": 6}
    seen = Counter(i for epoch in range(3) for batch in balanced.epoch_batches(epoch, 1) for i in batch)
    assert {seen[i] for i in many} == {3} and {seen[i] for i in few} == {9}


def test_balanced_epochs_of_several_buckets_are_located_exactly():
    # Which images a balanced epoch visits varies, so with two buckets the number of batches varies too.
    items = examples([("wide", 1, (96, 64)), ("square", 1, (64, 64))], per_concept=3) + examples(
        [("wide", 1, (64, 64))], per_concept=2)
    data = data_for(items, "balanced", bucketing=True)
    walked = [(epoch, position) for epoch in range(8) for position in range(len(data.epoch_batches(epoch, 2)))]
    assert len({epoch_len for epoch_len in Counter(e for e, _ in walked).values()}) > 1
    fresh = data_for(items, "balanced", bucketing=True)  # located from nothing, as a resumed run does
    assert [fresh.locate(step, 2) for step in range(len(walked))] == walked
    for epoch in range(8):  # still grouped: a batch holds one bucket's images
        assert all(len({data.items[i].bucket for i in batch}) == 1 for batch in data.epoch_batches(epoch, 2))


def test_each_image_trains_on_its_caption_or_its_concepts_prompt(tmp_path):
    root = two_subjects(tmp_path / "two", square={"instance_prompt": ""})
    loaded = load_dataset(str(root))
    by_concept = {}
    lora = TrainConfig(method="lora", data=str(root), instance_prompt="a photo of something")
    trained, note = training_prompts(lora, loaded, {})
    for example in trained:
        by_concept.setdefault(example.concept, set()).add(example.caption)
    # robot's own captions; square has neither caption nor concept prompt: the run's prompt is its fallback
    assert by_concept["robot"] == {f"{ROBOT_PROMPT} {place}" for place in
                                   ("on a beach", "in a forest", "in a city", "on a table", "in the snow")}
    assert by_concept["square"] == {"a photo of something"}
    assert "own caption" in note and "fallback" in note

    # DreamBooth on our concepts layout: each concept's instance prompt, not the captions
    root = two_subjects(tmp_path / "db")
    dreambooth = TrainConfig(method="dreambooth", data=str(root))
    trained, note = training_prompts(dreambooth, load_dataset(str(root)), {})
    assert {ex.concept: ex.caption for ex in trained} == {"robot": ROBOT_PROMPT, "square": SQUARE_PROMPT}
    assert "its concept's instance prompt" in note

    # One concept: the run's instance prompt is every image's prompt, as before concepts.
    single = load_dataset(str(root / "robot"))
    trained, _ = training_prompts(TrainConfig(data=str(root / "robot"), instance_prompt="x"), single, {})
    assert {ex.caption for ex in trained} == {"x"}


def test_dataset_gives_tokens_validation_prompts_and_prompts_per_concept(tmp_path):
    root = two_subjects(tmp_path / "two", tokens=False)
    ti = apply_dataset_info(TrainConfig(method="textual_inversion", data=str(root))).validate()
    assert ti.concept_tokens == ["<robot>=robot", "<square>=square"]
    assert ti.placeholder_token == "<robot>"
    assert ti.validation_prompts == ["a photo of <robot>", "a photo of <square>"]

    root = two_subjects(tmp_path / "named")
    lora = apply_dataset_info(TrainConfig(method="lora", data=str(root))).validate()
    assert lora.validation_prompts == [ROBOT_PROMPT, SQUARE_PROMPT]
    # Each concept names its instance and class prompts: DreamBooth with prior preservation needs no run-wide one.
    TrainConfig(method="dreambooth", data=str(root), with_prior_preservation=True).validate()
    with pytest.raises(ConfigError, match="class prompt"):
        root = two_subjects(tmp_path / "no-class", square={"class_prompt": ""})
        TrainConfig(method="lora", data=str(root), with_prior_preservation=True).validate()
    with pytest.raises(ConfigError, match="one per concept|repeats one"):
        TrainConfig(method="textual_inversion", data=str(root), concept_tokens=["<a>", "<a>"]).validate()


def test_class_images_per_concept_given_or_generated(tmp_path):
    root = two_subjects(tmp_path / "two", square={"class_data": "square_class"})
    draw_squares(root / "square_class", 3, seed=9, colour=(200, 40, 40))
    config = quick_config(root, with_prior_preservation=True, num_class_images=2, validation_inference_steps=2,
                          caption_dropout=0.0, train_batch_size=2)
    trainer = Trainer(apply_dataset_info(config).validate(), RunDir(tmp_path / "run").create())
    trainer.setup()
    class_sets = Counter(item.concept for item in trainer.data.class_items)
    # square's given folder is used as it is (all 3); robot's prompt got 2 images made by the base model
    assert class_sets == {"a photo of a square": 3, "a photo of a robot": 2}
    for micro in range(12):
        batch = trainer._batch(micro)
        instance, prior = batch.prompts[:2], batch.prompts[2:]
        for prompt, class_prompt in zip(instance, prior):
            if prompt:  # (caption dropout empties some)
                assert class_prompt == ("a photo of a robot" if "robot" in prompt else "a photo of a square")
    logs = [e["message"] for e in trainer.run.read_events() if e["kind"] == "log"]
    assert any("Concept square" in line and "3 class images" in line for line in logs)


def test_resumed_multi_concept_run_equals_an_uninterrupted_one(tmp_path):
    root = kohya_two_subjects(tmp_path / "kohya")  # repeats 2 and 1, a reg folder per concept
    config = quick_config(root, max_train_steps=6, checkpointing_steps=3, caption_dropout=0.3, random_flip=True,
                          with_prior_preservation=True, train_batch_size=2, learning_rate=1e-2,
                          validation_inference_steps=2)
    straight = run_training(config, tmp_path / "straight")
    assert train(config, tmp_path / "resumed",
                 cancel=lambda: any(e["kind"] == "step" and e["step"] >= 3
                                    for e in RunDir(tmp_path / "resumed").read_events())) == "cancelled"
    resumed = run_training(config, tmp_path / "resumed")
    assert losses(resumed)[-2:] == pytest.approx(losses(straight)[-2:], rel=1e-5)
    a = load_file(straight.output_dir / "pytorch_lora_weights.safetensors")
    b = load_file(resumed.output_dir / "pytorch_lora_weights.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)
    logs = " ".join(e["message"] for e in straight.read_events() if e["kind"] == "log")
    assert "sampling repeats" in logs and "class images of 'robot'" in logs
