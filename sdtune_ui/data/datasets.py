"""Read a training dataset into examples (image + caption + concept), whatever format it is in.

Accepted: a folder of images with sidecar `.txt`/`.caption` captions, an imagefolder with `metadata.jsonl`
or `metadata.csv` (split folders too), a DreamBooth folder (one instance prompt, optionally
`dataset_info.json`), kohya's `N_name` folders, several concepts (`concepts.json`), or a Hub dataset by
name (loaded with `datasets`). Which files count and how is `layouts.scan_dataset`'s job; this module
decodes them. Unreadable images are skipped with a warning naming them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from sdtune_ui.data.concepts import Concept, epoch_length, epoch_order
from sdtune_ui.data.images import load_image
from sdtune_ui.data.layouts import DatasetScan, scan_dataset
from sdtune_ui.data.masks import alpha_mask
from sdtune_ui.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class Example:
    """One training image (RGB, decoded) and the caption it trains with; `name` identifies it in messages
    (its path relative to the dataset root, e.g. "10_sks dog/a.png"; a plain folder's file name)."""

    name: str
    image: Image.Image
    caption: str  # its own caption, else its concept's prompt (kohya: the folder's tokens), else ""
    concept: str = ""  # LoadedDataset.concepts name; "" in a single-concept dataset
    repeats: int = 1  # how many times it counts per epoch (kohya's N_)
    mask_path: str | None = None  # OneTrainer mask (`a-masklabel.png`: white = train, black = ignore)
    condition_path: str | None = None  # ControlNet condition image (`a-condlabel.png`)
    alpha: Image.Image | None = None  # a PNG's transparency (opaque = train), when it has some and no mask file
    condition: Image.Image | None = None  # the condition picture a ControlNet run trains with (train/setup.py)


@dataclass
class LoadedDataset:
    examples: list[Example]
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # the root's dataset_info.json, when present
    concepts: list[Concept] = field(default_factory=list)  # at least one; images = usable ones
    class_sets: list[Concept] = field(default_factory=list)  # kohya reg/N_class folders (class images)
    layout: str = "folder"  # "folder" | "kohya" | "concepts" | "imagefolder" | "hub"
    description: str = ""  # "kohya (2 concepts, repeats 10 and 5)"
    sampling: str = "repeats"  # the epoch order that fits the layout (see concepts.epoch_order)

    def concept(self, name: str) -> Concept:
        """The concept an example belongs to (`example.concept`)."""
        for concept in self.concepts:
            if concept.name == name:
                return concept
        raise KeyError(name)

    def epoch_order(self, seed: int, epoch: int, mode: str | None = None) -> list[int]:
        """Indices into `examples` for one epoch; a pure function of (seed, epoch). See concepts.epoch_order."""
        return epoch_order(self.examples, seed, epoch, mode or self.sampling)

    def epoch_length(self, mode: str | None = None) -> int:
        return epoch_length(self.examples, mode or self.sampling)


def load_folder(folder: Path, caption_column: str = "", resolution: int | None = None,
                split: str = "train") -> LoadedDataset:
    """Read a dataset folder in any supported layout and decode its images."""
    scan = scan_dataset(folder, caption_column=caption_column or None, split=split)
    return decode_scan(scan, resolution)


def decode_scan(scan: DatasetScan, resolution: int | None = None) -> LoadedDataset:
    """Decode the images a scan lists; concepts' image counts become the usable images."""
    warnings = list(scan.warnings)
    examples: list[Example] = []
    for file in scan.files:
        result = load_image(file.path, name=file.name, resolution=resolution)
        if not result.ok:
            warnings.append(f"Skipped {file.name}: {result.reason}")
            continue
        warnings.extend(f"{file.name}: {w}" for w in result.warnings)
        condition = file.condition_path
        alpha = alpha_mask(file.path) if file.mask_path is None else None
        examples.append(Example(file.name, result.image, file.text, file.concept, file.repeats,
                                str(file.mask_path) if file.mask_path else None,
                                str(condition) if condition else None, alpha))
    for concept in scan.concepts:
        concept.images = sum(1 for ex in examples if ex.concept == concept.name)
        concept.masks = sum(1 for ex in examples if ex.concept == concept.name and ex.mask_path)
    return LoadedDataset(examples, warnings, scan.info, scan.concepts, scan.class_sets, scan.layout,
                         scan.description, scan.sampling)


def load_class_examples(class_set: Concept, resolution: int | None = None) -> list[Example]:
    """The class images of a concept (`concept.class_data`), captioned with its class prompt."""
    if not class_set.class_data:
        return []
    loaded = load_folder(Path(class_set.class_data), resolution=resolution)
    return [Example(ex.name, ex.image, class_set.class_prompt or ex.caption, class_set.name,
                    class_set.class_repeats) for ex in loaded.examples]


def load_hub_dataset(name: str, image_column: str, caption_column: str) -> LoadedDataset:
    """A Hub dataset by name, e.g. lambdalabs/pokemon-blip-captions, through `datasets.load_dataset`."""
    try:
        import datasets
    except ImportError as err:
        raise DatasetError("Reading Hub datasets needs the `datasets` package: pip install datasets") from err
    try:
        table = datasets.load_dataset(name, split="train")
    except Exception as err:  # noqa: BLE001 - datasets raises many types; all mean "cannot read it"
        raise DatasetError(f"Could not load the Hub dataset {name!r}: {err}") from err
    columns = table.column_names
    if image_column not in columns:
        raise DatasetError(f"{name} has no image column {image_column!r}; its columns are {columns}.")
    caption_column = caption_column or next((c for c in ("text", "caption", "prompt") if c in columns), "")
    if caption_column and caption_column not in columns:
        raise DatasetError(f"{name} has no caption column {caption_column!r}; its columns are {columns}.")
    examples, warnings = [], []
    for index, row in enumerate(table):
        image = row[image_column]
        label = f"{name}[{index}]"
        if not isinstance(image, Image.Image):
            warnings.append(f"Skipped {label}: not an image")
            continue
        examples.append(Example(label, image.convert("RGB"), str(row.get(caption_column, "") or "")))
    return LoadedDataset(examples, warnings, concepts=[Concept("", ".", images=len(examples))], layout="hub",
                         description=f"Hub dataset {name} ({len(examples)} images)")


def load_dataset(data: str, *, image_column: str = "image", caption_column: str = "",
                 resolution: int | None = None, split: str = "train") -> LoadedDataset:
    """A folder when `data` is an existing path, else a Hub dataset id. Errors when nothing is usable.

    `split` picks the split folder of a Hugging Face imagefolder (train/, test/ ...).
    """
    path = Path(data).expanduser()
    if path.exists() or data.startswith((".", "/", "~")):
        loaded = load_folder(path, caption_column, resolution, split)
    else:
        loaded = load_hub_dataset(data, image_column, caption_column)
    for warning in loaded.warnings:
        log.warning(warning)
    if not loaded.examples:
        reasons = "; ".join(loaded.warnings[:5]) or "the folder holds no image files"
        raise DatasetError(f"No usable image in {data} ({reasons}). Add PNG/JPEG/WebP images.")
    return loaded
