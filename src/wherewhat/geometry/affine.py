"""Affine maps between image frames (crops, rescales, rotations, flips), kept as 3x3 matrices.

A transform ``M`` of shape ``(..., 3, 3)`` maps pixel-frame points of a *source* image to the
pixel frame of a *destination* image: ``p_dst = M @ [x, y, 1]``. Keeping ``M`` next to a crop is
what lets predictions made on the crop be mapped back to original pixels exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "apply_affine",
    "invert_affine",
    "compose_affine",
    "box_crop_affine",
    "similarity_crop_affine",
    "hflip_affine",
    "normalizing_affine",
    "warp_affine",
]


def apply_affine(points: Tensor, matrix: Tensor) -> Tensor:
    """Map points ``(..., N, 2)`` with ``matrix`` ``(..., 3, 3)`` (broadcast over leading dims)."""
    linear = matrix[..., :2, :2].to(points)
    shift = matrix[..., :2, 2].to(points)
    return points @ linear.transpose(-1, -2) + shift.unsqueeze(-2)


def invert_affine(matrix: Tensor) -> Tensor:
    """Inverse of an affine ``(..., 3, 3)`` matrix (closed form on the 2x2 block)."""
    linear = matrix[..., :2, :2]
    shift = matrix[..., :2, 2:]
    inv_linear = torch.linalg.inv(linear)
    out = torch.zeros_like(matrix)
    out[..., :2, :2] = inv_linear
    out[..., :2, 2:] = -inv_linear @ shift
    out[..., 2, 2] = 1.0
    return out


def compose_affine(*matrices: Tensor) -> Tensor:
    """``compose_affine(A, B, C)`` applies A first, then B, then C (i.e. ``C @ B @ A``)."""
    out = matrices[0]
    for matrix in matrices[1:]:
        out = matrix @ out
    return out


def _eye(batch_shape, dtype, device) -> Tensor:
    return torch.eye(3, dtype=dtype, device=device).expand(*batch_shape, 3, 3).clone()


def box_crop_affine(boxes: Tensor, out_size: tuple[int, int]) -> Tensor:
    """Transforms that map XYXY ``boxes`` ``(..., 4)`` onto an ``out_size=(H, W)`` image.

    The box's outer edges land on the output's outer edges (aspect ratio follows the box).
    Returns ``(..., 3, 3)``.
    """
    boxes = boxes.to(torch.float64) if boxes.dtype == torch.float64 else boxes.float()
    height, width = out_size
    x0, y0, x1, y1 = boxes.unbind(-1)
    sx = width / (x1 - x0)
    sy = height / (y1 - y0)
    matrix = _eye(boxes.shape[:-1], boxes.dtype, boxes.device)
    matrix[..., 0, 0] = sx
    matrix[..., 1, 1] = sy
    matrix[..., 0, 2] = -x0 * sx
    matrix[..., 1, 2] = -y0 * sy
    return matrix


def similarity_crop_affine(
    center: Tensor,
    side: Tensor | float,
    out_size: int,
    angle_deg: Tensor | float = 0.0,
) -> Tensor:
    """Square crop of side ``side`` px centred at ``center`` ``(..., 2)``, rotated by ``angle_deg``.

    The crop's content is rotated counter-clockwise on screen by ``angle_deg`` (y points down, so
    this is a clockwise rotation of the sampling square). Returns ``(..., 3, 3)`` mapping source
    pixels to the ``out_size x out_size`` crop.
    """
    center = center if center.is_floating_point() else center.float()
    side = torch.as_tensor(side, dtype=center.dtype, device=center.device)
    angle = torch.as_tensor(angle_deg, dtype=center.dtype, device=center.device) * (math.pi / 180)
    side, angle = torch.broadcast_tensors(side, angle)
    side = side.expand(center.shape[:-1])
    angle = angle.expand(center.shape[:-1])
    scale = out_size / side
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    matrix = _eye(center.shape[:-1], center.dtype, center.device)
    # Rotate about the centre, scale, then move the centre to the middle of the output.
    matrix[..., 0, 0] = cos
    matrix[..., 0, 1] = sin
    matrix[..., 1, 0] = -sin
    matrix[..., 1, 1] = cos
    half = out_size / 2.0
    cx, cy = center[..., 0], center[..., 1]
    matrix[..., 0, 2] = half - (cos * cx + sin * cy)
    matrix[..., 1, 2] = half - (-sin * cx + cos * cy)
    return matrix


def hflip_affine(width: float, *, dtype=torch.float32, device=None) -> Tensor:
    """Horizontal flip of an image of the given width: x -> W - x. Returns ``(3, 3)``."""
    matrix = torch.eye(3, dtype=dtype, device=device)
    matrix[0, 0] = -1.0
    matrix[0, 2] = width
    return matrix


def normalizing_affine(size: tuple[int, int], *, dtype=torch.float32, device=None) -> Tensor:
    """Pixel frame of an ``(H, W)`` image -> ``grid_sample`` coordinates (``align_corners=False``)."""
    height, width = size
    matrix = torch.eye(3, dtype=dtype, device=device)
    matrix[0, 0] = 2.0 / width
    matrix[1, 1] = 2.0 / height
    matrix[0, 2] = -1.0
    matrix[1, 2] = -1.0
    return matrix


def warp_affine(
    image: Tensor,
    matrix: Tensor,
    out_size: tuple[int, int],
    *,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> Tensor:
    """Resample ``image`` ``(B, C, H, W)`` into the frame defined by ``matrix`` ``(B, 3, 3)``.

    Output pixel p takes the input value at ``M^-1 p``. Returns ``(B, C, out_H, out_W)``.
    """
    batch = image.shape[0]
    matrix = matrix.to(image.dtype).expand(batch, 3, 3)
    to_norm_in = normalizing_affine(image.shape[-2:], dtype=image.dtype, device=image.device)
    to_norm_out = normalizing_affine(out_size, dtype=image.dtype, device=image.device)
    theta = to_norm_in @ invert_affine(matrix) @ invert_affine(to_norm_out)
    grid = F.affine_grid(theta[:, :2], [batch, image.shape[1], *out_size], align_corners=False)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
