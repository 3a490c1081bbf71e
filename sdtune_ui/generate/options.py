"""GenerationOptions: the one typed, validated description of a generation, like TrainConfig for training.

The CLI's `generate` flags and the Generate tab's widgets are made from these fields (help text, allowed values,
ranges), so the defaults live here once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sdtune_ui.config import MAX_SEED, bound_message
from sdtune_ui.errors import ConfigError

SCHEDULERS = ("dpm++", "euler", "euler_a", "ddim", "unipc", "default")
MAX_GUIDANCE = 30.0
MAX_IMAGES = 16
MAX_PUBLIC_IMAGES = 4  # images per prompt on a public app


def _field(default: Any, help: str, *, label: str = "", choices: tuple | None = None,
           minimum: float | None = None, maximum: float | None = None, step: float | None = None,
           multiple_of: int | None = None, public_maximum: float | None = None) -> Any:
    """A field with its help text, its label in the app, and what values it takes (checked by `validate`).

    `minimum`/`maximum` bound the value; `public_maximum` is the most a public app (share link, Space) takes;
    `step` is the app's slider step; `multiple_of` (sizes) allows 0 too.
    """
    return field(default=default, metadata=dict(help=help, label=label, choices=choices, minimum=minimum,
                                                 maximum=maximum, step=step, multiple_of=multiple_of,
                                                 public_maximum=public_maximum))


@dataclass
class GenerationOptions:
    prompt: str = _field("", "What to draw; use the run's trigger words.", label="Prompt")
    negative_prompt: str = _field("", "What to keep out of the image.", label="Negative prompt")
    scheduler: str = _field("dpm++", "Sampler: DPM-Solver++ (good images in ~25 steps), Euler, Euler ancestral, "
                            "DDIM, UniPC, or the model's own (SD3 and Flux always use their own flow-matching "
                            "sampler).", label="Scheduler", choices=SCHEDULERS)
    steps: int = _field(25, "Denoising steps (20-30 is typical).", label="Steps", minimum=1, maximum=150, step=1,
                        public_maximum=50)
    guidance: float = _field(7.5, "Classifier-free guidance scale (5-9 is typical).", label="Guidance scale",
                             minimum=0.0, maximum=MAX_GUIDANCE, step=0.5)
    width: int = _field(0, "Image width in pixels (0 = the model's native size).", label="Width (0 = native)",
                        minimum=0, maximum=2048, step=8, multiple_of=8, public_maximum=1024)
    height: int = _field(0, "Image height in pixels (0 = the model's native size).", label="Height (0 = native)",
                         minimum=0, maximum=2048, step=8, multiple_of=8, public_maximum=1024)
    seed: int = _field(0, "Seed; image i uses seed + i, so any one image can be made again alone.",
                       label="Seed (image i uses seed + i)", minimum=0, maximum=MAX_SEED)
    num_images: int = _field(1, "Images per prompt.", label="Images", minimum=1, maximum=MAX_IMAGES, step=1,
                            public_maximum=MAX_PUBLIC_IMAGES)
    fuse_lora: bool = _field(False, "Merge LoRAs into the weights: faster, but each scale change re-merges.",
                             label="Fuse LoRA (faster)")
    # Editing (generate/editing.py): inpainting a picture, or steering by a ControlNet's condition picture.
    init_image: str = _field("", "Inpainting: the picture to edit (with --mask).", label="Picture to edit")
    mask: str = _field("", "Inpainting: the mask picture, white where the picture is repainted.", label="Mask")
    strength: float = _field(1.0, "Inpainting: how much of the masked region is redrawn (1 = from scratch; lower "
                             "keeps more of the picture).", label="Strength", minimum=0.01, maximum=1.0, step=0.01)
    keep_unmasked: bool = _field(True, "Inpainting: paste the original pixels back outside the mask (what was not "
                                 "masked stays exactly as it was).", label="Keep the unmasked pixels")
    control_image: str = _field("", "ControlNet: the condition picture (edges, depth ...) the image follows.",
                                label="Control picture")
    conditioning_scale: float = _field(1.0, "ControlNet: how strongly the image follows the control picture "
                                       "(0 = not at all).", label="Conditioning scale", minimum=0.0, maximum=2.0,
                                       step=0.05)

    def validate(self, *, public: bool = False) -> GenerationOptions:
        """Check every field against its metadata (`public`: also the public app's limits); one ConfigError
        naming every bad field, each with its message."""
        problems: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta["choices"] and value not in meta["choices"]:
                problems[f.name] = f"{value!r} is not one of {', '.join(meta['choices'])}."
            elif meta["multiple_of"] and value and (value < meta["multiple_of"] or value % meta["multiple_of"]):
                problems[f.name] = f"Must be a multiple of {meta['multiple_of']} (e.g. 512), or 0 for the model's size."
            elif meta["minimum"] is not None:
                maximum = meta["maximum"] if meta["maximum"] is not None else float("inf")
                message = bound_message(value, meta["minimum"], maximum, meta["public_maximum"] if public else None)
                if message:
                    problems[f.name] = f"{message} {meta['help']}"
        if problems:
            raise ConfigError(problems)
        return self

    def replace(self, **changes: Any) -> GenerationOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def option_fields() -> list[dataclasses.Field]:
    """GenerationOptions' fields with their metadata, for the CLI and the app."""
    return list(dataclasses.fields(GenerationOptions))
