"""Scores per subject, for a run that learns several subjects at once or continues an earlier run.

A run over a dataset of several concepts, or one that started from an earlier run's output (`init_from`),
is measured once per subject: that subject's own prompt ("a photo of sks robot") is generated and compared
with that subject's own training images only, so one subject's good score cannot hide another's bad one.
Each subject also gets `dino_other` / `clip_i_other` (the highest similarity to another subject's training
images: a token that draws the wrong subject scores higher there than on its own) and the held-out loss of
its images under its prompt (no generation; the clear signal on models that draw noise).

Earlier subjects are the ones the runs before this one learned (train/init_from.py: `earlier_subjects`).
They are measured on the same targets as the run's own, plus the `start` target (the earlier output this
run loaded), so a drop from `start` to a checkpoint is what this run made the model forget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SUBJECT_METRICS = ("dino", "clip_i", "clip_t", "loss")


@dataclass(frozen=True)
class Subject:
    name: str            # the concept's folder name (unique within one evaluation)
    prompt: str          # the prompt that shows it, e.g. "a photo of sks robot"
    folder: str          # its training images
    earlier: bool = False  # learned by an earlier run this one continued from

    def to_dict(self) -> dict:
        return {"name": self.name, "prompt": self.prompt, "folder": self.folder, "earlier": self.earlier}


def run_subject_list(run_dir: str | Path, config: dict) -> list[Subject]:
    """The subjects to score one by one: earlier ones (oldest first), then the run's own concepts. [] for a
    run of one subject that continued from nothing (its run-wide scores already are its subject's)."""
    from sdtune_ui.train.init_from import earlier_subjects, run_subjects

    own = run_subjects(config)
    earlier = [subject for subject in earlier_subjects(run_dir) if subject not in own]
    if len(own) < 2 and not earlier:
        return []
    subjects: list[Subject] = []
    for (prompt, folder), is_earlier in [*((s, True) for s in earlier), *((s, False) for s in own)]:
        name = Path(folder).name or folder
        taken = {s.name for s in subjects}
        if name in taken:
            name = next(f"{name}-{n}" for n in range(2, len(subjects) + 3) if f"{name}-{n}" not in taken)
        subjects.append(Subject(name, prompt, folder, is_earlier))
    return subjects


def start_artifacts(config: dict) -> list[Any] | None:
    """What this run loaded from its `init_from` (the LoRA and/or embeddings its method continues), as
    generation artifacts; None when there is no such start apart from the base model (no init_from, full
    fine-tuning whose base already is the earlier pipeline, or an earlier output that is gone)."""
    from sdtune_ui.errors import SdtuneError
    from sdtune_ui.methods import ADAPTER, TOKENS, method_named, method_names
    from sdtune_ui.methods.outputs import EMBEDDING, LORA
    from sdtune_ui.train.init_from import resolve_source

    spec = (config.get("init_from") or "").strip()
    if not spec or config.get("method") not in method_names():
        return None
    try:
        source = resolve_source(spec)
    except SdtuneError:
        return None
    method = method_named(config["method"])
    kinds = {kind for kind, trait in ((LORA, ADAPTER), (EMBEDDING, TOKENS)) if method.has(trait)}
    found = [artifact for artifact in source.artifacts if artifact.kind in kinds]
    return found or None


class SubjectScores:
    """Holds each subject's training images, features and held-out set; scores one target's images."""

    def __init__(self, subjects: Sequence[Subject], *, limit: int, features: Callable[..., torch.Tensor],
                 encode: Callable[[list[Any]], tuple[torch.Tensor, tuple[int, int]]], seed: int,
                 timesteps_per_image: int, num_train_timesteps: Callable[[], int]):
        self.subjects = list(subjects)
        self._limit, self._features, self._encode = limit, features, encode
        self._seed, self._per_image, self._num_train_timesteps = seed, timesteps_per_image, num_train_timesteps
        self._training: dict[str, list[Any]] = {}
        self._held: dict[str, Any] = {}

    @property
    def prompts(self) -> list[str]:
        return list(dict.fromkeys(s.prompt for s in self.subjects))

    def training(self, subject: Subject) -> list[Any]:
        """The subject's training images (the first `limit` of its folder)."""
        if subject.name not in self._training:
            from sdtune_ui.data.datasets import load_dataset
            from sdtune_ui.errors import SdtuneError

            try:
                examples = load_dataset(subject.folder).examples[: self._limit]
            except SdtuneError:
                examples = []  # a folder moved or deleted since: the subject is reported without image scores
            self._training[subject.name] = [ex.image for ex in examples]
        return self._training[subject.name]

    def _heldout(self, subject: Subject) -> Any:
        from sdtune_ui.evaluate.heldout import build_heldout_set

        if subject.name not in self._held:
            images = self.training(subject)
            if not images:
                self._held[subject.name] = None
            else:
                latents, size = self._encode(images)
                self._held[subject.name] = build_heldout_set(
                    latents, [subject.prompt] * len(images), [False] * len(images),
                    num_train_timesteps=self._num_train_timesteps(), pixel_size=size, seed=self._seed,
                    timesteps_per_image=self._per_image)
        return self._held[subject.name]

    def score(self, images: dict[str, list[Any]], *, dino: Any, clip: Any, clip_text: Callable[[str], str],
              wanted: set[str], loss_of: Callable[[Any], float] | None) -> list[dict]:
        """One entry per subject: {name, prompt, earlier, metrics}. `images` maps a prompt to its generated
        images; `loss_of(held_set)` scores a held-out set on the target's model (None: no loss)."""
        from sdtune_ui.evaluate import metrics as m

        entries = []
        for subject in self.subjects:
            generated, training = images[subject.prompt], self.training(subject)
            others = [s for s in self.subjects if s.name != subject.name and self.training(s)]
            scores: dict[str, float | None] = {}
            for key, extractor, asked in (("dino", dino, "dino"), ("clip_i", clip, "clip-i")):
                if extractor is None or asked not in wanted or not training:
                    continue
                rows = extractor.image_features(generated)
                scores[key] = m.subject_fidelity(extractor, rows, self._features(extractor, subject.name, training))
                if others:
                    scores[f"{key}_other"] = max(
                        m.subject_fidelity(extractor, rows, self._features(extractor, other.name,
                                                                           self.training(other)))
                        for other in others)
            if clip is not None and "clip-t" in wanted:
                rows = clip.image_features(generated)
                scores["clip_t"] = m.prompt_fidelity(clip, rows, [clip_text(subject.prompt)] * len(generated))
            if loss_of is not None and "loss" in wanted and self._heldout(subject) is not None:
                scores["loss"] = loss_of(self._heldout(subject))
            entries.append({"name": subject.name, "prompt": subject.prompt, "earlier": subject.earlier,
                            "metrics": {k: round(v, 6) for k, v in scores.items() if v is not None}})
        return entries


def clip_text(prompt: str, config: dict) -> str:
    """A subject's prompt as CLIP should read it: its new token replaced by the word it started from ("a photo
    of <robot>" -> "a photo of robot"), or its rare identifier dropped before the class noun ("a photo of zwx
    square" -> "a photo of square"), as evaluate/prompts.py does for a run's one subject."""
    from sdtune_ui.evaluate.prompts import COMMON_WORDS

    nouns = {}
    for entry in [*(config.get("concept_tokens") or []),
                  f"{config.get('placeholder_token') or ''}={config.get('initializer_token') or ''}"]:
        token, _, start = str(entry).partition("=")
        if token.strip():
            nouns.setdefault(token.strip(), start.strip())
    words = prompt.split()
    if not any(word in nouns for word in words):  # a DreamBooth-style prompt: its first uncommon word
        rare = next((w for w in words[:-1] if w.lower() not in COMMON_WORDS), None)
        nouns = {rare: ""} if rare else {}
    out = []
    for index, word in enumerate(words):
        following = words[index + 1] if index + 1 < len(words) else ""
        if word not in nouns:
            out.append(word)
        elif following and following not in nouns and following.lower() not in COMMON_WORDS:
            continue  # "sks robot": the class noun follows
        elif nouns[word]:
            out.append(nouns[word])
    return " ".join(out)


def mean_of_own(entries: Sequence[dict], key: str) -> float | None:
    """The mean of a metric over the run's own subjects (what a run of several subjects is ranked by)."""
    values = [e["metrics"][key] for e in entries if not e["earlier"] and e["metrics"].get(key) is not None]
    return round(sum(values) / len(values), 6) if values else None


def subject_table(records: Sequence[dict]) -> str:
    """Per target and subject, for the CLI: DINO / CLIP-I (own vs the closest other subject), CLIP-T, loss."""
    lines = []
    for record in records:
        for entry in record.get("subjects") or []:
            values = entry["metrics"]
            cells = []
            for key in ("dino", "clip_i"):
                if key in values:
                    other = values.get(f"{key}_other")
                    cells.append(f"{key} {values[key]:.3f}" + (f" (other {other:.3f})" if other is not None else ""))
            cells += [f"{key} {values[key]:.4f}" for key in ("clip_t", "loss") if key in values]
            mark = " (earlier)" if entry["earlier"] else ""
            lines.append(f"{record['label']:>10}  {entry['name']}{mark}: {', '.join(cells) or '-'}")
    return "\n".join(lines)
