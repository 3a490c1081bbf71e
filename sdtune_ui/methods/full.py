"""Full fine-tuning and DreamBooth: every UNet weight (and optionally the text encoders') trains; the result
is a whole diffusers pipeline folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from sdtune_ui.families import ModelParts
from sdtune_ui.methods import outputs
from sdtune_ui.methods.base import FULL_WEIGHTS, INSTANCE_PROMPT, UNET_WEIGHTS, Method, StepAdvice, register

if TYPE_CHECKING:
    from sdtune_ui.config import TrainConfig


@register
class FullFineTune(Method):
    name = "full"
    label = "Full fine-tune"
    summary = "full fine-tune"
    traits = frozenset({UNET_WEIGHTS, FULL_WEIGHTS})
    preset: ClassVar[dict] = dict(learning_rate=1e-5, max_train_steps=1000, use_ema=True, ema_decay=0.9999,
                                  train_batch_size=1, gradient_checkpointing=True)
    # Measured on demo-sd1 (tests/test_learning.py): 150 steps at 5e-5 draw the subject red, at half the base's
    # distance to the training pictures; "a photo of a robot" draws it too (no class images).
    demo_preset: ClassVar[dict] = dict(learning_rate=5e-5, max_train_steps=150, train_text_encoder=False,
                                       with_prior_preservation=False)
    advice = StepAdvice(100, 10**9, "A full fine-tune wants hundreds of images or more", 10, 1000, 20000, 0.55)
    card_tags = ("fine-tuned",)
    outputs = (outputs.PIPELINE,)
    shardable = True

    @classmethod
    def recommended_steps(cls, image_count: int, subject: str, batch_size: int) -> tuple[int, int, int]:
        # About ten passes over the data (steps_per_image = epochs here), whatever the batch.
        advice = cls.advice
        steps = math.ceil(max(image_count, 1) * advice.steps_per_image / max(1, batch_size))
        return int(min(max(steps, advice.steps_min), advice.steps_max)), advice.steps_min, advice.steps_max

    def full_precision_models(self, parts: ModelParts) -> list[torch.nn.Module]:
        return self.trained_models(parts)

    def trains_text_encoders(self) -> bool:
        return self.config.train_text_encoder

    def prepare(self, parts: ModelParts) -> None:
        super().prepare(parts)
        for model in self.trained_models(parts):
            model.requires_grad_(True)

    def output_pipeline(self, pipe: Any, parts: ModelParts) -> Any:
        """The pipeline the trained modules are saved in: the base model's own (a conversion changes its class)."""
        return pipe

    def save_output(self, parts: ModelParts, out_dir: Path) -> list[Path]:
        from sdtune_ui.models.loading import load_pipeline

        # Frozen parts may sit in half precision on the GPU; reload them untouched from the base model
        # and plug in the trained full-precision modules, so nothing is saved rounded.
        pipe = self.output_pipeline(load_pipeline(self.config.model, allow_pickle=self.config.allow_pickle), parts)
        setattr(pipe, parts.family.denoiser, parts.unet.to("cpu", torch.float32))
        if self.trains_text_encoders():
            for name, encoder in zip(parts.tunable_text_encoder_names, parts.tunable_text_encoders):
                setattr(pipe, name, encoder.to("cpu", torch.float32))
        pipe.save_pretrained(out_dir, safe_serialization=True)
        return [out_dir / outputs.PIPELINE_MARKER]


# Faces need many more DreamBooth steps (and prior preservation) than objects; styles sit in between.
_SUBJECT_STEPS = {"object": (80, 200, 400), "face": (150, 800, 1200), "style": (100, 400, 1000)}


@register
class DreamBooth(FullFineTune):
    """A full fine-tune on one instance prompt with a rare token, usually with prior preservation."""

    name = "dreambooth"
    label = "DreamBooth"
    summary = "DreamBooth fine-tune"
    traits = frozenset({UNET_WEIGHTS, FULL_WEIGHTS, INSTANCE_PROMPT})
    preset: ClassVar[dict] = dict(learning_rate=5e-6, max_train_steps=400, with_prior_preservation=True,
                                  num_class_images=100, prior_loss_weight=1.0)
    # Measured on demo-sd1: with prior preservation the class kept its robots but the subject was not learned in
    # 300 steps (demo-sd1 reads "sks robot" almost as "a robot"); without it, 150 steps draw the subject (and the
    # class drifts to it). The demo shows the learning; the LoRA demo shows prior preservation.
    demo_preset: ClassVar[dict] = dict(learning_rate=5e-5, max_train_steps=150, with_prior_preservation=False,
                                       instance_prompt="a photo of sks robot")
    advice = StepAdvice(4, 20, "DreamBooth works best with 4-20 images of one subject", 80, 200, 400, 0.55)
    card_tags = ("dreambooth",)

    @classmethod
    def check_settings(cls, config: TrainConfig, errors: dict[str, str]) -> None:
        # With several concepts each naming its own instance prompt, the run's is only a fallback.
        if not config.instance_prompt.strip() and not config.concepts_give("instance_prompt"):
            errors["instance_prompt"] = ("DreamBooth needs an instance prompt with a rare token, "
                                         "e.g. 'a photo of sks dog'.")

    @classmethod
    def recommended_steps(cls, image_count: int, subject: str, batch_size: int) -> tuple[int, int, int]:
        per_image, low, high = _SUBJECT_STEPS[subject]
        return int(min(max(max(image_count, 1) * per_image, low), high)), low, high

    @classmethod
    def advice_notes(cls, subject: str, with_prior_preservation: bool | None) -> list[str]:
        notes = ["learning rate ~2e-6 to 5e-6; stop early if samples start to look like the training photos"]
        if subject == "face" and not with_prior_preservation:
            notes.append("for faces, turn on prior preservation (class images) so other people don't all "
                         "turn into your subject")
        return notes

    @classmethod
    def dataset_warnings(cls, subject: str, with_prior_preservation: bool | None) -> list[tuple[str, str]]:
        if subject == "face" and not with_prior_preservation:
            return [("prior_preservation", "DreamBooth on a face: turn on prior preservation "
                                           "(with_prior_preservation and a class prompt).")]
        return []
