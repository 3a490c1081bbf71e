"""Editing modes of the generation engine: inpainting (a picture, a mask, a strength) and ControlNet (a condition
picture, a conditioning scale). Which diffusers pipeline runs them is the model family's answer
(`Family.pipeline_class("inpaint" | "control")`); the pipeline is derived from the loaded one with `from_pipe`, so
it shares its weights and the LoRAs / embeddings applied to them.

Masks are white where the picture is repainted. Inpainting UNets (9 channels) repaint the masked region while
looking at the rest, but redraw the rest through the VAE too, so by default the original pixels are pasted back
outside the mask (as AUTOMATIC1111 and diffusers' `apply_overlay` do): what was not masked stays exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdtune_ui.errors import SdtuneError

INPAINT, CONTROL, TEXT = "inpaint", "control", ""


@dataclass
class EditPictures:
    """The pictures of an edit, as pictures (the app's painted mask) rather than the options' file paths."""

    image: Image.Image | None = None     # the picture to inpaint
    mask: Image.Image | None = None      # white = repaint
    control: Image.Image | None = None   # the ControlNet's condition picture


def _open(path: str, what: str) -> Image.Image:
    try:
        with Image.open(Path(path).expanduser()) as picture:
            picture.load()
            return picture.copy()
    except OSError as err:
        raise SdtuneError(f"Cannot read the {what} {path}: {err}") from err


def pictures_from(options: Any, given: EditPictures | None = None) -> EditPictures:
    """The edit's pictures: those given, else read from the options' paths."""
    given = given or EditPictures()

    def pick(picture: Image.Image | None, path: str, what: str) -> Image.Image | None:
        return picture if picture is not None else (_open(path, what) if path else None)

    return EditPictures(pick(given.image, options.init_image, "picture"), pick(given.mask, options.mask, "mask"),
                        pick(given.control, options.control_image, "control picture"))


def mode_of(pictures: EditPictures, *, inpainting_model: bool, has_controlnet: bool) -> str:
    """inpaint, controlnet or text-to-image; raises with what is missing for a half-given edit."""
    if pictures.control is not None or has_controlnet:
        if pictures.control is None:
            raise SdtuneError("A ControlNet needs a control picture (--control-image, or the tab's control picture).")
        if not has_controlnet:
            raise SdtuneError("A control picture needs a ControlNet: pick a ControlNet run, or give --controlnet.")
        if pictures.image is not None:
            raise SdtuneError("ControlNet and inpainting at once is not offered yet: give a control picture or a "
                              "picture with a mask.")
        return CONTROL
    if pictures.image is not None or pictures.mask is not None:
        if pictures.image is None or pictures.mask is None:
            raise SdtuneError("Inpainting needs both a picture and a mask (white = repaint): --init-image and --mask.")
        return INPAINT
    return INPAINT if inpainting_model else TEXT


def binary_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A mask at `size`, black and white (a painted layer's transparency counts as black)."""
    picture = mask
    if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        grey = np.asarray(rgba.convert("L"), np.float32) * (np.asarray(rgba)[..., 3] / 255.0)
    else:
        grey = np.asarray(picture.convert("L"), np.float32)
    white = Image.fromarray(((grey >= 127.5) * 255).astype(np.uint8), "L")
    return white.resize(size, Image.Resampling.NEAREST) if white.size != size else white


def edit_size(options: Any, pictures: EditPictures, native: int) -> tuple[int, int]:
    """(width, height): the options' size, else the picture's (multiples of 8), else the model's native size."""
    source = pictures.image or pictures.control
    width = options.width or (source.width // 8 * 8 if source else native)
    height = options.height or (source.height // 8 * 8 if source else native)
    return max(8, width), max(8, height)


def editing_pipeline(pipe: Any, family: Any, mode: str, controlnet: Any = None) -> Any:
    """The pipeline for `mode`, sharing `pipe`'s modules (and the adapters applied to them)."""
    if mode == TEXT:
        return pipe
    pipeline_class = family.pipeline_class(mode)
    if isinstance(pipe, pipeline_class) and mode == INPAINT:
        return pipe
    if mode == CONTROL:
        derived = pipeline_class.from_pipe(pipe, controlnet=controlnet)
    else:
        derived = pipeline_class.from_pipe(pipe)
    derived.set_progress_bar_config(disable=True)
    return derived


def edit_arguments(mode: str, options: Any, pictures: EditPictures, size: tuple[int, int]) -> dict[str, Any]:
    """The pipeline call's extra arguments for an edit."""
    if mode == CONTROL:
        return dict(image=pictures.control.convert("RGB").resize(size), controlnet_conditioning_scale=float(
            options.conditioning_scale))
    if mode == INPAINT:
        image, mask = pictures.image, pictures.mask
        if image is None:   # an inpainting model asked for a plain picture: all of a blank canvas is repainted
            image, mask = Image.new("RGB", size, (127, 127, 127)), Image.new("L", size, 255)
        return dict(image=image.convert("RGB").resize(size), mask_image=binary_mask(mask, size),
                    strength=float(options.strength))
    return {}


def paste_outside_mask(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """The generated picture inside the mask, the original's pixels outside it."""
    size = generated.size
    keep = np.asarray(binary_mask(mask, size)) < 128
    result = np.asarray(generated.convert("RGB")).copy()
    result[keep] = np.asarray(original.convert("RGB").resize(size))[keep]
    return Image.fromarray(result, "RGB")
