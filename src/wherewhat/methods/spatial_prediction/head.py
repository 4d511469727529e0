"""Spatial Prediction (SP): regress where local view B sits relative to local view A.

For boxes A, B (XYXY pixels, in the frame the network sees) of an image of size (W, H)::

    dx = (cx_B - cx_A) / W,  dy = (cy_B - cy_A) / H,  ds = log(w_B / w_A) / log(max_ratio)

Swapping A and B negates the target; identical boxes give zero. A head on *backbone* features
(not on the base method's projector) predicts the three numbers from ``(f_A, f_B)``; the loss is
smooth-L1 (or L1) averaged over pairs and components. :class:`SpatialPrediction` bundles head,
loss and weight (lambda) as a plug-in that any base method calls with the backbone features of
its local views (see ``bases.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from wherewhat.errors import ConfigError
from wherewhat.geometry import boxes_xyxy_to_cxcywh, extract
from wherewhat.methods.spatial_prediction.views import (
    CropConfig,
    ViewSamplerConfig,
    max_width_ratio,
    mirror_boxes,
)

__all__ = [
    "SpatialPredictionConfig",
    "spatial_targets",
    "SpatialPredictionHead",
    "spatial_prediction_loss",
    "SpatialPrediction",
    "ReorderAccuracy",
    "patch_reorder_accuracy",
]


def spatial_targets(
    boxes_a: Tensor,
    boxes_b: Tensor,
    image_size: tuple[int, int] | Tensor,
    max_ratio: float,
    flipped: Tensor | None = None,
) -> Tensor:
    """SP targets ``(N, 3)`` float32 ``(dx, dy, ds)`` for box pairs.

    Args:
        boxes_a, boxes_b: ``(N, 4)`` XYXY pixels in the original image frame.
        image_size: ``(H, W)`` for all pairs, or ``(N, 2)`` per pair.
        max_ratio: width ratio that maps to ``ds = +-1`` (> 1).
        flipped: optional ``(N,)`` bool; where set, the network saw the mirrored image, so the
            boxes are mirrored first (dx changes sign, dy and ds do not).
    """
    if max_ratio <= 1:
        raise ValueError(f"max_ratio must be > 1, got {max_ratio}")
    boxes_a, boxes_b = boxes_a.float(), boxes_b.float()
    size = torch.as_tensor(image_size, dtype=torch.float32, device=boxes_a.device)
    size = size.expand(len(boxes_a), 2) if size.ndim == 1 else size
    height, width = size.unbind(-1)
    if flipped is not None:
        flipped = flipped.to(boxes_a.device, torch.bool)[:, None]
        boxes_a = torch.where(flipped, mirror_boxes(boxes_a, width), boxes_a)
        boxes_b = torch.where(flipped, mirror_boxes(boxes_b, width), boxes_b)
    cx_a, cy_a, w_a, _ = boxes_xyxy_to_cxcywh(boxes_a).unbind(-1)
    cx_b, cy_b, w_b, _ = boxes_xyxy_to_cxcywh(boxes_b).unbind(-1)
    if (w_a <= 0).any() or (w_b <= 0).any():
        raise ValueError("spatial_targets: every box needs a positive width")
    dx = (cx_b - cx_a) / width
    dy = (cy_b - cy_a) / height
    ds = torch.log(w_b / w_a) / math.log(max_ratio)
    return torch.stack([dx, dy, ds], dim=-1)


class SpatialPredictionHead(nn.Module):
    """Order-sensitive MLP ``(f_A, f_B) -> (dx, dy, ds)``.

    ``g([f_A, f_B]) = Linear(2D, hidden) -> BatchNorm -> ReLU -> Linear(hidden, 3)``. With
    ``antisymmetric=True`` the output is ``g(f_A, f_B) - g(f_B, f_A)``, so swapping the views
    negates the prediction exactly, as it does the target (both orders go through ``g`` in one
    batch so BatchNorm sees the same statistics for both).

    Shapes: ``(N, D), (N, D) -> (N, 3)``.
    """

    def __init__(self, feature_dim: int, hidden_dim: int = 512, antisymmetric: bool = False):
        super().__init__()
        self.antisymmetric = antisymmetric
        self.mlp = nn.Sequential(
            nn.Linear(2 * feature_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, 3),
        )

    def forward(self, features_a: Tensor, features_b: Tensor) -> Tensor:
        if features_a.shape != features_b.shape or features_a.ndim != 2:
            raise ValueError(
                f"expected two (N, D) feature tensors, got {tuple(features_a.shape)} and "
                f"{tuple(features_b.shape)}"
            )
        if not self.antisymmetric:
            return self.mlp(torch.cat([features_a, features_b], dim=-1))
        both = torch.cat(
            [
                torch.cat([features_a, features_b], dim=-1),
                torch.cat([features_b, features_a], dim=-1),
            ]
        )
        forward, backward = self.mlp(both).chunk(2)
        return forward - backward


def spatial_prediction_loss(
    prediction: Tensor,
    target: Tensor,
    kind: Literal["smooth_l1", "l1"] = "smooth_l1",
    beta: float = 0.1,
) -> Tensor:
    """Mean over pairs and the 3 components of smooth-L1 (``beta``) or L1; ``(N, 3)`` -> ``()``."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ")
    prediction, target = prediction.float(), target.float()  # bf16 under mixed precision
    if kind == "smooth_l1":
        return F.smooth_l1_loss(prediction, target, beta=beta)
    if kind == "l1":
        return F.l1_loss(prediction, target)
    raise ValueError(f"loss kind must be 'smooth_l1' or 'l1', got {kind!r}")


@dataclass
class SpatialPredictionConfig:
    """How SP attaches to a base method: its weight, views, head and loss.

    Args:
        weight: lambda in ``total = base + weight * SP``. 0 turns SP off entirely (no local
            views are encoded), which is then exactly the base method.
        num_pairs: local view pairs per image. One 16x16 pair has a quarter of the pixels of
            the base's two 32x32 views, so each pair adds about 25 % backbone work.
        local_scale / local_ratio / local_size: local crop area fraction, aspect range, output
            size ``(h, w)``.
        min_gap: minimum centre distance of a pair in image sizes (0: none).
        max_ratio: width ratio mapped to ``ds = 1``; ``None``: the largest the crops can give.
        hidden_dim, antisymmetric: head options (:class:`SpatialPredictionHead`).
        loss, beta: :func:`spatial_prediction_loss` options.
    """

    weight: float = 0.5
    num_pairs: int = 1
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    local_size: tuple[int, int] = (16, 16)
    min_gap: float = 0.0
    max_ratio: float | None = None
    hidden_dim: int = 512
    antisymmetric: bool = False
    loss: Literal["smooth_l1", "l1"] = "smooth_l1"
    beta: float = 0.1

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"SP weight (lambda) must be >= 0, got {self.weight}")
        if self.num_pairs < 1:
            raise ConfigError(
                f"SP num_pairs must be >= 1, got {self.num_pairs} (weight 0 turns SP off)"
            )
        self.local_scale, self.local_ratio = tuple(self.local_scale), tuple(self.local_ratio)
        self.local_size = tuple(self.local_size)

    @classmethod
    def coerce(
        cls, value: SpatialPredictionConfig | Mapping[str, Any] | None
    ) -> SpatialPredictionConfig | None:
        """``value`` as a config: a mapping (the form a checkpoint's model spec stores, see
        :meth:`to_dict`) is unpacked into one; a config or ``None`` is returned as it is."""
        return cls(**value) if isinstance(value, Mapping) else value

    @property
    def resolved_max_ratio(self) -> float:
        if self.max_ratio is not None:
            return self.max_ratio
        return max_width_ratio(self.local_scale, self.local_ratio)

    def view_sampler_config(self, base: ViewSamplerConfig | None = None) -> ViewSamplerConfig:
        """``base`` (global views, jitter, flip) with this config's local views; no local
        views at all when ``weight == 0``, so the data pipeline is the base method's."""
        base = base or ViewSamplerConfig()
        local = CropConfig(self.local_scale, self.local_ratio, self.local_size)
        pairs = self.num_pairs if self.weight > 0 else 0
        return replace(base, local_crop=local, num_pairs=pairs, min_gap=self.min_gap)


class SpatialPrediction(nn.Module):
    """The SP plug-in: head + loss + weight. A base method calls it with backbone features.

    ``forward(features_a, features_b, boxes_a, boxes_b, image_size, flipped)`` returns a dict:
    ``loss`` (unweighted, ``()``), ``weighted`` (``weight * loss``), ``prediction`` and
    ``target`` (``(N, 3)``). Boxes are in the original image frame (see :func:`spatial_targets`).
    """

    def __init__(self, feature_dim: int, config: SpatialPredictionConfig | None = None):
        super().__init__()
        self.config = config or SpatialPredictionConfig()
        self.weight = self.config.weight
        self.max_ratio = self.config.resolved_max_ratio
        self.head = SpatialPredictionHead(
            feature_dim, self.config.hidden_dim, antisymmetric=self.config.antisymmetric
        )

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    def forward(
        self,
        features_a: Tensor,
        features_b: Tensor,
        boxes_a: Tensor,
        boxes_b: Tensor,
        image_size: tuple[int, int] | Tensor,
        flipped: Tensor | None = None,
    ) -> dict[str, Tensor]:
        prediction = self.head(features_a, features_b)
        target = spatial_targets(boxes_a, boxes_b, image_size, self.max_ratio, flipped)
        target = target.to(prediction.device)
        loss = spatial_prediction_loss(prediction, target, self.config.loss, self.config.beta)
        return {
            "loss": loss,
            "weighted": self.weight * loss,
            "prediction": prediction,
            "target": target,
        }

    def forward_views(
        self,
        encode: nn.Module,
        local_views: Tensor,
        local_boxes: Tensor,
        image_size: Tensor,
        flipped: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Encode a batch of local pairs and score them.

        Args:
            encode: backbone, ``(M, C, h, w) -> (M, D)``.
            local_views: ``(B, K, 2, C, h, w)``; local_boxes ``(B, K, 2, 4)``.
            image_size: ``(B, 2)`` ``(H, W)``; flipped ``(B,)`` bool or ``None``.
        """
        b, k = local_views.shape[:2]
        features = encode(local_views.flatten(0, 2))
        features = features.view(b * k, 2, -1)
        boxes = local_boxes.reshape(b * k, 2, 4)
        sizes = image_size.repeat_interleave(k, dim=0)
        flips = None if flipped is None else flipped.repeat_interleave(k, dim=0)
        return self(features[:, 0], features[:, 1], boxes[:, 0], boxes[:, 1], sizes, flips)


class ReorderAccuracy(NamedTuple):
    """Patch re-ordering result: fraction of patches placed right, of images fully right."""

    patch: float
    exact: float


def _grid_boxes(image_size: tuple[int, int], grid: int) -> Tensor:
    """``(grid * grid, 4)`` XYXY cells in row-major order."""
    height, width = image_size
    ys = torch.linspace(0, height, grid + 1)
    xs = torch.linspace(0, width, grid + 1)
    cells = [[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(grid) for c in range(grid)]
    return torch.tensor(cells)


@torch.no_grad()
def patch_reorder_accuracy(
    model: nn.Module,
    images: Tensor,
    grid: int = 2,
    patch_size: tuple[int, int] = (16, 16),
    generator: torch.Generator | None = None,
) -> ReorderAccuracy:
    """Shuffle a ``grid x grid`` of patches per image and put them back from SP predictions.

    For every ordered pair of shuffled patches the SP head predicts ``(dx, dy)``; the least-
    squares positions given all pairwise offsets are ``p_i = mean_j (d_ji - d_ij) / 2`` (up to a
    shift, removed by centring); a Hungarian assignment (``linear_sum_assignment``) matches them
    to the centred cell centres by squared distance. Chance level is ``1 / grid**2`` per patch.

    Args:
        model: has ``encode(images (M, C, h, w)) -> (M, D)`` and ``spatial_prediction``
            (a :class:`SpatialPrediction`), e.g. ``SimCLR`` / ``BYOL`` from ``bases.py``.
        images: ``(B, C, H, W)`` in [0, 1].
        patch_size: size each patch is resized to (the local view size used in training).
    """
    if grid < 2:
        raise ValueError(f"grid must be >= 2, got {grid}")
    was_training = model.training
    model.eval()
    try:
        b, _, height, width = images.shape
        n = grid * grid
        cells = _grid_boxes((height, width), grid).to(images.device)  # (n, 4)
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(b)])
        boxes = cells[order.to(images.device)]  # (b, n, 4): patch i of image is cell order[i]
        patches = extract(
            images,
            boxes.reshape(-1, 4),
            patch_size,
            batch_index=torch.arange(b, device=images.device).repeat_interleave(n),
        )
        features = model.encode(patches).view(b, n, -1)
        idx_a, idx_b = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        idx_a, idx_b = idx_a.flatten(), idx_b.flatten()
        offsets = model.spatial_prediction.head(
            features[:, idx_a].flatten(0, 1), features[:, idx_b].flatten(0, 1)
        )[:, :2].view(b, n, n, 2)  # offsets[:, i, j] = position of j minus position of i
        positions = (offsets.transpose(1, 2) - offsets).mean(dim=2) / 2  # (b, n, 2)
        positions = positions - positions.mean(dim=1, keepdim=True)
        centres = boxes_xyxy_to_cxcywh(cells)[:, :2] / cells.new_tensor([width, height])
        centres = centres - centres.mean(dim=0, keepdim=True)
        correct = np.zeros((b, n), dtype=bool)
        for image in range(b):
            cost = torch.cdist(positions[image].float(), centres.float()).pow(2).cpu().numpy()
            rows, assigned = linear_sum_assignment(cost)
            correct[image, rows] = assigned == order[image, rows].numpy()
        return ReorderAccuracy(float(correct.mean()), float(correct.all(axis=1).mean()))
    finally:
        model.train(was_training)
