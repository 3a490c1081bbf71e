"""How many images and steps each training method wants, and roughly how long that takes.

The numbers are starting points gathered from the method papers, diffusers' example scripts and the
DreamBooth training guide (objects ~200-400 steps, faces ~800-1200 with prior preservation). They are
advice shown to the user, never enforced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SUBJECTS = ("object", "face", "style")

# Seconds per optimizer step at 512 px, batch 1, on a 24 GB consumer GPU (RTX 3090/4090 class), for an
# SD 1.x-sized UNet. An assumption for the estimate, not a measurement: pass `seconds_per_step` from a
# previous run to replace it.
_SECONDS_PER_STEP_512 = {"full": 0.55, "dreambooth": 0.55, "lora": 0.3, "textual_inversion": 0.25, "pivotal": 0.3}


@dataclass
class MethodAdvice:
    images_low: int  # below this: warning
    images_high: int  # above this: info (more rarely helps / another method fits better)
    images_text: str
    steps_per_image: int
    steps_min: int
    steps_max: int


ADVICE: dict[str, MethodAdvice] = {
    "dreambooth": MethodAdvice(4, 20, "DreamBooth works best with 4-20 images of one subject", 80, 200, 400),
    "lora": MethodAdvice(5, 200, "LoRA works well from ~10 to a few hundred images", 100, 500, 3000),
    "textual_inversion": MethodAdvice(3, 20, "Textual inversion needs only 3-10 images of the concept", 0, 2000, 3000),
    "pivotal": MethodAdvice(4, 50, "Pivotal tuning works best with 5-30 images of the concept", 100, 800, 2000),
    "full": MethodAdvice(100, 10**9, "A full fine-tune wants hundreds of images or more", 10, 1000, 20000),
}
# Faces need many more DreamBooth steps (and prior preservation) than objects; styles sit in between.
_DREAMBOOTH_SUBJECT_STEPS = {"object": (80, 200, 400), "face": (150, 800, 1200), "style": (100, 400, 1000)}


@dataclass
class Recommendation:
    method: str
    subject: str
    image_count: int
    steps: int
    steps_range: tuple[int, int]
    batch_size: int
    epochs: float  # passes over the dataset at that step count
    seconds_per_step: float
    seconds_per_step_assumed: bool
    estimated_seconds: float
    notes: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        basis = "assumed for a 24 GB GPU" if self.seconds_per_step_assumed else "as given"
        lines = [
            f"Recommended for {self.method} ({self.subject}, {self.image_count} images): ~{self.steps} steps "
            f"(range {self.steps_range[0]}-{self.steps_range[1]}), batch {self.batch_size}, "
            f"~{self.epochs:.1f} epochs; about {format_duration(self.estimated_seconds)} at "
            f"{self.seconds_per_step:.3g} s/step ({basis})."
        ]
        lines += [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """45 s, 12 min, 1.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def recommend(
    method: str,
    image_count: int,
    *,
    subject: str = "object",
    resolution: int = 512,
    batch_size: int = 1,
    seconds_per_step: float | None = None,
    with_prior_preservation: bool | None = None,
) -> Recommendation:
    """Step count, epochs and a time estimate for `method` on `image_count` images."""
    if method not in ADVICE:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(ADVICE)}")
    if subject not in SUBJECTS:
        raise ValueError(f"unknown subject {subject!r}; choose one of {', '.join(SUBJECTS)}")
    advice = ADVICE[method]
    per_image, low, high = advice.steps_per_image, advice.steps_min, advice.steps_max
    if method == "dreambooth":
        per_image, low, high = _DREAMBOOTH_SUBJECT_STEPS[subject]
    batch_size = max(1, batch_size)
    n = max(image_count, 1)
    if method == "full":
        steps = math.ceil(n * per_image / batch_size)  # ~10 epochs
    elif per_image:
        steps = n * per_image
    else:
        steps = low
    steps = int(min(max(steps, low), high))
    notes: list[str] = []
    if method == "dreambooth":
        notes.append("learning rate ~2e-6 to 5e-6; stop early if samples start to look like the training photos")
        if subject == "face" and not with_prior_preservation:
            notes.append("for faces, turn on prior preservation (class images) so other people don't all "
                         "turn into your subject")
    if method in ("lora", "pivotal") and subject == "face":
        notes.append("faces usually need the upper end of the step range")
    if method == "textual_inversion":
        notes.append("textual inversion learns one new word; it cannot teach the model new details")
    seconds_assumed = seconds_per_step is None
    if seconds_per_step is None:
        # Step time grows ~ with pixels per step; prior preservation doubles the batch.
        scale = (resolution / 512) ** 2 * batch_size
        if method == "dreambooth" and with_prior_preservation:
            scale *= 1.8
        # Below ~0.05 s a step is bound by host overhead, not pixels (tiny demo resolutions).
        seconds_per_step = max(0.05, _SECONDS_PER_STEP_512[method] * scale)
    return Recommendation(
        method=method,
        subject=subject,
        image_count=image_count,
        steps=steps,
        steps_range=(low, high),
        batch_size=batch_size,
        epochs=steps * batch_size / n,
        seconds_per_step=seconds_per_step,
        seconds_per_step_assumed=seconds_assumed,
        estimated_seconds=steps * seconds_per_step,
        notes=notes,
    )
