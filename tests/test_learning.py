"""Each method actually learns its concept, measured on the tiny SD1 model.

What is measured: how well the model denoises a picture under a prompt, on noise and timesteps the
training never drew (tests/learning_probe.py). A model that learned "sks robot" denoises the training
image far better than the base model does, and better than it denoises the other example pictures, so it
learned that picture, not just the look of latents in general. Full sampling is not used: on a random
tiny UNet a few hundred CPU steps are not enough to draw the picture, but they are enough to learn it.

A random UNet barely listens to its prompt, so textual inversion (which can only change the prompt)
improves the error by a small amount: deterministic and in the right direction, but small.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from sdtune_ui.config import TrainConfig
from sdtune_ui.models import load_pipeline
from tests.conftest import EXAMPLE_DATASET
from tests.learning_probe import denoising_error
from tests.train_helpers import INSTANCE_PROMPT, TI_PROMPT, image_latents, run_training

CLASS_PROMPT = "a photo of a robot"


@pytest.fixture
def one_image(tmp_path):
    """A single training image, as in the smallest DreamBooth runs."""
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(EXAMPLE_DATASET / "robot_00.png", folder / "robot_00.png")
    (folder / "robot_00.txt").write_text(INSTANCE_PROMPT)
    return folder


@pytest.fixture(scope="module")
def base():
    return load_pipeline("tiny-sd1")


@pytest.fixture(scope="module")
def pictures(base):
    """Latents of the training picture and of three other example pictures."""
    return (image_latents(base, EXAMPLE_DATASET / "robot_00.png"),
            [image_latents(base, EXAMPLE_DATASET / f"robot_0{i}.png") for i in (1, 2, 3)])


def train_on(folder, run_dir, **settings):
    values = dict(model="tiny-sd1", data=str(folder), train_batch_size=4, caption_dropout=0.0,
                  checkpointing_steps=0, log_every=50, max_train_steps=80)
    values.update(settings)
    return run_training(TrainConfig(**values), run_dir)


def assert_learned_the_picture(tuned, prompt: str, base, base_prompt: str, pictures) -> None:
    target, others = pictures
    learned = denoising_error(tuned, prompt, target)
    assert learned < 0.5 * denoising_error(base, base_prompt, target)
    assert learned < 0.8 * min(denoising_error(tuned, prompt, other) for other in others)


def test_full_finetune_learns_the_picture(one_image, tmp_path, base, pictures):
    run = train_on(one_image, tmp_path / "run", method="full", learning_rate=3e-4, instance_prompt=INSTANCE_PROMPT)
    assert_learned_the_picture(load_pipeline(str(run.output_dir)), INSTANCE_PROMPT, base, INSTANCE_PROMPT, pictures)


def test_lora_learns_the_picture(one_image, tmp_path, base, pictures):
    run = train_on(one_image, tmp_path / "run", method="lora", learning_rate=1e-2, rank=16, lora_targets="all",
                   instance_prompt=INSTANCE_PROMPT)
    tuned = load_pipeline("tiny-sd1")
    tuned.load_lora_weights(run.output_dir)
    assert_learned_the_picture(tuned, INSTANCE_PROMPT, base, INSTANCE_PROMPT, pictures)


def test_pivotal_tuning_learns_the_picture_with_both_parts(one_image, tmp_path, base, pictures):
    run = train_on(one_image, tmp_path / "run", method="pivotal", learning_rate=1e-2, ti_learning_rate=0.1,
                   rank=16, lora_targets="all", instance_prompt=TI_PROMPT)
    tuned = load_pipeline("tiny-sd1")
    tuned.load_lora_weights(run.output_dir)
    tuned.load_textual_inversion(run.output_dir / "learned_embeds.safetensors")
    assert_learned_the_picture(tuned, TI_PROMPT, base, "a photo of dog", pictures)
    learned = load_file(run.output_dir / "learned_embeds.safetensors")["<sks>"][0]
    dog = base.text_encoder.get_input_embeddings().weight[base.tokenizer.convert_tokens_to_ids("dog</w>")]
    assert not torch.allclose(learned, dog)  # the embedding half trained too


def test_textual_inversion_improves_the_picture_through_the_token_alone(one_image, tmp_path, base, pictures):
    run = train_on(one_image, tmp_path / "run", method="textual_inversion", learning_rate=0.1,
                   instance_prompt=TI_PROMPT, max_train_steps=100)
    tuned = load_pipeline("tiny-sd1")
    tuned.load_textual_inversion(run.output_dir / "learned_embeds.safetensors")
    target, _ = pictures
    # Before training, <sks> is its initializer word "dog".
    assert denoising_error(tuned, TI_PROMPT, target) < denoising_error(base, "a photo of dog", target) - 2e-4
    # The UNet is untouched: the same prompt without the token denoises exactly as before.
    assert denoising_error(tuned, CLASS_PROMPT, target) == pytest.approx(denoising_error(base, CLASS_PROMPT, target))


def test_dreambooth_prior_preservation_keeps_the_class(one_image, tmp_path, base, pictures):
    settings = dict(method="dreambooth", learning_rate=3e-4, instance_prompt=INSTANCE_PROMPT,
                    class_prompt=CLASS_PROMPT, max_train_steps=60)
    class_folder = tmp_path / "class_images"
    plain = train_on(one_image, tmp_path / "plain", **settings)
    preserved = train_on(one_image, tmp_path / "prior", with_prior_preservation=True, num_class_images=4,
                         class_data=str(class_folder), **settings)
    # Class images were generated by the base model into the class folder (and are reused next time).
    class_pictures = [image_latents(base, p) for p in sorted(class_folder.glob("*.png"))]
    assert len(class_pictures) == 4

    def class_error(pipe) -> float:
        return sum(denoising_error(pipe, CLASS_PROMPT, picture) for picture in class_pictures) / len(class_pictures)

    plain_model, preserved_model = load_pipeline(str(plain.output_dir)), load_pipeline(str(preserved.output_dir))
    # Both learned the subject ...
    for tuned in (plain_model, preserved_model):
        assert denoising_error(tuned, INSTANCE_PROMPT, pictures[0]) < 0.5 * denoising_error(
            base, INSTANCE_PROMPT, pictures[0])
    # ... but only with prior preservation does "a photo of a robot" still fit what the base drew for it.
    assert class_error(preserved_model) < 0.9 * class_error(plain_model)
