"""Inpainting variants of the text-to-image families: the same architecture, but the UNet's first layer reads
nine channels, the noisy latents plus the inpainting mask (one channel, at latent size) and the latents of the
picture with the masked region blanked out (four). RunwayML made SD 1.5 inpainting this way: five
zero-initialised input channels added to a text-to-image UNet, then trained on synthetic masks.

One class (`Inpainting`) holds what the variant changes; each family gets its registered variant by mixing it in,
so everything else (conditioning, prediction target, key layouts, memory) is the base family's.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sdtune_ui.families.base import Family, register
from sdtune_ui.families.sd1 import SD1
from sdtune_ui.families.sd2 import SD2
from sdtune_ui.families.sdxl import SDXL

INPAINT_EXTRA_CHANNELS = 5   # the mask (1) and the masked picture's latents (4), after the noisy latents


class Inpainting(Family):
    """Mixed in before a text-to-image family: `class SD1Inpaint(Inpainting, SD1)`."""

    inpainting: ClassVar[bool] = True
    demo_models: ClassVar[tuple[str, ...]] = ()   # a variant's own, never its base family's

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        base = cls.base_family()
        # Tried before its base family (which would also claim a 9-channel UNet), after more specific families.
        cls.priority = base.priority + 5
        cls.pipeline_class_name = base.inpaint_pipeline_class_name
        cls.card_tags = (*base.card_tags, "inpainting")

    @classmethod
    def base_family(cls) -> type[Family]:
        return next(k for k in cls.__mro__[1:] if issubclass(k, Family) and not issubclass(k, Inpainting)
                    and k is not Family)

    @classmethod
    def matches_unet_config(cls, unet_config: dict) -> bool:
        base = cls.base_family()
        return (int(unet_config.get("in_channels", 4)) == 4 + INPAINT_EXTRA_CHANNELS
                and base.matches_unet_config(unet_config))

    @classmethod
    def matches_checkpoint_keys(cls, keys: set[str]) -> bool:
        # Key names are the same as the base family's; only the first layer's shape differs. Single files load as
        # the base family and diffusers reads the 9-channel layer from the weights (detect_family then sees it).
        return False

    def unet_sample(self, noisy: torch.Tensor, mask: torch.Tensor | None,
                    masked_latents: torch.Tensor | None) -> torch.Tensor:
        if mask is None or masked_latents is None:
            raise ValueError("an inpainting UNet needs the mask and the masked picture's latents")
        # diffusers' inpainting pipelines concatenate in this order: latents, mask, masked-image latents.
        return torch.cat([noisy, mask.to(noisy.dtype), masked_latents.to(noisy.dtype)], dim=1)


@register
class SD1Inpaint(Inpainting, SD1):
    name = "sd1-inpaint"
    demo_models = ("tiny-sd1-inpaint",)
    label = "Stable Diffusion 1.x inpainting"


@register
class SD2Inpaint(Inpainting, SD2):
    name = "sd2-inpaint"
    label = "Stable Diffusion 2.x inpainting"


@register
class SDXLInpaint(Inpainting, SDXL):
    name = "sdxl-inpaint"
    demo_models = ("tiny-sdxl-inpaint",)
    label = "Stable Diffusion XL inpainting"
