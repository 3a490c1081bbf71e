"""Masks: synthetic inpainting masks, the user's own masks beside their pictures, and a PNG's alpha channel.

A mask is white (1) where it counts: the region an inpainting model learns to repaint, or the region a masked
loss looks at; black (0) elsewhere. Users give masks as OneTrainer names them (`a-masklabel.png` beside `a.png`,
data/formats.py), or as the transparency of a PNG (transparent = ignore).

Synthetic masks follow the recipe RunwayML trained SD inpainting with: random rectangles, ellipses and brush
strokes covering about a quarter of the picture on average, and a share of masks that cover everything (so the
model keeps working as a text-to-image model). They are a pure function of their seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MASK_KINDS = ("rectangle", "ellipse", "strokes")
COVERAGE_RANGE = (0.1, 0.4)   # each partial mask covers a fraction drawn from this range: 25% on average


def synthetic_mask(width: int, height: int, seed: int, *, whole_share: float = 0.25) -> np.ndarray:
    """A float32 [height, width] mask of 0 and 1: the whole picture with probability `whole_share`, else a
    rectangle, an ellipse or brush strokes (equally likely) covering 10-40% of it."""
    rng = np.random.default_rng(seed)
    if rng.random() < whole_share:
        return np.ones((height, width), np.float32)
    kind = MASK_KINDS[int(rng.integers(len(MASK_KINDS)))]
    coverage = float(rng.uniform(*COVERAGE_RANGE))
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "strokes":
        _strokes(draw, canvas, rng, coverage)
    else:
        # An aspect ratio between 1:2 and 2:1, sized so the shape covers `coverage` of the picture.
        aspect = math.exp(rng.uniform(-math.log(2), math.log(2)))
        area = coverage * width * height / (math.pi / 4 if kind == "ellipse" else 1.0)
        box_w = min(width, max(2, round(math.sqrt(area * aspect))))
        box_h = min(height, max(2, round(area / box_w)))
        left = int(rng.integers(0, width - box_w + 1))
        top = int(rng.integers(0, height - box_h + 1))
        shape = draw.ellipse if kind == "ellipse" else draw.rectangle
        shape((left, top, left + box_w - 1, top + box_h - 1), fill=255)
    return (np.asarray(canvas) > 127).astype(np.float32)


def _strokes(draw: ImageDraw.ImageDraw, canvas: Image.Image, rng: np.random.Generator, coverage: float) -> None:
    """Brush strokes: random walks with a thick round brush until they cover `coverage` of the picture."""
    width, height = canvas.size
    short = min(width, height)
    for _ in range(12):   # strokes; each ends when the coverage is reached
        brush = max(2, round(short * rng.uniform(0.05, 0.15)))
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        angle = rng.uniform(0, 2 * math.pi)
        points = [(x, y)]
        for _ in range(int(rng.integers(4, 10))):
            angle += rng.uniform(-1.2, 1.2)
            length = short * rng.uniform(0.1, 0.3)
            x = float(np.clip(x + length * math.cos(angle), 0, width - 1))
            y = float(np.clip(y + length * math.sin(angle), 0, height - 1))
            points.append((x, y))
            draw.line(points[-2:], fill=255, width=brush)
            draw.ellipse((x - brush / 2, y - brush / 2, x + brush / 2, y + brush / 2), fill=255)  # round joints
            if np.count_nonzero(np.asarray(canvas)) >= coverage * width * height:
                return


def mask_seed(seed: int, image_index: int, variant: int) -> int:
    """The seed of image `image_index`'s synthetic mask number `variant` in a run with `seed`."""
    return (seed * 1_000_003 + image_index * 7919 + variant) % 2**32


def read_mask(path: str | Path) -> Image.Image:
    """A mask file as an 8-bit greyscale image (white = counts). Colour and transparency are flattened: a
    transparent pixel counts as black."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            grey = np.asarray(rgba.convert("L"), np.float32) * (np.asarray(rgba)[..., 3] / 255.0)
            return Image.fromarray(grey.round().astype(np.uint8), "L")
        return image.convert("L")


def alpha_mask(path: str | Path) -> Image.Image | None:
    """The transparency of a picture as a mask (opaque = counts), or None when it has none or is fully opaque."""
    try:
        with Image.open(path) as image:
            has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
            if not has_alpha:
                return None
            alpha = image.convert("RGBA").getchannel("A")
    except OSError:
        return None
    return alpha if alpha.getextrema()[0] < 255 else None


def coverage(mask: np.ndarray) -> float:
    """The fraction of the picture a mask covers (soft masks count by their values)."""
    return float(np.asarray(mask, np.float32).mean())
