"""Two visibly different subjects for the multi-concept tests: the example "sks robot" and a "zwx" thing
(a blue square on a dark ground), drawn with PIL, in our concepts layout or kohya's."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

from sdtune_ui.examples import EXAMPLE_DATASET

ROBOT_PROMPT = "a photo of sks robot"
SQUARE_PROMPT = "a photo of zwx square"


def draw_square(rng: random.Random, colour: tuple[int, int, int] = (30, 60, 230)) -> Image.Image:
    image = Image.new("RGB", (128, 128), (25, 25, 30))
    x, y, size = rng.randint(16, 52), rng.randint(16, 52), rng.randint(44, 60)
    ImageDraw.Draw(image).rectangle((x, y, x + size, y + size), fill=colour)
    return image


def draw_squares(folder: Path, count: int, seed: int = 1, colour: tuple[int, int, int] = (30, 60, 230),
                 prefix: str = "zwx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for index in range(count):
        draw_square(rng, colour).save(folder / f"{prefix}_{index:02d}.png")
    return folder


def robot_folder(folder: Path, count: int = 8, captions: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        shutil.copy(EXAMPLE_DATASET / f"robot_{index:02d}.png", folder)
        if captions:
            shutil.copy(EXAMPLE_DATASET / f"robot_{index:02d}.txt", folder)
    return folder


def two_subjects(root: Path, *, tokens: bool = True, robot_images: int = 8, square_images: int = 8,
                 **extra: dict) -> Path:
    """concepts.json with robot/ (captioned "a photo of sks robot on a beach" ...) and square/ (no captions:
    its instance prompt). `tokens=False` leaves the tokens out (textual inversion then names them <robot>,
    <square>); `extra` adds fields per concept folder, e.g. square={"class_prompt": "a photo of a square"}."""
    robot_folder(root / "robot", robot_images)
    draw_squares(root / "square", square_images)
    concepts = [{"folder": "robot", "instance_prompt": ROBOT_PROMPT, "class_prompt": "a photo of a robot"},
                {"folder": "square", "instance_prompt": SQUARE_PROMPT, "class_prompt": "a photo of a square"}]
    if tokens:
        concepts[0]["token"], concepts[1]["token"] = "sks", "zwx"
    for concept in concepts:
        concept.update(extra.get(concept["folder"], {}))
    (root / "concepts.json").write_text(json.dumps({"concepts": concepts}))
    return root


def kohya_two_subjects(root: Path) -> Path:
    """kohya's layout: img/2_sks robot (4 images, repeats 2), img/1_zwx square (6 images), reg/1_robot and
    reg/1_square with class images (grey robots' stand-ins: grey squares, red squares)."""
    robot_folder(root / "img" / "2_sks robot", 4, captions=False)
    draw_squares(root / "img" / "1_zwx square", 6)
    draw_squares(root / "reg" / "1_robot", 3, seed=5, colour=(120, 120, 120), prefix="robot")
    draw_squares(root / "reg" / "1_square", 3, seed=6, colour=(200, 40, 40), prefix="square")
    return root
