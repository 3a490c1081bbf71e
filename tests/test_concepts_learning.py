"""Two subjects with two tokens in one LoRA run: each token learns its own subject, not a mix of both.

TWO_SUBJECT_MODEL picks the model, and with it the measure:

- `demo-sd1`, the pre-trained demo model of issue 11 part 1 (it draws what a prompt says): the issue's own
  measure, through `evaluate`'s per-subject report: each token's generated images are closer in DINO and
  CLIP-I features to its own subject's training images than to the other's. Measured with the shipped weights
  (200 steps at 64 px, 10 denoising steps, guidance 7.5, tiny-dino / tiny-clip): DINO robot 0.534 own vs 0.255
  other, square 0.876 vs 0.420; CLIP-I robot 0.309 vs -0.019, square 0.832 vs 0.356 (own minus other: 0.28 to
  0.48; asserted: 0.15). Learned, not the base's: the square's DINO rose from the base's 0.242 to 0.876; the
  base already draws robots for "sks robot", which the random tiny-dino scores as close to the robot subject
  as the tuned images (base 0.587, tuned 0.534), so for the robot the pixels are measured instead
  (tests/demo_probe.py): its images lie nearer to its training pictures than the base's (0.025 against
  0.037, 0.66x; asserted 0.8x). The test takes about 40 s on one core.
- `tiny-sd1` (random weights; what main has until the demo model lands): sampling draws coloured noise and
  the UNet barely listens to its prompt, so generated images cannot show two subjects apart (tiny-dino and
  tiny-clip put both tokens' images on the same side). What it can show is the training objective on unseen
  noise (tests/learning_probe.py): under each token's prompt the tuned model denoises its own subject's
  training images better than under the other token's prompt, and far better than the base model does.
  Measured at 32 px, 300 steps: 2.8 % apart between the prompts (ratio 0.972 for both subjects, the same with
  3 or 8 images), a factor of ~4 against the base.
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
TWO_SUBJECT_MODEL = DEMO_MODEL  # tiny-sd1: the objective-only measure (see the module's docstring)


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
    if TWO_SUBJECT_MODEL == DEMO_MODEL:
        try:
            load_pipeline(DEMO_MODEL)
        except SdtuneError:
            pytest.skip(f"{DEMO_MODEL} (the pre-trained demo model of issue 11) is not in this checkout")
        each_token_draws_its_own_subject(tmp_path)
    else:
        each_token_denoises_its_own_subject(tmp_path)


def each_token_denoises_its_own_subject(tmp_path: Path) -> None:
    root = two_subjects(tmp_path / "two")  # "a photo of sks robot ..." captions, and "a photo of zwx square"
    run = two_subject_lora(root, tmp_path / "run", TWO_SUBJECT_MODEL, resolution=32, max_train_steps=300,
                           learning_rate=5e-3, train_text_encoder=True)
    base, tuned = load_pipeline(TWO_SUBJECT_MODEL), load_pipeline(TWO_SUBJECT_MODEL)
    tuned.load_lora_weights(run.output_dir)
    subjects = {name: latents(base, root / name, 32) for name in PROMPTS}

    def error(pipe, prompt: str, subject: str) -> float:
        return sum(denoising_error(pipe, prompt, picture) for picture in subjects[subject]) / len(subjects[subject])

    for subject, other in (("robot", "square"), ("square", "robot")):
        own = error(tuned, PROMPTS[subject], subject)
        assert own < 0.985 * error(tuned, PROMPTS[other], subject), subject   # its token, not the other's
        assert own < 0.5 * error(base, PROMPTS[subject], subject), subject    # and it learned the subject


def each_token_draws_its_own_subject(tmp_path: Path) -> None:
    from sdtune_ui.evaluate import EvalSettings, evaluate_run
    from sdtune_ui.generate.engine import GenerationEngine

    root = two_subjects(tmp_path / "two")
    run = two_subject_lora(root, tmp_path / "run", TWO_SUBJECT_MODEL, resolution=64, max_train_steps=200,
                           learning_rate=1e-3)
    settings = EvalSettings(metrics=("dino", "clip-i"), clip_model="tiny-clip", dino_model="tiny-dino",
                            num_images=4, inference_steps=10, guidance=7.5, size=64)
    base, final = evaluate_run(run.path, settings=settings, engine=GenerationEngine(device="cpu")).scores
    before = {entry["name"]: entry["metrics"] for entry in base["subjects"]}
    after = {entry["name"]: entry["metrics"] for entry in final["subjects"]}
    print({"before": before, "after": after})  # the margins, with pytest -s
    for name, scores in after.items():
        for key in ("dino", "clip_i"):
            assert scores[key] > scores[f"{key}_other"] + 0.15, (name, key, scores)  # its own subject's look
    assert after["square"]["dino"] > before["square"]["dino"] + 0.3, (before, after)  # learned, not the base's
    from tests import demo_probe

    base_pipe, tuned = load_pipeline(TWO_SUBJECT_MODEL), load_pipeline(TWO_SUBJECT_MODEL)
    tuned.load_lora_weights(run.output_dir)
    robots = demo_probe.load_images(sorted((root / "robot").glob("*.png")))
    near = {label: demo_probe.nearest_distance(demo_probe.generate(pipe, ROBOT_PROMPT, range(4)), robots)
            for label, pipe in (("base", base_pipe), ("tuned", tuned))}
    print(near)
    assert near["tuned"] < 0.8 * near["base"], near
