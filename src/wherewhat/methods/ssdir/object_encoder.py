"""z_what from the object itself: a glimpse encoder, and a label-free invariance term.

The paper's z_what reads the detector's features at the object's pyramid cell (``cells``, see
:class:`~wherewhat.methods.ssdir.parts.WhatEncoder`); SSDIR's design has no glimpse encoder.
Measured on the default scenes, those features hold little digit identity (a linear probe on
them is no better than on an untrained detector's), while a small CNN on a crop of the detected
box is. Two departures from the paper, each an option of :class:`~wherewhat.methods.ssdir.
model.SSDIR` (``what_input``):

- ``glimpse``: :class:`GlimpseWhatEncoder` on a ``crop_size`` crop of the image at the box;
- ``both``: the same plus the detector's features RoI-aligned at the box on its anchor's level.

The invariance term (``invariance_weight``) asks two jittered crops of the same object (centre
moved by up to ``shift`` of the box size, size x e^U(-log_scale, log_scale), rotated by up to
``degrees``) to give the same projected z_what, against the other objects of the batch
(NT-Xent): no label anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from wherewhat.geometry import box_crop_affine, warp_affine

__all__ = ["GlimpseWhatEncoder", "Projector", "jittered_box_affines", "object_crops", "nt_xent"]


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, max(1, channels // 4)), channels)


class GlimpseWhatEncoder(nn.Module):
    """Mean of ``q(z_what | x)`` per object from its crop (and RoI features).

    CNN: 3x3 conv to ``width``, then stride-2 3x3 convs (channels doubling, at most 4 x width)
    down to 4 x 4, GroupNorm + ReLU after each; flatten, Linear to 4D, ReLU, Linear to D. With
    ``roi_channels`` (``both``), each level's features go through a 1x1 conv to ``roi_width``,
    are RoI-aligned to ``roi_size`` x ``roi_size`` at the object's box on its anchor's level,
    and join the flattened crop features before the MLP.

    Shapes: crops ``(N, C, s, s)``, optional roi ``(N, roi_width * roi_size^2)`` -> ``(N, D)``.
    """

    def __init__(
        self,
        in_channels: int,
        z_what_size: int = 64,
        crop_size: int = 32,
        width: int = 32,
        roi_channels: Sequence[int] | None = None,
        roi_size: int = 4,
        roi_width: int = 32,
    ):
        super().__init__()
        steps = round(math.log2(crop_size / 4))
        if crop_size < 8 or 4 * 2**steps != crop_size:
            raise ValueError(f"crop_size={crop_size}: expected 4 x a power of two, >= 8")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1),
            _group_norm(width),
            nn.ReLU(),
        ]
        current = width
        for _ in range(steps):
            nxt = min(2 * current, 4 * width)
            layers += [nn.Conv2d(current, nxt, 3, stride=2, padding=1), _group_norm(nxt), nn.ReLU()]
            current = nxt
        self.cnn = nn.Sequential(*layers, nn.Flatten())
        features = current * 16
        self.roi_projections = None
        if roi_channels is not None:
            self.roi_projections = nn.ModuleList(nn.Conv2d(c, roi_width, 1) for c in roi_channels)
            features += roi_width * roi_size * roi_size
        self.mlp = nn.Sequential(
            nn.Linear(features, 4 * z_what_size), nn.ReLU(), nn.Linear(4 * z_what_size, z_what_size)
        )
        self.crop_size = crop_size
        self.roi_size = roi_size
        self.roi_width = roi_width

    def roi_features(
        self,
        features: Sequence[Tensor],
        boxes: Tensor,
        image_index: Tensor,
        level: Tensor,
        image_size: tuple[int, int],
    ) -> Tensor:
        """RoI-aligned features ``(N, roi_width * roi_size^2)`` of ``boxes`` ``(N, 4)`` (input
        pixels) on level ``level`` ``(N,)`` of the pyramid ``features``."""
        if self.roi_projections is None:
            raise RuntimeError("this encoder was built without roi_channels")
        out = boxes.new_zeros((len(boxes), self.roi_width, self.roi_size, self.roi_size))
        for index, (projection, maps) in enumerate(
            zip(self.roi_projections, features, strict=True)
        ):
            mine = (level == index).nonzero(as_tuple=True)[0]
            if len(mine) == 0:
                continue
            scale = maps.shape[-1] / image_size[1]
            rois = torch.cat([image_index[mine, None].to(boxes.dtype), boxes[mine]], dim=1)
            pooled = roi_align(
                projection(maps), rois, self.roi_size, spatial_scale=scale, aligned=True
            )
            out = out.index_copy(0, mine, pooled)
        return out.flatten(1)

    def forward(self, crops: Tensor, roi: Tensor | None = None) -> Tensor:
        encoded = self.cnn(crops)
        if self.roi_projections is not None:
            if roi is None:
                raise ValueError("this encoder reads RoI features too: pass roi")
            encoded = torch.cat([encoded, roi], dim=1)
        return self.mlp(encoded)


class Projector(nn.Module):
    """z_what -> the space the invariance term compares in: Linear, ReLU, Linear (SimCLR's
    projection head), so the term does not have to shape z_what itself. ``(N, D) -> (N, P)``."""

    def __init__(self, z_what_size: int, hidden: int = 128, out: int = 64):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(z_what_size, hidden), nn.ReLU(), nn.Linear(hidden, out)
        )

    def forward(self, z_what: Tensor) -> Tensor:
        return self.layers(z_what)


def jittered_box_affines(
    boxes: Tensor,
    out_size: int,
    shift: float = 0.1,
    log_scale: float = 0.15,
    degrees: float = 10.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Image -> crop transforms ``(N, 3, 3)`` of randomly jittered ``boxes`` ``(N, 4)``: centre
    moved by U(-shift, shift) x the box's size per axis, both sides scaled by
    exp(U(-log_scale, log_scale)), the content rotated by U(-degrees, degrees) about the centre.
    All zero: the plain box crop (:func:`~wherewhat.geometry.extract`'s)."""
    n = len(boxes)

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        draw = torch.rand(*shape, generator=generator, dtype=boxes.dtype)
        return (low + (high - low) * draw).to(boxes.device)

    size = boxes[:, 2:] - boxes[:, :2]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + uniform(-shift, shift, n, 2) * size
    half = size * torch.exp(uniform(-log_scale, log_scale, n, 1)) / 2
    crop = box_crop_affine(torch.cat([centre - half, centre + half], 1), (out_size, out_size))
    angle = uniform(-degrees, degrees, n) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.eye(3, dtype=boxes.dtype, device=boxes.device).repeat(n, 1, 1)
    # Rotate the sampling about the box centre: x' = R (x - c) + c.
    rotation[:, 0, 0], rotation[:, 0, 1] = cos, sin
    rotation[:, 1, 0], rotation[:, 1, 1] = -sin, cos
    offset = centre - torch.einsum("nij,nj->ni", rotation[:, :2, :2], centre)
    rotation[:, :2, 2] = offset
    return crop @ rotation


def object_crops(images: Tensor, image_index: Tensor, affines: Tensor, out_size: int) -> Tensor:
    """Crops ``(N, C, s, s)`` of ``images`` ``(B, C, H, W)`` through ``affines`` ``(N, 3, 3)``."""
    if len(image_index) == 0:
        return images.new_zeros((0, images.shape[1], out_size, out_size))
    return warp_affine(images[image_index], affines, (out_size, out_size))


def nt_xent(a: Tensor, b: Tensor, temperature: float = 0.2) -> Tensor:
    """NT-Xent (SimCLR) between views ``a`` and ``b`` ``(N, P)``: for each of the 2N views, the
    cross-entropy of picking its partner among the other 2N - 1 by cosine similarity /
    ``temperature``; the mean. One object with identical views gives 0 (no negatives)."""
    if len(a) == 0:
        return a.new_zeros(())
    views = F.normalize(torch.cat([a, b]), dim=1)
    logits = views @ views.T / temperature
    n = len(a)
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=a.device), -math.inf)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(a.device)
    return F.cross_entropy(logits, partner)
