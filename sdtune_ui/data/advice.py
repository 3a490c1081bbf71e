"""How many images and steps a training method wants, and roughly how long that takes.

Each method's class holds its numbers (`Method.advice`, `recommended_steps`, `advice_notes`: starting points
from the method papers, diffusers' example scripts and the DreamBooth guide); this module turns them into a
recommendation for a dataset. Advice shown to the user, never enforced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sdtune_ui.methods import ADAPTER, UNET_WEIGHTS, adapters, method_named

SUBJECTS = ("object", "face", "style")


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
    adapter: str | None = None,
) -> Recommendation:
    """Step count, epochs and a time estimate for `method` on `image_count` images (with the adapter type's hints
    for methods that train adapters)."""
    method_class = method_named(method)
    if subject not in SUBJECTS:
        raise ValueError(f"unknown subject {subject!r}; choose one of {', '.join(SUBJECTS)}")
    batch_size = max(1, batch_size)
    n = max(image_count, 1)
    steps, low, high = method_class.recommended_steps(image_count, subject, batch_size)
    notes = method_class.advice_notes(subject, with_prior_preservation)
    if adapter and method_class.has(ADAPTER):
        notes = [*notes, *adapters.adapter_named(adapter).advice_notes]
    seconds_assumed = seconds_per_step is None
    if seconds_per_step is None:
        # Step time grows ~ with pixels per step; prior preservation doubles the batch.
        scale = (resolution / 512) ** 2 * batch_size
        if with_prior_preservation and method_class.has(UNET_WEIGHTS):
            scale *= 1.8
        # Below ~0.05 s a step is bound by host overhead, not pixels (tiny demo resolutions).
        seconds_per_step = max(0.05, method_class.advice.seconds_per_step_512 * scale)
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
