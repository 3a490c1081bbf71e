"""Labelled image grids: rows x columns of images with their labels, as one picture (PIL only)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdtune_ui.errors import SdtuneError

MIN_CELL = 128          # tiny demo images are upscaled so labels stay readable
MAX_LABEL_LINES = 4
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


@dataclass
class GridLayout:
    cell_width: int
    cell_height: int
    rows: int
    cols: int
    font_size: int

    @property
    def line_height(self) -> int:
        return self.font_size + 4

    @property
    def header_height(self) -> int:
        return MAX_LABEL_LINES * self.line_height + 8

    @property
    def label_width(self) -> int:
        return max(120, self.cell_width // 2)

    @property
    def size(self) -> tuple[int, int]:
        return (self.label_width + self.cols * self.cell_width, self.header_height + self.rows * self.cell_height)


def grid_layout(image_size: tuple[int, int], rows: int, cols: int) -> GridLayout:
    width, height = image_size
    scale = max(1, -(-MIN_CELL // min(width, height)))   # integer upscale, so pixels stay sharp
    cell_w, cell_h = width * scale, height * scale
    return GridLayout(cell_w, cell_h, rows, cols, font_size=max(12, cell_w // 24))


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _wrapped(text: str, width_px: int, font_size: int, max_lines: int = MAX_LABEL_LINES) -> list[str]:
    """Lines of a label that fit the width (a newline in the label starts a new line)."""
    chars = max(4, int(width_px / (font_size * 0.55)))
    lines = [line for part in text.split("\n") for line in textwrap.wrap(part, chars)] or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(1, chars - 1)] + "…"
    return lines


def make_grid(rows: Sequence[Sequence[Any]], *, row_labels: Sequence[str], col_labels: Sequence[str]) -> Any:
    """One image: column labels on top, row labels on the left, every image in its cell."""
    from PIL import Image, ImageDraw

    if not rows or not rows[0]:
        raise SdtuneError("Nothing to put in the grid.")
    cols = max(len(row) for row in rows)
    if len(row_labels) != len(rows) or len(col_labels) != cols:
        raise ValueError("one label per row and per column is needed")
    layout = grid_layout(rows[0][0].size, len(rows), cols)
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(layout.font_size)
    for c, label in enumerate(col_labels):
        x = layout.label_width + c * layout.cell_width + 4
        for n, line in enumerate(_wrapped(label, layout.cell_width - 8, layout.font_size)):
            draw.text((x, 4 + n * layout.line_height), line, fill=TEXT, font=font)
    for r, (row, label) in enumerate(zip(rows, row_labels, strict=True)):
        top = layout.header_height + r * layout.cell_height
        row_lines = max(MAX_LABEL_LINES, (layout.cell_height - 8) // layout.line_height)
        for n, line in enumerate(_wrapped(label, layout.label_width - 8, layout.font_size, row_lines)):
            draw.text((4, top + 4 + n * layout.line_height), line, fill=TEXT, font=font)
        for c, image in enumerate(row):
            cell = image.convert("RGB").resize((layout.cell_width, layout.cell_height), Image.NEAREST)
            canvas.paste(cell, (layout.label_width + c * layout.cell_width, top))
    return canvas
