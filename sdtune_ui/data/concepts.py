"""Concepts (subjects) of a dataset, how their folders are named, and the order an epoch visits them.

A concept is one subject or style with its own images, prompt, optional placeholder token and optional
class (prior-preservation) images. A plain folder is one concept named "". Several concepts come from:

- kohya's folders `N_tokens` (`img/10_sks dog/`): N = repeats (how often each image counts per epoch),
  "sks dog" = the prompt of images without a caption file; `reg/N_class/` holds class images;
- our `concepts.json` at the dataset root, or a `dataset_info.json` in each concept folder (see
  docs/DATASETS.md for the fields).

`epoch_order` is the one place that turns concepts and repeats into the examples an epoch visits: a pure
function of (seed, epoch), so a resumed run sees exactly the order an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from sdtune_ui.errors import DatasetError

CONCEPTS_JSON = "concepts.json"
SAMPLING_MODES = ("repeats", "balanced")
# kohya reads `int(name.split("_")[0])` as the repeats and the rest (joined by "_") as the folder's prompt;
# a name without "_" (e.g. "2024") is not taken for a kohya folder here, so a year folder stays a folder.
_KOHYA_FOLDER = re.compile(r"^([0-9]+)_(.*)$", re.DOTALL)
_CONCEPT_FIELDS = {"name", "folder", "instance_prompt", "token", "class_prompt", "class_data", "repeats",
                   "class_repeats"}


@dataclass
class Concept:
    """One subject of a dataset. For a plain single folder: name "", folder ".", repeats 1."""

    name: str  # unique in the dataset; Example.concept refers to it
    folder: str  # relative to the dataset root ("." = the root itself)
    instance_prompt: str = ""  # the prompt of its images without a caption (kohya: the folder's tokens)
    token: str = ""  # its placeholder / trigger token, when known ("sks" of kohya's "10_sks dog")
    class_prompt: str = ""  # prior preservation's prompt ("dog"), when known
    class_data: str = ""  # absolute folder of its class images ("" = none given)
    class_repeats: int = 1  # kohya's N of `reg/N_class`
    repeats: int = 1  # how many times each of its images counts per epoch
    images: int = 0  # usable training images
    masks: int = 0  # of those, with a OneTrainer mask


def parse_kohya_folder(name: str) -> tuple[int, str] | None:
    """(repeats, prompt) of a kohya folder name such as "10_sks dog"; None when it is not one (or N < 1)."""
    match = _KOHYA_FOLDER.match(name)
    if not match:
        return None
    repeats = int(match.group(1))
    return (repeats, match.group(2)) if repeats >= 1 else None


def split_token(prompt: str) -> tuple[str, str]:
    """kohya's "N_token class" convention: ("sks", "dog") from "sks dog"; a single word is the token only."""
    words = prompt.split()
    if len(words) < 2:
        return prompt.strip(), ""
    return words[0], " ".join(words[1:])


def read_concepts_json(root: Path) -> list[dict]:
    """The concept entries of `root/concepts.json`: a list, or {"concepts": [...]}, each with a "folder"."""
    path = root / CONCEPTS_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); fix it.") from None
    except OSError as err:
        raise DatasetError(f"Cannot read {path}: {err.strerror or err}.") from None
    entries = data.get("concepts") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{path} must hold a list of concepts, e.g. "
                           '[{"folder": "dog", "instance_prompt": "a photo of sks dog"}].')
    checked = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("folder"), str) or not entry["folder"].strip():
            raise DatasetError(f"{path}: concept {number} needs a \"folder\" (a sub-folder of the dataset).")
        unknown = sorted(set(entry) - _CONCEPT_FIELDS)
        if unknown:
            raise DatasetError(f"{path}: concept {number} has unknown field(s) {unknown}; "
                               f"known: {sorted(_CONCEPT_FIELDS)}.")
        for key in ("repeats", "class_repeats"):
            value = entry.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DatasetError(f"{path}: concept {number} {key} must be a whole number >= 1, not {value!r}.")
        checked.append(entry)
    return checked


# ---- the order of an epoch ---------------------------------------------------------------------------


class Weighted(Protocol):
    concept: str
    repeats: int


def epoch_length(examples: Sequence[Weighted], mode: str = "repeats") -> int:
    """How many examples one epoch visits: the sum of repeats, rounded up to a multiple of the concepts
    in "balanced" mode (so every concept gets exactly the same number of visits)."""
    _check_mode(mode)
    total = sum(max(1, ex.repeats) for ex in examples)
    concepts = len({ex.concept for ex in examples})
    if mode == "repeats" or concepts <= 1:
        return total
    return concepts * math.ceil(total / concepts)


def epoch_order(examples: Sequence[Weighted], seed: int, epoch: int, mode: str = "repeats",
                generator: torch.Generator | None = None) -> list[int]:
    """Indices into `examples` in the order epoch `epoch` visits them; a pure function of (seed, epoch).

    "repeats" (kohya's rule): each example appears exactly `repeats` times per epoch, so a concept's share
    is repeats x images; that is what kohya users tune their folder names for.
    "balanced": every concept gets the same share of the epoch (epoch_length / concepts visits), however
    many images it has, so 3 images of one subject are not drowned by 30 of another. A concept walks its
    own stream of shuffled passes over its images (weighted by their repeats) that continues from epoch to
    epoch: over any number of epochs each image of a concept has been visited equally often, give or take 1.
    With one concept both modes give the same order: a shuffle of the repeated examples from
    torch.Generator seeded with seed * 100_003 + epoch, which for repeats 1 is exactly the permutation the
    trainer drew before concepts existed. Pass that `generator` (seeded so) to have it advanced exactly as
    that randperm advanced it, so the trainer's later draws from it stay the same too.
    """
    _check_mode(mode)
    generator = generator or torch.Generator().manual_seed(seed * 100_003 + epoch)
    groups: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.concept, []).extend([index] * max(1, example.repeats))
    if mode == "repeats" or len(groups) <= 1:
        pool = [index for indices in groups.values() for index in indices]
        pool.sort()  # examples in dataset order, each repeated: independent of how concepts are grouped
        return [pool[i] for i in torch.randperm(len(pool), generator=generator).tolist()]
    share = epoch_length(examples, mode) // len(groups)
    slots: list[int] = []
    for name, pool in groups.items():
        slots += _stream(pool, f"{seed}\0{name}", epoch * share, share)
    return [slots[i] for i in torch.randperm(len(slots), generator=generator).tolist()]


def _stream(pool: list[int], key: str, start: int, count: int) -> list[int]:
    """Items start .. start+count of an endless sequence of shuffled passes over `pool` (pass n seeded by
    `key` and n, so any stretch of it is computed without the ones before)."""
    taken: list[int] = []
    position = start
    while len(taken) < count:
        cycle, offset = divmod(position, len(pool))
        digest = hashlib.sha256(f"{key}\0{cycle}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        order = torch.randperm(len(pool), generator=generator).tolist()
        chunk = [pool[i] for i in order[offset:offset + count - len(taken)]]
        taken += chunk
        position += len(chunk)
    return taken


def _check_mode(mode: str) -> None:
    if mode not in SAMPLING_MODES:
        raise DatasetError(f"Unknown sampling mode {mode!r}; choose one of {', '.join(SAMPLING_MODES)}.")
