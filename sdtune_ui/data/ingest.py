"""Bring untrusted images (uploads, a zip, a local folder, a Hub dataset) into a dataset folder we control.

Every kept image is fully decoded, normalised to RGB and written under a name chosen here: a sanitised,
readable form of the user's file name ("My Cat (2).JPG" -> "My-Cat-2.jpg"; "-2", "-3" ... when taken;
0001.png for a Hub row without a file name), so the doctor's findings can be traced to the user's files.
Its caption (sidecar .txt/.caption, or metadata.jsonl/csv next to it) goes to a sidecar and
metadata.jsonl. A picture whose pixels the target folder already holds is skipped and reported, so adding
the same folder twice does not double it. A structured dataset keeps its folders: kohya's `10_sks dog/`
(and `reg/1_dog/`), or a concepts dataset (`concepts.json`, or several folders with a dataset_info.json);
OneTrainer masks (`a-masklabel.png`) follow their image. A bad file never stops the rest: it is listed in
the report with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sdtune_ui.data.concepts import CONCEPTS_JSON
from sdtune_ui.data.formats import (
    CONDITIONING_SUFFIX,
    DATASET_INFO,
    METADATA_CSV,
    METADATA_JSONL,
    is_mask_name,
    is_training_image_name,
    mask_name_for,
    parse_metadata_csv,
    parse_metadata_jsonl,
)
from sdtune_ui.data.images import DEFAULT_MAX_FILE_BYTES, ImageResult, is_image_name, load_image, pixel_hash
from sdtune_ui.data.placement import (
    DatasetWriter,
    concepts_root,
    kept_structure,
    other_splits,
    readable_stem,
    safe_folder_name,
)
from sdtune_ui.data.safezip import ArchiveRefused, SafeZip, ZipLimits
from sdtune_ui.errors import DatasetError
from sdtune_ui.paths import cache_dir

ProgressFn = Callable[[int, int], None]
CancelLike = threading.Event | Callable[[], bool] | None

_JUNK = re.compile(r"(^|/)(__MACOSX/|\.[^/]*$|\._|Thumbs\.db$|desktop\.ini$)", re.IGNORECASE)
_MAX_CAPTION_BYTES = 1024 * 1024
_MAX_METADATA_BYTES = 64 * 1024 * 1024


def is_cancelled(cancel: CancelLike) -> bool:
    """True when a threading.Event is set or a callable returns True."""
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


@dataclass(frozen=True)
class IngestLimits:
    max_files: int = 5000  # per archive or folder
    max_total_bytes: int = 4 * 1024**3  # uncompressed, per archive or folder
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_ratio: float = 100.0  # zip compression ratio
    max_pixels: int | None = None  # lowers Pillow's decompression-bomb limit (never raises it)

    def zip_limits(self) -> ZipLimits:
        return ZipLimits(self.max_files, self.max_total_bytes, self.max_file_bytes, self.max_ratio)


@dataclass
class KeptFile:
    source: str
    file: str  # path inside the dataset folder ("cat.png", "10_sks dog/cat.png")
    caption: str | None
    width: int
    height: int
    warnings: list[str] = field(default_factory=list)
    mask: str | None = None  # its OneTrainer mask, when one came with it


@dataclass
class SkippedFile:
    source: str
    file: str  # the image already in the dataset with the same pixels
    reason: str = "already in the dataset"


@dataclass
class RejectedFile:
    source: str
    reason: str


@dataclass
class IngestReport:
    out_dir: str
    kept: list[KeptFile] = field(default_factory=list)
    rejected: list[RejectedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cancelled: bool = False
    skipped: list[SkippedFile] = field(default_factory=list)
    structure: str = ""  # "kohya" | "concepts" when folders were kept, "" when flattened

    @property
    def ok(self) -> bool:
        """At least one image of this ingest is in the dataset folder (added now, or already there)."""
        return bool(self.kept or self.skipped)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def to_text(self) -> str:
        captioned = sum(1 for k in self.kept if k.caption)
        skipped = f"skipped {len(self.skipped)} already in the dataset; " if self.skipped else ""
        kept_as = f" Kept the {self.structure} folder structure." if self.structure else ""
        lines = [
            f"Added {len(self.kept)} image(s) to {self.out_dir} ({captioned} with captions); {skipped}"
            f"refused {len(self.rejected)}." + kept_as + (" Stopped early: cancelled." if self.cancelled else "")
        ]
        if self.skipped:
            lines.append("Skipped (same pixels already in the dataset):")
            lines += [f"  - {s.source} = {s.file}" for s in self.skipped]
        if self.rejected:
            lines.append("Refused:")
            lines += [f"  - {r.source}: {r.reason}" for r in self.rejected]
        notes = self.warnings + [f"{k.source} -> {k.file}: {w}" for k in self.kept for w in k.warnings]
        if notes:
            lines.append("Warnings:")
            lines += [f"  - {w}" for w in notes]
        return "\n".join(lines)


def new_dataset_dir(name: str | None = None) -> Path:
    """A fresh folder under the project's datasets cache, named after `name` (sanitised) when given."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", (name or "dataset")).strip(".-")[:60] or "dataset"
    root = cache_dir("datasets")
    path = root / base
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{base}-{suffix}"
    path.mkdir(parents=True)
    return path


@dataclass
class _Entry:
    name: str  # posix path inside its container, used only for pairing captions, never for writing
    label: str  # how the report names it
    read: Callable[[int], bytes]


def _file_entry(path: Path, name: str, label: str) -> _Entry:
    def read(cap: int) -> bytes:
        size = path.stat().st_size
        if size > cap:
            raise DatasetError(f"too large ({size / 2**20:.0f} MB)")
        with open(path, "rb") as handle:
            return handle.read(cap + 1)[:cap]

    return _Entry(name, label, read)


def _folder_entries(root: Path, limits: IngestLimits, report: IngestReport) -> list[_Entry]:
    entries: list[_Entry] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            rel = path.relative_to(root).as_posix()
            label = f"{root.name}/{rel}"
            if path.is_symlink():
                report.rejected.append(RejectedFile(label, "symbolic links are not followed"))
                continue
            if _JUNK.search(rel):
                continue
            entries.append(_file_entry(path, rel, label))
            total += path.stat().st_size
            if len(entries) > limits.max_files:
                raise ArchiveRefused(f"{root} has more than {limits.max_files} files; ingest it in parts.")
            if total > limits.max_total_bytes:
                size = f"{limits.max_total_bytes / 2**30:.1f} GB"
                raise ArchiveRefused(f"{root} holds more than {size} of files; ingest it in parts.")
    return entries


def _zip_entries(archive: SafeZip, report: IngestReport) -> list[_Entry]:
    for name, reason in archive.rejected:
        report.rejected.append(RejectedFile(f"{archive.label}:{_printable(name)}", reason))
    return [
        _Entry(e.name, f"{archive.label}:{_printable(e.name)}", lambda cap, e=e: archive.read(e, cap))
        for e in archive.entries
        if not _JUNK.search(e.name)
    ]


def _printable(name: str) -> str:
    # Archive entry names are attacker-chosen text shown in the UI and terminal: no control characters.
    return "".join(c if c.isprintable() else "?" for c in name)[:200]


def _read_small(entry: _Entry, cap: int) -> str:
    data = entry.read(cap)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _gather_captions(entries: list[_Entry], report: IngestReport, writer: DatasetWriter, *, structured: bool,
                     caption_column: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """Captions by entry name, and the sidecar kind each came from ("txt" or "caption").

    Precedence as the reader's: .txt < .caption < metadata.csv < metadata.jsonl.
    """
    by_key = {posixpath.splitext(e.name)[0]: e for e in entries if is_training_image_name(e.name)}
    captions: dict[str, str] = {}
    kinds: dict[str, str] = {}
    for ext in (".txt", ".caption"):
        for entry in entries:
            key = posixpath.splitext(entry.name)[0]
            if entry.name.lower().endswith(ext) and key in by_key:
                try:
                    image_name = by_key[key].name
                    captions[image_name] = _read_small(entry, _MAX_CAPTION_BYTES).strip()
                    kinds[image_name] = ext[1:]
                except DatasetError as err:
                    report.rejected.append(RejectedFile(entry.label, f"caption not read: {err}"))
    for meta_name, parser in ((METADATA_CSV, parse_metadata_csv), (METADATA_JSONL, parse_metadata_jsonl)):
        for entry in entries:
            if posixpath.basename(entry.name) != meta_name:
                continue
            try:
                parsed = parser(_read_small(entry, _MAX_METADATA_BYTES), caption_column, where=entry.label)
            except DatasetError as err:
                report.rejected.append(RejectedFile(entry.label, str(err)))
                continue
            folder = posixpath.dirname(entry.name)
            for file_name, caption in parsed.items():
                captions[posixpath.normpath(posixpath.join(folder, file_name))] = caption.strip()
    for entry in entries:
        if posixpath.basename(entry.name) == DATASET_INFO and not writer.dataset_info and not structured:
            info = _read_json(entry, report)
            if isinstance(info, dict):
                writer.dataset_info = {k: str(v) for k, v in info.items() if isinstance(v, str)}
    return captions, kinds


def _read_json(entry: _Entry, report: IngestReport) -> object:
    try:
        return json.loads(_read_small(entry, _MAX_CAPTION_BYTES))
    except (json.JSONDecodeError, DatasetError) as err:
        report.warnings.append(f"{entry.label} ignored: {err}")
        return None


def _is_known_non_image(name: str) -> bool:
    base = posixpath.basename(name)
    return (base.lower().endswith((".txt", ".caption"))
            or base in (METADATA_CSV, METADATA_JSONL, DATASET_INFO, CONCEPTS_JSON))


class _Run:
    """State of one ingest: the writer, the report, progress over all images of all sources."""

    def __init__(self, out_dir: Path, resolution: int | None, limits: IngestLimits,
                 progress: ProgressFn | None, cancel: CancelLike, caption_column: str | None = None):
        self.writer = DatasetWriter(out_dir)
        self.report = IngestReport(str(out_dir))
        self.resolution, self.limits, self.progress, self.cancel = resolution, limits, progress, cancel
        self.caption_column = caption_column
        self.done = 0
        self.total = 0

    def keep(self, label: str, result: ImageResult, caption: str | None, *, stem: str | None = None,
             sub: str = "", sidecar: str = "txt") -> str | None:
        """Write an accepted image (named `stem`, else numbered) into folder `sub` of the dataset; returns
        its path there, or None when it was refused or its pixels are already in that folder."""
        if not result.ok:
            self.report.rejected.append(RejectedFile(label, result.reason or "not usable"))
            return None
        digest = pixel_hash(result.image)
        index = self.writer.index(sub)
        existing = index.find(digest)
        if existing is not None:
            self.report.skipped.append(SkippedFile(label, posixpath.join(sub, existing) if sub else existing))
            return None
        file = self.writer.save(result.image, result.format, stem, sub)
        index.add(posixpath.basename(file), digest)
        if caption is not None:
            self.writer.add_caption(file, caption, sidecar)
        self.report.kept.append(KeptFile(label, file, caption, result.image.width, result.image.height,
                                         list(result.warnings)))
        return file

    def keep_mask(self, entry: _Entry, image_file: str) -> None:
        try:
            data = entry.read(self.limits.max_file_bytes)
        except (DatasetError, OSError) as err:
            self.report.rejected.append(RejectedFile(entry.label, str(err)))
            return
        result = load_image(data, name=entry.label, max_pixels=self.limits.max_pixels,
                            max_file_bytes=self.limits.max_file_bytes)
        if not result.ok:
            self.report.rejected.append(RejectedFile(entry.label, result.reason or "not usable"))
            return
        self.report.kept[-1].mask = self.writer.save_mask(result.image, image_file)

    def tick(self) -> bool:
        """Count one image; False when the user cancelled (checked before each image)."""
        if is_cancelled(self.cancel):
            self.report.cancelled = True
            return False
        return True

    def advance(self) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total)

    def process(self, entries: list[_Entry]) -> None:
        entries = sorted(entries, key=lambda e: e.name)  # same input, same names
        placed, structure = kept_structure(e.name for e in entries)
        self.report.structure = self.report.structure or structure
        captions, kinds = _gather_captions(entries, self.report, self.writer, structured=structure == "concepts",
                                           caption_column=self.caption_column)
        masks = {e.name: e for e in entries if is_mask_name(e.name)}
        for entry in entries:
            if is_training_image_name(entry.name) or entry.name in masks:
                continue
            if is_image_name(entry.name):
                reason = (f"a OneTrainer conditioning image ({CONDITIONING_SUFFIX}); not used for training"
                          if CONDITIONING_SUFFIX in entry.name else "not a training image")
                self.report.rejected.append(RejectedFile(entry.label, reason))
            elif entry.name.lower().endswith(".zip"):
                reason = "zip files inside a folder or archive are not opened; ingest it on its own"
                self.report.rejected.append(RejectedFile(entry.label, reason))
            elif structure == "concepts" and posixpath.basename(entry.name) in (CONCEPTS_JSON, DATASET_INFO):
                self.carry_concept_file(entry, entries)
            elif not _is_known_non_image(entry.name):
                ext = posixpath.splitext(entry.name)[1] or "(no extension)"
                self.report.rejected.append(RejectedFile(entry.label, f"not a supported image type {ext}"))
        split_of = other_splits(e.name for e in entries)
        for entry in (e for e in entries if is_training_image_name(e.name)):
            if not self.tick():
                return
            mask = masks.pop(mask_name_for(entry.name), None)
            if entry.name in split_of:
                reason = f"in the {split_of[entry.name]} split; only the train split is ingested"
                self.report.rejected.append(RejectedFile(entry.label, reason))
                self.advance()
                continue
            try:
                data = entry.read(self.limits.max_file_bytes)
            except ArchiveRefused:
                raise
            except (DatasetError, OSError) as err:
                self.report.rejected.append(RejectedFile(entry.label, str(err)))
                self.advance()
                continue
            result = load_image(data, name=entry.label, resolution=self.resolution,
                                max_pixels=self.limits.max_pixels, max_file_bytes=self.limits.max_file_bytes)
            file = self.keep(entry.label, result, captions.get(entry.name), stem=readable_stem(entry.name),
                             sub=placed.get(entry.name, ""), sidecar=kinds.get(entry.name, "txt"))
            if file and mask:
                self.keep_mask(mask, file)
            self.advance()
        for entry in masks.values():
            self.report.rejected.append(RejectedFile(entry.label, "a mask (-masklabel.png) without its image"))

    def carry_concept_file(self, entry: _Entry, entries: list[_Entry]) -> None:
        """Copy concepts.json / a concept folder's dataset_info.json (checked JSON) to its kept place."""
        root = concepts_root([e.name for e in entries]) or ""
        folder = posixpath.dirname(entry.name)
        if root and not (folder == root or folder.startswith(root + "/")):
            return
        sub = "/".join(safe_folder_name(p) for p in folder[len(root):].split("/") if p)
        data = _read_json(entry, self.report)
        base = posixpath.basename(entry.name)
        if data is None or (base == DATASET_INFO and not isinstance(data, dict)):
            return
        target = self.writer.folder(sub) / base
        if target.exists():
            self.report.warnings.append(f"{entry.label} not copied: the dataset already has {target.name} there")
            return
        target.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def ingest(
    sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    resolution: int | None = None,
    limits: IngestLimits | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    caption_column: str | None = None,
) -> IngestReport:
    """Ingest image files, zip archives and/or folders into `out_dir` (created; appended to if it exists).

    Loose files are paired with captions by name (`cat.png` + `cat.txt`, or a metadata.jsonl/csv among
    them; `caption_column` picks the metadata column). Never raises for a bad file or archive: see
    `report.rejected`; pictures already in the target folder are in `report.skipped`. Check `report.ok`.
    """
    paths = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    limits = limits or IngestLimits()
    out = Path(out_dir).expanduser().resolve()
    run = _Run(out, resolution, limits, progress, cancel, caption_column)
    loose: list[_Entry] = []
    groups: list[list[_Entry]] = []
    with contextlib.ExitStack() as stack:
        for raw in paths:
            path = Path(raw).expanduser()
            label = path.name or str(path)
            try:
                if not path.exists():
                    run.report.rejected.append(RejectedFile(label, "file or folder not found"))
                elif path.is_dir():
                    if path.resolve() == out:
                        raise ArchiveRefused(f"{path} is the output folder; choose another output folder.")
                    groups.append(_folder_entries(path, limits, run.report))
                elif path.suffix.lower() == ".zip":
                    archive = stack.enter_context(SafeZip(path, limits.zip_limits()))
                    groups.append(_zip_entries(archive, run.report))
                elif not _JUNK.search(path.name):
                    loose.append(_file_entry(path, path.name, label))
            except ArchiveRefused as err:
                run.report.rejected.append(RejectedFile(label, str(err)))
        if loose:
            groups.insert(0, loose)
        run.total = sum(1 for group in groups for e in group if is_training_image_name(e.name))
        for group in groups:
            try:
                run.process(group)
            except ArchiveRefused as err:  # an archive lied about sizes while streaming: drop the rest of it
                source = group[0].label.split(":")[0] if group else ""
                run.report.rejected.append(RejectedFile(source, str(err)))
            if run.report.cancelled:
                break
    run.writer.finish()
    if not run.report.kept and not run.report.rejected and not run.report.cancelled:
        run.report.warnings.append("No image files found (accepted: PNG, JPEG, WebP, BMP, GIF, TIFF).")
    return run.report
