"""Which prompts an evaluation generates, derived from the run's settings like the overfitting grid's.

The subject prompts (the instance prompt and the subject in a new context) measure subject and prompt
fidelity; the class prompt measures preservation and drift. CLIP-T compares an image with its prompt
written for CLIP: the rare identifier or placeholder token means nothing to CLIP, so it is replaced by the
class noun ("a photo of sks robot on a beach" -> "a photo of robot on a beach"), as the DreamBooth paper does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sdtune_ui.generate.overfitting import default_grid_prompts
from sdtune_ui.methods import TOKENS, methods_with

COMMON_WORDS = {"a", "an", "the", "of", "photo", "picture", "painting", "on", "in", "at", "with", "and"}


@dataclass(frozen=True)
class EvalPrompts:
    subject: tuple[str, ...]        # prompts that should draw the subject
    clip_text: tuple[str, ...]      # the same prompts as CLIP should read them (identifier -> class noun)
    class_prompt: str               # the plain class, e.g. "a photo of a robot"

    def all(self) -> list[str]:
        return [*self.subject, self.class_prompt]


def class_noun(class_prompt: str) -> str:
    return re.sub(r"^(a|an) (photo|picture|painting) of (a|an|the) ", "", class_prompt).strip()


def identifier_words(subject: str, config: dict, noun: str) -> set[str]:
    """The words of the instance prompt that name the subject rather than the class (sks, <sks>)."""
    token = (config.get("placeholder_token") or "").strip()
    if config.get("method") in methods_with(TOKENS) and token:
        return {token}
    return {word for word in subject.split() if word not in COMMON_WORDS and word != noun and word not in noun.split()}


def for_clip(prompt: str, identifiers: set[str], noun: str) -> str:
    """Replace the identifier by the class noun, or drop it where the class noun follows anyway."""
    words = prompt.split()
    out = []
    for index, word in enumerate(words):
        if word in identifiers:
            following = words[index + 1] if index + 1 < len(words) else ""
            if following != noun and following not in identifiers and noun:
                out.append(noun)
            continue
        out.append(word)
    return " ".join(out)


def eval_prompts(config: dict) -> EvalPrompts:
    """Subject prompts, their CLIP texts and the class prompt of a run (from default_grid_prompts)."""
    subject, context, class_prompt, _unrelated = default_grid_prompts(config)
    noun = class_noun(class_prompt)
    identifiers = identifier_words(subject, config, noun)
    return EvalPrompts((subject, context), tuple(for_clip(p, identifiers, noun) for p in (subject, context)),
                       class_prompt)
