"""Whatever a user calls an image -> an ``(H, W, 3)`` uint8 RGB array."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from wherewhat.errors import DataFormatError

__all__ = ["rgb_array", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def rgb_array(image: Any) -> np.ndarray:
    """A path, PIL image, ``(H, W[, 3|4])`` uint8 array, or ``(3, H, W)`` tensor (uint8, or float
    in [0, 1]) as ``(H, W, 3)`` uint8 RGB."""
    if isinstance(image, str | Path):
        path = Path(image)
        try:
            with Image.open(path) as opened:
                return np.array(opened.convert("RGB"))
        except (UnidentifiedImageError, OSError) as error:
            raise DataFormatError(path, f"cannot read the image: {error}") from None
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"expected a (3, H, W) image tensor, got {tuple(image.shape)}")
        if image.dtype != torch.uint8:
            image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
        image = image.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB array, got {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])
