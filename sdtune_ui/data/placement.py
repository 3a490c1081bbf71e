"""Where ingested files go: readable file names, the folder structure that is kept, the writer that puts
images, masks and captions there, and the pixels a dataset folder already holds (so adding the same
pictures twice does not double them).

Names taken from uploads and archives are attacker-chosen text: only a sanitised form is ever used (no
path separators, no leading dots, no control characters, no Windows device names, bounded length), and
the writer still refuses to overwrite anything.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tempfile
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from sdtune_ui.data.concepts import CONCEPTS_JSON, parse_kohya_folder
from sdtune_ui.data.formats import (
    CONDITIONING_SUFFIX,
    DATASET_INFO,
    MASK_SUFFIX,
    existing_formats,
    is_training_image_name,
    list_images,
    write_captions,
    write_dataset_info,
)
from sdtune_ui.data.images import is_image_name, load_image, pixel_hash
from sdtune_ui.data.layouts import split_of

PIXEL_INDEX = ".sdtune-pixels.json"
_WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_MAX_STEM = 60


def readable_stem(file_name: str, fallback: str = "image") -> str:
    """A safe, readable file stem from a user's file name: "My Cat (2).JPG" -> "My-Cat-2"."""
    stem = posixpath.splitext(posixpath.basename(file_name.replace("\\", "/")))[0]
    stem = unicodedata.normalize("NFKC", stem)
    stem = re.sub(r"[^\w.-]+", "-", stem)  # \w keeps letters of any script, digits and _
    stem = re.sub(r"-{2,}", "-", stem).strip(".-")[:_MAX_STEM].rstrip(".-")
    for suffix in (MASK_SUFFIX, CONDITIONING_SUFFIX):  # an image must never be renamed into a mask
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)] + "-image"
    if stem.lower() in _WINDOWS_DEVICES:
        stem += "-image"
    return stem or fallback


def safe_folder_name(name: str) -> str:
    """A folder name kept from an archive ("10_sks dog" stays as it is), made safe to create."""
    cleaned = "".join(c if c.isprintable() and c not in '/\\:*?"<>|' else "-" for c in name)
    cleaned = cleaned.strip().strip(".")[:100].strip()
    if cleaned.lower() in _WINDOWS_DEVICES:
        cleaned += "-folder"
    return cleaned or "folder"


def kept_structure(names: Iterable[str]) -> tuple[dict[str, str], str]:
    """For the entry names of one folder or archive: the destination sub-folder of each training image
    whose folder structure is kept, and which structure it is ("kohya", "concepts" or "" = flattened).

    kohya: images in `N_name` folders go to `N_name/` (`reg/N_name/` when under a `reg` folder); others to
    the top. Concepts: below the folder holding `concepts.json`, or the common parent of two or more
    folders with a `dataset_info.json`, every image keeps its folder path. Else everything is flattened
    (a single folder with one dataset_info.json is one DreamBooth set, as before).
    """
    names = list(names)
    images = [n for n in names if is_training_image_name(n)]
    kohya = {posixpath.dirname(n) for n in images
             if posixpath.dirname(n) and parse_kohya_folder(posixpath.basename(posixpath.dirname(n)))}
    if kohya:
        placed = {}
        for name in images:
            folder = posixpath.dirname(name)
            if folder in kohya:
                parent = posixpath.basename(posixpath.dirname(folder)).lower()
                placed[name] = ("reg/" if parent == "reg" else "") + safe_folder_name(posixpath.basename(folder))
            else:
                placed[name] = ""
        return placed, "kohya"
    root = concepts_root(names)
    if root is None:
        return {}, ""
    placed = {}
    for name in images:
        folder = posixpath.dirname(name)
        inside = root == "" or folder == root or folder.startswith(root + "/")
        relative = folder[len(root):].lstrip("/") if inside else ""
        placed[name] = "/".join(safe_folder_name(part) for part in relative.split("/") if part)
    return placed, "concepts"


def concepts_root(names: list[str]) -> str | None:
    """The folder (inside an archive) that holds a concepts dataset, or None."""
    listed = sorted((n for n in names if posixpath.basename(n) == CONCEPTS_JSON), key=lambda n: n.count("/"))
    if listed:
        return posixpath.dirname(listed[0])
    info_dirs = {posixpath.dirname(n) for n in names if posixpath.basename(n) == DATASET_INFO}
    parents = {posixpath.dirname(d) for d in info_dirs if d}
    if len(parents) == 1 and len([d for d in info_dirs if d]) >= 2:
        return parents.pop()
    return None


def other_splits(names: Iterable[str]) -> dict[str, str]:
    """Images in a non-train split folder (test/, validation/ ...) of an archive that has a train split:
    name -> its split. Only the train split is training data."""
    split_by_name = {}
    for name in names:
        if is_training_image_name(name):
            splits = [split_of(part) for part in name.split("/")[:-1]]
            split_by_name[name] = next((s for s in splits if s), None)
    if "train" not in split_by_name.values():
        return {}
    return {n: s for n, s in split_by_name.items() if s and s != "train"}


class DatasetWriter:
    """Writes images, masks and captions into the dataset folder under names it chooses."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.stem) for p in out_dir.iterdir() if p.stem.isdigit() and is_image_name(p.name)]
        self.next = max(numbers, default=0) + 1
        self.captions: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}  # (folder, formats) -> captions
        self.dataset_info: dict[str, str] = {}
        self.indexes: dict[str, PixelIndex] = {}
        self.stems: dict[str, set[str]] = {}

    def folder(self, sub: str) -> Path:
        path = self.out_dir / sub if sub else self.out_dir
        path.mkdir(parents=True, exist_ok=True)
        return path

    def index(self, sub: str) -> PixelIndex:
        if sub not in self.indexes:
            self.indexes[sub] = PixelIndex(self.folder(sub))
        return self.indexes[sub]

    def _free_stem(self, sub: str, wanted: str | None) -> str:
        # Taken stems are compared without case: two names differing only in case are one file on macOS.
        if sub not in self.stems:
            self.stems[sub] = {os.path.splitext(p.name)[0].lower() for p in self.folder(sub).iterdir()}
        taken = self.stems[sub]
        if wanted is None:
            while f"{self.next:04d}" in taken:
                self.next += 1
            stem = f"{self.next:04d}"
            self.next += 1
        else:
            stem, number = wanted, 1
            while stem.lower() in taken or f"{stem}-masklabel".lower() in taken:
                number += 1
                stem = f"{wanted}-{number}"
        taken.update({stem.lower(), f"{stem}-masklabel".lower()})
        return stem

    def save(self, image: Image.Image, source_format: str | None, stem: str | None, sub: str = "") -> str:
        """Write an image; returns its path inside the dataset folder. `stem` None: the next number."""
        # JPEG sources stay JPEG (a PNG copy of a photo is 5x bigger); everything else becomes lossless PNG.
        # Re-encoding also drops metadata such as GPS EXIF, which matters once a dataset is pushed publicly.
        ext = ".jpg" if source_format in ("JPEG", "MPO") else ".png"
        name = self._free_stem(sub, stem) + ext
        _write_image(image, self.folder(sub) / name, ext)
        return f"{sub}/{name}" if sub else name

    def save_mask(self, mask: Image.Image, image_file: str) -> str:
        """Write a mask as OneTrainer names it, beside its (already written) image."""
        path = self.out_dir / (os.path.splitext(image_file)[0] + "-masklabel.png")
        _write_image(mask.convert("L"), path, ".png")
        return path.relative_to(self.out_dir).as_posix()

    def add_caption(self, file: str, caption: str, sidecar: str) -> None:
        sub, name = posixpath.split(file)
        # kohya folders get only the sidecar kind they came with (kohya reads one caption extension);
        # every other folder gets .txt and metadata.jsonl, as before.
        formats = (sidecar,) if parse_kohya_folder(posixpath.basename(sub)) else ("txt", "jsonl")
        self.captions.setdefault((sub, formats), {})[name] = caption

    def finish(self) -> None:
        for (sub, formats), captions in self.captions.items():
            folder = self.folder(sub)
            write_captions(folder, captions, tuple(sorted({*formats, *existing_formats(folder)})))
        for index in self.indexes.values():
            index.save()
        if self.dataset_info.get("instance_prompt") and not (self.out_dir / DATASET_INFO).exists():
            info = self.dataset_info
            write_dataset_info(self.out_dir, info["instance_prompt"], info.get("class_prompt"))


def _write_image(image: Image.Image, target: Path, ext: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".ingest-", suffix=ext)
    try:
        with os.fdopen(fd, "wb") as handle:
            if ext == ".jpg":
                image.save(handle, "JPEG", quality=95, subsampling=0)
            else:
                image.save(handle, "PNG")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class PixelIndex:
    """The pixel hashes of the training images in one dataset folder, kept in a hidden file beside them.

    A hash is that of the pixels the image had when ingested (a JPEG is re-encoded on the way in, so its
    file no longer decodes to exactly those pixels); files placed by hand, or changed since, are hashed
    from disk.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.entries: dict[str, list] = {}  # name -> [sha256, size, mtime_ns]
        stored = self._read()
        for name in list_images(folder):
            stat = (folder / name).stat()
            entry = stored.get(name)
            if isinstance(entry, list) and len(entry) == 3 and entry[1:] == [stat.st_size, stat.st_mtime_ns]:
                self.entries[name] = entry
                continue
            result = load_image(folder / name, name=name)
            if result.ok:
                self.entries[name] = [pixel_hash(result.image), stat.st_size, stat.st_mtime_ns]
        self.by_hash = {entry[0]: name for name, entry in self.entries.items()}

    def find(self, digest: str) -> str | None:
        """The file in this folder with these pixels, if any."""
        return self.by_hash.get(digest)

    def add(self, name: str, digest: str) -> None:
        stat = (self.folder / name).stat()
        self.entries[name] = [digest, stat.st_size, stat.st_mtime_ns]
        self.by_hash.setdefault(digest, name)

    def save(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".pixels-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.entries, handle, sort_keys=True)
            os.replace(tmp, self.folder / PIXEL_INDEX)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _read(self) -> dict:
        try:
            data = json.loads((self.folder / PIXEL_INDEX).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
