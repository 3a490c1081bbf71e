"""Read a training dataset into examples (image + caption), whatever format it is in.

Accepted: a folder of images with sidecar `.txt` captions, an imagefolder with `metadata.jsonl` or
`metadata.csv`, a DreamBooth folder (one instance prompt, optionally `dataset_info.json`), or a Hub
dataset by name (loaded with `datasets`). Unreadable images are skipped with a warning naming them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from sdtune_ui.data.formats import read_captions, read_dataset_info
from sdtune_ui.data.images import is_image_name, load_image
from sdtune_ui.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class Example:
    """One training image (RGB, decoded) and its caption; `name` identifies it in messages."""

    name: str
    image: Image.Image
    caption: str


@dataclass
class LoadedDataset:
    examples: list[Example]
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # dataset_info.json, when present


def load_folder(folder: Path, caption_column: str = "", resolution: int | None = None) -> LoadedDataset:
    """Read every image in a folder (not sub-folders) with its caption from any supported caption format."""

    if not folder.is_dir():
        raise DatasetError(f"The dataset folder {folder} does not exist.")
    captions = read_captions(folder, caption_column=caption_column or None)
    warnings: list[str] = []
    examples: list[Example] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p.name)):
        result = load_image(path, name=path.name, resolution=resolution)
        if not result.ok:
            warnings.append(f"Skipped {path.name}: {result.reason}")
            continue
        warnings.extend(f"{path.name}: {w}" for w in result.warnings)
        examples.append(Example(path.name, result.image, captions.get(path.name, "")))
    return LoadedDataset(examples, warnings, read_dataset_info(folder))


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
    return LoadedDataset(examples, warnings)


def load_dataset(data: str, *, image_column: str = "image", caption_column: str = "",
                 resolution: int | None = None) -> LoadedDataset:
    """A folder when `data` is an existing path, else a Hub dataset id. Errors when nothing is usable."""
    path = Path(data).expanduser()
    if path.exists() or data.startswith((".", "/", "~")):
        loaded = load_folder(path, caption_column, resolution)
    else:
        loaded = load_hub_dataset(data, image_column, caption_column)
    for warning in loaded.warnings:
        log.warning(warning)
    if not loaded.examples:
        reasons = "; ".join(loaded.warnings[:5]) or "the folder holds no image files"
        raise DatasetError(f"No usable image in {data} ({reasons}). Add PNG/JPEG/WebP images.")
    return loaded
