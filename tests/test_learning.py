"""Each method learns the example subject, measured on what the pre-trained demo model `demo-sd1` draws.

The base draws boxy robots with eyes and arms, in every colour; the subject "sks robot" is always red, with a
round head, a yellow visor and an antenna (sdtune_ui/examples/toy_robot). So learning shows on generated
pixels (tests/demo_probe.py): after training, the instance prompt draws much more of the subject's red than
the base does for it, and lands nearer to the training pictures. Every test trains with the method's CPU demo
settings (its demo_preset over app_ops.DEMO_SETTINGS: what "Quick CPU demo settings" applies), so these tests
also check that each demo visibly learns.
"""

from __future__ import annotations

import numpy as np
import pytest
from generate_helpers import one_torch_thread  # noqa: F401 - autouse fixture (one torch thread)
from safetensors.torch import load_file

from sdtune_ui.app import ops as app_ops
from sdtune_ui.methods import method_names
from sdtune_ui.models import load_pipeline
from tests import demo_probe
from tests.conftest import EXAMPLE_DATASET
from tests.train_helpers import INSTANCE_PROMPT, TI_PROMPT, run_training

CLASS_PROMPT = "a photo of a robot"
SEEDS = range(4)
# Subject red fraction gained over the base, and nearest-training-picture distance as a share of the base's.
RED_GAIN = 0.05
CLOSER = 0.8


@pytest.fixture(scope="module")
def base():
    return load_pipeline("demo-sd1")


@pytest.fixture(scope="module")
def training_pictures() -> np.ndarray:
    return demo_probe.load_images(sorted(EXAMPLE_DATASET.glob("*.png")))


@pytest.fixture(scope="module")
def base_subject(base) -> np.ndarray:
    """What the base draws for the instance prompt: its own robots, of any colour."""
    return demo_probe.generate(base, INSTANCE_PROMPT, SEEDS)


@pytest.fixture(scope="module")
def base_class(base) -> np.ndarray:
    return demo_probe.generate(base, CLASS_PROMPT, SEEDS)


def train_demo(method: str, run_dir, **changes):
    """A run with the method's CPU demo settings (no checkpoints or samples: only the output is measured)."""
    values = {**app_ops.demo_settings(method), "data": str(EXAMPLE_DATASET), "checkpointing_steps": 0,
              "validation_steps": 0, "log_every": 50, **changes}
    return run_training(app_ops.config_from_values(values), run_dir)


def with_lora(run, embedding: bool = False):
    tuned = load_pipeline("demo-sd1")
    tuned.load_lora_weights(run.output_dir)
    if embedding:
        tuned.load_textual_inversion(run.output_dir / "learned_embeds.safetensors")
    return tuned


def assert_draws_the_subject(tuned, prompt: str, base_subject: np.ndarray, training: np.ndarray) -> np.ndarray:
    drawn = demo_probe.generate(tuned, prompt, SEEDS)
    red = demo_probe.subject_red_fraction
    assert red(drawn).mean() > red(base_subject).mean() + RED_GAIN
    near = demo_probe.nearest_distance
    assert near(drawn, training) < CLOSER * near(base_subject, training)
    return drawn


def test_demo_settings_exist_for_every_method_and_validate():
    for method in method_names():
        config = app_ops.config_from_values({**app_ops.demo_settings(method), "data": str(EXAMPLE_DATASET)})
        assert config.method == method and config.model == "demo-sd1"
        config.validate()
    assert app_ops.demo_settings("no-such-method")["method"] == "lora"


def test_lora_draws_the_subject_and_keeps_the_class(tmp_path, base_subject, base_class, training_pictures):
    tuned = with_lora(train_demo("lora", tmp_path / "run"))
    drawn = assert_draws_the_subject(tuned, INSTANCE_PROMPT, base_subject, training_pictures)
    # With prior preservation (part of the demo) "a photo of a robot" stays far nearer to the base's robots.
    kept = demo_probe.generate(tuned, CLASS_PROMPT, SEEDS)
    assert np.abs(kept - base_class).mean() < 0.5 * np.abs(drawn - base_subject).mean()


def test_full_finetune_draws_the_subject(tmp_path, base_subject, training_pictures):
    run = train_demo("full", tmp_path / "run")
    assert_draws_the_subject(load_pipeline(str(run.output_dir)), INSTANCE_PROMPT, base_subject, training_pictures)


def test_pivotal_tuning_draws_the_subject_with_both_parts(tmp_path, base, base_subject, training_pictures):
    run = train_demo("pivotal", tmp_path / "run")
    assert_draws_the_subject(with_lora(run, embedding=True), TI_PROMPT, base_subject, training_pictures)
    learned = load_file(run.output_dir / "learned_embeds.safetensors")["<sks>"][0]
    robot = base.text_encoder.get_input_embeddings().weight[base.tokenizer.convert_tokens_to_ids("robot</w>")]
    assert (learned - robot).norm() > 0.1 * robot.norm()  # the embedding half trained too


def test_textual_inversion_draws_the_subject_through_the_token_alone(tmp_path, base, base_subject, base_class,
                                                                     training_pictures):
    run = train_demo("textual_inversion", tmp_path / "run")
    tuned = load_pipeline("demo-sd1")
    tuned.load_textual_inversion(run.output_dir / "learned_embeds.safetensors")
    # Before training <sks> is its initializer, "robot": the base's robots. After, the token alone draws the
    # subject's red, nearer to the training pictures ...
    assert_draws_the_subject(tuned, TI_PROMPT, base_subject, training_pictures)
    # ... and nothing else moved: the class prompt draws exactly what the base draws.
    assert np.array_equal(demo_probe.generate(tuned, CLASS_PROMPT, SEEDS), base_class)


@pytest.mark.slow
def test_dreambooth_prior_preservation_keeps_the_class(tmp_path, base_subject, base_class, training_pictures):
    class_folder = tmp_path / "class_images"
    plain = train_demo("dreambooth", tmp_path / "plain", with_prior_preservation=False)
    preserved = train_demo("dreambooth", tmp_path / "prior", class_data=str(class_folder))
    # Class images were generated by the base model into the class folder.
    assert len(list(class_folder.glob("*.png"))) == app_ops.demo_settings("dreambooth")["num_class_images"]
    plain_model, preserved_model = load_pipeline(str(plain.output_dir)), load_pipeline(str(preserved.output_dir))
    # Both learned the subject ...
    for tuned in (plain_model, preserved_model):
        assert_draws_the_subject(tuned, INSTANCE_PROMPT, base_subject, training_pictures)
    # ... but only with prior preservation does "a photo of a robot" still draw what the base drew for it.
    plain_class, preserved_class = (demo_probe.generate(m, CLASS_PROMPT, SEEDS) for m in (plain_model, preserved_model))
    assert np.abs(preserved_class - base_class).mean() < 0.6 * np.abs(plain_class - base_class).mean()
