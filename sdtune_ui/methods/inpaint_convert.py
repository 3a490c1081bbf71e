"""Convert a text-to-image model into an inpainting one: five zero-initialised input channels are added to the
UNet's first layer (the mask and the masked picture's latents), then every UNet weight trains on synthetic masks,
as RunwayML made SD 1.5 inpainting. Zero weights mean the converted model starts out drawing exactly what the
text-to-image model drew; training teaches it to read the new channels. The result is an inpainting pipeline
folder (`StableDiffusionInpaintPipeline` / `StableDiffusionXLInpaintPipeline`)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from sdtune_ui.errors import SdtuneError
from sdtune_ui.families import ModelParts
from sdtune_ui.methods.base import FULL_WEIGHTS, UNET_WEIGHTS, StepAdvice, register
from sdtune_ui.methods.full import FullFineTune


def add_input_channels(unet: Any, extra: int) -> None:
    """Widen the UNet's first convolution by `extra` input channels with zero weights (in place), and record the
    new width in its config so pipelines and `save_pretrained` see it."""
    old = unet.conv_in
    new = torch.nn.Conv2d(old.in_channels + extra, old.out_channels, old.kernel_size, old.stride, old.padding,
                          device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels + extra)


@register
class InpaintConvert(FullFineTune):
    name = "inpaint_convert"
    label = "Convert to inpainting"
    summary = "inpainting model converted from a text-to-image model"
    traits = frozenset({UNET_WEIGHTS, FULL_WEIGHTS})
    # RunwayML trained 440k steps at batch 2048; a first usable conversion wants thousands of steps on
    # thousands of pictures. Learning rate as for full fine-tuning; a quarter of the masks cover everything.
    preset: ClassVar[dict] = dict(learning_rate=1e-5, max_train_steps=5000, train_batch_size=4,
                                  gradient_checkpointing=True, use_ema=False, whole_mask_share=0.25)
    # The CPU demo (not measured for learning): a full fine-tune's rate on demo-sd1, no class images.
    demo_preset: ClassVar[dict] = dict(learning_rate=5e-5, with_prior_preservation=False, train_text_encoder=False)
    advice = StepAdvice(500, 10**9, "Converting to inpainting wants thousands of varied pictures (any captioned "
                        "photos: the masks are made up)", 0, 5000, 100000, 0.55)
    card_tags = ("inpainting", "fine-tuned")

    @classmethod
    def output_family(cls, family: Any) -> Any:
        return family.inpainting_variant()

    @classmethod
    def recommended_steps(cls, image_count: int, subject: str, batch_size: int) -> tuple[int, int, int]:
        # About five passes over the data, at least the fixed minimum.
        advice = cls.advice
        steps = math.ceil(max(image_count, 1) * 5 / max(1, batch_size))
        return int(min(max(steps, advice.steps_min), advice.steps_max)), advice.steps_min, advice.steps_max

    def prepare(self, parts: ModelParts) -> None:
        from sdtune_ui.families.inpaint import INPAINT_EXTRA_CHANNELS

        if parts.family.inpainting:
            raise SdtuneError(f"{self.config.model} is already an inpainting model: fine-tune it with LoRA, "
                              "DreamBooth or a full fine-tune instead.")
        try:
            parts.family.inpainting_variant()
        except ValueError:
            raise SdtuneError(f"{parts.family.label} has no inpainting variant here: convert an SD1.x/2.x or SDXL "
                              "model.") from None
        add_input_channels(parts.unet, INPAINT_EXTRA_CHANNELS)
        parts.family = parts.family.as_inpainting()   # the loop now feeds the mask and the masked latents
        super().prepare(parts)

    def output_pipeline(self, pipe: Any, parts: ModelParts) -> Any:
        return parts.family.pipeline_class().from_pipe(pipe)
