"""Two subjects with two tokens in one LoRA run: each token learns its own subject, not a mix of both.

On the random `tiny-sd1` (what this checkout has) sampling draws coloured noise and the UNet barely listens to
its prompt, so generated images cannot show two subjects apart (measured: tiny-dino and tiny-clip put the
images of both tokens on the same side). What it can show is the training objective on unseen noise
(tests/learning_probe.py): under each token's prompt the tuned model denoises its own subject's training
images better than under the other token's prompt, and far better than the base model does. Measured at
32 px, 300 steps: about 1-3 % apart between the prompts, a factor of ~4 against the base.

On the pre-trained `demo-sd1` (issue 11 part 1; skipped until it is in the checkout) the issue's own measure
applies: each token's generated images are closer in DINO features to its own subject's training images than
to the other's. Measured with the demo model's work-in-progress weights (200 steps, guidance 7.5, tiny-dino):
robot 0.54 vs 0.47, square 0.69 vs 0.35.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import SdtuneError
from sdtune_ui.models import load_pipeline
from tests.concept_helpers import ROBOT_PROMPT, SQUARE_PROMPT, two_subjects
from tests.generate_helpers import one_torch_thread  # noqa: F401 - autouse: one torch thread
from tests.learning_probe import denoising_error
from tests.train_helpers import run_training

PROMPTS = {"robot": ROBOT_PROMPT, "square": SQUARE_PROMPT}
DEMO_MODEL = "demo-sd1"


def latents(pipe, folder: Path, size: int, count: int = 3) -> list[torch.Tensor]:
    """VAE latents of a subject's first training images at the training resolution."""
    found = []
    for path in sorted(folder.glob("*.png"))[:count]:
        image = Image.open(path).convert("RGB").resize((size, size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        with torch.no_grad():
            found.append((pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor)[0])
    return found


def two_subject_lora(root: Path, run_dir: Path, model: str, **settings):
    values = dict(model=model, method="lora", data=str(root), train_batch_size=4, rank=16, lora_targets="all",
                  checkpointing_steps=0, log_every=50, validation_steps=0, validation_inference_steps=2)
    values.update(settings)
    return run_training(TrainConfig(**values), run_dir)


@pytest.mark.slow
def test_two_tokens_in_one_lora_run_each_learn_their_own_subject(tmp_path):
    root = two_subjects(tmp_path / "two")  # "a photo of sks robot ..." captions, and "a photo of zwx square"
    run = two_subject_lora(root, tmp_path / "run", "tiny-sd1", resolution=32, max_train_steps=300,
                           learning_rate=5e-3, train_text_encoder=True)
    base, tuned = load_pipeline("tiny-sd1"), load_pipeline("tiny-sd1")
    tuned.load_lora_weights(run.output_dir)
    subjects = {name: latents(base, root / name, 32) for name in PROMPTS}

    def error(pipe, prompt: str, subject: str) -> float:
        return sum(denoising_error(pipe, prompt, picture) for picture in subjects[subject]) / len(subjects[subject])

    for subject, other in (("robot", "square"), ("square", "robot")):
        own = error(tuned, PROMPTS[subject], subject)
        assert own < 0.995 * error(tuned, PROMPTS[other], subject), subject   # its token, not the other's
        assert own < 0.5 * error(base, PROMPTS[subject], subject), subject    # and it learned the subject


@pytest.mark.slow
def test_two_tokens_draw_their_own_subjects_on_the_demo_model(tmp_path):
    from sdtune_ui.evaluate.features import feature_models
    from sdtune_ui.evaluate.metrics import subject_fidelity
    from sdtune_ui.generate.artifacts import run_artifacts
    from sdtune_ui.generate.engine import GenerationEngine, GenerationOptions

    try:
        load_pipeline(DEMO_MODEL)
    except SdtuneError:
        pytest.skip(f"{DEMO_MODEL} (the pre-trained demo model of issue 11) is not in this checkout yet")
    root = two_subjects(tmp_path / "two")
    run = two_subject_lora(root, tmp_path / "run", DEMO_MODEL, resolution=64, max_train_steps=200,
                           learning_rate=1e-3)
    engine, artifacts = GenerationEngine(device="cpu"), run_artifacts(run.path).artifacts
    dino = feature_models().get("dino", "tiny-dino")
    training = {name: [Image.open(p).convert("RGB") for p in sorted((root / name).glob("*.png"))] for name in PROMPTS}
    for subject, other in (("robot", "square"), ("square", "robot")):
        images = engine.generate(DEMO_MODEL, artifacts, GenerationOptions(
            prompt=PROMPTS[subject], steps=10, guidance=7.5, width=64, height=64, seed=0, num_images=4)).images
        assert (subject_fidelity(dino, images, training[subject])
                > subject_fidelity(dino, images, training[other]) + 0.03), subject
