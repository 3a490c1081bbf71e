"""Captions on disk, in the formats the training core reads (and other tools write).

- sidecar `img.txt` next to `img.png`, or kohya's `img.caption` (kohya's default caption extension)
- imagefolder `metadata.jsonl`: one `{"file_name": ..., "text": ...}` per line
- `metadata.csv` with a `file_name` column and a caption column
- DreamBooth `dataset_info.json`: `{"instance_prompt": ..., "class_prompt": ...}`

When several exist they are merged per image with precedence metadata.jsonl > metadata.csv > .caption >
.txt, so a caption written by our own tools (which write all formats together) always agrees across
formats, and a folder captioned for kohya reads as kohya reads it (its default `--caption_extension` is
`.caption`; with both files present, kohya with its defaults trains on the `.caption` one).

OneTrainer's masks (`img-masklabel.png`) and conditioning images (`img-condlabel.png`) sit beside the
images they belong to; they are not training images, so `list_images` leaves them out.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from sdtune_ui.data.images import is_image_name
from sdtune_ui.errors import DatasetError

CAPTION_COLUMNS = ("text", "caption", "prompt", "captions", "description")
METADATA_JSONL = "metadata.jsonl"
METADATA_CSV = "metadata.csv"
DATASET_INFO = "dataset_info.json"
CAPTION_FORMATS = ("txt", "caption", "jsonl", "csv")  # "caption": kohya's `.caption` sidecars
SIDECAR_EXTENSIONS = (".caption", ".txt")  # highest precedence first
MASK_SUFFIX = "-masklabel"  # OneTrainer: `img-masklabel.png` is the loss mask of `img.*`
CONDITIONING_SUFFIX = "-condlabel"  # OneTrainer: a custom conditioning image, not a training image


def is_mask_name(name: str) -> bool:
    """True for OneTrainer's mask files (`*-masklabel.png`)."""
    stem, ext = os.path.splitext(os.path.basename(name))
    return ext.lower() == ".png" and stem.endswith(MASK_SUFFIX)


def is_training_image_name(name: str) -> bool:
    """An image file that is trained on: a supported image, not a mask or a conditioning image."""
    stem = os.path.splitext(os.path.basename(name))[0]
    return is_image_name(name) and not stem.endswith((MASK_SUFFIX, CONDITIONING_SUFFIX))


def mask_name_for(image_name: str) -> str:
    """The mask file name OneTrainer pairs with an image: `a.jpg` -> `a-masklabel.png`."""
    return os.path.splitext(image_name)[0] + MASK_SUFFIX + ".png"


def condition_name_for(image_name: str) -> str:
    """The condition image's name (ControlNet training) OneTrainer pairs with an image: `a.jpg` -> `a-condlabel.png`."""
    return os.path.splitext(image_name)[0] + CONDITIONING_SUFFIX + ".png"


def condition_of(image: Path) -> Path | None:
    """The condition image beside a picture (`a-condlabel.png`, or .jpg/.jpeg/.webp), or None."""
    stem = os.path.splitext(image.name)[0] + CONDITIONING_SUFFIX
    for ext in (".png", ".jpg", ".jpeg", ".webp"):
        candidate = image.with_name(stem + ext)
        if candidate.is_file():
            return candidate
    return None


def list_images(folder: str | os.PathLike[str]) -> list[str]:
    """Training image file names directly inside `folder` (not sub-folders, not masks), sorted."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_file() and is_training_image_name(p.name))


def pick_caption_column(columns: Iterable[str], given: str | None = None, *, where: str = "") -> str | None:
    """The caption column: `given` when set (must exist), else the first of text/caption/prompt/... found."""
    names = list(columns)
    if given:
        if given not in names:
            where = where or "The metadata"
            raise DatasetError(f"{where} has no caption column {given!r}; its columns are {names}.")
        return given
    lowered = {name.lower(): name for name in names}
    return next((lowered[c] for c in CAPTION_COLUMNS if c in lowered), None)


def parse_metadata_jsonl(
    text: str, caption_column: str | None = None, where: str = METADATA_JSONL
) -> dict[str, str]:
    """`file_name -> caption` from a metadata.jsonl's text; a bad line raises DatasetError naming it."""
    captions: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(
                f"{where} line {number} is not valid JSON ({err.msg}); fix or delete that line."
            ) from None
        if not isinstance(row, dict) or "file_name" not in row:
            raise DatasetError(f"{where} line {number} needs a \"file_name\" field.")
        column = pick_caption_column(row.keys(), caption_column, where=f"{where} line {number}")
        if column is None:  # a row without any caption field says nothing about the caption
            continue
        value = row.get(column, "")
        if isinstance(value, list):  # some datasets keep several captions per image; train on the first
            value = value[0] if value else ""
        captions[_norm_name(str(row["file_name"]))] = "" if value is None else str(value)
    return captions


def parse_metadata_csv(
    text: str, caption_column: str | None = None, where: str = METADATA_CSV
) -> dict[str, str]:
    """`file_name -> caption` from the text of a metadata.csv."""
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    if "file_name" not in fields:
        raise DatasetError(f"{where} needs a file_name column; its columns are {fields}.")
    column = pick_caption_column(fields, caption_column, where=where)
    if column is None:
        return {}
    try:
        return {_norm_name(row["file_name"]): row.get(column) or "" for row in reader}
    except csv.Error as err:
        raise DatasetError(f"{where} is not a valid CSV file ({err}).") from None


def read_sidecar(image_path: str | os.PathLike[str], *, first_line: bool = False) -> str | None:
    """The caption file beside an image (`.caption`, else `.txt`), or None when there is none.

    `first_line`: kohya trains on the first line of a caption file only (without its wildcard option).
    """
    base = os.path.splitext(os.fspath(image_path))[0]
    for ext in SIDECAR_EXTENSIONS:
        path = Path(base + ext)
        if path.is_file():
            text = _read_text(path)
            return (text.splitlines() or [""])[0].strip() if first_line else text.strip()
    return None


def read_metadata(folder: str | os.PathLike[str], caption_column: str | None = None) -> dict[str, str]:
    """`file_name -> caption` of the folder's metadata.csv and metadata.jsonl (jsonl wins), unfiltered.

    `file_name` may name a file in a sub-folder (`images/a.png`), as in a Hugging Face imagefolder.
    """
    root = Path(folder)
    captions: dict[str, str] = {}
    for source, parser in ((METADATA_CSV, parse_metadata_csv), (METADATA_JSONL, parse_metadata_jsonl)):
        path = root / source
        if path.is_file():
            captions.update(parser(_read_text(path), caption_column, where=str(path)))
    return captions


def metadata_file_names(folder: str | os.PathLike[str]) -> list[str]:
    """Every `file_name` of the folder's metadata.jsonl and metadata.csv, with or without a caption."""
    root = Path(folder)
    names: list[str] = []
    if (root / METADATA_JSONL).is_file():
        names += [_norm_name(str(row["file_name"])) for row in _read_jsonl_rows(root / METADATA_JSONL)]
    if (root / METADATA_CSV).is_file():
        names += [_norm_name(row.get("file_name") or "") for row in _read_csv_rows(root / METADATA_CSV)]
    return list(dict.fromkeys(n for n in names if n))


def read_captions(folder: str | os.PathLike[str], caption_column: str | None = None, *,
                  first_line: bool = False) -> dict[str, str]:
    """Captions of the images in `folder`, keyed by file name (as in `file_name`), from every format present.

    An image without any caption is absent; an empty caption file gives "". Entries naming files that
    do not exist are kept out (the doctor reports them with `metadata_orphans`).
    """
    root = Path(folder)
    names = set(list_images(root))
    captions: dict[str, str] = {}
    for name in sorted(names):
        sidecar = read_sidecar(root / name, first_line=first_line)
        if sidecar is not None:
            captions[name] = sidecar
    for file_name, caption in read_metadata(root, caption_column).items():
        if file_name in names:
            captions[file_name] = caption.strip()
    return captions


def metadata_orphans(folder: str | os.PathLike[str]) -> list[str]:
    """File names listed in metadata.jsonl/csv that are not training images in the folder (or below it)."""
    root = Path(folder)
    names = set(list_images(root))
    listed = set(read_metadata(root))
    return sorted(n for n in listed - names if not (is_inside(n) and is_training_image_name(n)
                                                    and (root / n).is_file()))


def is_inside(relative: str) -> bool:
    """True when a relative `file_name` stays inside its folder (no absolute path, no `..`, no URL)."""
    if "://" in relative or relative.startswith("/") or re.match(r"^[A-Za-z]:", relative):
        return False
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    return bool(parts) and ".." not in parts


def write_captions(
    folder: str | os.PathLike[str],
    captions: Mapping[str, str],
    formats: Iterable[str] = ("txt", "jsonl"),
) -> None:
    """Set the captions of the given images in each format; other images' entries are left as they were.

    metadata.jsonl/csv are rewritten atomically (a crash never leaves half a file), keeping any extra
    columns of existing rows. Writing only some formats leaves the others stale, and the reader's
    precedence (jsonl > csv > caption > txt) decides: so write every format that already exists.
    """
    root = Path(folder)
    formats = tuple(formats)
    unknown = set(formats) - set(CAPTION_FORMATS)
    if unknown:
        raise ValueError(f"unknown caption formats {sorted(unknown)}; use {CAPTION_FORMATS}")
    for name in captions:
        if _norm_name(name) != name or name.startswith("/") or ".." in name.split("/"):
            raise DatasetError(f"Caption key {name!r} is not a plain file name inside the dataset folder.")
    for sidecar in ("txt", "caption"):
        if sidecar in formats:
            for name, caption in captions.items():
                _atomic_write(root / (os.path.splitext(name)[0] + "." + sidecar), caption.strip() + "\n")
    if "jsonl" in formats:
        rows, _ = _merge_rows(_read_jsonl_rows(root / METADATA_JSONL), captions)
        _atomic_write(root / METADATA_JSONL, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if "csv" in formats:
        rows, column = _merge_rows(_read_csv_rows(root / METADATA_CSV), captions)
        fields = ["file_name", column] + sorted({k for r in rows for k in r} - {"file_name", column})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        _atomic_write(root / METADATA_CSV, buf.getvalue())


def existing_formats(folder: str | os.PathLike[str]) -> tuple[str, ...]:
    """Which caption formats the folder already uses (so edits update all of them)."""
    root = Path(folder)
    found = []
    for sidecar in ("txt", "caption"):
        if any((root / (os.path.splitext(n)[0] + "." + sidecar)).is_file() for n in list_images(root)):
            found.append(sidecar)
    if (root / METADATA_JSONL).is_file():
        found.append("jsonl")
    if (root / METADATA_CSV).is_file():
        found.append("csv")
    return tuple(found)


def read_dataset_info(folder: str | os.PathLike[str]) -> dict[str, str]:
    """DreamBooth's dataset_info.json (instance_prompt / class_prompt), or {} when absent."""
    path = Path(folder) / DATASET_INFO
    if not path.is_file():
        return {}
    try:
        info = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON ({err.msg}); fix or delete it.") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{path} must hold a JSON object with instance_prompt / class_prompt.")
    return {k: str(v) for k, v in info.items() if v is not None}


def write_dataset_info(
    folder: str | os.PathLike[str], instance_prompt: str, class_prompt: str | None = None
) -> Path:
    """Write DreamBooth's dataset_info.json; returns its path."""
    if not instance_prompt.strip():
        raise DatasetError("The DreamBooth instance prompt is empty; e.g. 'a photo of sks dog'.")
    info = {"instance_prompt": instance_prompt.strip()}
    if class_prompt and class_prompt.strip():
        info["class_prompt"] = class_prompt.strip()
    path = Path(folder) / DATASET_INFO
    _atomic_write(path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return path


# ---- editing captions -------------------------------------------------------------------------------


def has_word(text: str, word: str) -> bool:
    """True when `word` appears in `text` as a whole word/phrase (case-insensitive), e.g. trigger 'sks'."""
    if not word.strip():
        return True
    return re.search(rf"(?<!\w){re.escape(word.strip())}(?!\w)", text, flags=re.IGNORECASE) is not None


def _join(left: str, right: str, sep: str = " ") -> str:
    left, right = left.strip(), right.strip()
    if not left or not right:
        return left or right
    if right[0] in ",;:.":  # "a dog" + ", oil painting" -> "a dog, oil painting"
        return left + right
    if left[-1] in ",;:":
        return f"{left} {right}"
    return f"{left}{sep}{right}"


def compose_caption(caption: str, trigger: str | None = None, prefix: str = "", suffix: str = "") -> str:
    """prefix + " " + caption + " " + suffix, then "trigger, " in front unless the trigger is already in it.

    Prefix and suffix are literal text ("a photo of sks", ", in the style of zwx"): joined with a space,
    no separator added. The trigger is a tag, so it is joined with a comma.
    """
    text = _join(_join(prefix, caption), suffix)
    if trigger and trigger.strip() and not has_word(text, trigger):
        text = _join(trigger, text, ", ")
    return text


def edit_caption(
    caption: str,
    *,
    find: str = "",
    replace: str = "",
    regex: bool = False,
    trigger: str | None = None,
    prefix: str = "",
    suffix: str = "",
) -> str:
    """Find/replace (plain text or a regex), then add prefix/suffix/trigger; whitespace is tidied."""
    if find:
        if regex:
            try:
                caption = re.sub(find, replace, caption)
            except re.error as err:
                raise DatasetError(
                    f"The find pattern {find!r} is not a valid regular expression ({err})."
                ) from None
        else:
            caption = caption.replace(find, replace)
    caption = re.sub(r"\s+", " ", caption).strip()
    caption = re.sub(r"\s+([,.;:])", r"\1", caption)
    return compose_caption(caption, trigger, prefix, suffix)


def edit_captions(
    folder: str | os.PathLike[str],
    *,
    find: str = "",
    replace: str = "",
    regex: bool = False,
    trigger: str | None = None,
    prefix: str = "",
    suffix: str = "",
    include_uncaptioned: bool = False,
    formats: Iterable[str] | None = None,
) -> dict[str, str]:
    """Apply `edit_caption` to every caption in the folder and write back; returns the changed captions.

    Images without a caption are left alone unless `include_uncaptioned` (then they get prefix/trigger).
    Written to the formats the folder already uses (default), so no stale copy wins later.
    """
    current = read_captions(folder)
    if include_uncaptioned:
        current = {name: current.get(name, "") for name in list_images(folder)}
    changed = {}
    for name, caption in current.items():
        new = edit_caption(caption, find=find, replace=replace, regex=regex, trigger=trigger,
                           prefix=prefix, suffix=suffix)
        if new != caption:
            changed[name] = new
    if changed:
        targets = tuple(formats) if formats else existing_formats(folder) or ("txt", "jsonl")
        write_captions(folder, changed, targets)
    return changed


# ---- helpers ------------------------------------------------------------------------------------------


def _norm_name(name: str) -> str:
    name = name.replace("\\", "/").strip()
    return name.removeprefix("./")


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: Windows editors put a BOM in front of "file_name"
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        return path.read_text(encoding="latin-1")
    except OSError as err:
        raise DatasetError(f"Cannot read {path}: {err.strerror or err}.") from None


def _read_jsonl_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    parse_metadata_jsonl(_read_text(path), where=str(path))  # validates, with line numbers
    return [json.loads(line) for line in _read_text(path).splitlines() if line.strip()]


def _read_csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    parse_metadata_csv(_read_text(path), where=str(path))
    return list(csv.DictReader(io.StringIO(_read_text(path))))


def _merge_rows(rows: list[dict], captions: Mapping[str, str]) -> tuple[list[dict], str]:
    column = pick_caption_column({k for r in rows for k in r}) or "text"
    remaining = dict(captions)
    merged = []
    for row in rows:
        name = _norm_name(str(row.get("file_name", "")))
        if name in remaining:
            row = {**row, "file_name": name, column: remaining.pop(name).strip()}
        merged.append(row)
    merged.extend({"file_name": name, column: caption.strip()} for name, caption in sorted(remaining.items()))
    return merged, column


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
