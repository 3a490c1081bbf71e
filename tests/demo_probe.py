"""Measure what the demo model draws, on pixels: which object class, which colour, how much like the subject.

The pre-training pictures come from code (sdtune_ui/models/demo/scenes.py), so the tests can draw as many
reference pictures of each class as they like and compare generated images with them.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdtune_ui.models.demo import scenes

STEPS = 20
GUIDANCE = 5.0


def generate(pipe, prompt: str, seeds: range | list[int], steps: int = STEPS, guidance: float = GUIDANCE) -> np.ndarray:
    """Images for `prompt`, one per seed, as floats in [0, 1] of shape [N, H, W, 3]."""
    pipe.set_progress_bar_config(disable=True)
    images = [pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                   generator=torch.Generator().manual_seed(seed)).images[0] for seed in seeds]
    return np.stack(images)


def load_images(paths: list[Path], size: int = 64) -> np.ndarray:
    """Pictures from disk at the model's size, as generate() returns them."""
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BICUBIC),
                                dtype=np.float32) / 255 for p in paths])


def subject_red_fraction(images: np.ndarray) -> np.ndarray:
    """Per image, the share of pixels in the subject's red (the base draws robots of every colour, red too)."""
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    return ((r > 0.55) & (g < 0.3) & (b < 0.3)).mean(axis=(1, 2))  # the subject's (215, 30, 30); not orange


def colour_fraction(images: np.ndarray, colour: str) -> np.ndarray:
    """Per image, the share of pixels within a small distance of one of the scenes' named colours."""
    target = np.array(scenes.COLOURS[colour], dtype=np.float32) / 255
    return (np.abs(images - target).max(axis=-1) < 0.15).mean(axis=(1, 2))


def class_references(per_class: int = 150, size: int = 64, seed: int = 7,
                     background: str | None = None) -> dict[str, np.ndarray]:
    """Freshly drawn pictures of each object class (any colour and place; any background, or `background`)."""
    rng = random.Random(seed)

    def picture(obj: str) -> np.ndarray:
        scene = scenes.random_scene(rng, obj)
        if background:
            scene = dataclasses.replace(scene, background=background)
        return np.asarray(scenes.draw_scene(scene, size), dtype=np.float32) / 255

    return {obj: np.stack([picture(obj) for _ in range(per_class)]) for obj in scenes.OBJECTS}


def subject_references(count: int = 60, size: int = 64, seed: int = 11) -> np.ndarray:
    """The example subject drawn afresh on every background, in varied places and sizes (as the examples are).

    Distances to these are about the object: a generated image finds a reference on its own background.
    """
    rng = random.Random(seed)
    places = [scenes.Scene("robot", "red", scenes.BACKGROUNDS[i % len(scenes.BACKGROUNDS)], x=rng.uniform(0.38, 0.62),
                           ground=rng.uniform(0.82, 0.94), scale=rng.uniform(0.5, 0.8)) for i in range(count)]
    return np.stack([np.asarray(scenes.draw_scene(s, size, subject=True), dtype=np.float32) / 255 for s in places])


def distances(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Mean squared pixel distance from each image [N] to each reference [M]: shape [N, M]."""
    a, b = images.reshape(len(images), -1), references.reshape(len(references), -1)
    return ((a ** 2).sum(1)[:, None] - 2 * a @ b.T + (b ** 2).sum(1)[None]) / a.shape[1]


def shape_features(images: np.ndarray, cells: int = 8, bins: int = 8) -> np.ndarray:
    """Per image, where its edges are and which way they run: gradient-orientation histograms (as HOG) over a
    cells x cells grid of the grey image, unit length. Colour hardly counts, so a yellow robot is near the
    robots, not the yellow trees (raw pixels put half of the demo's robots with trees)."""
    grey = images.mean(axis=-1)
    gy, gx = np.gradient(grey, axis=(1, 2))
    magnitude = np.hypot(gx, gy)
    orientation = np.minimum(((np.arctan2(gy, gx) % np.pi) / np.pi * bins).astype(int), bins - 1)
    n, height, width = grey.shape
    rows, cols = height // cells, width // cells
    histograms = np.stack([(magnitude * (orientation == b)).reshape(n, cells, rows, cells, cols).sum(axis=(2, 4))
                           for b in range(bins)], axis=-1).reshape(n, -1)
    return histograms / (np.linalg.norm(histograms, axis=1, keepdims=True) + 1e-8)


def shape_distances(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Squared distance between the shape features of each image [N] and each reference [M]: shape [N, M]."""
    a, b = shape_features(images), shape_features(references)
    return (a ** 2).sum(1)[:, None] - 2 * a @ b.T + (b ** 2).sum(1)[None]


def nearest_class(images: np.ndarray, references: dict[str, np.ndarray], k: int = 5) -> list[str]:
    """Each image's class: the one whose k nearest reference pictures (by shape) are nearest on average."""
    scores = {obj: np.sort(shape_distances(images, refs), axis=1)[:, :k].mean(1) for obj, refs in references.items()}
    names = list(scores)
    return [names[i] for i in np.stack([scores[n] for n in names], axis=1).argmin(axis=1)]


def nearest_distance(images: np.ndarray, references: np.ndarray) -> float:
    """Mean over images of the distance to the nearest reference picture."""
    return float(distances(images, references).min(axis=1).mean())
