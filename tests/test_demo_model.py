"""The shipped demo model `demo-sd1` draws what the prompt names: the object class and its colour.

Measured against freshly drawn reference scenes (tests/demo_probe.py), by shape (edge orientations) for the
class and by pixels for colour: the pre-training pictures come from code, so the tests know exactly what a
robot, a house or a blue car look like.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from generate_helpers import one_torch_thread  # noqa: F401 - autouse fixture (one torch thread)

from sdtune_ui.models import DEMO_MODELS, OFFLINE_MODELS, load_pipeline, resolve_model
from tests import demo_probe

SEEDS = range(4)


@pytest.fixture(scope="module")
def demo():
    return load_pipeline("demo-sd1")


@pytest.fixture(scope="module")
def references():
    return demo_probe.class_references()


def test_demo_model_is_small_package_data_loaded_by_name():
    folder = DEMO_MODELS["demo-sd1"]
    assert resolve_model("demo-sd1") == str(folder)
    assert OFFLINE_MODELS[0] == "demo-sd1"  # offered first, before the random tiny-* models
    weights = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert weights < 8_000_000
    assert not list(folder.rglob("*.bin"))


def test_a_photo_of_a_robot_draws_robots(demo, references):
    # Each image's nearest drawn pictures by shape (any colour, any background) are robots'. Measured: 4 of 4.
    found = demo_probe.nearest_class(demo_probe.generate(demo, "a photo of a robot", SEEDS), references)
    assert found.count("robot") >= 3, found


@pytest.mark.parametrize("background", ["in the snow", "on a beach"])
def test_prompts_choose_the_object_class(demo, references, background):
    # Measured: 4 of 4 for every class, but 3 of 4 trees (one drawn in a city "in the snow", nearer the cars by
    # shape). References on every background: the model does not always draw the background the prompt names.
    for obj in ("robot", "cat", "house", "car", "tree"):
        found = demo_probe.nearest_class(demo_probe.generate(demo, f"a photo of a {obj} {background}", SEEDS),
                                         references)
        assert found.count(obj) >= 3, (obj, found)


def test_robot_and_house_prompts_differ_as_the_classes_do(demo, references):
    robots = demo_probe.generate(demo, "a photo of a robot", SEEDS)
    houses = demo_probe.generate(demo, "a photo of a house", SEEDS)
    # Robot images are nearer to drawn robots than to drawn houses, and the other way round, clearly.
    near = demo_probe.nearest_distance
    assert near(robots, references["robot"]) < 0.8 * near(robots, references["house"])
    assert near(houses, references["house"]) < 0.8 * near(houses, references["robot"])


def test_colours_follow_the_prompt(demo):
    blue = demo_probe.generate(demo, "a photo of a blue car", SEEDS)
    yellow = demo_probe.generate(demo, "a photo of a yellow car", SEEDS)
    assert demo_probe.colour_fraction(blue, "blue").mean() > 3 * demo_probe.colour_fraction(yellow, "blue").mean()
    assert demo_probe.colour_fraction(yellow, "yellow").mean() > 3 * demo_probe.colour_fraction(blue, "yellow").mean()


def test_generation_is_deterministic_per_seed_and_fast(demo):
    started = time.monotonic()
    first = demo_probe.generate(demo, "a photo of a cat", [3])
    elapsed = time.monotonic() - started
    assert np.array_equal(first, demo_probe.generate(demo, "a photo of a cat", [3]))
    assert not np.array_equal(first, demo_probe.generate(demo, "a photo of a cat", [4]))
    assert first.shape == (1, 64, 64, 3)
    assert elapsed < 5  # ~0.3 s on an idle core; generous for a busy shared machine


def test_class_images_of_an_earlier_version_of_a_local_model_are_not_reused(tmp_path):
    # Class images are cached per model; a re-trained demo-sd1 (or any replaced local model) gets new ones, else
    # prior preservation trains the class prompt toward what the old weights drew.
    import shutil

    from sdtune_ui.config import TrainConfig
    from sdtune_ui.train.setup import class_images_folder

    local = shutil.copytree(DEMO_MODELS["demo-sd1"], tmp_path / "my-model")
    config = TrainConfig(model=str(local), data="x", class_prompt="a photo of a robot")
    before = class_images_folder(config, 64)
    assert class_images_folder(config, 64) == before  # the same weights: the same folder, reused
    weights = local / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # re-trained: same name, new content and time
    assert class_images_folder(config, 64) != before
    hub = TrainConfig(model="someone/model", data="x", class_prompt="a photo of a robot")
    assert class_images_folder(hub, 64) == class_images_folder(hub, 64) != before
