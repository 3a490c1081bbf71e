"""`demo-dino`, the shipped feature model of the demo, sees what a demo scene shows (the spec of what it is for).

It is a small DINOv2 trained on the demo model's scenes (scripts/pretrain_demo_features.py): pictures of the same
object in the same colour lie closer together than pictures of other objects or colours, wherever the object
stands and whatever the background; the example subject "sks robot" lies near its own pictures, then near red
robots, and further from robots of other colours. The pictures here are drawn with seeds the training never
used. Margins are about half of the measured gaps (in the comments).
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
from generate_helpers import one_torch_thread  # noqa: F401 - autouse fixture (one torch thread)
from PIL import Image

from sdtune_ui.evaluate import metrics as m
from sdtune_ui.evaluate.features import DinoFeatures, feature_models
from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.models.demo import DEMO_FEATURE_MODELS, scenes

KINDS = (("robot", "blue"), ("cat", "orange"), ("house", "green"), ("car", "red"), ("tree", "purple"),
         ("robot", "yellow"), ("cat", "white"), ("house", "pink"))


@pytest.fixture(scope="module")
def dino() -> DinoFeatures:
    return feature_models().get("dino", "demo-dino")


def drawn(obj: str, colour: str, count: int, rng: random.Random, subject: bool = False) -> list[Image.Image]:
    """`count` pictures of one object in one colour, each at its own place, size and background."""
    return [scenes.draw_scene(replace(scenes.random_scene(rng, obj), colour=colour), 64, subject=subject)
            for _ in range(count)]


def test_demo_dino_ships_with_the_package_and_is_small(dino):
    folder = DEMO_FEATURE_MODELS["demo-dino"]
    assert (folder / "model.safetensors").stat().st_size < 2_000_000
    assert (folder / "preprocessor_config.json").exists()
    assert dino.model.config.model_type == "dinov2" and dino.input_size == (64, 64)


def test_same_object_and_colour_lie_closer_than_other_objects_or_colours(dino):
    rng = random.Random(20261201)
    pictures = [picture for obj, colour in KINDS for picture in drawn(obj, colour, 2, rng)]
    features = torch.nn.functional.normalize(dino.image_features(pictures), dim=-1)
    similarity = features @ features.T
    kind = torch.arange(len(KINDS)).repeat_interleave(2)
    twins = kind[:, None] == kind[None, :]
    same = similarity[twins & ~torch.eye(len(kind), dtype=torch.bool)].mean()
    other = similarity[~twins].mean()
    print(f"same kind {same:.3f}, other kinds {other:.3f}")   # measured: 0.807 vs 0.017
    assert same > other + 0.4
    # Every picture's nearest neighbour is the other picture of its kind.
    nearest = (similarity - 2 * torch.eye(len(kind))).argmax(dim=1)
    assert (kind[nearest] == kind).all()


def test_the_example_subject_is_nearest_itself_then_red_robots_then_other_robots(dino):
    rng = random.Random(7)
    training = [Image.open(path) for path in sorted(EXAMPLE_DATASET.glob("*.png"))]
    subject = m.subject_fidelity(dino, drawn("robot", "red", 6, rng, subject=True), training)
    red_robots = m.subject_fidelity(dino, drawn("robot", "red", 6, rng), training)
    other_robots = m.subject_fidelity(dino, [p for colour in ("blue", "yellow", "green") for p in
                                             drawn("robot", colour, 2, rng)], training)
    red_cats = m.subject_fidelity(dino, drawn("cat", "red", 6, rng), training)
    print(f"subject {subject:.3f}, red robots {red_robots:.3f}, other robots {other_robots:.3f}, "
          f"red cats {red_cats:.3f}")   # measured: 0.791, 0.508, 0.198, 0.127
    assert subject > red_robots + 0.14
    assert red_robots > other_robots + 0.15
    assert other_robots > red_cats + 0.03
