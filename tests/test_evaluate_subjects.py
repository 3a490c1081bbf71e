"""`evaluate` per subject: a run of several subjects is scored on each subject's own prompt against that
subject's own training images, and a run that continued an earlier one (`init_from`) re-measures the earlier
subject, at this run's start (the earlier output it loaded) and at each of its checkpoints.

On the random tiny-sd1 the images are coloured noise, so these tests check what is measured on what (numbers
recomputed by hand, the start equal to the earlier run's own final score) and the held-out loss, which does
move with training there. Whether a later subject overwrites an earlier one shows only on a model that draws:
on tiny-sd1 a second run on other pictures lowers the earlier subject's loss too (measured: robots 0.548 at
the start, 0.474 after 60 steps on squares; red squares then blue ones under one prompt: 0.487 -> 0.445),
because what the random model learns first is denoising pictures of this size at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sdtune_ui.config import TrainConfig
from sdtune_ui.evaluate import EvalSettings, evaluate_run
from sdtune_ui.evaluate.features import feature_models
from sdtune_ui.evaluate.metrics import subject_fidelity
from sdtune_ui.evaluate.report import card_section
from sdtune_ui.evaluate.subjects import clip_text, subject_table
from sdtune_ui.generate.engine import GenerationEngine
from tests.concept_helpers import ROBOT_PROMPT, SQUARE_PROMPT, draw_squares, robot_folder, two_subjects
from tests.generate_helpers import one_torch_thread  # noqa: F401 - autouse: one torch thread
from tests.train_helpers import run_training

FAST_EVAL = dict(clip_model="tiny-clip", dino_model="tiny-dino", num_images=2, inference_steps=2, size=32)
LORA = dict(model="tiny-sd1", method="lora", resolution=32, learning_rate=1e-2, lora_targets="all", rank=4,
            caption_dropout=0.0, checkpointing_steps=0, validation_steps=0, log_every=5, cache_latents=True)


@pytest.fixture(scope="module")
def engine() -> GenerationEngine:
    return GenerationEngine(device="cpu")


def saved_images(run: Path, label: str, prompt_index: int, count: int) -> list[Image.Image]:
    return [Image.open(run / "eval" / label / f"p{prompt_index}-seed-{seed}.png").convert("RGB")
            for seed in range(count)]


def test_a_run_of_two_subjects_is_scored_per_subject(tmp_path, engine):
    root = two_subjects(tmp_path / "two")
    run = run_training(TrainConfig(data=str(root), max_train_steps=10, **LORA), tmp_path / "run")
    result = evaluate_run(run.path, settings=EvalSettings(metrics=("dino", "clip-i", "clip-t", "loss"), **FAST_EVAL),
                          engine=engine)

    base, final = result.scores
    for record in (base, final):
        entries = {e["name"]: e for e in record["subjects"]}
        assert [(e["name"], e["prompt"], e["earlier"]) for e in record["subjects"]] == [
            ("robot", ROBOT_PROMPT, False), ("square", SQUARE_PROMPT, False)]
        assert all(set(e["metrics"]) == {"dino", "dino_other", "clip_i", "clip_i_other", "clip_t", "loss"}
                   for e in entries.values())
        # The run is as good as its subjects on average (what ranks its checkpoints).
        for key in ("dino", "clip_i", "clip_t"):
            mean = (entries["robot"]["metrics"][key] + entries["square"]["metrics"][key]) / 2
            assert record["metrics"][key] == pytest.approx(mean, abs=1e-5)

    # Each subject's images against its own pictures; "other" against the other subject's: recomputed by hand.
    prompts = __import__("json").loads((run.path / "eval" / "final" / "prompts.json").read_text())
    dino = feature_models().get("dino", "tiny-dino")
    training = {name: [Image.open(p).convert("RGB") for p in sorted((root / name).glob("*.png"))]
                for name in ("robot", "square")}
    for name, other, prompt in (("robot", "square", ROBOT_PROMPT), ("square", "robot", SQUARE_PROMPT)):
        images = saved_images(run.path, "final", prompts.index(prompt), 2)
        entry = next(e for e in final["subjects"] if e["name"] == name)
        assert entry["metrics"]["dino"] == pytest.approx(subject_fidelity(dino, images, training[name]), abs=1e-4)
        assert entry["metrics"]["dino_other"] == pytest.approx(subject_fidelity(dino, images, training[other]),
                                                               abs=1e-4)

    # Both subjects were learned: each one's held-out loss under its own prompt fell well below the base's.
    for before, after in zip(base["subjects"], final["subjects"], strict=True):
        assert after["metrics"]["loss"] < 0.85 * before["metrics"]["loss"], after["name"]
    assert "square" in subject_table(result.scores) and "| square | `a photo of zwx square` |" in card_section(run.path)


@pytest.mark.parametrize(("method", "settings"), [("dreambooth", dict(learning_rate=1e-3)),
                                                 ("pivotal", dict(lora_targets="all", learning_rate=1e-2))])
def test_dreambooth_and_pivotal_learn_both_subjects_of_one_run(tmp_path, engine, method, settings):
    # LoRA: the test above. Textual inversion alone barely moves the random model's loss (1.1067 -> 1.1056 in
    # 10 steps; see ENGINEERING_NOTES): its learning is measured on the pre-trained demo model (issue 11 part 1).
    root = two_subjects(tmp_path / "two", tokens=False)  # pivotal: tokens <robot>, <square>
    run = run_training(TrainConfig(**{**LORA, "method": method, "data": str(root), "max_train_steps": 8,
                                      **settings}), tmp_path / "run")
    base, final = evaluate_run(run.path, settings=EvalSettings(metrics=("loss",), **FAST_EVAL), engine=engine).scores
    assert [e["name"] for e in final["subjects"]] == ["robot", "square"]
    for before, after in zip(base["subjects"], final["subjects"], strict=True):
        assert after["metrics"]["loss"] < 0.9 * before["metrics"]["loss"], (after["name"], before, after)
    assert not list((run.path / "eval" / "final").glob("*.png"))  # the loss alone generated nothing


def test_a_continued_run_re_measures_the_earlier_subject(tmp_path, engine):
    robots = robot_folder(tmp_path / "robots", 6, captions=False)
    first = run_training(TrainConfig(data=str(robots), instance_prompt=ROBOT_PROMPT, max_train_steps=10, **LORA),
                         tmp_path / "first")
    squares = draw_squares(tmp_path / "squares", 6)
    second = run_training(TrainConfig(data=str(squares), instance_prompt=SQUARE_PROMPT, max_train_steps=4,
                                      init_from=str(first.path), **LORA), tmp_path / "second")
    settings = EvalSettings(metrics=("dino", "loss"), **FAST_EVAL)
    earlier = evaluate_run(first.path, settings=settings, engine=engine)
    assert all("subjects" not in r for r in earlier.scores)  # one subject, no earlier one: nothing extra

    result = evaluate_run(second.path, settings=settings, engine=engine)
    assert [r["label"] for r in result.scores] == ["base", "start", "final"]
    base, start, final = ({e["name"]: e for e in r["subjects"]} for r in result.scores)
    assert [(n, e["earlier"]) for n, e in final.items()] == [("robots", True), ("squares", False)]
    # The start is the earlier run's output: its robot score is exactly the one that run measured for itself...
    first_final = earlier.scores[-1]["metrics"]
    assert start["robots"]["metrics"]["loss"] == pytest.approx(first_final["loss"], abs=1e-5)
    assert start["robots"]["metrics"]["loss"] < 0.85 * base["robots"]["metrics"]["loss"]  # ...which had learned it
    # ...and every checkpoint of this run is measured on the earlier subject too, to compare with the start.
    assert set(final["robots"]["metrics"]) == {"dino", "dino_other", "loss"}
    assert final["robots"]["metrics"]["loss"] != start["robots"]["metrics"]["loss"]
    # The start is a reference, never "the best checkpoint" of this run.
    assert result.best is not None and result.best.source == "output"
    assert "robots (earlier)" in subject_table(result.scores)
    assert f"(start {start['robots']['metrics']['loss']:.4f})" in card_section(second.path)


def test_clip_reads_each_subjects_prompt_without_its_rare_word():
    assert clip_text("a photo of sks robot on a beach", {}) == "a photo of robot on a beach"
    assert clip_text("a photo of zwx square", {"placeholder_token": "sks"}) == "a photo of square"
    tokens = {"concept_tokens": ["<robot>=robot", "<square>=square"], "placeholder_token": "<robot>"}
    assert clip_text("a photo of <square>", tokens) == "a photo of square"
    assert clip_text("a photo of <robot> robot", tokens) == "a photo of robot"
