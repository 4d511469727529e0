"""Spatial-transformer pair: ``extract`` a box from an image, ``place`` a glimpse into a box.

Both are batched and differentiable in the image, the glimpse and the box coordinates. The box's
outer edges correspond to the glimpse's outer edges (``align_corners=False`` on both sides), so
``extract(place(g, box), box)`` returns ``g`` up to resampling error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from wherewhat.geometry.coords import boxes_pixel_to_normalized

__all__ = ["extract_theta", "place_theta", "extract", "place", "box_coverage"]


def extract_theta(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``affine_grid`` thetas ``(N, 2, 3)``: glimpse coordinates -> image coordinates of ``boxes``."""
    x0, y0, x1, y1 = boxes_pixel_to_normalized(boxes, image_size).unbind(-1)
    zeros = torch.zeros_like(x0)
    row_x = torch.stack([(x1 - x0) / 2, zeros, (x1 + x0) / 2], dim=-1)
    row_y = torch.stack([zeros, (y1 - y0) / 2, (y1 + y0) / 2], dim=-1)
    return torch.stack([row_x, row_y], dim=-2)


def place_theta(boxes: Tensor, canvas_size: tuple[int, int]) -> Tensor:
    """``affine_grid`` thetas ``(N, 2, 3)``: canvas coordinates -> glimpse coordinates."""
    x0, y0, x1, y1 = boxes_pixel_to_normalized(boxes, canvas_size).unbind(-1)
    zeros = torch.zeros_like(x0)
    sx, sy = 2 / (x1 - x0), 2 / (y1 - y0)
    row_x = torch.stack([sx, zeros, -(x1 + x0) / (x1 - x0)], dim=-1)
    row_y = torch.stack([zeros, sy, -(y1 + y0) / (y1 - y0)], dim=-1)
    return torch.stack([row_x, row_y], dim=-2)


def extract(
    image: Tensor,
    boxes: Tensor,
    size: tuple[int, int],
    *,
    batch_index: Tensor | None = None,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> Tensor:
    """Crop-and-resize ``boxes`` out of ``image``.

    Args:
        image: ``(B, C, H, W)``.
        boxes: ``(N, 4)`` XYXY pixels. Without ``batch_index`` N must equal B (one box per image).
        size: glimpse ``(h, w)``.
        batch_index: optional ``(N,)`` long, the image each box comes from.
    Returns:
        ``(N, C, h, w)``.
    """
    if batch_index is not None:
        image = image[batch_index]
    if image.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"extract: {boxes.shape[0]} boxes for {image.shape[0]} images; pass batch_index"
        )
    theta = extract_theta(boxes.to(image.dtype), image.shape[-2:])
    grid = F.affine_grid(theta, [boxes.shape[0], image.shape[1], *size], align_corners=False)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def box_coverage(boxes: Tensor, canvas_size: tuple[int, int]) -> Tensor:
    """Fraction of each canvas pixel covered by each box: ``(N, 1, H, W)`` in [0, 1].

    Differentiable in the box edges, so ``place`` gives anti-aliased, trainable box borders.
    """
    height, width = canvas_size
    x0, y0, x1, y1 = (v[:, None] for v in boxes.unbind(-1))
    cols = torch.arange(width, dtype=boxes.dtype, device=boxes.device)[None]
    rows = torch.arange(height, dtype=boxes.dtype, device=boxes.device)[None]
    cover_x = (torch.minimum(cols + 1, x1) - torch.maximum(cols, x0)).clamp(0, 1)
    cover_y = (torch.minimum(rows + 1, y1) - torch.maximum(rows, y0)).clamp(0, 1)
    return (cover_y[:, :, None] * cover_x[:, None, :]).unsqueeze(1)


def place(
    glimpse: Tensor,
    boxes: Tensor,
    canvas_size: tuple[int, int],
    *,
    mode: str = "bilinear",
) -> Tensor:
    """Render each glimpse into its box on an empty canvas (zeros outside the box).

    Inside the box the glimpse is resampled with border padding (so its edge pixels keep their
    value instead of fading into the zero background); the result is weighted by the fraction
    of each canvas pixel that the box covers.

    Args:
        glimpse: ``(N, C, h, w)``.
        boxes: ``(N, 4)`` XYXY pixels in the canvas frame.
        canvas_size: ``(H, W)``.
    Returns:
        ``(N, C, H, W)``: one canvas per glimpse; merging them is the caller's choice.
    """
    if glimpse.shape[0] != boxes.shape[0]:
        raise ValueError(f"place: {glimpse.shape[0]} glimpses but {boxes.shape[0]} boxes")
    boxes = boxes.to(glimpse.dtype)
    theta = place_theta(boxes, canvas_size)
    grid = F.affine_grid(
        theta, [glimpse.shape[0], glimpse.shape[1], *canvas_size], align_corners=False
    )
    canvas = F.grid_sample(glimpse, grid, mode=mode, padding_mode="border", align_corners=False)
    return canvas * box_coverage(boxes, canvas_size)
