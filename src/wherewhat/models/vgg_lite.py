"""VGG11-BN "lite" feature pyramid for SSD: a VGG11 trunk with a width multiplier plus extra
stride-2 blocks down to a 1 x 1 map.

The pyramid is derived from the input size, nothing is tabulated per size:

- the trunk is VGG11-BN (conv64, M, conv128, M, 2 x conv256, M, 2 x conv512, M, 2 x conv512)
  with every width multiplied by ``width_mult``; 2 x 2 max pooling rounds down (300 -> 150 ->
  75 -> 37 -> 18);
- the first pyramid level is the trunk's stride-``first_stride`` map (4: the conv3 block, then
  conv4 and conv5; 8: the conv4 block, then conv5; 16: the conv5 block). Stride 4 gives a 1x
  input the head grid a 2x input has at stride 8, at almost no extra backbone cost;
- each extra block (1 x 1 conv to half width, then a 3 x 3 conv) halves a side ``s`` rounding
  up while ``s > 3`` (stride 2, padding 1) and collapses ``s`` in {2, 3} to 1 (a valid ``s`` x
  ``s`` conv); sides already at 1 stay there. Levels are added until the map is 1 x 1. Every
  conv is followed by BatchNorm and ReLU, except where its map is 1 x 1 (bias and ReLU there).
  ``num_levels`` keeps only the finest levels: coarse maps whose cells are far larger than the
  objects a dataset holds would have heads that no object ever trains.

At 300 px with ``first_stride=16`` this gives the SSDIR paper's grids 18/9/5/3/1 with channels
512/512/512/256/256; at 128 px with ``first_stride=8`` it gives 16/8/4/2/1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wherewhat.models.spec import configurable

__all__ = [
    "VGGLiteBackbone",
    "auto_first_stride",
    "extra_step",
    "pyramid_grid_sizes",
    "scaled_width",
]

# Grey-scale MNIST statistics: the models take raw [0, 1] images and normalise inside.
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081

_TRUNK_WIDTHS = ((64,), (128,), (256, 256), (512, 512), (512, 512))  # VGG11 conv blocks
_EXTRA_WIDTHS = (
    512,
    512,
    256,
)  # extras 1, 2, then 256 for every later one (paper: 512/512/256/256)


def scaled_width(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded to a multiple of 8 (at least 8): SIMD-friendly widths."""
    return max(8, int(round(channels * width_mult / 8)) * 8)


def auto_first_stride(image_size: tuple[int, int]) -> int:
    """Stride of the finest pyramid level when none is given: the paper's 16 for images whose
    shorter side is >= 256 px, else 8, so that a 128-px scene's finest cells (16 px at stride 8)
    are not larger than its smallest digits (~9 px tight boxes of 12-px digits)."""
    return 16 if min(image_size) >= 256 else 8


def extra_step(side: int) -> tuple[int, int, int, int]:
    """One extra block along one axis: ``(kernel, stride, padding, next side)``."""
    if side > 3:
        return 3, 2, 1, (side + 1) // 2
    if side > 1:
        return side, 1, 0, 1
    return 1, 1, 0, 1


def pyramid_grid_sizes(
    image_size: tuple[int, int], first_stride: int, num_levels: int | None = None
) -> list[tuple[int, int]]:
    """Grid (h, w) of every pyramid level for ``image_size`` (H, W), the finest ``num_levels``
    of them if given; see the module docstring."""
    if first_stride not in (4, 8, 16):
        raise ValueError(f"first_stride must be 4, 8 or 16, got {first_stride!r}")
    height, width = image_size
    trunk = []
    for _ in range(4):  # four 2x2 poolings, rounding down
        height, width = height // 2, width // 2
        trunk.append((height, width))
    if min(trunk[-1]) < 1:
        raise ValueError(f"image_size={image_size} is too small: need at least 16 px per side")
    grids = trunk[{4: 1, 8: 2, 16: 3}[first_stride] :]
    while grids[-1] != (1, 1):
        h, w = grids[-1]
        grids.append((extra_step(h)[3], extra_step(w)[3]))
    if num_levels is not None:
        if not 1 <= num_levels <= len(grids):
            raise ValueError(
                f"num_levels={num_levels!r}: image_size={image_size} with first_stride="
                f"{first_stride} has {len(grids)} levels ({grids}); expected 1..{len(grids)}"
            )
        grids = grids[:num_levels]
    return grids


def _conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel: int | tuple[int, int] = 3,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
    batch_norm: bool = True,
) -> list[nn.Module]:
    if not batch_norm:
        return [nn.Conv2d(in_channels, out_channels, kernel, stride, padding), nn.ReLU(True)]
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


@configurable
class VGGLiteBackbone(nn.Module):
    """Images ``(B, C, H, W)`` raw in [0, 1] -> list of feature maps ``[(B, C_l, h_l, w_l)]``.

    Args:
        image_size: (H, W) the pyramid is built for (other sizes run but give other grids).
        in_channels: image channels (1 grey, 3 colour).
        width_mult: multiplies every VGG width (1.0 = VGG11: 64 ... 512).
        first_stride: 4, 8 or 16, stride of the finest level; None = :func:`auto_first_stride`.
        num_levels: keep the finest this many levels (None: every level down to 1 x 1).

    Attributes: ``grid_sizes`` [(h_l, w_l)], ``feature_channels`` [C_l], ``first_stride``.
    """

    def __init__(
        self,
        image_size: tuple[int, int] = (128, 128),
        in_channels: int = 1,
        width_mult: float = 1.0,
        first_stride: int | None = None,
        num_levels: int | None = None,
    ):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.first_stride = first_stride or auto_first_stride(self.image_size)
        self.grid_sizes = pyramid_grid_sizes(self.image_size, self.first_stride, num_levels)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD), persistent=False)

        widths = [[scaled_width(c, width_mult) for c in block] for block in _TRUNK_WIDTHS]
        layers: list[nn.Module] = []
        channels = in_channels
        block_channels = []
        for index, block in enumerate(widths[:4]):  # conv1..conv4, a pooling before all but one
            if layers:
                layers.append(nn.MaxPool2d(2))
            for out in block:
                layers += _conv_bn_relu(channels, out)
                channels = out
            block_channels.append(channels)
            if index == 2:
                self._conv3_end = len(layers)  # where the stride-4 map leaves conv1_4
        # One Sequential for conv1..conv4 (stride 8) keeps the state-dict keys of every stride.
        self.conv1_4 = nn.Sequential(*layers)
        conv5: list[nn.Module] = [nn.MaxPool2d(2)]
        for out in widths[4]:
            conv5 += _conv_bn_relu(channels, out)
            channels = out
        self.conv5 = nn.Sequential(*conv5)  # stride 16
        trunk_channels = [block_channels[2], block_channels[3], channels]
        self.feature_channels = trunk_channels[{4: 0, 8: 1, 16: 2}[self.first_stride] :]
        self.feature_channels = self.feature_channels[: len(self.grid_sizes)]

        self.extras = nn.ModuleList()
        trunk_levels = len(self.feature_channels)
        for index, (h, w) in enumerate(self.grid_sizes[trunk_levels - 1 : -1]):
            (kh, sh, ph, nh), (kw, sw, pw, nw) = extra_step(h), extra_step(w)
            out = scaled_width(_EXTRA_WIDTHS[min(index, len(_EXTRA_WIDTHS) - 1)], width_mult)
            hidden = max(8, out // 2)
            # no BatchNorm on a 1 x 1 output: it cannot train on a batch of one image there
            self.extras.append(
                nn.Sequential(
                    *_conv_bn_relu(channels, hidden, 1, 1, 0, batch_norm=h * w > 1),
                    *_conv_bn_relu(hidden, out, (kh, kw), (sh, sw), (ph, pw), nh * nw > 1),
                )
            )
            self.feature_channels.append(out)
            channels = out

    def forward(self, images: Tensor) -> list[Tensor]:
        x = (images - self.pixel_mean) / self.pixel_std
        features = []
        for index, layer in enumerate(self.conv1_4):
            if index == self._conv3_end and self.first_stride == 4:
                features.append(x)
            x = layer(x)
        if self.first_stride <= 8:
            features.append(x)
        x = self.conv5(x)
        features.append(x)
        for extra in self.extras:
            x = extra(x)
            features.append(x)
        return features[: len(self.grid_sizes)]
