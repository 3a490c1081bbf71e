"""Keeping the Train tab's form valid, without gradio: what a dataset says about itself (its prompts, whether
its images need aspect bucketing), and `settle`, which turns the form's values after a method or dataset switch
into settings that validate.

Everything here asks the method registry (traits) and `config.field_applies`; no method is named. What the
form filled in by itself is remembered (`filled`), so a dataset switch may refill it, while anything the user
typed is kept.

A dataset of several concepts (subjects) names its prompts, tokens and classes per concept: the form lists
them and leaves the run-wide prompts empty, so each concept trains on its own (train/setup.py reads them when
the run starts). `init_from_choices` lists the earlier runs a new one may continue (`init_from`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtune_ui.app.generation import instance_token, source_label
from sdtune_ui.app.ops import config_from_values, widget_values
from sdtune_ui.config import TrainConfig, field_info
from sdtune_ui.errors import ConfigError, DatasetError
from sdtune_ui.methods import CONTROL, INSTANCE_PROMPT, TOKENS, method_named, method_names

# The dataset doctor's threshold: an image wider or taller than this is cropped badly without buckets.
NOT_SQUARE = 1.15
MAX_SIZES_READ = 400  # image headers read to decide on bucketing (enough to judge a dataset's shapes)
# Fields the form derives from the dataset and the method (and may derive again when those change).
DERIVED = ("instance_prompt", "class_prompt", "validation_prompts", "bucketing", "initializer_token", "conditioning")
COMPUTED_CONDITION = "canny"   # what a ControlNet run computes when the dataset has no condition pictures
SAMPLING_WORDS = {"repeats": "each image as often as its repeats say", "balanced": "every concept an equal share"}


@dataclass
class ConceptHint:
    """One subject of a dataset of several, as the form shows it."""

    name: str
    images: int
    repeats: int = 1
    instance_prompt: str = ""
    token: str = ""
    class_prompt: str = ""
    captions: int = 0  # images with a caption of their own


@dataclass
class DatasetHints:
    """What a dataset folder says about itself: its prompts, a caption, its images' shapes, its concepts."""

    folder: str = ""
    instance_prompt: str = ""
    class_prompt: str = ""
    token: str = ""
    caption: str = ""
    images: int = 0
    not_square: int = 0
    concepts: list[ConceptHint] = field(default_factory=list)  # only with several concepts
    sampling: str = ""  # the epoch order the dataset asks for (several concepts)
    conditions: int = 0   # images with a ControlNet condition picture beside them (a-condlabel.png)

    @property
    def bucketing(self) -> bool:
        return self.not_square > 0

    def gives(self, name: str) -> bool:
        """Whether every concept of a dataset of several names this itself (`instance_prompt`, `class_prompt`),
        so the run-wide field stays empty; validation prompts are made one per concept."""
        if not self.concepts:
            return False
        if name == "validation_prompts":
            return True
        return all(getattr(c, name) or (name == "instance_prompt" and c.captions == c.images) for c in self.concepts)

    def concepts_note(self) -> list[str]:
        """A heading line, then one line per concept ([] for a dataset of one subject)."""
        if not self.concepts:
            return []
        lines = [f"This dataset has {len(self.concepts)} concepts, trained together in one run (sampling "
                 f"{self.sampling}: {SAMPLING_WORDS.get(self.sampling, self.sampling)}); each uses its own prompt, "
                 "token and class from the dataset where the fields below are left empty:"]
        for c in self.concepts:
            details = [f"{c.images} image{'s' if c.images != 1 else ''}" + (f" x {c.repeats}" if c.repeats > 1 else "")]
            if c.captions:
                details.append(f"{c.captions} captioned")
            details += [f"{label} '{value}'" for label, value in (("prompt", c.instance_prompt), ("token", c.token),
                                                                  ("class", c.class_prompt)) if value]
            lines.append(f"{c.name}: {', '.join(details)}")
        return lines

    def bucketing_note(self) -> str:
        if not self.images:
            return ""
        if self.bucketing:
            return (f"Aspect bucketing is on: {self.not_square} of {self.images} image(s) are not square and would "
                    "lose their edges to a square crop (the dataset doctor recommends it).")
        return f"Aspect bucketing is off: the {self.images} image(s) are square enough for a square crop."


def dataset_hints(data: str) -> DatasetHints:
    """Read a dataset folder's dataset_info.json / concepts / captions and its images' sizes (headers only)."""
    from PIL import Image

    from sdtune_ui.data.formats import read_dataset_info
    from sdtune_ui.data.layouts import scan_dataset

    folder = Path(data).expanduser() if data else None
    hints = DatasetHints(folder=str(data or ""))
    if folder is None or not folder.is_dir():
        return hints
    try:
        info = read_dataset_info(folder)
        scan = scan_dataset(folder, strict=False)
    except (DatasetError, OSError):
        return hints
    concept = scan.concepts[0] if len(scan.concepts) == 1 else None
    if len(scan.concepts) > 1:
        hints.sampling = scan.sampling
        for c in scan.concepts:
            files = [f for f in scan.files if f.concept == c.name]
            hints.concepts.append(ConceptHint(c.name, len(files), c.repeats, c.instance_prompt, c.token,
                                              c.class_prompt, sum(bool((f.caption or "").strip()) for f in files)))
    hints.instance_prompt = info.get("instance_prompt", "") or (concept.instance_prompt if concept else "")
    hints.class_prompt = info.get("class_prompt", "") or (concept.class_prompt if concept else "")
    hints.token = (concept.token if concept else "") or instance_token(hints.instance_prompt)
    hints.caption = next((f.text for f in scan.files if f.text.strip()), "")
    hints.images = len(scan.files)
    hints.conditions = sum(1 for f in scan.files if f.condition_path is not None)
    for file in scan.files[:MAX_SIZES_READ]:
        try:
            with Image.open(file.path) as image:
                width, height = image.size
        except (OSError, ValueError):
            continue
        if max(width / height, height / width) > NOT_SQUARE:
            hints.not_square += 1
    return hints


def init_from_choices(runs_dirs: str | Path | list[Path]) -> list[tuple[str, str]]:
    """The `init_from` picker: (label, value) per run output and checkpoint of the runs in one runs folder or
    several (a workspace's), newest first, after "start from the base model" (""). Values are run ids, `run-id` or
    `run-id@step-N`, which Start resolves in the caller's workspace (ops.dataset_by_name)."""
    from sdtune_ui.generate.artifacts import list_choices
    from sdtune_ui.runs import RunDir

    choices = [("(none: start from the base model)", "")]
    configs: dict[str, dict] = {}
    folders = [runs_dirs] if isinstance(runs_dirs, (str, Path)) else list(runs_dirs)
    for choice in [choice for folder in folders for choice in list_choices(folder)]:
        name = Path(choice.run_dir).name
        config = configs.setdefault(name, RunDir(Path(choice.run_dir)).config())
        value = name if choice.step is None else f"{name}@step-{choice.step}"
        choices.append((source_label(name, config, choice.step), value))
    return choices


def class_prompt_guess(instance_prompt: str) -> str:
    """The doctor's guess of a class prompt: "a photo of sks robot" -> "a photo of a robot"."""
    words = instance_prompt.split()
    token = instance_token(instance_prompt)
    if token not in words or words.index(token) == len(words) - 1:
        return ""
    noun = " ".join(words[words.index(token) + 1:])
    return f"a photo of {'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def class_noun(hints: DatasetHints) -> str:
    """The dataset's class word ("robot" of "a photo of a robot" / "a photo of sks robot"), or ""."""
    guess = hints.class_prompt or class_prompt_guess(hints.instance_prompt)
    words = guess.split()
    return words[-1] if words else ""


@dataclass
class Settled:
    values: dict[str, Any]                                  # widget values (lists as lines)
    filled: dict[str, Any] = field(default_factory=dict)     # what the form derived by itself
    notes: list[str] = field(default_factory=list)           # what changed and why, for people
    errors: dict[str, str] = field(default_factory=dict)     # what still does not validate


def _defaults() -> dict[str, Any]:
    return dataclasses.asdict(TrainConfig())


def _has(method: str, trait: str) -> bool:
    return method in method_names() and method_named(method).has(trait)


def _derived_value(name: str, config: TrainConfig, hints: DatasetHints, filled: dict | None = None) -> Any:
    """The value the form fills in for a derived field, or None when it knows none."""
    if name == "instance_prompt":
        if config.has(TOKENS):
            return ""  # token methods train on their prompt templates (or the captions)
        if hints.instance_prompt:
            return hints.instance_prompt
        words = config.class_prompt.split()
        return f"a photo of sks {words[-1] if words else 'subject'}"
    if name == "class_prompt":
        # A class is guessed from an instance prompt the user or the dataset gave, never from our placeholder one.
        ours = (filled or {}).get("instance_prompt") == config.instance_prompt and not hints.instance_prompt
        guess = "" if ours else class_prompt_guess(config.instance_prompt or hints.instance_prompt)
        return hints.class_prompt or guess or None
    if name == "validation_prompts":
        if config.has(TOKENS):
            token = config.placeholder_token
            prompt = config.instance_prompt if token in config.instance_prompt else f"a photo of {token}"
            return [prompt]
        prompt = config.instance_prompt or hints.instance_prompt or hints.caption
        return [prompt] if prompt else []
    if name == "bucketing":
        return hints.bucketing
    if name == "conditioning":
        # A ControlNet trains on the dataset's condition pictures when every image has one, else on computed edges.
        if not config.has(CONTROL) or not hints.images:
            return None
        return "dataset" if hints.conditions == hints.images else COMPUTED_CONDITION
    if name == "initializer_token":
        # A new token starts from its class's embedding: the dataset's class word beats the generic default.
        return class_noun(hints) or None if config.has(TOKENS) else None
    return None


def settle(values: dict[str, Any], hints: DatasetHints, *, previous_method: str | None = None,
           filled: dict[str, Any] | None = None, refill: bool = False) -> Settled:
    """Widget values after a switch, made into settings that validate where the form can derive a value.

    Settings the new method does not use go back to their defaults; prompts that named the old method's new
    token are derived again; a prompt the method needs comes from the dataset; prior preservation without
    any class prompt to be found is turned off. `refill` (a new dataset): what the form filled in for the old
    dataset is derived again for this one. Returns the values, what was filled, notes and remaining errors.
    """
    filled = dict(filled or {})
    try:
        config = config_from_values(values)
    except ConfigError as err:
        return Settled(dict(values), filled, [], dict(err.field_errors))
    defaults = _defaults()
    changes: dict[str, Any] = {}
    notes: list[str] = []

    for f in field_info():  # what the method does not use goes back to its default
        if not config.applies(f.name) and getattr(config, f.name) != defaults[f.name]:
            changes[f.name] = defaults[f.name]
    if previous_method and _has(previous_method, TOKENS) and not config.has(TOKENS):
        token = config.placeholder_token
        if any(token in p for p in config.validation_prompts):
            changes["validation_prompts"] = []
        if token in config.instance_prompt:
            changes["instance_prompt"] = ""
    if refill:  # a new dataset: what we filled for the old one is not the user's
        for name in DERIVED:
            if name in filled and getattr(config, name) == filled[name]:
                changes[name] = defaults[name]
    config = dataclasses.replace(config, **changes)

    wanted: list[str] = []
    if config.has(INSTANCE_PROMPT) and not config.instance_prompt.strip() and not hints.gives("instance_prompt"):
        wanted.append("instance_prompt")
    if config.with_prior_preservation and not config.class_prompt.strip() and not hints.gives("class_prompt"):
        wanted.append("class_prompt")
    if not config.validation_prompts and not hints.gives("validation_prompts"):
        wanted.append("validation_prompts")
    if config.has(TOKENS) and config.initializer_token == defaults["initializer_token"]:
        wanted.append("initializer_token")
    if config.has(CONTROL) and config.conditioning == defaults["conditioning"]:
        wanted.append("conditioning")
    # Bucketing follows the dataset unless the user chose it (a value the form did not fill in).
    if refill and ("bucketing" in changes or "bucketing" not in filled and config.bucketing == defaults["bucketing"]):
        wanted.append("bucketing")
    config = _fill(config, wanted, hints, filled, changes, notes)

    for _ in range(3):  # fix what still does not validate, field by field
        try:
            config.validate()
            break
        except ConfigError as err:
            errors = err.field_errors
        fixed = _fix(config, errors, hints, filled, changes, notes)
        if fixed == config:
            break
        config = fixed
    errors = {}
    try:
        config.validate()
    except ConfigError as err:
        errors = dict(err.field_errors)
    new_values = widget_values({name: getattr(config, name) for name in values if hasattr(config, name)})
    return Settled({**values, **new_values}, filled, notes, errors)


def _fill(config: TrainConfig, names: list[str], hints: DatasetHints, filled: dict, changes: dict,
          notes: list[str]) -> TrainConfig:
    for name in names:
        value = _derived_value(name, config, hints, filled)
        if name == "class_prompt" and value is None:
            if config.with_prior_preservation:
                config = dataclasses.replace(config, with_prior_preservation=False)
                changes["with_prior_preservation"] = False
                notes.append("Prior preservation is off: no class prompt was found in the dataset; give one "
                             "(e.g. 'a photo of a dog') and tick it again.")
            continue
        if value is None or value == getattr(config, name):
            continue
        if name == "conditioning" and value == COMPUTED_CONDITION:
            notes.append(f"Conditioning is {value}: {hints.images - hints.conditions} of {hints.images} image(s) have "
                         "no condition picture (a-condlabel.png), so Canny edges are computed at the start (or add "
                         "them in the Dataset tab).")
        if name == "instance_prompt" and value and not hints.instance_prompt:
            notes.append(f"The instance prompt was filled in as '{value}': name your subject's class in it "
                         "(e.g. 'a photo of sks dog'); 'sks' is the rare word that will mean your subject.")
        config = dataclasses.replace(config, **{name: value})
        filled[name] = value
        changes[name] = value
    return config


def _fix(config: TrainConfig, errors: dict[str, str], hints: DatasetHints, filled: dict, changes: dict,
         notes: list[str]) -> TrainConfig:
    defaults = _defaults()
    for name in errors:
        if name in DERIVED:
            before = config
            config = _fill(config, [name], hints, filled, changes, notes)
            if config != before:
                continue
        if name in defaults and getattr(config, name) != defaults[name]:
            config = dataclasses.replace(config, **{name: defaults[name]})
            changes[name] = defaults[name]
    return config


def validation_report(values: dict[str, Any], *, check: Any = None) -> tuple[dict[str, str], TrainConfig | None]:
    """(errors by field, the config when it validates) of the form's values, as Start would judge them.

    A DreamBooth folder's dataset_info.json may supply the instance prompt, as it does when the run starts.
    `check(config)` adds the app's own rules (a public app's).
    """
    from sdtune_ui.train.setup import apply_dataset_info

    try:
        config = apply_dataset_info(config_from_values(values))
        config.validate()
        if check is not None:
            check(config)
    except ConfigError as err:
        return dict(err.field_errors), None
    except DatasetError as err:
        return {"data": str(err)}, None
    return {}, config
