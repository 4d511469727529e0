"""How an image of any size becomes the model's fixed input, and its boxes with it.

``letterbox`` keeps the aspect ratio: the image is scaled to fit inside the input and centred,
the rest padded. ``stretch`` scales each axis to the input (the aspect ratio changes). Either way
the mapping is ``x' = x * scale_x + offset_x`` (and the same in y), exact for boxes in the
project's frame because the resized image covers ``[offset, offset + scale * size]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from wherewhat.errors import ConfigError

__all__ = ["RESIZE_MODES", "Placement", "placement_of", "place_image"]

RESIZE_MODES = ("letterbox", "stretch")


@dataclass(frozen=True)
class Placement:
    """An original ``(H, W)`` image drawn at ``content_size`` px with its top-left corner at
    ``(offset_x, offset_y)`` of the model input."""

    content_size: tuple[int, int]  # (h, w) of the resized image inside the input
    offset_x: int
    offset_y: int
    scale_x: float
    scale_y: float

    def boxes(self, boxes: np.ndarray) -> np.ndarray:
        """``(n, 4)`` XYXY of the original image -> of the model input."""
        scale = np.array([self.scale_x, self.scale_y] * 2, dtype=np.float32)
        offset = np.array([self.offset_x, self.offset_y] * 2, dtype=np.float32)
        return (boxes.astype(np.float32) * scale + offset).astype(np.float32)

    def original_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`boxes`: model-input XYXY -> original-image XYXY."""
        scale = np.array([self.scale_x, self.scale_y] * 2, dtype=np.float32)
        offset = np.array([self.offset_x, self.offset_y] * 2, dtype=np.float32)
        return ((boxes.astype(np.float32) - offset) / scale).astype(np.float32)


def placement_of(size: tuple[int, int], target: tuple[int, int], mode: str) -> Placement:
    """Where an image of ``size`` (H, W) lands in an input of ``target`` (H, W)."""
    if mode not in RESIZE_MODES:
        raise ConfigError(f"resize={mode!r}: expected one of {RESIZE_MODES}")
    (height, width), (target_h, target_w) = size, target
    if mode == "stretch":
        return Placement((target_h, target_w), 0, 0, target_w / width, target_h / height)
    scale = min(target_w / width, target_h / height)
    new_w = min(target_w, max(1, round(width * scale)))
    new_h = min(target_h, max(1, round(height * scale)))
    # The scales of the pixels actually drawn (rounding makes them differ from ``scale``).
    return Placement(
        (new_h, new_w), (target_w - new_w) // 2, (target_h - new_h) // 2, new_w / width,
        new_h / height,
    )  # fmt: skip


def place_image(
    image: Image.Image, placement: Placement, target: tuple[int, int], pad_value: int
) -> np.ndarray:
    """The image resized and padded into ``(H, W, C)`` uint8 (C from the image's mode)."""
    content_h, content_w = placement.content_size
    # PIL's bilinear filter widens with the scale factor when shrinking, so small objects are
    # averaged rather than aliased.
    resized = np.asarray(image.resize((content_w, content_h), Image.Resampling.BILINEAR))
    if resized.ndim == 2:
        resized = resized[:, :, None]
    canvas = np.full((*target, resized.shape[2]), pad_value, dtype=np.uint8)
    y, x = placement.offset_y, placement.offset_x
    canvas[y : y + content_h, x : x + content_w] = resized
    return canvas
