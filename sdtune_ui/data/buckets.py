"""Aspect-ratio buckets: the (width, height) shapes images are resized and cropped to for training.

Shared by the training dataset (which resizes each image into its bucket) and the dataset doctor
(which shows the user which buckets their images will land in), so both always agree.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence


def _effective_step(resolution: int, step: int) -> int:
    # With tiny demo resolutions (32, 64) a 64 px step would leave only the square bucket, so the step
    # shrinks to at most a quarter of the resolution; it stays a multiple of 8 (the VAE's downsampling).
    limit = max(8, (resolution // 4) // 8 * 8)
    return max(8, min(step, limit) // 8 * 8)


def make_buckets(resolution: int, step: int = 64, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """All (width, height) buckets with area <= resolution**2 (close to it), sides multiples of the step.

    The square (resolution, resolution) is always included. Buckets are sorted from tallest to widest.
    `max_ratio` bounds the long side / short side ratio.
    """
    if resolution <= 0 or resolution % 8:
        raise ValueError(f"resolution must be a positive multiple of 8, got {resolution}")
    if max_ratio < 1.0:
        raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
    step = _effective_step(resolution, step)
    max_area = resolution * resolution
    buckets = {(resolution, resolution)}
    min_side = step
    max_side = int(resolution * math.sqrt(max_ratio)) // step * step
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, (max_area // width) // step * step)
        if height < min_side:
            continue
        if max(width / height, height / width) > max_ratio + 1e-9:
            continue
        buckets.add((width, height))
    return sorted(buckets, key=lambda wh: (wh[0] / wh[1], wh[0]))


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to width/height (compared on a log scale)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not buckets:
        raise ValueError("no buckets to choose from")
    target = math.log(width / height)
    # Ties (exactly between two ratios) go to the larger area, then the first listed: deterministic.
    return min(buckets, key=lambda wh: (abs(math.log(wh[0] / wh[1]) - target), -wh[0] * wh[1]))


def upscale_factor(width: int, height: int, bucket: tuple[int, int]) -> float:
    """How much the image must be enlarged to cover its bucket (resize-to-cover, then crop); >1 = upscaled."""
    return max(bucket[0] / width, bucket[1] / height)


def assign_buckets(
    sizes: Iterable[tuple[int, int]], resolution: int, step: int = 64, max_ratio: float = 2.0
) -> dict[tuple[int, int], int]:
    """How many images of the given (width, height) sizes fall into each bucket."""
    buckets = make_buckets(resolution, step, max_ratio)
    counts = Counter(nearest_bucket(w, h, buckets) for w, h in sizes)
    return dict(sorted(counts.items(), key=lambda kv: (kv[0][0] / kv[0][1], kv[0][0])))
