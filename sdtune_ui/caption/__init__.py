"""Automatic captioning: BLIP, BLIP-2, Florence-2, GIT and the offline tiny-blip behind one interface."""

from sdtune_ui.caption.captioners import (
    CAPTIONERS,
    FLORENCE_TASKS,
    Captioner,
    CaptionerSpec,
    get_captioner,
    unload_captioners,
)
from sdtune_ui.caption.folder import CaptionReport, caption_folder

__all__ = [
    "CAPTIONERS",
    "FLORENCE_TASKS",
    "CaptionReport",
    "Captioner",
    "CaptionerSpec",
    "caption_folder",
    "get_captioner",
    "unload_captioners",
]
