"""Building blocks of SSDIR: latent encoders, the what-decoder, object selection, merging, and
the likelihood / KL terms of the loss (eq. 7 of Zielinski & Kajdanowicz).

Every function works on plain tensors and is tested on its own; :mod:`wherewhat.methods.ssdir.model`
wires them to a frozen :class:`~wherewhat.models.ssd.SSDDetector`.

Latents live on the detector's pyramid *cells*: ``S = sum_l h_l * w_l`` cells, level-major, then
row-major within a level (the order of ``SSDDetector.anchor_cell``). Objects are flat: object ``i``
belongs to image ``image_index[i]`` and was produced by anchor ``anchor_index[i]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

__all__ = [
    "DedupMode",
    "PresentFrom",
    "WhatEncoder",
    "DepthEncoder",
    "WhatDecoder",
    "present_probability",
    "select_objects",
    "depth_weights",
    "merge_objects",
    "fill_background",
    "normalize_by_max",
    "kl_normal_to_standard",
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
]

DedupMode = Literal["nms", "soft", "none"]
PresentFrom = Literal["not_background", "max_object"]


def _cells_flat(maps: Tensor) -> Tensor:
    """``(B, D, h, w)`` -> ``(B, h * w, D)``, cells row-major (the detector's ``anchor_cell``)."""
    return maps.permute(0, 2, 3, 1).flatten(1, 2)


def _group_norm(channels: int) -> nn.GroupNorm:
    """Per-sample normalisation (8 groups, or fewer for narrow layers)."""
    return nn.GroupNorm(min(8, max(1, channels // 2)), channels)


def _what_head(in_channels: int, z_what_size: int, n_hidden: int) -> nn.Sequential:
    """1x1 conv to 2D channels, ``n_hidden`` x (3x3 conv + ReLU), 1x1 conv to D (METHODS §1).

    No normalisation here: a per-cell GroupNorm lowered the probe (0.28 vs 0.41 after 300
    steps), unlike the decoder's."""
    hidden = 2 * z_what_size
    layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, kernel_size=1)]
    for _ in range(n_hidden):
        layers += [nn.Conv2d(hidden, hidden, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
    layers.append(nn.Conv2d(hidden, z_what_size, kernel_size=1))
    return nn.Sequential(*layers)


class WhatEncoder(nn.Module):
    """Mean of ``q(z_what | x)`` for every pyramid cell (and optionally the background).

    One conv head per pyramid level. The background head reads the coarsest level, average-pooled
    to a single cell, so it sees the whole image whatever the grid of that level is.

    Args:
        feature_channels: ``C_l`` per level.
        z_what_size: D.
        n_hidden: number of 3x3 conv + ReLU blocks per head.
        background: also encode one background vector per image.
        background_channels: channels of the coarsest level (default: the last of
            ``feature_channels``; needed when ``feature_channels`` is empty, i.e. when another
            encoder gives the objects' z_what and this one only the background's).

    Shapes: features ``[(B, C_l, h_l, w_l)]`` -> ``(B, S, D)`` (None without cell heads) and
    background ``(B, D)`` or None.
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        z_what_size: int = 64,
        n_hidden: int = 3,
        background: bool = False,
        background_channels: int | None = None,
    ):
        super().__init__()
        self.heads = nn.ModuleList(
            _what_head(channels, z_what_size, n_hidden) for channels in feature_channels
        )
        if background_channels is None:
            background_channels = feature_channels[-1]
        self.background_head = (
            _what_head(background_channels, z_what_size, n_hidden) if background else None
        )

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor | None, Tensor | None]:
        cells = None
        if len(self.heads):
            cells = torch.cat(
                [
                    _cells_flat(head(level))
                    for head, level in zip(self.heads, features, strict=True)
                ],
                dim=1,
            )
        if self.background_head is None:
            return cells, None
        coarsest = min(features, key=lambda level: level.shape[-2] * level.shape[-1])
        pooled = F.adaptive_avg_pool2d(coarsest, 1)
        return cells, self.background_head(pooled).flatten(1)


class DepthEncoder(nn.Module):
    """Mean of ``q(z_depth | x)`` per cell: one 3x3 conv per level. ``[(B, C_l, h_l, w_l)] ->
    (B, S)``; larger depth = nearer the viewer (gets more merge weight)."""

    def __init__(self, feature_channels: Sequence[int]):
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Conv2d(channels, 1, kernel_size=3, padding=1) for channels in feature_channels
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        maps = [_cells_flat(head(level)) for head, level in zip(self.heads, features, strict=True)]
        return torch.cat(maps, dim=1).squeeze(-1)


class WhatDecoder(nn.Module):
    """z_what -> glimpse: 1x1 conv to ``width`` channels, log2(size) stride-2 transposed convs
    (1 -> size px, channels halving down to 16), 1x1 conv to image channels, sigmoid.

    The paper uses 64-px glimpses with 1024 channels for 300-px scenes; the glimpse size and width
    are arguments so that 128-px scenes can use 32-px glimpses (a 28-px MNIST digit has no more
    detail than that).

    ``norm=True`` (default) puts a GroupNorm before every ReLU. Without it this deep ReLU
    stack first learns the average glimpse and sits there for hundreds of steps; meanwhile the
    KL pulls z_what together and SSDIR's glimpses collapse to one blob (measured: a crop
    autoencoder reaches a per-glimpse log-likelihood of -465 after 200 steps without norm,
    -328 with it). GroupNorm, not BatchNorm, so that a glimpse never depends on the other
    objects of the batch.

    Shapes: ``(N, D)`` -> ``(N, channels, size, size)`` in (0, 1).
    """

    def __init__(
        self,
        z_what_size: int = 64,
        glimpse_size: int = 32,
        channels: int = 1,
        width: int = 256,
        norm: bool = True,
    ):
        super().__init__()
        steps = round(math.log2(glimpse_size)) if glimpse_size >= 2 else 0
        if glimpse_size < 2 or 2**steps != glimpse_size:
            raise ValueError(f"glimpse_size={glimpse_size}: expected a power of two >= 2")

        def activation(n: int) -> list[nn.Module]:
            return [_group_norm(n), nn.ReLU()] if norm else [nn.ReLU()]

        layers: list[nn.Module] = [nn.Conv2d(z_what_size, width, kernel_size=1), *activation(width)]
        current = width
        for _ in range(steps):
            nxt = max(current // 2, 16)
            layers += [nn.ConvTranspose2d(current, nxt, kernel_size=2, stride=2), *activation(nxt)]
            current = nxt
        to_pixels = nn.Conv2d(current, channels, kernel_size=1)
        # Digits are mostly dark: start glimpses near 0.1 instead of a grey 0.5 everywhere.
        nn.init.constant_(to_pixels.bias, -2.0)
        layers += [to_pixels, nn.Sigmoid()]
        self.layers = nn.Sequential(*layers)
        self.z_what_size = z_what_size
        self.glimpse_size = glimpse_size

    def forward(self, z_what: Tensor) -> Tensor:
        return self.layers(z_what.reshape(-1, self.z_what_size, 1, 1))


def present_probability(logits: Tensor, mode: PresentFrom = "not_background") -> Tensor:
    """Bernoulli parameter of z_present per anchor from detector logits ``(B, A, K + 1)``.

    ``not_background``: ``1 - p(background)``, the probability that the anchor holds *some*
    object (with a per-class detector, two confusable digits do not split it).
    ``max_object``: eq. 4 of the paper, the largest object-class probability where an object
    class wins the argmax, else 0.

    Returns ``(B, A)`` in [0, 1].
    """
    probs = logits.softmax(dim=-1)
    if mode == "not_background":
        return 1.0 - probs[..., 0]
    if mode == "max_object":
        best_object = probs[..., 1:].amax(dim=-1)
        return torch.where(best_object > probs[..., 0], best_object, torch.zeros_like(best_object))
    raise ValueError(f"present_from={mode!r}: expected 'not_background' or 'max_object'")


def _cap_per_image(image_index: Tensor, scores: Tensor, max_objects: int) -> Tensor:
    """Positions of the ``max_objects`` highest-scoring entries of every image, ordered by image
    then descending score."""
    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(image_index[by_score], stable=True)]
    sorted_images = image_index[order]
    first = torch.searchsorted(sorted_images, sorted_images, right=False)
    rank = torch.arange(len(order), device=order.device) - first
    return order[rank < max_objects]


def select_objects(
    boxes: Tensor,
    scores: Tensor,
    present: Tensor,
    mode: DedupMode = "nms",
    nms_iou: float = 0.45,
    max_objects: int = 100,
) -> tuple[Tensor, Tensor]:
    """Which present anchors become rendered objects.

    ``nms``: class-agnostic NMS per image (two anchors on one digit are duplicates even if they
    disagree about its class); ``soft`` and ``none``: every present anchor (``soft`` is then
    weighted by its score in the merge and loss). At most ``max_objects`` per image, the
    highest-scoring ones.

    Args:
        boxes: ``(B, A, 4)`` XYXY pixels; scores: ``(B, A)``; present: ``(B, A)`` bool.
    Returns:
        ``image_index (N,)``, ``anchor_index (N,)`` long, ordered by image then descending score.
    """
    if mode not in ("nms", "soft", "none"):
        raise ValueError(f"dedup={mode!r}: expected 'nms', 'soft' or 'none'")
    image_index, anchor_index = present.nonzero(as_tuple=True)
    candidate_scores = scores[image_index, anchor_index]
    if mode == "nms" and len(image_index):
        keep = batched_nms(
            boxes[image_index, anchor_index].float(), candidate_scores.float(), image_index, nms_iou
        )
        image_index, anchor_index = image_index[keep], anchor_index[keep]
        candidate_scores = candidate_scores[keep]
    keep = _cap_per_image(image_index, candidate_scores, max_objects)
    return image_index[keep], anchor_index[keep]


def depth_weights(
    depth: Tensor, image_index: Tensor, num_images: int, log_prior: Tensor | None = None
) -> Tensor:
    """Softmax of ``depth (N,)`` over the objects of each image: one merge weight per object.

    ``log_prior (N,)`` is added to the logits (``soft`` mode passes ``log p_present``, so weights
    are proportional to ``p_present * exp(depth)``). Weights of each image's objects sum to 1.
    """
    logits = depth if log_prior is None else depth + log_prior
    if logits.numel() == 0:
        return logits
    peak = torch.full((num_images,), -math.inf, dtype=logits.dtype, device=logits.device)
    peak = peak.scatter_reduce(0, image_index, logits.detach(), reduce="amax")
    exp = torch.exp(logits - peak[image_index])
    total = torch.zeros(num_images, dtype=logits.dtype, device=logits.device)
    total = total.index_add(0, image_index, exp)
    return exp / total[image_index]


def merge_objects(
    canvases: Tensor, weights: Tensor, image_index: Tensor, num_images: int
) -> Tensor:
    """Weighted sum of placed objects per image: ``(N, C, H, W)``, ``(N,)`` -> ``(B, C, H, W)``.
    Images without objects stay 0."""
    out = canvases.new_zeros((num_images, *canvases.shape[1:]))
    return out.index_add(0, image_index, canvases * weights[:, None, None, None])


def fill_background(merged: Tensor, background: Tensor, threshold: float = 1e-3) -> Tensor:
    """Background shows only where no object drew (pixels below ``threshold``), as in the paper."""
    return merged + background * (merged < threshold).to(merged.dtype)


def normalize_by_max(images: Tensor, floor: float = 1e-3) -> Tensor:
    """Divide each image by its brightest pixel (the paper's optional output normalisation).

    The divisor is at least ``floor`` so that an (almost) empty reconstruction is not blown up
    to full brightness."""
    peak = images.flatten(1).amax(dim=1).clamp_min(floor)
    return images / peak[:, None, None, None]


def kl_normal_to_standard(mean: Tensor, sigma: float | Tensor) -> Tensor:
    """Elementwise ``KL(N(mean, sigma^2) || N(0, 1)) = -log sigma + (sigma^2 + mean^2) / 2 - 1/2``."""
    sigma = torch.as_tensor(sigma, dtype=mean.dtype, device=mean.device)
    return -torch.log(sigma) + 0.5 * (sigma**2 + mean**2) - 0.5


def bernoulli_log_likelihood(recon: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """``sum x log r + (1 - x) log(1 - r)`` per item (all but the first dim summed).

    Defined for continuous targets in [0, 1] (negative binary cross-entropy, as the reference's
    Bernoulli likelihood computes it); ``r`` is clamped to ``[eps, 1 - eps]`` so it is finite.
    ``(N, ...)`` x2 -> ``(N,)``.
    """
    r = recon.clamp(eps, 1.0 - eps)
    log_lik = target * torch.log(r) + (1.0 - target) * torch.log1p(-r)
    return log_lik.flatten(1).sum(dim=1)


def gaussian_log_likelihood(recon: Tensor, target: Tensor, sigma: float) -> Tensor:
    """``sum log N(x; r, sigma^2)`` per item. ``(N, ...)`` x2 -> ``(N,)``."""
    z = (target - recon) / sigma
    log_lik = -0.5 * z**2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    return log_lik.flatten(1).sum(dim=1)
