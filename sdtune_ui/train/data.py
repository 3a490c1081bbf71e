"""Training data: images prepared to their bucket size, captions per step, and deterministic batches.

Batches are a pure function of (seed, epoch, step), so a resumed run sees exactly the batches an
uninterrupted run would, and N processes see the same global batch a single process would (each takes
its slice). Random choices per step (flip, caption dropout, prompt template) come from a generator the
trainer checkpoints.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sdtune_ui.data.buckets import make_buckets, nearest_bucket
from sdtune_ui.data.datasets import Example


@dataclass
class Item:
    """One prepared training image: pixel tensors (one per flip variant) and how to caption it."""

    name: str
    pixels: list[torch.Tensor]          # [C, H, W] in [-1, 1]; [plain] or [plain, mirrored]
    caption: str
    is_class: bool
    bucket: tuple[int, int]             # (width, height)
    original_size: tuple[int, int]      # (height, width), SDXL conditioning
    crop_top_left: tuple[int, int]      # (top, left), SDXL conditioning


def prepare_image(image: Image.Image, bucket: tuple[int, int], center_crop: bool,
                  rng: random.Random) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize to cover the bucket, crop to it; return the [-1, 1] tensor and the crop's (top, left)."""
    width, height = bucket
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           Image.Resampling.BICUBIC)
    spare_x, spare_y = resized.width - width, resized.height - height
    left = spare_x // 2 if center_crop else rng.randint(0, spare_x)
    top = spare_y // 2 if center_crop else rng.randint(0, spare_y)
    cropped = resized.crop((left, top, left + width, top + height))
    array = np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), (top, left)


class TrainingData:
    """All items of a run plus the rules that turn (epoch, step) into a global batch of item indices."""

    def __init__(self, examples: list[Example], class_examples: list[Example], *, resolution: int,
                 bucketing: bool, center_crop: bool, random_flip: bool, seed: int):
        self.seed = seed
        self.random_flip = random_flip
        self.center_crop = center_crop
        buckets = make_buckets(resolution) if bucketing else [(resolution, resolution)]
        rng = random.Random(seed)
        self.items = [self._item(ex, buckets, False, rng) for ex in examples]
        self.class_items = [self._item(ex, [(resolution, resolution)], True, rng) for ex in class_examples]
        self._class_order = torch.randperm(len(self.class_items),
                                           generator=torch.Generator().manual_seed(seed)).tolist()
        self._cached_epoch: tuple = (None, None, [])

    def _item(self, example: Example, buckets: list[tuple[int, int]], is_class: bool, rng: random.Random) -> Item:
        image = example.image
        bucket = nearest_bucket(image.width, image.height, buckets)
        pixels, crop = prepare_image(image, bucket, self.center_crop, rng)
        variants = [pixels, torch.flip(pixels, dims=[2])] if self.random_flip else [pixels]
        return Item(example.name, variants, example.caption, is_class, bucket,
                    (image.height, image.width), crop)

    def __len__(self) -> int:
        return len(self.items)

    def epoch_batches(self, epoch: int, global_batch: int) -> list[list[int]]:
        """Global batches of instance indices for one epoch: same-bucket only, shuffled, deterministic.

        A bucket's last partial batch is filled by cycling its own shuffled items, so small datasets
        (fewer images than the batch) still train on full batches. The last epoch asked for is kept, since
        the loop asks once per step.
        """
        if self._cached_epoch[:2] != (epoch, global_batch):
            self._cached_epoch = (epoch, global_batch, self._shuffle_epoch(epoch, global_batch))
        return self._cached_epoch[2]

    def _shuffle_epoch(self, epoch: int, global_batch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index in torch.randperm(len(self.items), generator=generator).tolist():
            by_bucket.setdefault(self.items[index].bucket, []).append(index)
        batches = []
        for indices in by_bucket.values():
            padded = indices + [indices[i % len(indices)] for i in range((-len(indices)) % global_batch)]
            batches += [padded[i:i + global_batch] for i in range(0, len(padded), global_batch)]
        order = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in order]

    def class_indices(self, step: int, count: int) -> list[int]:
        """Class items paired with a batch: walk a fixed shuffled order so every class image gets used."""
        order = self._class_order
        return [order[(step * count + i) % len(order)] for i in range(count)] if order else []
