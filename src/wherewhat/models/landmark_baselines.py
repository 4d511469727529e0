"""Face-landmark baselines for WorldComp2D: a PFLD-style regressor and a PIPNet-style heatmap net.

Both take the same input as :class:`~wherewhat.methods.worldcomp2d.model.WorldComp2D`: square face
crops ``(B, C, S, S)`` in [0, 1] (S = 256, cut by :mod:`wherewhat.data.face_crops`), normalise
them inside the model, and return landmarks ``(B, K, 2)`` in crop pixels (our pixel frame:
origin at the top-left corner of the top-left pixel). Backbones are torchvision's, built with
``weights=None``: everything trains from scratch.

- :class:`PFLDRegressor` (after Guo et al. 2019, "PFLD"): MobileNetV2 (width multiplier
  configurable) and PFLD's multi-scale fully connected head: global averages of three depths
  (end of the stride-16 stage, end of the stride-32 stage, the final 1x1 conv) concatenated and
  regressed to 2K numbers, added to the mean training shape. PFLD's auxiliary pose branch and
  its angle / attribute loss weights need head-pose and attribute labels that 300-W-style
  ``.pts`` folders do not have, so they are left out (the loss is a plain L2, see the task).
- :class:`PIPHeatmapNet` (after Jin et al. 2021, "Pixel-in-Pixel Net"): ResNet-18 or
  MobileNetV2 features on a coarse grid (stride 32: 8 x 8 cells for 256 px; 16 or 8 by adding
  2x deconvolution blocks). Per landmark and cell a score (is the landmark in this cell?),
  the landmark's x / y offset inside the cell, and the offsets of its ``num_neighbors``
  nearest landmarks in the mean shape from that cell. Decoding: the best cell of each landmark
  gives its own position and positions of its neighbours; each landmark is the average of its
  own prediction and those made for it by the landmarks that have it as a neighbour. All of it
  is tensor algebra (argmax, gather, one fixed averaging matrix), so it exports to ONNX.

Grid convention (:func:`encode_grid_targets` / :func:`decode_grid`): cell (row r, col c) of a
stride-s grid covers crop pixels [c s, (c + 1) s) x [r s, (r + 1) s); a point (x, y) is cell
(floor(y / s), floor(x / s)) (clamped to the grid) with offsets (x / s - c, y / s - r), which
lie in [0, 1) for points inside the crop. Decoding inverts this exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models import mobilenet_v2, resnet18

from wherewhat.geometry import normalized_to_pixel
from wherewhat.models.face_landmarks import IMAGENET_MEAN, IMAGENET_STD, mean_shape_from_points
from wherewhat.models.spec import configurable

__all__ = [
    "PFLDRegressor",
    "PIPHeatmapNet",
    "encode_grid_targets",
    "decode_grid",
    "nearest_neighbors",
    "neighbor_merge_matrix",
    "pip_losses",
]

BACKBONES = ("resnet18", "mobilenet_v2")


def _is_exporting() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class _Normalize(nn.Module):
    """[0, 1] crops -> model statistics; checks ``(B, C, S, S)`` outside of export."""

    mean: Tensor
    std: Tensor

    def __init__(self, channels: int, size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {mean} and {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.expected = (channels, size, size)

    def forward(self, crops: Tensor) -> Tensor:
        if not _is_exporting() and (crops.ndim != 4 or tuple(crops.shape[1:]) != self.expected):
            raise ValueError(
                f"expected face crops (B, {', '.join(map(str, self.expected))}), "
                f"got {tuple(crops.shape)}"
            )
        return (crops - self.mean) / self.std


def _default_stats(channels: int, mean, std) -> tuple[Sequence[float], Sequence[float]]:
    if mean is not None and std is not None:
        return mean, std
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    raise ValueError(f"give mean and std for {channels}-channel images")


def _first_conv_for(channels: int, conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with ``channels`` inputs (a fresh layer of the same shape otherwise)."""
    if channels == conv.in_channels:
        return conv
    return nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
    )


# --------------------------------------------------------------------------------------------
# PFLD-style direct regression


@configurable
class PFLDRegressor(nn.Module):
    """MobileNetV2 + PFLD's multi-scale head: crops -> landmarks by direct regression.

    Args:
        num_landmarks: K.
        width_mult: MobileNetV2 width multiplier (PFLD's light model: 0.25).
        image_channels: 3 (RGB) or 1 (grey; give ``mean`` / ``std``).
        crop_size: S.
        mean, std: input normalisation (default ImageNet).

    The head's output layer starts near zero, so an untrained model predicts the mean shape
    (:meth:`set_mean_shape`, a buffer in normalised crop coordinates).
    Shapes: ``(B, C, S, S)`` -> ``(B, K, 2)`` crop px (:meth:`forward_normalized`: in
    normalised crop coordinates, u = 2x / S - 1).
    """

    mean_shape: Tensor
    crop_hw: Tensor

    def __init__(
        self,
        num_landmarks: int = 68,
        width_mult: float = 1.0,
        image_channels: int = 3,
        crop_size: int = 256,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        mean, std = _default_stats(image_channels, mean, std)
        self.normalize = _Normalize(image_channels, crop_size, mean, std)
        features = mobilenet_v2(weights=None, width_mult=width_mult).features
        features[0][0] = _first_conv_for(image_channels, features[0][0])
        # Three depths: end of the stride-16 stage (index 13), of the stride-32 stage (17),
        # and the final 1x1 conv (18).
        self.stage16 = features[:14]
        self.stage32 = features[14:18]
        self.last = features[18]
        width = features[13].out_channels + features[17].out_channels + features[18].out_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.output = nn.Linear(width, 2 * num_landmarks)
        nn.init.normal_(self.output.weight, std=0.001)
        nn.init.zeros_(self.output.bias)
        self.register_buffer("mean_shape", torch.zeros(num_landmarks, 2))
        self.register_buffer("crop_hw", torch.tensor([crop_size, crop_size]), persistent=False)
        self.num_landmarks = num_landmarks
        self.crop_size = crop_size
        self.image_channels = image_channels

    @torch.no_grad()
    def set_mean_shape(self, points: Tensor) -> None:
        """Set the prior from training landmarks ``(N, K, 2)`` in crop pixels."""
        self.mean_shape.copy_(mean_shape_from_points(points, self.crop_size, self.num_landmarks))

    def forward_normalized(self, crops: Tensor) -> Tensor:
        x16 = self.stage16(self.normalize(crops))
        x32 = self.stage32(x16)
        last = self.last(x32)
        pooled = torch.cat([self.pool(x).flatten(1) for x in (x16, x32, last)], dim=1)
        offsets = self.output(pooled).view(-1, self.num_landmarks, 2)
        return self.mean_shape + offsets

    def forward(self, crops: Tensor) -> Tensor:
        return normalized_to_pixel(self.forward_normalized(crops), self.crop_hw)


# --------------------------------------------------------------------------------------------
# PIPNet-style grid heatmaps with offsets and neighbour regression


def nearest_neighbors(mean_shape: Tensor, count: int) -> Tensor:
    """``(K, count)`` long: per landmark, the ``count`` nearest other landmarks of a shape
    ``(K, 2)``, nearest first (ties by index)."""
    num = mean_shape.shape[0]
    if not 0 <= count < num:
        raise ValueError(f"need 0 <= num_neighbors < {num} landmarks, got {count}")
    distance = torch.cdist(mean_shape[None].double(), mean_shape[None].double())[0]
    distance.fill_diagonal_(float("inf"))
    # Stable sort: equal distances keep index order, so the choice is deterministic.
    return distance.argsort(dim=1, stable=True)[:, :count]


def neighbor_merge_matrix(neighbors: Tensor) -> Tensor:
    """``(K, K + K * N)``: averages landmark k's own candidate (column k) with the candidates
    predicted for it by every landmark j with k among its neighbours (column K + j * N + n where
    ``neighbors[j, n] == k``). Rows sum to 1."""
    num, count = neighbors.shape
    votes = torch.zeros(num, num + num * count, dtype=torch.float64)
    votes[torch.arange(num), torch.arange(num)] = 1.0
    column = num + torch.arange(num * count)
    votes[neighbors.reshape(-1), column] = 1.0
    return (votes / votes.sum(dim=1, keepdim=True)).float()


def encode_grid_targets(
    points: Tensor, neighbors: Tensor, grid: int, stride: int
) -> dict[str, Tensor]:
    """PIPNet training targets of landmarks ``(B, K, 2)`` crop px on a ``grid x grid`` map.

    Returns a dict:
        ``score`` ``(B, K, grid, grid)``: 1 at each landmark's cell, 0 elsewhere;
        ``cell`` ``(B, K)`` long: flat index ``r * grid + c`` of that cell;
        ``offset`` ``(B, K, 2)``: (x / s - c, y / s - r) of the landmark in its cell;
        ``neighbor_offset`` ``(B, K, N, 2)``: the same for landmark k's neighbours
        ``neighbors[k]`` measured from k's cell (may lie outside [0, 1)).
    Landmarks outside the crop get the nearest border cell (their offsets then leave [0, 1)).
    """
    scaled = points / stride
    cell_xy = scaled.floor().clamp(0, grid - 1)
    flat = (cell_xy[..., 1] * grid + cell_xy[..., 0]).long()
    score = torch.zeros(*points.shape[:2], grid * grid, dtype=points.dtype, device=points.device)
    score.scatter_(2, flat[..., None], 1.0)
    neighbor_points = scaled[:, neighbors]  # (B, K, N, 2)
    return {
        "score": score.view(*points.shape[:2], grid, grid),
        "cell": flat,
        "offset": scaled - cell_xy,
        "neighbor_offset": neighbor_points - cell_xy[:, :, None],
    }


def decode_grid(
    score: Tensor,
    offset: Tensor,
    neighbor_offset: Tensor | None,
    merge: Tensor,
    stride: int,
) -> Tensor:
    """Landmarks ``(B, K, 2)`` crop px from PIPNet head outputs.

    Args:
        score: ``(B, K, h, w)``; offset: ``(B, K, 2, h, w)`` (x, y);
        neighbor_offset: ``(B, K, N, 2, h, w)`` or ``None`` (N = 0); merge: ``(K, K + K * N)``
        (:func:`neighbor_merge_matrix`; for N = 0 the identity).
    """
    batch, num, height, width = score.shape
    best = score.flatten(2).argmax(dim=2)  # (B, K) flat cell
    row = torch.div(best, width, rounding_mode="floor")
    cell = torch.stack([best - row * width, row], dim=-1).to(offset.dtype)  # (B, K, 2) (c, r)
    own = offset.flatten(3).gather(3, best[:, :, None, None].expand(-1, -1, 2, 1))[..., 0]
    candidates = [cell + own]
    if neighbor_offset is not None:
        count = neighbor_offset.shape[2]
        index = best[:, :, None, None, None].expand(-1, -1, count, 2, 1)
        theirs = neighbor_offset.flatten(4).gather(4, index)[..., 0]  # (B, K, N, 2)
        candidates.append((cell[:, :, None] + theirs).flatten(1, 2))
    merged = merge.to(offset.dtype) @ torch.cat(candidates, dim=1)  # (B, K, 2) in cells
    return merged * stride


def pip_losses(
    score: Tensor,
    offset: Tensor,
    neighbor_offset: Tensor,
    targets: dict[str, Tensor],
) -> dict[str, Tensor]:
    """PIPNet's losses: MSE of the score maps over all cells, L1 of own and neighbour offsets
    read at each landmark's true cell. Shapes as in :func:`decode_grid`."""
    cell = targets["cell"]
    own = offset.flatten(3).gather(3, cell[:, :, None, None].expand(-1, -1, 2, 1))[..., 0]
    losses = {
        "score": nn.functional.mse_loss(score, targets["score"]),
        "offset": nn.functional.l1_loss(own, targets["offset"]),
    }
    count = neighbor_offset.shape[2]
    if count:
        index = cell[:, :, None, None, None].expand(-1, -1, count, 2, 1)
        theirs = neighbor_offset.flatten(4).gather(4, index)[..., 0]
        losses["neighbor"] = nn.functional.l1_loss(theirs, targets["neighbor_offset"])
    else:
        losses["neighbor"] = score.sum() * 0.0
    return losses


def _upsample_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _backbone(name: str, image_channels: int, width_mult: float) -> tuple[nn.Module, int]:
    """torchvision backbone (random weights) to its stride-32 features, and their channels."""
    if name == "resnet18":
        net = resnet18(weights=None)
        net.conv1 = _first_conv_for(image_channels, net.conv1)
        body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
            net.layer4,
        )  # fmt: skip
        return body, 512
    if name == "mobilenet_v2":
        features = mobilenet_v2(weights=None, width_mult=width_mult).features
        features[0][0] = _first_conv_for(image_channels, features[0][0])
        return features, features[-1].out_channels
    raise ValueError(f"unknown backbone {name!r}; choose from {BACKBONES}")


@configurable
class PIPHeatmapNet(nn.Module):
    """PIPNet-style landmarks: grid scores + in-cell offsets + neighbour offsets.

    Args:
        num_landmarks: K.
        backbone: ``"resnet18"`` (PIPNet's light model) or ``"mobilenet_v2"``.
        stride: 32 (the backbone's own grid; PIPNet's default), 16 or 8 (2x deconv blocks of
            ``upsample_channels`` on top).
        num_neighbors: N neighbours regressed per landmark (PIPNet: 10); 0 turns it off.
        width_mult: MobileNetV2's width multiplier (ignored for ResNet-18).
        image_channels, crop_size, mean, std: as for :class:`PFLDRegressor`.

    Call :meth:`set_mean_shape` with training shapes before training: it picks the
    neighbours. Shapes: ``(B, C, S, S)`` -> ``(B, K, 2)`` crop px; :meth:`head_outputs` gives
    the raw maps (score ``(B, K, g, g)``, offset ``(B, K, 2, g, g)``, neighbour offset
    ``(B, K, N, 2, g, g)``) with g = S / stride.
    """

    neighbors: Tensor
    merge: Tensor

    def __init__(
        self,
        num_landmarks: int = 68,
        backbone: str = "resnet18",
        stride: int = 32,
        num_neighbors: int = 10,
        width_mult: float = 1.0,
        upsample_channels: int = 256,
        image_channels: int = 3,
        crop_size: int = 256,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        if stride not in (8, 16, 32):
            raise ValueError(f"stride must be 8, 16 or 32, got {stride}")
        if crop_size % stride:
            raise ValueError(f"crop_size {crop_size} is not a multiple of the stride {stride}")
        if not 0 <= num_neighbors < num_landmarks:
            raise ValueError(f"need 0 <= num_neighbors < {num_landmarks}, got {num_neighbors}")
        mean, std = _default_stats(image_channels, mean, std)
        self.normalize = _Normalize(image_channels, crop_size, mean, std)
        self.backbone, channels = _backbone(backbone, image_channels, width_mult)
        blocks = []
        for _ in range({32: 0, 16: 1, 8: 2}[stride]):
            blocks.append(_upsample_block(channels, upsample_channels))
            channels = upsample_channels
        self.upsample = nn.Sequential(*blocks)
        self.score_head = nn.Conv2d(channels, num_landmarks, 1)
        self.offset_head = nn.Conv2d(channels, 2 * num_landmarks, 1)
        self.neighbor_head = (
            nn.Conv2d(channels, 2 * num_landmarks * num_neighbors, 1) if num_neighbors else None
        )
        for head in (self.score_head, self.offset_head, self.neighbor_head):
            if head is not None:
                nn.init.normal_(head.weight, std=0.001)
                nn.init.zeros_(head.bias)
        # Until set_mean_shape: neighbours are the next landmarks in index order (a placeholder
        # that keeps the model usable, e.g. for export tests).
        placeholder = torch.arange(num_landmarks)[:, None] + torch.arange(1, num_neighbors + 1)
        self.register_buffer("neighbors", placeholder % num_landmarks)
        self.register_buffer("merge", neighbor_merge_matrix(self.neighbors))
        self.num_landmarks = num_landmarks
        self.num_neighbors = num_neighbors
        self.stride = stride
        self.grid = crop_size // stride
        self.crop_size = crop_size
        self.image_channels = image_channels

    @torch.no_grad()
    def set_mean_shape(self, points: Tensor) -> None:
        """Choose each landmark's neighbours from the mean of training shapes ``(N, K, 2)`` px."""
        mean = mean_shape_from_points(points, self.crop_size, self.num_landmarks)
        self.neighbors.copy_(nearest_neighbors(mean, self.num_neighbors))
        self.merge.copy_(neighbor_merge_matrix(self.neighbors))

    def head_outputs(self, crops: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.upsample(self.backbone(self.normalize(crops)))
        batch, _, height, width = features.shape
        num = self.num_landmarks
        score = self.score_head(features)
        offset = self.offset_head(features).view(batch, num, 2, height, width)
        if self.neighbor_head is None:
            neighbor = offset.new_zeros(batch, num, 0, 2, height, width)
        else:
            neighbor = self.neighbor_head(features).view(
                batch, num, self.num_neighbors, 2, height, width
            )
        return score, offset, neighbor

    def forward(self, crops: Tensor) -> Tensor:
        score, offset, neighbor = self.head_outputs(crops)
        neighbor = neighbor if self.num_neighbors else None
        return decode_grid(score, offset, neighbor, self.merge, self.stride)
