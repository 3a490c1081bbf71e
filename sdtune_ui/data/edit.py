"""Editing a dataset folder in place, in any layout the trainer reads: captions written where the reader
looks for them, images deleted with their caption files, masks and metadata rows, centre crops, painted masks.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from sdtune_ui.data.formats import (
    METADATA_CSV,
    METADATA_JSONL,
    existing_formats,
    is_training_image_name,
    mask_name_for,
    metadata_file_names,
    write_captions,
)
from sdtune_ui.errors import DatasetError

SIDECARS = (".txt", ".caption")


def _inside(root: Path, name: str) -> Path:
    path = (root / name).resolve()
    try:
        path.relative_to(root.resolve())
    except ValueError:
        raise DatasetError(f"{name!r} is not a file of this dataset.") from None
    return path


def _metadata_owner(root: Path, path: Path) -> tuple[Path, str] | None:
    """The folder (between the image's and the root) whose metadata file names this image, and the name used."""
    folder = path.parent
    root = root.resolve()
    while True:
        key = path.relative_to(folder).as_posix()
        if key in metadata_file_names(folder):
            return folder, key
        if folder == root or root not in folder.parents:
            return None
        folder = folder.parent


def save_captions(root: str | Path, edits: dict[str, str], *, layout: str = "") -> int:
    """Write edited captions where the training reader reads them: the metadata file that names the image,
    else the caption files beside it (kohya folders: `.caption`, kohya's default extension), else `.txt` plus
    the root's metadata.jsonl. Returns how many were written."""
    root = Path(root)
    by_target: dict[tuple[Path, tuple[str, ...]], dict[str, str]] = {}
    for name, caption in edits.items():
        path = _inside(root, name)
        if not path.is_file():
            raise DatasetError(f"{name} is not in the dataset any more; reload it.")
        owner = _metadata_owner(root, path)
        if owner is not None:
            folder, key = owner
            formats = existing_formats(folder) or ("jsonl",)
        else:
            folder, key = path.parent, path.name
            kohya = layout == "kohya" and folder.resolve() != root.resolve()
            formats = existing_formats(folder) or (("caption",) if kohya else ("txt", "jsonl") if folder == root
                                                   else ("txt",))
        by_target.setdefault((folder, formats), {})[key] = caption
    for (folder, formats), captions in by_target.items():
        write_captions(folder, captions, formats)
    return len(edits)


def delete_images(root: str | Path, names: list[str]) -> list[str]:
    """Delete training images with their caption files, their mask and their metadata rows. Returns the names."""
    root = Path(root)
    deleted = []
    for name in names:
        path = _inside(root, name)
        if not path.is_file() or not is_training_image_name(path.name):
            raise DatasetError(f"{name} is not a training image of this dataset.")
        owner = _metadata_owner(root, path)
        if owner is not None:
            _drop_metadata_rows(*owner)
        for extra in [path.with_suffix(ext) for ext in SIDECARS] + [path.parent / mask_name_for(path.name)]:
            extra.unlink(missing_ok=True)
        path.unlink()
        deleted.append(name)
    return deleted


def _drop_metadata_rows(folder: Path, key: str) -> None:
    import csv
    import io

    jsonl = folder / METADATA_JSONL
    if jsonl.is_file():
        lines = [line for line in jsonl.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        kept = [line for line in lines if _file_name(json.loads(line)) != key]
        _atomic_write(jsonl, "".join(line + "\n" for line in kept))
    table = folder / METADATA_CSV
    if table.is_file():
        reader = csv.DictReader(io.StringIO(table.read_text(encoding="utf-8-sig")))
        rows = [row for row in reader if _file_name(row) != key]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames or ["file_name"])
        writer.writeheader()
        writer.writerows(rows)
        _atomic_write(table, out.getvalue())


def _file_name(row: object) -> str:
    return str(row.get("file_name", "")).replace("\\", "/").strip().removeprefix("./") if isinstance(row, dict) else ""


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def crop_square(root: str | Path, name: str) -> tuple[int, int]:
    """Crop an image to its centred square (in place; its mask too). Returns the new size."""
    from PIL import Image

    path = _inside(Path(root), name)
    if not path.is_file() or not is_training_image_name(path.name):
        raise DatasetError(f"{name} is not a training image of this dataset.")
    targets = [path] + [p for p in [path.parent / mask_name_for(path.name)] if p.is_file()]
    for target in targets:
        with Image.open(target) as image:
            image.load()
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            cropped = image.crop((left, top, left + side, top + side))
            fmt = image.format or "PNG"
        cropped.save(target, fmt)
    return cropped.size


def save_mask(root: str | Path, name: str, painted: object) -> Path:
    """Write OneTrainer's mask (`name-masklabel.png`) from the strokes painted over an image: white where
    painted (what the loss looks at), black elsewhere, at the image's size."""
    import numpy as np
    from PIL import Image

    path = _inside(Path(root), name)
    if not path.is_file():
        raise DatasetError(f"{name} is not in the dataset.")
    layer = Image.open(painted) if isinstance(painted, (str, os.PathLike)) else painted
    if not isinstance(layer, Image.Image):
        raise DatasetError("Paint over the image first (the brush marks what the training should look at).")
    alpha = np.asarray(layer.convert("RGBA"))[..., 3] > 0
    if not alpha.any():
        raise DatasetError("Nothing painted: the brush marks what the training should look at.")
    with Image.open(path) as image:
        size = image.size
    mask = Image.fromarray((alpha * 255).astype("uint8"), "L").resize(size, Image.NEAREST)
    target = path.parent / mask_name_for(path.name)
    mask.save(target)
    return target
