"""Which files of a dataset folder are trained on, with which caption, concept, repeats and mask.

Nothing is decoded here (the loader and the doctor do that); this module only reads the folder the way
the tool that made it does. Layouts, tried in this order:

- kohya (sd-scripts' DreamBooth layout): sub-folders `N_tokens` of the root, or of `root/img`; images
  directly in that folder and folders without `N_` are not used (kohya ignores them too); class images in
  `reg/N_class` beside them (`root/reg`, or `img/../reg` when the root is the `img` folder).
- concepts: `concepts.json` at the root, or sub-folders that each hold a `dataset_info.json`.
- Hugging Face imagefolder with split folders (`train/`, `test/`, `validation/` ... matched the way
  `datasets` matches them): one split (default train), read as `load_dataset("imagefolder")` reads it:
  metadata files anywhere in the split name the examples (`file_name` relative to the metadata file, may
  hold sub-paths); without metadata every image below the split folder.
- a plain folder: its images, their sidecar/metadata captions, plus images in sub-folders that the
  folder's metadata names by sub-path (`images/a.png`).

In every folder OneTrainer's `a-masklabel.png` is the mask of `a.*`, never an image of its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from sdtune_ui.data.concepts import CONCEPTS_JSON, Concept, parse_kohya_folder, read_concepts_json, split_token
from sdtune_ui.data.formats import (
    DATASET_INFO,
    METADATA_CSV,
    METADATA_JSONL,
    condition_of,
    is_inside,
    is_mask_name,
    is_training_image_name,
    list_images,
    mask_name_for,
    metadata_file_names,
    read_captions,
    read_dataset_info,
    read_metadata,
)
from sdtune_ui.errors import DatasetError

# datasets' split keywords (datasets/data_files.py SPLIT_KEYWORDS); a folder is in a split when its name is
# the keyword, or the keyword joined to other text by one of "-._ " or digits ("train-2", "my_test").
SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_SEP = r"[-._ 0-9]"
T = TypeVar("T")


@dataclass
class DatasetFile:
    """One training image as the folder describes it (not decoded)."""

    name: str  # posix path relative to the dataset root: what messages and Example.name show
    path: Path
    caption: str | None  # its own caption (metadata, .caption, .txt); None when it has none
    fallback: str = ""  # what it trains with when it has no caption (kohya: the folder's tokens)
    concept: str = ""
    repeats: int = 1
    mask_path: Path | None = None

    @property
    def condition_path(self) -> Path | None:
        """Its condition image for ControlNet training (`a-condlabel.png`), when there is one."""
        return condition_of(self.path)

    @property
    def text(self) -> str:
        """The caption training uses."""
        return self.caption if self.caption is not None else self.fallback


@dataclass
class DatasetScan:
    root: Path
    layout: str  # "folder" | "kohya" | "concepts" | "imagefolder"
    description: str  # for people: "kohya (2 concepts, repeats 10 and 5)"
    files: list[DatasetFile]
    concepts: list[Concept]
    class_sets: list[Concept] = field(default_factory=list)  # kohya's reg/N_class folders
    info: dict[str, str] = field(default_factory=dict)  # the root's dataset_info.json
    split: str = ""
    splits: list[str] = field(default_factory=list)
    explicit_repeats: bool = False  # repeats came from the user (kohya names, concepts.json)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # unreadable metadata (non-strict scans only)
    orphans: list[str] = field(default_factory=list)  # metadata entries naming no image
    masks_without_image: list[str] = field(default_factory=list)

    @property
    def sampling(self) -> str:
        """The epoch order to use by default: the user's repeats when they gave any, else equal shares."""
        return "repeats" if self.explicit_repeats or len(self.concepts) <= 1 else "balanced"


def scan_dataset(folder: str | os.PathLike[str], *, caption_column: str | None = None, split: str = "train",
                 strict: bool = True) -> DatasetScan:
    """Read a dataset folder's layout. `strict=False` (the doctor) records unreadable metadata in
    `errors` and goes on; `strict=True` (training) raises DatasetError."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"The dataset folder {root} does not exist.")
    reader = _Reader(root, caption_column, strict)
    kohya_dir = _kohya_dir(root)
    if kohya_dir is not None:
        scan = reader.kohya(kohya_dir)
    elif (root / CONCEPTS_JSON).is_file() or (not list_images(root) and _info_folders(root)):
        scan = reader.concepts()
    elif not list_images(root) and _split_folders(root):
        scan = reader.imagefolder(split)
    else:
        scan = reader.folder()
    scan.errors, scan.warnings = reader.errors + scan.errors, reader.warnings + scan.warnings
    scan.orphans += reader.orphans
    scan.masks_without_image += reader.masks_without_image
    return scan


# ---- detection ---------------------------------------------------------------------------------------


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _kohya_dir(root: Path) -> Path | None:
    """The folder holding kohya's N_name folders: the root itself, or root/img."""
    for candidate in (root, *(p for p in _subdirs(root) if p.name.lower() == "img")):
        if any(parse_kohya_folder(p.name) for p in _subdirs(candidate)):
            return candidate
    return None


def _info_folders(root: Path) -> list[Path]:
    return [p for p in _subdirs(root) if (p / DATASET_INFO).is_file()]


def split_of(name: str) -> str | None:
    """The split a folder name puts its files in, as `datasets` decides it ("train", "test" ...), or None."""
    lowered = name.lower()
    for split, keywords in SPLIT_KEYWORDS.items():
        for keyword in keywords:
            if re.fullmatch(rf"(?:.*{_SEP})?{keyword}(?:{_SEP}.*)?", lowered):
                return split
    return None


def _split_folders(root: Path) -> dict[str, list[Path]]:
    """Split name -> its folders, among the root's sub-folders and those of a `data/` folder."""
    found: dict[str, list[Path]] = {}
    candidates = _subdirs(root) + [p for d in _subdirs(root) if d.name == "data" for p in _subdirs(d)]
    for folder in candidates:
        split = split_of(folder.name)
        if split:
            found.setdefault(split, []).append(folder)
    return {split: found[split] for split in SPLIT_KEYWORDS if split in found}  # datasets' order


# ---- reading ------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, root: Path, caption_column: str | None, strict: bool):
        self.root, self.caption_column, self.strict = root, caption_column, strict
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.orphans: list[str] = []
        self.masks_without_image: list[str] = []

    def rel(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()  # "../reg/1_dog" for img/../reg

    def guarded(self, read: Callable[[], T], empty: T) -> T:
        """What `read` returns, or `empty` with the reason recorded when the doctor asks (not strict)."""
        try:
            return read()
        except DatasetError as err:
            if self.strict:
                raise
            if str(err) not in self.errors:
                self.errors.append(str(err))
            return empty

    def folder_files(self, folder: Path, *, concept: str = "", repeats: int = 1, fallback: str = "",
                     first_line: bool = False, sub_paths: bool = False) -> list[DatasetFile]:
        """The training images of one folder with their own captions and masks."""
        captions = self.guarded(lambda: read_captions(folder, self.caption_column, first_line=first_line), {})
        names = list_images(folder)
        if sub_paths:  # imagefolder: metadata may name files in sub-folders
            metadata = self.guarded(lambda: read_metadata(folder, self.caption_column), {})
            for name in self.guarded(lambda: metadata_file_names(folder), []):
                if "/" in name and is_inside(name) and is_training_image_name(name) and (folder / name).is_file():
                    names.append(name)
                    if name in metadata:
                        captions[name] = metadata[name].strip()
        self.find_lonely_masks(folder)
        return [DatasetFile(self.rel(folder / name), folder / name, captions.get(name), fallback, concept,
                            repeats, self.mask_of(folder / name)) for name in names]

    def mask_of(self, image: Path) -> Path | None:
        mask = image.with_name(mask_name_for(image.name))
        return mask if mask.is_file() else None

    def find_lonely_masks(self, folder: Path) -> None:
        stems = {os.path.splitext(n)[0] for n in list_images(folder)}
        for path in sorted(folder.iterdir()):
            if path.is_file() and is_mask_name(path.name) and path.name[: -len("-masklabel.png")] not in stems:
                self.masks_without_image.append(self.rel(path))

    # -- layouts

    def folder(self) -> DatasetScan:
        files = self.folder_files(self.root, sub_paths=True)
        info = self.guarded(lambda: read_dataset_info(self.root), {})
        self.orphans += self.guarded(lambda: _orphans(self.root, {f.name for f in files}), [])
        if not files:
            nested = [p.name for p in _subdirs(self.root) if list_images(p)]
            if nested:
                self.warnings.append(f"the images are in sub-folders ({', '.join(nested[:5])}), which a plain folder "
                                     "does not read: name them N_name (kohya, N = repeats) or list them in "
                                     "concepts.json")
        concept = Concept("", ".", info.get("instance_prompt", ""), class_prompt=info.get("class_prompt", ""),
                          images=len(files), masks=sum(f.mask_path is not None for f in files))
        kind = "DreamBooth folder" if info.get("instance_prompt") else "folder"
        return DatasetScan(self.root, "folder", f"{kind} ({len(files)} images)", files, [concept], info=info)

    def kohya(self, train_dir: Path) -> DatasetScan:
        reg_dir = next((p for p in _subdirs(train_dir) if p.name.lower() == "reg"), None)
        if reg_dir is None and train_dir != self.root:  # root/img + root/reg
            reg_dir = next((p for p in _subdirs(self.root) if p.name.lower() == "reg"), None)
        if reg_dir is None and train_dir.name.lower() == "img" and train_dir == self.root:
            sibling = train_dir.parent / "reg"  # the user chose kohya_ss's img folder itself
            reg_dir = sibling if sibling.is_dir() else None
        loose = list_images(train_dir)
        if loose:
            self.warnings.append(f"{len(loose)} image(s) directly in {self.rel_or_name(train_dir)} are not in a "
                                 "kohya folder (N_name) and are not used, as kohya does: move them into one")
        concepts, files = self.kohya_sets(train_dir, skip=reg_dir)
        class_sets: list[Concept] = []
        if reg_dir is not None:
            class_sets, _ = self.kohya_sets(reg_dir, skip=None, is_reg=True)
        _match_class_sets(concepts, class_sets, self.warnings)
        repeats = _and_list([str(c.repeats) for c in concepts])
        text = f"kohya ({_count(len(concepts), 'concept')}, repeats {repeats})"
        if class_sets:
            text += f", class images in {_count(len(class_sets), 'reg folder')}"
        if not concepts:
            self.warnings.append(f"no kohya folder in {self.rel_or_name(train_dir)} holds an image")
        return DatasetScan(self.root, "kohya", text, files, concepts, class_sets, explicit_repeats=True)

    def rel_or_name(self, folder: Path) -> str:
        return self.rel(folder) if self.root in folder.parents else folder.name

    def kohya_sets(self, folder: Path, skip: Path | None, is_reg: bool = False) -> tuple[list[Concept],
                                                                                          list[DatasetFile]]:
        concepts: list[Concept] = []
        files: list[DatasetFile] = []
        for sub in _subdirs(folder):
            if sub == skip:
                continue
            parsed = parse_kohya_folder(sub.name)
            if parsed is None:
                self.warnings.append(f"folder {self.rel_or_name(sub)} is not used: kohya folders are named "
                                     "N_name (N = repeats), e.g. 10_sks dog")
                continue
            repeats, prompt = parsed
            name = self.rel(sub) if is_reg else sub.name
            found = self.folder_files(sub, concept=name, repeats=repeats, fallback=prompt, first_line=True)
            if not found:
                self.warnings.append(f"folder {self.rel_or_name(sub)} holds no image and is not used")
                continue
            token, class_words = split_token(prompt)
            if is_reg:
                concepts.append(Concept(name, self.rel(sub), instance_prompt=prompt, class_prompt=prompt,
                                        class_data=str(sub), class_repeats=repeats, repeats=repeats,
                                        images=len(found)))
                continue
            concepts.append(Concept(name, self.rel(sub), prompt, token, class_words, repeats=repeats,
                                    images=len(found), masks=sum(f.mask_path is not None for f in found)))
            files += found
        return concepts, files

    def concepts(self) -> DatasetScan:
        if (self.root / CONCEPTS_JSON).is_file():
            entries, source = read_concepts_json(self.root), CONCEPTS_JSON
        else:
            entries = [{"folder": p.name} for p in _info_folders(self.root)]
            source = f"{DATASET_INFO} per folder"
        concepts: list[Concept] = []
        files: list[DatasetFile] = []
        explicit = False
        for entry in entries:
            relative = entry["folder"].strip().replace("\\", "/").strip("/")
            folder = self.root / relative
            if not is_inside(relative) or not folder.is_dir():
                raise DatasetError(f"Concept folder {entry['folder']!r} is not a folder inside {self.root}.")
            info = {**self.guarded(lambda f=folder: read_dataset_info(f), {}), **entry}
            explicit = explicit or "repeats" in info
            repeats = _whole(info.get("repeats", 1), f"{relative}: repeats")
            class_repeats = _whole(info.get("class_repeats", 1), f"{relative}: class_repeats")
            name = str(info.get("name") or relative)
            if any(c.name == name for c in concepts):
                raise DatasetError(f"Two concepts are named {name!r}; give each a different name.")
            prompt = str(info.get("instance_prompt", ""))
            class_data = str(info.get("class_data", "")).strip()
            if class_data:
                class_data = str((self.root / Path(class_data).expanduser()).resolve())
            found = self.folder_files(folder, concept=name, repeats=repeats, fallback=prompt)
            concepts.append(Concept(name, relative, prompt, str(info.get("token", "")),
                                    str(info.get("class_prompt", "")), class_data, class_repeats, repeats,
                                    images=len(found), masks=sum(f.mask_path is not None for f in found)))
            files += found
        used = {c.folder.split("/")[0] for c in concepts} | {
            Path(c.class_data).relative_to(self.root).parts[0] for c in concepts
            if c.class_data and self.root in Path(c.class_data).parents}
        for sub in _subdirs(self.root):
            if sub.name not in used and list_images(sub):
                self.warnings.append(f"folder {sub.name} is not a concept of this dataset and is not used")
        if list_images(self.root):
            self.warnings.append(f"{len(list_images(self.root))} image(s) at the top of the dataset are not in a "
                                 "concept folder and are not used")
        text = f"concepts ({_count(len(concepts), 'concept')} from {source})"
        return DatasetScan(self.root, "concepts", text, files, concepts, explicit_repeats=explicit)

    def imagefolder(self, split: str) -> DatasetScan:
        splits = _split_folders(self.root)
        if split not in splits:
            names = ", ".join(splits)
            raise DatasetError(f"{self.root} has the split(s) {names} but no {split!r} split; "
                               f"choose one of them (split).")
        files: list[DatasetFile] = []
        for folder in splits[split]:
            files += self.split_files(folder)
        text = f"imagefolder split {split} ({len(files)} images; splits: {', '.join(splits)})"
        concept = Concept("", ".", images=len(files), masks=sum(f.mask_path is not None for f in files))
        return DatasetScan(self.root, "imagefolder", text, files, [concept], split=split, splits=list(splits))

    def split_files(self, split_dir: Path) -> list[DatasetFile]:
        """One split folder as datasets' folder-based builder reads it."""
        metadata_dirs = sorted({p.parent for name in (METADATA_JSONL, METADATA_CSV) for p in split_dir.rglob(name)
                                if not any(part.startswith(".") for part in p.relative_to(split_dir).parts)})
        if not metadata_dirs:  # no metadata: every image below the split folder (sidecar captions are ours)
            files = []
            for dirpath, dirnames, _ in os.walk(split_dir):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                files += self.folder_files(Path(dirpath))
            return files
        files = []
        listed: set[Path] = set()
        for folder in metadata_dirs:
            rows = self.guarded(lambda f=folder: read_metadata(f, self.caption_column), {})
            for file_name in self.guarded(lambda f=folder: metadata_file_names(f), []):
                caption = rows.get(file_name)
                path = folder / file_name
                if not is_inside(file_name) or not is_training_image_name(file_name) or not path.is_file():
                    self.orphans.append(self.rel(folder / file_name) if is_inside(file_name) else file_name)
                    continue
                listed.add(path)
                files.append(DatasetFile(self.rel(path), path, None if caption is None else caption.strip(),
                                         mask_path=self.mask_of(path)))
            self.find_lonely_masks(folder)
        unlisted = [p for p in split_dir.rglob("*") if p.is_file() and is_training_image_name(p.name)
                    and p not in listed and not any(s.startswith(".") for s in p.relative_to(split_dir).parts)]
        if unlisted:
            self.warnings.append(f"{len(unlisted)} image(s) in {self.rel(split_dir)} are not named in its metadata "
                                 "and are not used (datasets.load_dataset leaves them out too)")
        return files


def _whole(value: object, what: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        raise DatasetError(f"Concept {what} must be a whole number >= 1, not {value!r}.")
    return number


def _orphans(root: Path, present: set[str]) -> list[str]:
    return sorted(n for n in metadata_file_names(root) if n not in present)


def _match_class_sets(concepts: list[Concept], class_sets: list[Concept], warnings: list[str]) -> None:
    """Give each kohya concept its class images: the reg folder named after its class words ("10_sks dog"
    -> "reg/1_dog"), or the only reg folder there is. kohya itself pools every reg image for all concepts."""
    if not class_sets:
        return
    by_prompt = {c.class_prompt.strip().lower(): c for c in class_sets}
    for concept in concepts:
        match = by_prompt.get(concept.class_prompt.strip().lower()) or (class_sets[0] if len(class_sets) == 1
                                                                         else None)
        if match is None:
            warnings.append(f"no reg folder is named after the class of {concept.name} "
                            f"({concept.class_prompt or 'none'}); it trains without class images")
            continue
        concept.class_prompt, concept.class_data = match.class_prompt, match.class_data
        concept.class_repeats = match.class_repeats


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else "-"
