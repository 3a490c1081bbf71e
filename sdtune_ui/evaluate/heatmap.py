"""A labelled heatmap (rows x columns of numbers) drawn with PIL: the sweep's learning rate x steps picture."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Anchor colours of a perceptually ordered map (dark blue -> teal -> yellow), interpolated linearly.
_ANCHORS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
MISSING = (200, 200, 200)
CELL_W, CELL_H, LABEL_W, HEADER_H, FOOTER_H = 112, 56, 150, 64, 40


def colour(fraction: float) -> tuple[int, int, int]:
    """The map's colour at `fraction` in [0, 1] (0 = worst, 1 = best)."""
    fraction = min(1.0, max(0.0, fraction)) * (len(_ANCHORS) - 1)
    low = min(int(fraction), len(_ANCHORS) - 2)
    weight = fraction - low
    a, b = _ANCHORS[low], _ANCHORS[low + 1]
    return tuple(round(x + (y - x) * weight) for x, y in zip(a, b))  # type: ignore[return-value]


def _format(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def heatmap(values: Sequence[Sequence[float | None]], *, row_labels: Sequence[str], col_labels: Sequence[str],
            title: str, higher_is_better: bool = True, notes: Sequence[Sequence[str]] | None = None,
            best: tuple[int, int] | None = None, footer: str = "") -> Any:
    """One PIL image: a cell per value coloured best-bright, its number written in it; None cells grey.

    `notes[r][c]` replaces the number (e.g. "failed"); `best` (row, col) is outlined.
    """
    from PIL import Image, ImageDraw, ImageFont

    rows, cols = len(row_labels), len(col_labels)
    if len(values) != rows or any(len(row) != cols for row in values):
        raise ValueError("one value per row label and column label")
    present = [v for row in values for v in row if v is not None]
    low, high = (min(present), max(present)) if present else (0.0, 1.0)
    span = high - low
    font, small = ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    width = max(LABEL_W + cols * CELL_W, int(font.getlength(title)) + 16, int(small.getlength(footer)) + 16)
    image = Image.new("RGB", (width, HEADER_H + rows * CELL_H + FOOTER_H), "white")
    draw = ImageDraw.Draw(image)
    draw.text((8, 8), title, fill="black", font=font)
    draw.text((8, 30), "brighter = better" + ("" if higher_is_better else " (lower values)"), fill="gray", font=small)
    for c, label in enumerate(col_labels):
        draw.text((LABEL_W + c * CELL_W + 8, HEADER_H - 20), label, fill="black", font=small)
    for r, label in enumerate(row_labels):
        top = HEADER_H + r * CELL_H
        draw.text((8, top + CELL_H // 2 - 8), label, fill="black", font=small)
        for c, value in enumerate(values[r]):
            left = LABEL_W + c * CELL_W
            if value is None:
                fill = MISSING
            else:
                fraction = (value - low) / span if span else 1.0
                fill = colour(fraction if higher_is_better else 1.0 - fraction)
            draw.rectangle((left, top, left + CELL_W - 2, top + CELL_H - 2), fill=fill)
            text = notes[r][c] if notes and notes[r][c] else ("-" if value is None else _format(value))
            ink = "black" if value is None or sum(fill) > 380 else "white"
            draw.text((left + 8, top + CELL_H // 2 - 8), text, fill=ink, font=font)
    if best is not None:
        r, c = best
        left, top = LABEL_W + c * CELL_W, HEADER_H + r * CELL_H
        draw.rectangle((left, top, left + CELL_W - 2, top + CELL_H - 2), outline=(220, 20, 60), width=4)
    if footer:
        draw.text((8, HEADER_H + rows * CELL_H + 10), footer, fill="black", font=small)
    return image
