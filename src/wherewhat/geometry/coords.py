"""Coordinate conventions: the one place that converts between frames.

Image frame: continuous, origin at the top-left corner of the top-left pixel, x right, y down;
pixel (row i, col j) has its centre at (j + 0.5, i + 0.5). Points are ``(..., 2)`` in (x, y).
Boxes are XYXY in that frame. Normalised coordinates follow ``grid_sample`` with
``align_corners=False``: u = 2x / W - 1, so -1 and +1 are the image's outer edges.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert

__all__ = [
    "pixel_to_normalized",
    "normalized_to_pixel",
    "boxes_pixel_to_normalized",
    "boxes_normalized_to_pixel",
    "boxes_xyxy_to_cxcywh",
    "boxes_cxcywh_to_xyxy",
    "pixel_centers",
    "points_to_box",
    "clip_points",
]


def _scale_xy(points: Tensor, size: tuple[int, int] | Tensor, *, inverse: bool) -> Tensor:
    """Multiply x by 2/W and y by 2/H (or by W/2 and H/2 when ``inverse``).

    Python-number sizes stay Python numbers, so tracing for ONNX export sees no tensor constants.
    """
    if isinstance(size, Tensor):
        size = size.to(points)
        wh = torch.stack([size[..., 1], size[..., 0]], dim=-1)
        return points * (wh / 2.0) if inverse else points * (2.0 / wh)
    height, width = size
    sx, sy = (width / 2.0, height / 2.0) if inverse else (2.0 / width, 2.0 / height)
    return torch.stack([points[..., 0] * sx, points[..., 1] * sy], dim=-1)


def pixel_to_normalized(points: Tensor, size: tuple[int, int] | Tensor) -> Tensor:
    """Pixel-frame points ``(..., 2)`` -> ``grid_sample`` coordinates for an image of ``size=(H, W)``."""
    return _scale_xy(points, size, inverse=False) - 1.0


def normalized_to_pixel(points: Tensor, size: tuple[int, int] | Tensor) -> Tensor:
    """Inverse of :func:`pixel_to_normalized`."""
    return _scale_xy(points + 1.0, size, inverse=True)


def boxes_pixel_to_normalized(boxes: Tensor, size: tuple[int, int] | Tensor) -> Tensor:
    """XYXY pixel boxes ``(..., 4)`` -> XYXY in normalised coordinates."""
    corners = boxes.reshape(*boxes.shape[:-1], 2, 2)
    if isinstance(size, Tensor):
        size = size.unsqueeze(-2)
    return pixel_to_normalized(corners, size).reshape(boxes.shape)


def boxes_normalized_to_pixel(boxes: Tensor, size: tuple[int, int] | Tensor) -> Tensor:
    """Inverse of :func:`boxes_pixel_to_normalized`."""
    corners = boxes.reshape(*boxes.shape[:-1], 2, 2)
    if isinstance(size, Tensor):
        size = size.unsqueeze(-2)
    return normalized_to_pixel(corners, size).reshape(boxes.shape)


def boxes_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` XYXY -> centre-size, via torchvision (flattening leading dims)."""
    return box_convert(boxes.reshape(-1, 4), "xyxy", "cxcywh").reshape(boxes.shape)


def boxes_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` centre-size -> XYXY, via torchvision (flattening leading dims)."""
    return box_convert(boxes.reshape(-1, 4), "cxcywh", "xyxy").reshape(boxes.shape)


def pixel_centers(
    size: tuple[int, int], *, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """Pixel-centre coordinates of an ``(H, W)`` image as ``(H, W, 2)`` (x, y) points."""
    height, width = size
    ys = torch.arange(height, dtype=dtype, device=device) + 0.5
    xs = torch.arange(width, dtype=dtype, device=device) + 0.5
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def points_to_box(points: Tensor) -> Tensor:
    """Tight XYXY box ``(..., 4)`` around points ``(..., N, 2)``."""
    return torch.cat([points.amin(dim=-2), points.amax(dim=-2)], dim=-1)


def clip_points(points: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp ``(..., 2)`` points into the ``(H, W)`` image's extent ``[0, W] x [0, H]``."""
    height, width = size
    return torch.stack([points[..., 0].clamp(0, width), points[..., 1].clamp(0, height)], dim=-1)
