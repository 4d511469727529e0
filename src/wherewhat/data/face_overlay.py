"""Landmarks drawn on a photo (PIL only, so that light commands can draw without Lightning)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw
from torch import Tensor

__all__ = ["draw_landmarks"]


def draw_landmarks(
    image: Image.Image, faces: Sequence[tuple[Tensor, Tensor | None]]
) -> Image.Image:
    """A copy of ``image`` with, per face, its box (if given) and landmarks ``(K, 2)`` drawn.

    Points are in our pixel frame, which is PIL's drawing frame (PIL puts pixel (i, j) at
    [j, j + 1) x [i, i + 1) too).
    """
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    radius = max(1.0, min(canvas.size) / 250)
    for points, box in faces:
        if box is not None:
            draw.rectangle(
                [float(v) for v in box], outline=(0, 160, 255), width=max(1, int(radius))
            )
        for x, y in points.tolist():
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 40, 40))
    return canvas
