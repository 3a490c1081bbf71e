"""Captioned toy scenes, drawn in code: the picture set the demo model learns to draw.

A scene is one object (robot, cat, house, car or tree) in a colour, at a size and place, on a background
(beach, forest, city, table, snow). Everything is a pure function of a seed, so the pre-training set, the
example dataset and the tests draw exactly the same pictures on every machine.

Shapes are drawn at 4x the asked size and scaled down, which gives smooth edges at 64 px.

The example subject "sks robot" (`draw_subject_robot`) is drawn in the same style but looks like no robot of
the pre-training set: always red (the set's robots come in every colour, so the model can draw a red robot,
which textual inversion needs: it can only find what the model already draws), a round head with a yellow
visor band instead of two eyes, an antenna with a yellow ball, no arms. So a fine-tune that learned it is
visibly different from what the base draws for "a robot": boxy robots with eyes and arms, in any colour.
Robots are drawn twice as often as each other object: they are the demo's class.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw

SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 35),
    "orange": (240, 140, 30),
    "yellow": (245, 215, 40),
    "green": (50, 170, 60),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "pink": (240, 130, 190),
    "white": (240, 240, 240),
    "black": (30, 30, 30),
    "gray": (130, 130, 135),
    "brown": (130, 80, 40),
}
OBJECTS = ("robot", "cat", "house", "car", "tree")
OBJECT_WEIGHTS = (2, 1, 1, 1, 1)  # the demo's class, robot, is seen twice as often
BACKGROUNDS = ("on a beach", "in a forest", "in a city", "on a table", "in the snow")
CAPTION_STARTS = ("a photo of a", "a picture of a", "a")

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Scene:
    """What one picture shows; `caption()` describes it (optionally leaving colour or place out)."""

    obj: str
    colour: str
    background: str
    x: float        # centre of the object, as a fraction of the width
    ground: float   # where the object stands, as a fraction of the height
    scale: float    # object height as a fraction of the image

    def caption(self, start: str = "a photo of a", with_colour: bool = True, with_background: bool = True) -> str:
        words = start.split() + ([self.colour] if with_colour else []) + [self.obj]
        if words[-2] == "a" and words[-1][0] in "aeiou":
            words[-2] = "an"
        return " ".join(words + ([self.background] if with_background else []))


def random_scene(rng: random.Random, obj: str | None = None) -> Scene:
    obj = obj or rng.choices(OBJECTS, OBJECT_WEIGHTS)[0]
    colour = rng.choice(tuple(COLOURS))
    scale = rng.uniform(0.5, 0.8) if obj != "car" else rng.uniform(0.26, 0.36)
    return Scene(obj, colour, rng.choice(BACKGROUNDS), x=rng.uniform(0.38, 0.62), ground=rng.uniform(0.82, 0.94),
                 scale=scale)


def random_caption(scene: Scene, rng: random.Random) -> str:
    """A caption in one of several phrasings, so short prompts ("a robot") work as well as long ones."""
    return scene.caption(rng.choice(CAPTION_STARTS), with_colour=rng.random() < 0.75,
                         with_background=rng.random() < 0.6)


def draw_scene(scene: Scene, size: int = 64, subject: bool = False) -> Image.Image:
    """The picture of `scene`, `size` pixels square; `subject` draws the example "sks robot" instead."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big))
    draw = ImageDraw.Draw(image)
    _BACKGROUND_PAINTERS[scene.background](draw, big)
    height = scene.scale * big
    cx, ground = scene.x * big, scene.ground * big
    painter = draw_subject_robot if subject else _OBJECT_PAINTERS[scene.obj]
    painter(draw, cx, ground, height, COLOURS[scene.colour])
    return image.resize((size, size), Image.Resampling.LANCZOS)


def sample(seed: int, size: int = 64) -> tuple[Image.Image, str]:
    """Picture and caption number `seed` of the pre-training set."""
    rng = random.Random(seed)
    scene = random_scene(rng)
    return draw_scene(scene, size), random_caption(scene, rng)


# ---------------------------------------------------------------- objects (centre x, ground y, height, colour)

def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(max(0, min(255, round(c * factor))) for c in colour)  # type: ignore[return-value]


def _outline(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    return _shade(colour, 0.55) if sum(colour) > 120 else (90, 90, 90)


def _robot(draw: ImageDraw.ImageDraw, cx: float, ground: float, h: float, colour: tuple) -> None:
    """A boxy robot: square head with two round eyes, a wide torso, arms, two legs."""
    edge, w = _outline(colour), 0.66 * h
    leg_top, torso_top, head_top = ground - 0.22 * h, ground - 0.68 * h, ground - h
    for side in (-1, 1):
        draw.rectangle((cx + side * 0.08 * w - (0.12 * w if side < 0 else 0), leg_top,
                        cx + side * 0.08 * w + (0.12 * w if side > 0 else 0), ground), fill=(70, 70, 75))
        arm_x = cx + side * 0.5 * w
        draw.rectangle((min(arm_x, arm_x + side * 0.14 * w), torso_top + 0.05 * h,
                        max(arm_x, arm_x + side * 0.14 * w), torso_top + 0.36 * h), fill=edge)
    draw.rectangle((cx - 0.5 * w, torso_top, cx + 0.5 * w, leg_top), fill=colour, outline=edge,
                   width=max(1, int(h / 40)))
    draw.rectangle((cx - 0.3 * w, head_top, cx + 0.3 * w, torso_top - 0.03 * h), fill=colour, outline=edge,
                   width=max(1, int(h / 40)))
    eye_y, eye_r = head_top + 0.14 * h, 0.055 * h
    for side in (-1, 1):
        ex = cx + side * 0.13 * w
        draw.ellipse((ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r), fill=(250, 250, 250))
        draw.ellipse((ex - eye_r / 2, eye_y - eye_r / 2, ex + eye_r / 2, eye_y + eye_r / 2), fill=(20, 20, 20))
    draw.rectangle((cx - 0.2 * w, torso_top + 0.12 * h, cx + 0.2 * w, torso_top + 0.24 * h), fill=edge)


def draw_subject_robot(draw: ImageDraw.ImageDraw, cx: float, ground: float, h: float, colour: tuple = ()) -> None:
    """The example subject "sks robot": red, round head, yellow visor, antenna with a ball, no arms.

    `colour` is ignored: the subject is always the same red.
    """
    red, dark, yellow = (215, 30, 30), (120, 15, 15), (250, 215, 30)
    w = 0.62 * h
    leg_top, torso_top, head_top = ground - 0.2 * h, ground - 0.62 * h, ground - 0.92 * h
    for side in (-1, 1):
        draw.rectangle((cx + side * 0.22 * w - 0.09 * w, leg_top, cx + side * 0.22 * w + 0.09 * w, ground),
                       fill=(60, 60, 60))
    draw.rounded_rectangle((cx - 0.5 * w, torso_top, cx + 0.5 * w, leg_top), radius=0.12 * w, fill=red,
                           outline=dark, width=max(1, int(h / 40)))
    draw.ellipse((cx - 0.36 * w, head_top, cx + 0.36 * w, torso_top + 0.04 * h), fill=red, outline=dark,
                 width=max(1, int(h / 40)))
    visor_y = head_top + 0.13 * h
    draw.rounded_rectangle((cx - 0.3 * w, visor_y - 0.05 * h, cx + 0.3 * w, visor_y + 0.06 * h), radius=0.04 * h,
                           fill=yellow)
    draw.line((cx, head_top, cx, ground - h), fill=dark, width=max(1, int(h / 30)))
    ball = 0.05 * h
    draw.ellipse((cx - ball, ground - h - ball, cx + ball, ground - h + ball), fill=yellow)
    draw.ellipse((cx - 0.12 * w, torso_top + 0.12 * h, cx + 0.12 * w, torso_top + 0.12 * h + 0.24 * w), fill=yellow)


def _cat(draw: ImageDraw.ImageDraw, cx: float, ground: float, h: float, colour: tuple) -> None:
    """A sitting cat seen from the front: pear-shaped body, round head, pointed ears, a curled tail."""
    edge = _outline(colour)
    w = 0.7 * h
    draw.line((cx + 0.3 * w, ground - 0.08 * h, cx + 0.62 * w, ground - 0.2 * h, cx + 0.6 * w, ground - 0.45 * h),
              fill=colour, width=max(2, int(0.09 * h)), joint="curve")
    draw.ellipse((cx - 0.4 * w, ground - 0.58 * h, cx + 0.4 * w, ground), fill=colour, outline=edge,
                 width=max(1, int(h / 40)))
    head_r = 0.26 * h
    head_cy = ground - 0.62 * h
    for side in (-1, 1):
        draw.polygon([(cx + side * 0.08 * h, head_cy - 0.8 * head_r), (cx + side * 0.25 * h, head_cy - 1.45 * head_r),
                      (cx + side * 0.27 * h, head_cy - 0.3 * head_r)], fill=colour, outline=edge)
    draw.ellipse((cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r), fill=colour, outline=edge,
                 width=max(1, int(h / 40)))
    eye_r = 0.045 * h
    for side in (-1, 1):
        ex = cx + side * 0.1 * h
        draw.ellipse((ex - eye_r, head_cy - 0.05 * h - eye_r, ex + eye_r, head_cy - 0.05 * h + eye_r),
                     fill=(120, 200, 60))
    draw.polygon([(cx - 0.03 * h, head_cy + 0.05 * h), (cx + 0.03 * h, head_cy + 0.05 * h),
                  (cx, head_cy + 0.09 * h)], fill=(230, 120, 140))


def _house(draw: ImageDraw.ImageDraw, cx: float, ground: float, h: float, colour: tuple) -> None:
    """A house: walls in the colour, a dark triangular roof, a door and a window."""
    edge = _outline(colour)
    w = 0.9 * h
    wall_top = ground - 0.58 * h
    draw.rectangle((cx - 0.5 * w, wall_top, cx + 0.5 * w, ground), fill=colour, outline=edge, width=max(1, int(h / 40)))
    draw.polygon([(cx - 0.6 * w, wall_top), (cx + 0.6 * w, wall_top), (cx, ground - h)], fill=(110, 45, 35))
    draw.rectangle((cx - 0.1 * w, ground - 0.3 * h, cx + 0.1 * w, ground), fill=(90, 55, 30))
    for side in (-1, 1):
        wx = cx + side * 0.3 * w
        draw.rectangle((wx - 0.09 * w, wall_top + 0.1 * h, wx + 0.09 * w, wall_top + 0.26 * h), fill=(170, 215, 240),
                       outline=edge)


def _car(draw: ImageDraw.ImageDraw, cx: float, ground: float, h: float, colour: tuple) -> None:
    """A car from the side: long body, a cabin with windows on top, two black wheels."""
    edge = _outline(colour)
    w = 2.4 * h
    wheel_r = 0.22 * h
    body_bottom = ground - wheel_r * 0.8
    draw.rounded_rectangle((cx - 0.5 * w, body_bottom - 0.5 * h, cx + 0.5 * w, body_bottom), radius=0.12 * h,
                           fill=colour, outline=edge, width=max(1, int(h / 20)))
    draw.polygon([(cx - 0.28 * w, body_bottom - 0.48 * h), (cx - 0.16 * w, ground - h), (cx + 0.14 * w, ground - h),
                  (cx + 0.27 * w, body_bottom - 0.48 * h)], fill=colour, outline=edge)
    draw.polygon([(cx - 0.22 * w, body_bottom - 0.5 * h), (cx - 0.13 * w, ground - 0.9 * h),
                  (cx + 0.11 * w, ground - 0.9 * h), (cx + 0.21 * w, body_bottom - 0.5 * h)], fill=(170, 215, 240))
    for side in (-1, 1):
        wx = cx + side * 0.3 * w
        draw.ellipse((wx - wheel_r, ground - 2 * wheel_r, wx + wheel_r, ground), fill=(25, 25, 25))
        draw.ellipse((wx - wheel_r / 2, ground - 1.5 * wheel_r, wx + wheel_r / 2, ground - wheel_r / 2),
                     fill=(160, 160, 160))


def _tree(draw: ImageDraw.ImageDraw, cx: float, ground: float, h: float, colour: tuple) -> None:
    """A tree: brown trunk, a round crown of three circles in the colour."""
    edge = _outline(colour)
    draw.rectangle((cx - 0.07 * h, ground - 0.45 * h, cx + 0.07 * h, ground), fill=(110, 70, 35))
    r = 0.26 * h
    for dx, dy in ((-0.16, -0.55), (0.16, -0.55), (0, -0.74)):
        x, y = cx + dx * h, ground + dy * h
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=edge, width=max(1, int(h / 40)))


_OBJECT_PAINTERS: dict[str, Callable] = {"robot": _robot, "cat": _cat, "house": _house, "car": _car, "tree": _tree}


# ---------------------------------------------------------------- backgrounds (whole image)

def _sky_and_ground(draw: ImageDraw.ImageDraw, size: int, sky: tuple, ground: tuple, horizon: float) -> None:
    draw.rectangle((0, 0, size, size), fill=sky)
    draw.rectangle((0, horizon * size, size, size), fill=ground)


def _beach(draw: ImageDraw.ImageDraw, size: int) -> None:
    _sky_and_ground(draw, size, (135, 200, 245), (238, 214, 160), 0.6)
    draw.rectangle((0, 0.48 * size, size, 0.6 * size), fill=(40, 120, 200))
    draw.ellipse((0.78 * size, 0.06 * size, 0.92 * size, 0.2 * size), fill=(255, 235, 120))


def _forest(draw: ImageDraw.ImageDraw, size: int) -> None:
    _sky_and_ground(draw, size, (70, 120, 70), (60, 95, 40), 0.7)
    for x in (0.06, 0.3, 0.55, 0.82):
        draw.rectangle(((x - 0.03) * size, 0, (x + 0.03) * size, 0.72 * size), fill=(75, 50, 30))
    draw.rectangle((0, 0, size, 0.14 * size), fill=(30, 80, 35))


def _city(draw: ImageDraw.ImageDraw, size: int) -> None:
    _sky_and_ground(draw, size, (185, 195, 210), (85, 85, 90), 0.72)
    towers = ((0.0, 0.25, 110), (0.2, 0.12, 140), (0.42, 0.3, 100), (0.62, 0.18, 125), (0.82, 0.35, 150))
    for left, top, shade in towers:
        draw.rectangle((left * size, top * size, (left + 0.19) * size, 0.72 * size), fill=(shade, shade, shade + 10))
        for wy in range(int(top * 10) + 1, 7):
            draw.rectangle(((left + 0.05) * size, wy * 0.1 * size, (left + 0.09) * size, (wy * 0.1 + 0.04) * size),
                           fill=(230, 220, 140))
    draw.rectangle((0, 0.84 * size, size, 0.86 * size), fill=(220, 220, 220))


def _table(draw: ImageDraw.ImageDraw, size: int) -> None:
    _sky_and_ground(draw, size, (225, 215, 195), (150, 100, 60), 0.66)
    draw.rectangle((0, 0.66 * size, size, 0.7 * size), fill=(120, 78, 45))
    for y in (0.78, 0.9):
        draw.line((0, y * size, size, y * size), fill=(135, 88, 52), width=max(1, size // 80))


def _snow(draw: ImageDraw.ImageDraw, size: int) -> None:
    _sky_and_ground(draw, size, (200, 210, 225), (248, 250, 252), 0.62)
    draw.polygon([(0, 0.62 * size), (0.25 * size, 0.3 * size), (0.5 * size, 0.62 * size)], fill=(160, 170, 190))
    draw.polygon([(0.4 * size, 0.62 * size), (0.7 * size, 0.22 * size), (size, 0.62 * size)], fill=(175, 185, 200))
    draw.polygon([(0.62 * size, 0.33 * size), (0.7 * size, 0.22 * size), (0.78 * size, 0.33 * size)],
                 fill=(250, 250, 252))


_BACKGROUND_PAINTERS: dict[str, Callable] = {"on a beach": _beach, "in a forest": _forest, "in a city": _city,
                                             "on a table": _table, "in the snow": _snow}
