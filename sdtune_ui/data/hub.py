"""Hub datasets: import one into a dataset folder (through the usual image checks), push a folder as an
imagefolder dataset. Token handling is sdtune_ui.hub's (never written, never logged, scrubbed from errors).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image

from sdtune_ui import hub
from sdtune_ui.data.formats import (
    METADATA_JSONL,
    existing_formats,
    list_images,
    pick_caption_column,
    read_captions,
    write_captions,
)
from sdtune_ui.data.images import ImageResult, from_pil, load_image
from sdtune_ui.data.ingest import CancelLike, IngestLimits, IngestReport, ProgressFn, _Run
from sdtune_ui.data.layouts import scan_dataset
from sdtune_ui.data.placement import readable_stem
from sdtune_ui.errors import DatasetError
from sdtune_ui.hub import scrub  # noqa: F401 - part of this module's API

log = logging.getLogger(__name__)

def push_dataset_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str,
    private: bool = True,
    commit_message: str = "Upload dataset with sdtune_ui",
    api_factory: hub.ApiFactory | None = None,
) -> str:
    """Create (or reuse) the dataset repo and upload the images with metadata.jsonl; returns its URL.

    Loaded elsewhere with `datasets.load_dataset(repo_id)` (imagefolder: `image` + `text` columns).
    """
    root = Path(folder)
    hub.check_repo_id(repo_id, "your-name/my-dataset")
    layout = scan_dataset(root, strict=False)
    if layout.layout != "folder":
        raise DatasetError(f"{root.name} is a {layout.description} dataset; pushing keeps only plain folders "
                           "for now. Push each concept folder on its own, or upload the folder with `hf upload`.")
    images = list_images(root)
    if not images:
        raise DatasetError(f"{root} holds no images to push.")
    captions = read_captions(root)
    if captions and "jsonl" not in existing_formats(root):
        # imagefolder reads captions only from metadata.jsonl/csv, not from sidecar .txt files
        write_captions(root, captions, ("jsonl",))
    allow = [*images, METADATA_JSONL, "metadata.csv", "dataset_info.json", "README.md"]
    return hub.upload_folder(root, repo_id, repo_type="dataset", token=token, private=private,
                             commit_message=commit_message, api_factory=api_factory,
                             allow_patterns=[p for p in allow if (root / p).is_file()])


_IMAGE_COLUMNS = ("image", "img", "images", "picture", "photo")


def ingest_hub_dataset(
    dataset: Any,
    out_dir: str | os.PathLike[str],
    *,
    split: str = "train",
    config_name: str | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    token: str | None = None,
    max_images: int | None = None,
    resolution: int | None = None,
    limits: IngestLimits | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
) -> IngestReport:
    """Copy a Hub dataset (a repo id, or an already-loaded `datasets.Dataset` / `IterableDataset`) into `out_dir`.

    A repo id is streamed: only the rows ingested are downloaded (at most `max_images`, and never more than the
    ingest limit's files), not the whole split. Images go through the same checks as uploads (raw bytes are
    decoded by us, not by `datasets`, where the column says it holds images).
    """
    limits = limits or IngestLimits()
    name = dataset if isinstance(dataset, str) else "dataset"
    table = _load_table(dataset, split, config_name, token) if isinstance(dataset, str) else dataset
    if hasattr(table, "keys") and not hasattr(table, "column_names"):  # a DatasetDict: pick the split
        if split not in table:
            raise DatasetError(f"{name} has no split {split!r}; its splits are {list(table.keys())}.")
        table = table[split]
    columns = _column_names(table)
    image_column = _pick_image_column(table, columns, image_column, name)
    caption_column = pick_caption_column(columns, caption_column, where=name)
    table = _raw_bytes_view(table, image_column)
    known = _row_count(table, split)
    wanted = min(max_images or limits.max_files, limits.max_files)
    count = min(wanted, known) if known is not None else wanted
    run = _Run(Path(out_dir).expanduser().resolve(), resolution, limits, progress, cancel)
    run.total = count
    rows = _RowStream(table, name, token)
    for index in range(count):
        if not run.tick():
            break
        row = rows.next()
        if row is None:   # the end of a stream shorter than its count, or its connection lost (a warning says)
            break
        label = f"{name}[{index}]"
        caption = _caption_value(row.get(caption_column)) if caption_column else None
        value = row.get(image_column)
        run.keep(label, _row_image(value, label, resolution, limits), caption, stem=_row_stem(value))
        run.advance()
    run.writer.finish()
    if not max_images and not rows.failure and (known > count if known is not None else rows.next() is not None):
        rows_text = f"{known} rows" if known is not None else "more rows"
        run.report.warnings.append(f"{name} has {rows_text}; only the first {count} were ingested (max files limit).")
    if rows.failure:
        run.report.warnings.append(rows.failure)
    return run.report


class _RowStream:
    """The table's rows one at a time. A stream that fails midway (the network) ends there: the rows already
    imported are kept and the report says why it stopped (with any token scrubbed from the message)."""

    def __init__(self, table: Any, name: str, token: str | None):
        self.rows, self.name, self.token = iter(table), name, token
        self.read, self.failure = 0, ""

    def next(self) -> dict | None:
        if self.failure:
            return None
        try:
            row = next(self.rows, None)
        except Exception as err:  # noqa: BLE001 - datasets/hub raise many types; all end the stream
            self.failure = (f"Reading {self.name} stopped after {self.read} rows: "
                            f"{scrub(f'{type(err).__name__}: {err}', self.token)}; import again to try the rest.")
            return None
        self.read += row is not None
        return row


def _load_table(repo_id: str, split: str, config_name: str | None, token: str | None) -> Any:
    try:
        import datasets
    except ImportError as err:
        raise DatasetError("Reading Hub datasets needs the `datasets` package: pip install datasets") from err
    try:
        return datasets.load_dataset(repo_id, config_name, split=split, token=token or None, streaming=True)
    except Exception as err:  # noqa: BLE001 - datasets/hub raise many types; all mean "cannot load it"
        message = scrub(f"{type(err).__name__}: {err}", token)
        raise DatasetError(f"Could not load the Hub dataset {repo_id!r}: {message}") from None


def _column_names(table: Any) -> list[str]:
    """The columns; a stream whose features the Hub does not describe says them with its first row."""
    names = getattr(table, "column_names", None)
    if names is None:
        first = next(iter(table), None)
        names = list(first) if first else []
    return list(names)


def _row_count(table: Any, split: str) -> int | None:
    """Rows in the table: a Dataset's length, a stream's split size where the Hub's card gives it, else None."""
    try:
        return len(table)
    except TypeError:
        splits = getattr(getattr(table, "info", None), "splits", None) or {}
        size = getattr(splits.get(split), "num_examples", None) if hasattr(splits, "get") else None
        return size if isinstance(size, int) and size > 0 else None


def _pick_image_column(table: Any, columns: list[str], given: str | None, name: str) -> str:
    if given:
        if given not in columns:
            raise DatasetError(f"{name} has no image column {given!r}; its columns are {columns}.")
        return given
    features = getattr(table, "features", None) or {}
    for column in columns:
        if type(features.get(column)).__name__ == "Image":
            return column
    for column in columns:
        if column.lower() in _IMAGE_COLUMNS:
            return column
    raise DatasetError(f"{name} has no image column; its columns are {columns}. Pass the image column name.")


def _raw_bytes_view(table: Any, column: str) -> Any:
    # Ask `datasets` for the encoded bytes so that decoding happens in our checked loader, not theirs.
    features = getattr(table, "features", None) or {}
    if type(features.get(column)).__name__ == "Image" and hasattr(table, "cast_column"):
        import datasets

        return table.cast_column(column, datasets.Image(decode=False))
    return table


def _row_stem(value: Any) -> str | None:
    """A readable name from the row's original file name, when `datasets` kept one; else numbered."""
    path = value.get("path") if isinstance(value, dict) else None
    return readable_stem(path) if isinstance(path, str) and path.strip() else None


def _caption_value(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else str(value).strip()


def _row_image(value: Any, label: str, resolution: int | None, limits: IngestLimits) -> ImageResult:
    if isinstance(value, Image.Image):
        return from_pil(value, name=label, resolution=resolution, max_pixels=limits.max_pixels)
    if isinstance(value, dict) and value.get("bytes"):
        value = value["bytes"]
    elif isinstance(value, dict) and value.get("path"):
        value = value["path"]
    if isinstance(value, (bytes, bytearray, str)):
        source = Path(value) if isinstance(value, str) else bytes(value)
        return load_image(source, name=label, resolution=resolution, max_pixels=limits.max_pixels,
                          max_file_bytes=limits.max_file_bytes)
    return ImageResult(name=label, reason="the image column holds no image")
