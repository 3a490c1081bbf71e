"""Caption every image of a dataset folder and write the captions in the formats training reads."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdtune_ui.caption.captioners import Captioner, get_captioner
from sdtune_ui.data.edit import save_captions
from sdtune_ui.data.formats import compose_caption, existing_formats, list_images, read_captions, write_captions
from sdtune_ui.data.images import load_image
from sdtune_ui.data.ingest import CancelLike, is_cancelled
from sdtune_ui.errors import Cancelled, DatasetError


@dataclass
class CaptionReport:
    folder: str
    captioner: str
    captioned: dict[str, str] = field(default_factory=dict)  # file -> new caption
    kept: list[str] = field(default_factory=list)  # files whose existing caption was kept
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    cancelled: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        lines = [f"Captioned {len(self.captioned)} image(s) in {self.folder} with {self.captioner} "
                 f"({self.seconds:.1f} s); kept {len(self.kept)} existing caption(s)."
                 + (" Stopped early: cancelled." if self.cancelled else "")]
        lines += [f"  {name}: {caption}" for name, caption in list(self.captioned.items())[:10]]
        if len(self.captioned) > 10:
            lines.append(f"  ... and {len(self.captioned) - 10} more")
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def caption_folder(
    folder: str | os.PathLike[str],
    captioner_name: str = "tiny-blip",
    *,
    trigger: str | None = None,
    prefix: str = "",
    suffix: str = "",
    overwrite: bool = False,
    max_length: int | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: CancelLike = None,
    device: str | None = None,
    task: str | None = None,
    formats: Iterable[str] = ("txt", "jsonl"),
    captioner: Captioner | None = None,
) -> CaptionReport:
    """Caption the folder's images into sidecar .txt + metadata.jsonl (plus any caption format already there).

    Each caption is `prefix, <model caption>, suffix`, with the trigger word in front unless already in it.
    Without `overwrite`, images that already have a caption keep it (only the trigger is added if missing).
    Captions are written after every batch, so a cancelled run keeps what it finished (`report.cancelled`).
    Datasets with sub-folders (kohya, concepts, imagefolder splits) are captioned image by image where
    their reader looks (data/edit.save_captions); `formats` applies to a plain folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"The dataset folder {root} does not exist.")
    names, existing, write = _captioning_plan(root, formats)
    if not names:
        raise DatasetError(f"No images to caption in {root}. Add images first.")
    started = time.monotonic()
    model = captioner or get_captioner(captioner_name, device=device, task=task)
    report = CaptionReport(str(root), model.name)
    todo = names if overwrite else [n for n in names if not existing.get(n, "").strip()]
    kept = [n for n in names if n not in todo]
    report.kept = kept
    if trigger:
        updated = {n: compose_caption(existing[n], trigger) for n in kept}
        updated = {n: c for n, c in updated.items() if c != existing[n]}
        if updated:
            write(updated)
    total = len(todo)
    size = max(1, batch_size or model.default_batch_size)
    done = 0
    for start in range(0, total, size):
        if is_cancelled(cancel):
            report.cancelled = True
            break
        batch_names, images = [], []
        for name in todo[start:start + size]:
            result = load_image(root / name, name=name)
            if result.ok:
                batch_names.append(name)
                images.append(result.image)
            else:
                report.skipped.append((name, result.reason or "unreadable"))
        try:
            raw = model.caption(images, max_length=max_length, batch_size=size, cancel=cancel) if images else []
        except Cancelled:
            report.cancelled = True
            break
        pairs = zip(batch_names, raw, strict=True)
        new = {name: compose_caption(text, trigger, prefix, suffix) for name, text in pairs}
        if new:
            write(new)
            report.captioned.update(new)
        for _ in todo[start:start + size]:
            done += 1
            if progress:
                progress(done, total)
    report.seconds = time.monotonic() - started
    return report


def _captioning_plan(root: Path, formats: Iterable[str]) -> tuple[list[str], dict[str, str],
                                                                   Callable[[dict[str, str]], Any]]:
    """(image names relative to root, their own captions, how to write captions) for any dataset layout."""
    from sdtune_ui.data.layouts import scan_dataset

    scan = scan_dataset(root, strict=False)
    if scan.layout == "folder" and all("/" not in f.name for f in scan.files):
        targets = tuple(sorted(set(existing_formats(root)) | set(formats)))
        return list_images(root), read_captions(root), lambda captions: write_captions(root, captions, targets)
    existing = {f.name: f.caption for f in scan.files if f.caption is not None}
    return ([f.name for f in scan.files], existing,
            lambda captions: save_captions(root, captions, layout=scan.layout))
