"""Training data: images (and their masks and condition pictures) prepared to their bucket size, captions per
step, and deterministic batches.

Batches are a pure function of (seed, epoch, step), so a resumed run sees exactly the batches an
uninterrupted run would, and N processes see the same global batch a single process would (each takes
its slice). Which images an epoch visits, and how often, is the dataset's epoch order
(data/concepts.epoch_order: each image its repeats, or every concept an equal share); same-bucket images
are then grouped into batches. Random choices per step (flip, caption dropout, prompt template) come from
a generator the trainer checkpoints.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdtune_ui.data.buckets import make_buckets, nearest_bucket
from sdtune_ui.data.concepts import epoch_order
from sdtune_ui.data.datasets import Example
from sdtune_ui.data.layouts import DatasetScan, scan_dataset
from sdtune_ui.data.masks import read_mask
from sdtune_ui.errors import DatasetError


@dataclass
class Item:
    """One prepared training image: pixel tensors (one per flip variant) and how to caption it."""

    name: str
    pixels: list[torch.Tensor]          # [C, H, W] in [-1, 1]; [plain] or [plain, mirrored]
    caption: str                        # the prompt it trains with (train/setup.py chose it)
    is_class: bool
    bucket: tuple[int, int]             # (width, height)
    original_size: tuple[int, int]      # (height, width), SDXL conditioning
    crop_top_left: tuple[int, int]      # (top, left), SDXL conditioning
    concept: str = ""                   # its concept (instance items) or class set (class items)
    repeats: int = 1                    # how many times it counts per epoch
    token: str = ""                     # its concept's placeholder token, with several concepts (TI)
    index: int = 0                      # its position among the run's items (seeds its synthetic masks)
    mask: list[torch.Tensor] | None = None       # [1, H, W] in [0, 1] per flip variant: its own mask (or alpha)
    condition: list[torch.Tensor] | None = None  # [3, H, W] in [0, 1] per flip variant: its ControlNet condition


def _cover_crop(image: Image.Image, bucket: tuple[int, int], center_crop: bool, rng: random.Random | None,
                crop: tuple[int, int] | None = None,
                resample: Image.Resampling = Image.Resampling.BICUBIC) -> tuple[Image.Image, tuple[int, int]]:
    """Resize to cover the bucket and crop to it (at `crop`'s (top, left) when given); the crop's (top, left)."""
    width, height = bucket
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           resample)
    spare_x, spare_y = resized.width - width, resized.height - height
    if crop is None:
        left = spare_x // 2 if center_crop or rng is None else rng.randint(0, spare_x)
        top = spare_y // 2 if center_crop or rng is None else rng.randint(0, spare_y)
    else:
        top, left = crop
    return resized.crop((left, top, left + width, top + height)), (top, left)


def prepare_image(image: Image.Image, bucket: tuple[int, int], center_crop: bool,
                  rng: random.Random) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize to cover the bucket, crop to it; return the [-1, 1] tensor and the crop's (top, left)."""
    cropped, crop = _cover_crop(image, bucket, center_crop, rng)
    array = np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), crop


def prepare_companion(image: Image.Image, size: tuple[int, int], bucket: tuple[int, int], crop: tuple[int, int],
                      channels: int) -> torch.Tensor:
    """A picture that belongs to an image (its mask, its condition), brought to the image's size, then resized and
    cropped exactly as the image was; [channels, H, W] in [0, 1]."""
    mode = "L" if channels == 1 else "RGB"
    # A mask is scaled by area (no ringing: a mask edge on a latent pixel's edge stays sharp); pictures like images.
    resample = Image.Resampling.BOX if channels == 1 else Image.Resampling.BICUBIC
    matched = image.convert(mode)
    if matched.size != size:
        matched = matched.resize(size, resample)
    cropped, _ = _cover_crop(matched, bucket, True, None, crop, resample)
    array = np.asarray(cropped, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array)
    return (tensor[None] if channels == 1 else tensor.permute(2, 0, 1)).contiguous()


class TrainingData:
    """All items of a run plus the rules that turn (epoch, step) into a global batch of item indices.

    `sampling` is the epoch order's mode ("repeats" or "balanced"); `tokens` maps a concept to its
    placeholder token; `class_of` maps a concept to the class set (class items' `concept`) its prior
    images come from.
    """

    def __init__(self, examples: list[Example], class_examples: list[Example], *, resolution: int,
                 bucketing: bool, center_crop: bool, random_flip: bool, seed: int, sampling: str = "repeats",
                 tokens: dict[str, str] | None = None, class_of: dict[str, str] | None = None):
        self.seed = seed
        self.random_flip = random_flip
        self.center_crop = center_crop
        self.sampling = sampling
        buckets = make_buckets(resolution) if bucketing else [(resolution, resolution)]
        rng = random.Random(seed)
        tokens = tokens or {}
        self.items = [self._item(ex, buckets, False, rng, tokens.get(ex.concept, "")) for ex in examples]
        self.class_items = [self._item(ex, [(resolution, resolution)], True, rng) for ex in class_examples]
        self._class_orders = self._walks_over_class_sets(seed)
        self._class_of = class_of or {}
        for index, item in enumerate(self.items + self.class_items):
            item.index = index
        self._cached_epoch: tuple = (None, None, [])
        # Epochs of a balanced run over several buckets can differ in batch count (which images an epoch
        # visits varies); then micro-steps are located through the epochs' cumulative lengths.
        self._same_length_epochs = (sampling == "repeats" or len({i.concept for i in self.items}) <= 1
                                    or len({i.bucket for i in self.items}) <= 1)
        self._epoch_starts: dict[int, list[int]] = {}  # global batch -> first micro-step of each epoch seen

    def _item(self, example: Example, buckets: list[tuple[int, int]], is_class: bool, rng: random.Random,
              token: str = "") -> Item:
        image = example.image
        bucket = nearest_bucket(image.width, image.height, buckets)
        pixels, crop = prepare_image(image, bucket, self.center_crop, rng)
        item = Item(example.name, self._flips(pixels), example.caption, is_class, bucket,
                    (image.height, image.width), crop, example.concept, max(1, example.repeats), token)
        mask = read_mask(example.mask_path) if example.mask_path else example.alpha
        if mask is not None:
            item.mask = self._flips(prepare_companion(mask, image.size, bucket, crop, 1))
        if example.condition is not None:
            item.condition = self._flips(prepare_companion(example.condition, image.size, bucket, crop, 3))
        return item

    def _flips(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor, torch.flip(tensor, dims=[2])] if self.random_flip else [tensor]

    def _walks_over_class_sets(self, seed: int) -> dict[str, list[int]]:
        """Per class set, a fixed shuffled order of its items (each its repeats times); one set of images with
        repeats 1 walks exactly the permutation the trainer used before concepts existed."""
        pools: dict[str, list[int]] = {}
        for index, item in enumerate(self.class_items):
            pools.setdefault(item.concept, []).extend([index] * item.repeats)
        orders = {}
        for name, pool in pools.items():
            order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
            orders[name] = [pool[i] for i in order]
        return orders

    def __len__(self) -> int:
        return len(self.items)

    def locate(self, micro_step: int, global_batch: int) -> tuple[int, int]:
        """(epoch, batch position in it) of a micro-step; a pure function of the step, for exact resume."""
        if self._same_length_epochs:
            return divmod(micro_step, len(self.epoch_batches(0, global_batch)))
        starts = self._epoch_starts.setdefault(global_batch, [0])
        while starts[-1] <= micro_step:  # lengths of epochs not seen yet (once each: batch lists are cheap)
            starts.append(starts[-1] + len(self._shuffle_epoch(len(starts) - 1, global_batch)))
        epoch = bisect.bisect_right(starts, micro_step) - 1
        return epoch, micro_step - starts[epoch]

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
        # One concept with repeats 1: exactly the randperm drawn here before concepts (and the generator
        # advanced as it was), so older runs keep their batches.
        for index in epoch_order(self.items, self.seed, epoch, self.sampling, generator=generator):
            by_bucket.setdefault(self.items[index].bucket, []).append(index)
        batches = []
        for indices in by_bucket.values():
            padded = indices + [indices[i % len(indices)] for i in range((-len(indices)) % global_batch)]
            batches += [padded[i:i + global_batch] for i in range(0, len(padded), global_batch)]
        order = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in order]

    def class_indices(self, step: int, instance_indices: list[int]) -> list[int]:
        """One class item per instance item of a batch, from the class set of that item's concept: walk each
        set's fixed shuffled order so every class image gets used."""
        if not self._class_orders:
            return []
        count, picked = len(instance_indices), []
        for i, index in enumerate(instance_indices):
            concept = self.items[index].concept
            order = self._class_orders.get(self._class_of.get(concept, concept)) or next(iter(
                self._class_orders.values()))
            picked.append(order[(step * count + i) % len(order)])
        return picked


def dataset_scan(data: str, caption_column: str = "") -> DatasetScan | None:
    """The layout of a dataset folder (concepts, captions; no image decoded), or None for a Hub dataset or a
    folder that cannot be read (training reports that itself)."""
    folder = Path(data).expanduser()
    if not data or not folder.is_dir():
        return None
    try:
        return scan_dataset(folder, caption_column=caption_column or None)
    except DatasetError:
        return None


def several_concepts(data: str, caption_column: str = "") -> DatasetScan | None:
    """The scan of a dataset with more than one concept, else None."""
    scan = dataset_scan(data, caption_column)
    return scan if scan is not None and len(scan.concepts) > 1 else None
