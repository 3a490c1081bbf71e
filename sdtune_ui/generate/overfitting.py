"""The overfitting study: prompts x checkpoints (x LoRA scales) in one labelled image.

The study answers "did it learn my subject without forgetting the class?": the instance prompt (and the
subject in a new context) should show the subject, while the plain class prompt should still show a
generic member of the class and an unrelated prompt should be untouched. Picking the checkpoint where
both hold is the whole point of saving several. Once the run was evaluated (`evaluate`), each row's label
carries its scores (subject fidelity, class drift, held-out loss) and the best checkpoint is marked.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sdtune_ui.errors import Cancelled, SdtuneError
from sdtune_ui.generate.grid import make_grid
from sdtune_ui.methods import ADAPTER, TOKENS, methods_with
from sdtune_ui.methods.outputs import LORA


def _subject_and_class(config: dict) -> tuple[str, str]:
    """(the prompt naming the subject, the class noun) from a run's settings."""
    instance = (config.get("instance_prompt") or "").strip()
    class_prompt = (config.get("class_prompt") or "").strip()
    placeholder = (config.get("placeholder_token") or "").strip()
    method = config.get("method", "")
    class_noun = ""
    if class_prompt:
        class_noun = re.sub(r"^(a|an) (photo|picture|painting) of (a|an|the) ", "", class_prompt).strip()
    if method in methods_with(TOKENS) and placeholder:
        class_noun = class_noun or (config.get("initializer_token") or "").strip()
        return instance or f"a photo of {placeholder}", class_noun
    if instance and not class_noun:
        # "a photo of sks dog": the class is the word after the rare identifier.
        words = instance.split()
        class_noun = words[-1] if len(words) >= 2 else ""
    return instance, class_noun


def default_grid_prompts(config: dict) -> list[str]:
    """'a photo of sks dog', '... on a beach', 'a photo of a dog', 'a photo of a cat' (from the run's tokens)."""
    subject, class_noun = _subject_and_class(config)
    if not subject:
        subject = (config.get("validation_prompts") or ["a photo of sks"])[0]
    class_noun = class_noun or "dog"
    other = "dog" if class_noun == "cat" else "cat"
    article = "an" if class_noun[:1] in "aeiou" else "a"
    return [subject, f"{subject} on a beach", f"a photo of {article} {class_noun}", f"a photo of a {other}"]


def overfitting_grid(run_dir: str | Path, steps: Sequence[int | None] | None = None,
                     prompts: Sequence[str] | None = None, scales: Sequence[float] | None = None, *,
                     options: Any = None, engine: Any = None, max_checkpoints: int = 8,
                     progress: Callable[[int, int], None] | None = None,
                     cancel: Callable[[], bool] | None = None) -> Any:
    """Prompts (columns) x checkpoints (x LoRA scales) (rows), same seed in every cell, as one image.

    `steps`: checkpoint steps, None meaning the final output; default: every checkpoint (the last
    `max_checkpoints`) plus the final output when there is one. `progress(done, total)` is called after each
    image; `cancel()` returning True stops the grid (raises Cancelled) between images and denoising steps.
    """
    from sdtune_ui.evaluate.report import score_notes
    from sdtune_ui.generate.artifacts import artifacts_in_folder, checkpoint_steps, run_artifacts
    from sdtune_ui.generate.engine import default_engine
    from sdtune_ui.generate.options import GenerationOptions
    from sdtune_ui.runs import RunDir

    engine = engine or default_engine()
    run = RunDir(Path(run_dir))
    config = run.config()
    if not config:
        raise SdtuneError(f"{run.path} is not a run folder (no config.json).")
    if steps is None:
        steps = [*checkpoint_steps(run.path)[-max_checkpoints:]]
        if artifacts_in_folder(run.output_dir, config):
            steps.append(None)
    if not steps:
        raise SdtuneError("This run has no checkpoint or output yet; wait for the first checkpoint.")
    prompts = list(prompts or default_grid_prompts(config))
    scales = list(scales) if scales and config.get("method") in methods_with(ADAPTER) else [1.0]
    base_options = options or GenerationOptions(prompt=prompts[0], steps=20)
    total, done = len(steps) * len(scales) * len(prompts), 0

    def check(*_: Any) -> None:
        if cancel is not None and cancel():
            raise Cancelled(f"Grid cancelled after {done} of {total} image(s).")

    notes = score_notes(run.path)   # the evaluation's scores of each row, where the run was evaluated
    rows, labels = [], []
    for step in steps:
        check()
        found = run_artifacts(run.path, step)
        for scale in scales:
            for artifact in found.artifacts:
                if artifact.kind == LORA:
                    artifact.scale = scale
            row = []
            for prompt in prompts:
                check()
                opts = base_options.replace(prompt=prompt, num_images=1)
                watch = {"step_callback": check} if cancel is not None else {}
                row.append(engine.generate(found.base_model, found.artifacts, opts,
                                           allow_pickle=bool(config.get("allow_pickle")), **watch).images[0])
                done += 1
                if progress is not None:
                    progress(done, total)
            rows.append(row)
            name = "final" if step is None else f"step {step}"
            name = f"{name} · scale {scale:g}" if len(scales) > 1 else name
            labels.append(f"{name}\n{notes[step]}" if notes.get(step) and scale == 1.0 else name)
    return make_grid(rows, row_labels=labels, col_labels=prompts)
