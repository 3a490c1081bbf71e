"""The dataset doctor: one pre-flight report on a dataset folder, before any GPU time is spent.

It reads the folder as training will (`layouts.scan_dataset`: plain, kohya, concepts, imagefolder split),
decodes every image, and reports: the layout it found, counts and sizes (per concept), exact and near
duplicates, images smaller than the resolution, missing/empty captions, captions without the trigger
word, captions longer than the text encoder reads (77 tokens), concepts with too few images or drowned by
another's repeats, masks without an image and images without a mask, the aspect buckets in use, and the
recommended steps and time for the chosen method. `to_dict()` feeds the UI, `to_text()` the CLI.
"""

from __future__ import annotations

import os
import re
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdtune_ui.data.advice import Recommendation, recommend
from sdtune_ui.data.buckets import assign_buckets
from sdtune_ui.data.companions import check_conditions, check_masks
from sdtune_ui.data.concepts import Concept
from sdtune_ui.data.formats import has_word, list_images
from sdtune_ui.data.images import load_image, pixel_hash, small_for_resolution
from sdtune_ui.data.layouts import DatasetFile, DatasetScan, scan_dataset
from sdtune_ui.errors import DatasetError
from sdtune_ui.methods import DEFAULT_METHOD, INSTANCE_PROMPT, TOKENS, method_named, method_names

TEXT_ENCODER_TOKENS = 77  # CLIP's context, including the start and end tokens
SEVERITIES = ("error", "warning", "info")
_EXAMPLES = 5  # file names quoted per finding in the text report
_CONCEPT_MIN_IMAGES = 4  # fewer images of one subject rarely teach it (DreamBooth's paper used 3-5)
_DOMINANCE = 4.0  # one concept's repeats x images this many times another's: it drowns that one


@dataclass
class Finding:
    severity: str  # "error" (training will fail or be useless) | "warning" (fix advised) | "info"
    code: str
    message: str
    files: list[str] = field(default_factory=list)


@dataclass
class ImageStats:
    count: int = 0
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None
    median_size: tuple[int, int] | None = None


@dataclass
class CaptionStats:
    captioned: int = 0
    missing: int = 0
    empty: int = 0
    without_trigger: int = 0
    max_tokens: int = 0
    mean_tokens: float = 0.0
    tokens_exact: bool = False  # counted with the real tokenizer (else a conservative estimate)


@dataclass
class ConceptStats:
    name: str
    images: int  # usable (decoded) images
    repeats: int
    share: float  # fraction of an epoch's visits, with the sampling the dataset uses
    masks: int = 0
    instance_prompt: str = ""
    class_prompt: str = ""
    class_images: int = 0


@dataclass
class DoctorReport:
    folder: str
    method: str
    resolution: int
    trigger: str | None
    images: ImageStats
    captions: CaptionStats
    buckets: dict[str, int]  # "WIDTHxHEIGHT" -> images
    duplicates: list[list[str]]  # groups of identical images
    near_duplicates: list[tuple[str, str, int]]  # (a, b, hash distance)
    findings: list[Finding]
    recommendation: Recommendation | None
    layout: str = ""  # "kohya (2 concepts, repeats 10 and 5)", "imagefolder split train (...)"
    concepts: list[ConceptStats] = field(default_factory=list)  # several concepts only
    sampling: str = "repeats"

    @property
    def ok(self) -> bool:
        """No error-level finding: training can start (warnings may still cost quality)."""
        return not any(f.severity == "error" for f in self.findings)

    def by_severity(self, severity: str) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["counts"] = {s: len(self.by_severity(s)) for s in SEVERITIES}
        return data

    def to_text(self) -> str:
        img = self.images
        lines = [f"Dataset doctor: {self.folder}"]
        if self.layout:
            lines.append(f"  layout: {self.layout}")
        lines.append(f"  {img.count} image(s)")
        if img.count:
            lines[-1] += f", sizes {_wh(img.min_size)} to {_wh(img.max_size)} (median {_wh(img.median_size)})"
        for concept in self.concepts:
            line = (f"  concept {concept.name}: {concept.images} image(s) x {concept.repeats} repeats, "
                    f"{concept.share:.0%} of an epoch")
            if concept.instance_prompt:
                line += f", prompt {concept.instance_prompt!r}"
            if concept.masks:
                line += f", {concept.masks} masked"
            if concept.class_images:
                line += f", {concept.class_images} class images ({concept.class_prompt!r})"
            lines.append(line)
        cap = self.captions
        estimate = "" if cap.tokens_exact else "~"
        lines.append(f"  captions: {cap.captioned} captioned, {cap.missing} missing, {cap.empty} empty; "
                     f"longest {estimate}{cap.max_tokens} tokens")
        if self.buckets:
            shown = ", ".join(f"{bucket} x{n}" for bucket, n in self.buckets.items())
            lines.append(f"  buckets at {self.resolution}px: {shown}")
        for severity in SEVERITIES:
            for finding in self.by_severity(severity):
                lines.append(f"{severity.upper()}: {finding.message}")
                if finding.files:
                    more = len(finding.files) - _EXAMPLES
                    tail = f" (+{more} more)" if more > 0 else ""
                    lines.append("    " + ", ".join(finding.files[:_EXAMPLES]) + tail)
        if self.recommendation:
            lines.append(self.recommendation.to_text())
        lines.append("Ready to train." if self.ok else "Fix the errors above before training.")
        return "\n".join(lines)


def _wh(size: tuple[int, int] | None) -> str:
    return f"{size[0]}x{size[1]}" if size else "-"


# ---- hashes ------------------------------------------------------------------------------------------


def dhash(image: Image.Image, size: int = 8) -> int:
    """64-bit difference hash: is each pixel of a 9x8 grey thumbnail brighter than its right neighbour."""
    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.BOX), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def _colour_thumb(image: Image.Image) -> np.ndarray:
    # dHash ignores colour and flat areas (two solid images of different colours both hash to 0), so a
    # near-duplicate must also match an 8x8 colour thumbnail.
    return np.asarray(image.resize((8, 8), Image.Resampling.BOX), dtype=np.int16)


def estimate_tokens(text: str) -> int:
    """A conservative (over-)estimate of CLIP tokens incl. start/end: words split every 5 letters."""
    count = 2
    for piece in re.findall(r"[^\W\d_]+|\d|[^\w\s]+", text):
        count += 1 + (len(piece) - 1) // 5 if piece[0].isalpha() else 1
    return count


def count_tokens(text: str, tokenizer: Any | None = None) -> int:
    """Tokens the text encoder sees (with start/end), from `tokenizer` when given, else estimated."""
    if tokenizer is None:
        return estimate_tokens(text)
    return len(tokenizer(text, truncation=False)["input_ids"])


# ---- the doctor ---------------------------------------------------------------------------------------


def diagnose(
    folder: str | os.PathLike[str],
    *,
    method: str = DEFAULT_METHOD,
    trigger: str | None = None,
    resolution: int = 512,
    subject: str = "object",
    instance_prompt: str | None = None,
    uses_captions: bool | None = None,
    bucketing: bool = False,
    batch_size: int = 1,
    with_prior_preservation: bool | None = None,
    seconds_per_step: float | None = None,
    tokenizer: Any | None = None,
    caption_column: str | None = None,
    split: str = "train",
    near_threshold: int = 6,
    progress: Callable[[int, int], None] | None = None,
    adapter: str | None = None,
    conditioning: str | None = None,
) -> DoctorReport:
    """Check a dataset folder for `method` at `resolution`; never raises for a bad image (it's a finding).

    `uses_captions=None` decides from the method: DreamBooth with an instance prompt (given or in
    dataset_info.json) and textual inversion with templates do not read per-image captions.
    `bucketing` mirrors TrainConfig.bucketing (off: every image is cropped to the square).
    `caption_column` picks the metadata column; `split` the imagefolder split (train/, test/ ...).
    `conditioning` mirrors TrainConfig.conditioning (ControlNet: the dataset's condition pictures, or a detector).
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"The dataset folder {root} does not exist.")
    if method not in method_names():
        raise DatasetError(f"Unknown method {method!r}; choose one of {', '.join(method_names())}.")
    findings: list[Finding] = []
    try:
        scan = scan_dataset(root, caption_column=caption_column, split=split, strict=False)
    except DatasetError as err:  # e.g. a broken concepts.json, or no such split: nothing else to check
        findings.append(Finding("error", "layout", str(err)))
        scan = DatasetScan(root, "folder", "", [], [])
    findings += [Finding("error", "metadata", error) for error in scan.errors]
    findings += [Finding("warning", "layout", warning) for warning in scan.warnings]
    files = scan.files
    sizes: dict[str, tuple[int, int]] = {}
    pixel_hashes: dict[str, list[str]] = defaultdict(list)
    hashes: list[tuple[str, int, np.ndarray]] = []
    unreadable: list[str] = []
    for index, file in enumerate(files):
        result = load_image(file.path, name=file.name)
        if progress:
            progress(index + 1, len(files))
        if not result.ok:
            unreadable.append(f"{file.name} ({result.reason})")
            continue
        image = result.image
        sizes[file.name] = image.size
        pixel_hashes[pixel_hash(image)].append(file.name)
        hashes.append((file.name, dhash(image), _colour_thumb(image)))
        image.close()
    if unreadable:
        findings.append(Finding("warning", "unreadable", f"{len(unreadable)} image(s) cannot be read and will be "
                                "skipped: fix or delete them", unreadable))
    if not sizes:
        findings.append(Finding("error", "no_images", "No usable image in the folder. Add PNG/JPEG/WebP images."))

    duplicates = [sorted(group) for group in pixel_hashes.values() if len(group) > 1]
    if duplicates:
        extra = sum(len(g) - 1 for g in duplicates)
        findings.append(Finding("warning", "duplicates", f"{extra} exact duplicate image(s): they weigh those "
                                "pictures double; delete the copies", [" = ".join(g) for g in duplicates]))
    near = _near_duplicates(hashes, near_threshold, {n for g in duplicates for n in g[1:]})
    if near:
        findings.append(Finding("warning", "near_duplicates", f"{len(near)} pair(s) of near-duplicate images "
                                "(resized, re-encoded or nearly the same shot); keep the best of each",
                                [f"{a} ~ {b}" for a, b, _ in near]))

    small = sorted(n for n, (w, h) in sizes.items() if small_for_resolution(w, h, resolution))
    if small:
        findings.append(Finding("warning", "small_images", f"{len(small)} image(s) are smaller than {resolution}px "
                                "training size and will be upscaled (soft results); use larger originals or a "
                                "lower resolution", [f"{n} ({_wh(sizes[n])})" for n in small]))

    cap_stats = _check_captions(scan, sizes, findings, method=method, trigger=trigger,
                                instance_prompt=instance_prompt, uses_captions=uses_captions, tokenizer=tokenizer)
    concepts = _check_concepts(scan, sizes, findings, method)
    problems: list = []
    check_masks(scan, sizes, problems)
    check_conditions(scan, sizes, problems, method, conditioning)
    findings += [Finding(*problem) for problem in problems]
    buckets = _buckets(sizes, resolution, bucketing, findings)
    recommendation = None
    if sizes:
        method_class = method_named(method)
        advice = method_class.advice
        count = len(sizes)
        if count < advice.images_low:
            findings.append(Finding("warning", "image_count", f"{count} image(s): {advice.images_text}."))
        elif count > advice.images_high:
            findings.append(Finding("info", "image_count", f"{count} images: {advice.images_text}; "
                                    "more images mostly cost time with this method."))
        recommendation = recommend(method, count, subject=subject, resolution=resolution, batch_size=batch_size,
                                   seconds_per_step=seconds_per_step,
                                   with_prior_preservation=with_prior_preservation, adapter=adapter)
        for code, message in method_class.dataset_warnings(subject, with_prior_preservation):
            findings.append(Finding("warning", code, message))
    orphans = scan.orphans
    if orphans:
        findings.append(Finding("warning", "orphans", f"the metadata lists {len(orphans)} file(s) that are not in "
                                "the folder", orphans))
    sorted_sizes = sorted(sizes.values(), key=lambda wh: wh[0] * wh[1])
    stats = ImageStats(
        count=len(sizes),
        min_size=sorted_sizes[0] if sorted_sizes else None,
        max_size=sorted_sizes[-1] if sorted_sizes else None,
        median_size=(int(statistics.median(w for w, _ in sizes.values())),
                     int(statistics.median(h for _, h in sizes.values()))) if sizes else None,
    )
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    return DoctorReport(str(root), method, resolution, trigger, stats, cap_stats, buckets, duplicates, near,
                        findings, recommendation, scan.description, concepts, scan.sampling)


def _near_duplicates(hashes: list[tuple[str, int, np.ndarray]], threshold: int,
                     skip: set[str]) -> list[tuple[str, str, int]]:
    kept = [h for h in hashes if h[0] not in skip]
    if len(kept) < 2:
        return []
    values = np.array([h[1] for h in kept], dtype=np.uint64)
    thumbs = np.stack([h[2] for h in kept])
    pairs = []
    for i in range(len(kept) - 1):
        distance = np.bitwise_count(values[i + 1:] ^ values[i])
        for j in np.nonzero(distance <= threshold)[0]:
            other = i + 1 + int(j)
            if np.abs(thumbs[i] - thumbs[other]).mean() <= 20:  # colours/tones match too (0-255 scale)
                pairs.append((kept[i][0], kept[other][0], int(distance[j])))
    return pairs


def _check_captions(scan: DatasetScan, sizes: dict[str, tuple[int, int]], findings: list[Finding], *,
                    method: str, trigger: str | None, instance_prompt: str | None, uses_captions: bool | None,
                    tokenizer: Any | None) -> CaptionStats:
    usable = [f for f in scan.files if f.name in sizes]
    several = len(scan.concepts) > 1
    method_class = method_named(method)
    prompt = instance_prompt or (scan.info.get("instance_prompt") if method_class.has(INSTANCE_PROMPT) else None)
    # Our concepts name an instance prompt each; kohya's folder tokens are only the fallback caption.
    per_concept_prompts = (method_class.has(INSTANCE_PROMPT) and several and not instance_prompt
                           and scan.layout == "concepts"
                           and all(c.instance_prompt for c in scan.concepts))
    if uses_captions is None:
        uses_captions = not prompt and not per_concept_prompts and method_class.reads_captions
    missing = [f.name for f in usable if f.caption is None and not f.fallback.strip()]
    folder_prompts = [f for f in usable if f.caption is None and f.fallback.strip()]
    empty = [f.name for f in usable if f.caption is not None and not f.caption.strip()]
    texts = {f.name: f.text for f in usable if f.text.strip()}
    lengths = {n: count_tokens(t, tokenizer) for n, t in texts.items()}
    stats = CaptionStats(captioned=sum(1 for f in usable if f.caption and f.caption.strip()), missing=len(missing),
                         empty=len(empty), max_tokens=max(lengths.values(), default=0),
                         mean_tokens=round(statistics.mean(lengths.values()), 1) if lengths else 0.0,
                         tokens_exact=tokenizer is not None)
    if not uses_captions:
        source = ("each concept's instance prompt" if per_concept_prompts and not prompt
                  else f"the instance prompt {prompt!r}" if prompt else "prompt templates")
        findings.append(Finding("info", "captions_unused", f"{method} trains with {source}; per-image captions "
                                "are not used"))
        if prompt and trigger and not has_word(prompt, trigger):
            findings.append(Finding("warning", "missing_trigger", f"the instance prompt {prompt!r} does not contain "
                                    f"the trigger word {trigger!r}"))
        return stats
    severity = "error" if usable and len(missing) + len(empty) == len(usable) else "warning"
    if missing:
        findings.append(Finding(severity, "missing_captions", f"{len(missing)} image(s) have no caption: caption "
                                "them (auto-captioning) or give an instance prompt", missing))
    if empty:
        findings.append(Finding(severity, "empty_captions", f"{len(empty)} caption(s) are empty", empty))
    if folder_prompts:
        example = folder_prompts[0].fallback
        findings.append(Finding("info", "folder_prompts", f"{len(folder_prompts)} image(s) have no caption file and "
                                f"train with their folder's prompt (e.g. {example!r})",
                                [f.name for f in folder_prompts]))
    if trigger:
        without = sorted(n for n, t in texts.items() if not has_word(t, trigger))
        stats.without_trigger = len(without)
        if without:
            findings.append(Finding("warning", "missing_trigger", f"{len(without)} caption(s) lack the trigger word "
                                    f"{trigger!r}: add it (auto-captioning's trigger word, or find/replace)", without))
    elif several:
        _check_concept_tokens(scan, usable, findings)
    long = sorted(n for n, count in lengths.items() if count > TEXT_ENCODER_TOKENS)
    if long:
        approx = "" if tokenizer is not None else " (estimated)"
        findings.append(Finding("warning", "long_captions", f"{len(long)} caption(s) are longer than the text "
                                f"encoder's {TEXT_ENCODER_TOKENS} tokens{approx}; the end is cut off, so put the "
                                "important words first", [f"{n} ({lengths[n]})" for n in long]))
    return stats


def _check_concept_tokens(scan: DatasetScan, usable: list[DatasetFile], findings: list[Finding]) -> None:
    """Several concepts: each caption should name its own concept's token."""
    for concept in scan.concepts:
        if not concept.token:
            continue
        without = sorted(f.name for f in usable if f.concept == concept.name and not has_word(f.text, concept.token))
        if without:
            findings.append(Finding("warning", "missing_trigger", f"{len(without)} caption(s) of concept "
                                    f"{concept.name} lack its token {concept.token!r}", without))


def _check_concepts(scan: DatasetScan, sizes: dict[str, tuple[int, int]], findings: list[Finding],
                    method: str) -> list[ConceptStats]:
    """Counts and epoch shares per concept; too few images; one concept drowning another by repeats."""
    if len(scan.concepts) < 2:
        return []
    counts = {c.name: sum(1 for f in scan.files if f.concept == c.name and f.name in sizes) for c in scan.concepts}
    masks = {c.name: sum(1 for f in scan.files if f.concept == c.name and f.name in sizes and f.mask_path)
             for c in scan.concepts}
    weights = {c.name: c.repeats * counts[c.name] for c in scan.concepts}
    total = sum(weights.values()) or 1
    balanced = scan.sampling == "balanced"
    stats = [ConceptStats(c.name, counts[c.name], c.repeats,
                          1 / len(scan.concepts) if balanced else weights[c.name] / total, masks[c.name],
                          c.instance_prompt, c.class_prompt, _class_images(c)) for c in scan.concepts]
    least = min(method_named(method).advice.images_low, _CONCEPT_MIN_IMAGES)
    few = [f"{c.name} ({counts[c.name]})" for c in scan.concepts if counts[c.name] < least]
    if few:
        findings.append(Finding("warning", "concept_images", f"{len(few)} concept(s) have fewer than {least} images; "
                                "a subject is learned from several views: add images", few))
    if not balanced:
        heavy = max(scan.concepts, key=lambda c: weights[c.name])
        light = min(scan.concepts, key=lambda c: weights[c.name])
        if weights[light.name] and weights[heavy.name] >= _DOMINANCE * weights[light.name]:
            most = max(counts.values())
            advice = ", ".join(f"{max(1, round(most / counts[c.name]))} for {c.name}"
                               for c in scan.concepts if counts[c.name])
            findings.append(Finding(
                "warning", "repeats_imbalance",
                f"{heavy.name} takes {weights[heavy.name] / total:.0%} of each epoch ({heavy.repeats} repeats x "
                f"{counts[heavy.name]} images) and {light.name} {weights[light.name] / total:.0%} "
                f"({light.repeats} x {counts[light.name]}): {light.name} will be learned much less. For even "
                f"shares make repeats x images similar, e.g. repeats {advice}",
                [f"{c.name}: {c.repeats} x {counts[c.name]} = {weights[c.name]}" for c in scan.concepts]))
    return stats


def _class_images(concept: Concept) -> int:
    return len(list_images(concept.class_data)) if concept.class_data else 0


def _buckets(sizes: dict[str, tuple[int, int]], resolution: int, bucketing: bool,
             findings: list[Finding]) -> dict[str, int]:
    if not sizes:
        return {}
    if not bucketing:
        cropped = sorted(n for n, (w, h) in sizes.items() if max(w / h, h / w) > 1.15)
        if cropped:
            findings.append(Finding("info", "cropping", f"{len(cropped)} image(s) are not square and will be "
                                    f"center-cropped to {resolution}x{resolution}; turn on aspect bucketing to "
                                    "keep their framing", cropped))
        return {f"{resolution}x{resolution}": len(sizes)}
    counts = assign_buckets(sizes.values(), resolution)
    singles = [f"{w}x{h}" for (w, h), n in counts.items() if n == 1]
    if len(counts) > 1 and singles:
        findings.append(Finding("info", "lonely_buckets", f"{len(singles)} bucket(s) hold a single image; with "
                                "batches > 1 those images train alone", singles))
    return {f"{w}x{h}": n for (w, h), n in counts.items()}


def diagnose_config(config: Any, **overrides: Any) -> DoctorReport:
    """The doctor for a TrainConfig (folder datasets only): method, resolution, prompts and batch from it."""
    uses_ti = config.has(TOKENS)
    kwargs: dict[str, Any] = {
        "method": config.method,
        "adapter": config.adapter,
        "resolution": config.resolution or 512,
        "instance_prompt": config.instance_prompt or None,
        "trigger": config.placeholder_token if uses_ti else None,
        "bucketing": config.bucketing,
        "batch_size": config.train_batch_size,
        "with_prior_preservation": config.with_prior_preservation,
        "caption_column": config.caption_column or None,
        "split": getattr(config, "split", "") or "train",
        "conditioning": config.conditioning,
    }
    if uses_ti:
        kwargs["uses_captions"] = config.learnable_property == "captions" and not config.instance_prompt
    kwargs.update(overrides)
    return diagnose(config.data, **kwargs)
