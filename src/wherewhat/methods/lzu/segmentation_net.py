"""Semantic segmentation of digit pixels, plain or behind an LZU zoom.

:class:`SegmentationNet` is a small FPN-style encoder-decoder: a stride-1 stem, four stride-2
stages (strides 2, 4, 8, 16), lateral 1 x 1 convolutions merged top-down to stride 2, a 3 x 3
smoothing convolution and a 1 x 1 classifier. It maps raw [0, 1] images ``(B, C, h, w)`` to class
logits ``(B, K, ceil(h / 2), ceil(w / 2))`` (or at the input size, ``output_stride=1``); the images are normalised inside.

:class:`LZUSegmenter` runs it the LZU way: the full-resolution image is zoomed to the net's input
size by a saliency warp, the net's logits are *unzoomed* back to the original frame at their own
resolution (a map that covers the image uniformly, as for a plainly downsampled input), then
upsampled bilinearly to the label resolution (the original size). Labels are never warped. A 1 x 1 classifier
commutes with bilinear resampling (the weights of an interpolation sum to one), so unzooming the
logits equals unzooming the features and classifying them in the unwarped frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wherewhat.geometry.warp import InverseMethod, unzoom
from wherewhat.methods.lzu.wrapper import UnzoomMode
from wherewhat.methods.lzu.zoomed import SaliencyKind, ZoomedNetwork, ZoomSettings
from wherewhat.models.spec import configurable
from wherewhat.models.vgg_lite import PIXEL_MEAN, PIXEL_STD

__all__ = ["LZUSegmenter", "SegmentationNet", "logits_at_label_pixels"]


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


@configurable
class SegmentationNet(nn.Module):
    """Images ``(B, C, h, w)`` raw in [0, 1] -> logits ``(B, num_classes, ceil(h/s), ceil(w/s))``
    with ``s = output_stride``.

    Args:
        in_channels: image channels.
        num_classes: output classes (11 for background + 10 digits).
        widths: channels of the stem and the four stride-2 stages (strides 1, 2, 4, 8, 16).
        decoder_width: channels of the top-down path.
        output_stride: 2 (default): logits at half the input size; 1: the top-down path also
            merges the stem, logits at the input size (a 1x input then has the logit grid, in
            scene pixels, of a 2x input at stride 2).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 11,
        widths: Sequence[int] = (16, 16, 32, 64, 64),
        decoder_width: int = 24,
        output_stride: int = 2,
    ):
        super().__init__()
        if output_stride not in (1, 2):
            raise ValueError(f"output_stride must be 1 or 2, got {output_stride!r}")
        self.output_stride = output_stride
        if len(widths) != 5:
            raise ValueError(f"widths needs 5 entries (stem + 4 stages), got {list(widths)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD), persistent=False)
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, widths[0]))
        stages, cin = [], widths[0]
        for cout in widths[1:]:
            stages.append(nn.Sequential(*_conv_bn_relu(cin, cout, 2), *_conv_bn_relu(cout, cout)))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.laterals = nn.ModuleList(nn.Conv2d(c, decoder_width, 1) for c in widths[1:])
        # stride 1: one more lateral, from the stem (a separate module keeps the old keys)
        self.stem_lateral = nn.Conv2d(widths[0], decoder_width, 1) if output_stride == 1 else None
        self.smooth = nn.Sequential(*_conv_bn_relu(decoder_width, decoder_width))
        self.classifier = nn.Conv2d(decoder_width, num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        x = self.stem((images - self.pixel_mean) / self.pixel_std)
        skips, laterals = [], list(self.laterals)
        if self.stem_lateral is not None:
            skips.append(x)
            laterals.insert(0, self.stem_lateral)
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        top = laterals[-1](skips[-1])
        for skip, lateral in zip(reversed(skips[:-1]), reversed(laterals[:-1]), strict=True):
            # sizes may be odd: upsample to the skip's exact size (align_corners=False frame)
            top = lateral(skip) + F.interpolate(
                top, size=skip.shape[-2:], mode="bilinear", align_corners=False
            )
        return self.classifier(self.smooth(top))


def logits_at_label_pixels(logits: Tensor, label_size: tuple[int, int], stride: int = 1) -> Tensor:
    """Logits of an original-frame map ``(B, K, h, w)`` at label pixels ``(B, K, H', W')``.

    ``stride`` 1: every pixel of a ``label_size`` mask (bilinear upsampling, align_corners=False,
    border values beyond the outer centres). ``stride`` s > 1: the pixels ``mask[::s, ::s]`` of
    that mask, sampled at their own centres (exactly aligned with a strided label, unlike a
    resize to ``label_size / s``); a cheaper training loss.
    """
    if stride == 1:
        return F.interpolate(logits, size=label_size, mode="bilinear", align_corners=False)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    height, width = label_size
    ys = (torch.arange(0, height, stride, dtype=logits.dtype, device=logits.device) + 0.5) / height
    xs = (torch.arange(0, width, stride, dtype=logits.dtype, device=logits.device) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(2 * ys - 1, 2 * xs - 1, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1).expand(logits.shape[0], -1, -1, -1)
    return F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False)


@configurable
class LZUSegmenter(ZoomedNetwork):
    """Zoom -> :class:`SegmentationNet` -> unzoom the logits -> upsample to the labels.

    Args:
        net: maps ``(B, C, h, w)`` images to ``(B, K, h', w')`` logits (``h, w = input_size``);
            has ``num_classes`` when a task trains it.
        original_size: ``(H, W)`` of the images and of their label masks.
        input_size: ``(h, w)`` the net sees.
        saliency, grid_shape, amplitude, bandwidth, jitter, separable, fwhm, inverse, size_power,
            drop, drop_max_side, unzoom: the zoom,
            see :class:`~wherewhat.methods.lzu.zoomed.ZoomSettings` (a uniform saliency gives
            plain bilinear downsampling).
        unzoom_to: ``"logits"`` (default): unzoom the logits at their own resolution, then
            upsample bilinearly to the labels; ``"labels"``: unzoom straight to the label pixels
            (the exact inverse at every label pixel, so detail the zoom magnified survives).
            Both equal plain bilinear upsampling for a uniform saliency.

    ``forward(images (B, C, H, W), saliency_boxes=None, label_stride=1)`` returns logits at the
    label pixels ``(B, K, ceil(H / s), ceil(W / s))``; ``saliency_boxes`` (adaptive saliency):
    one ``(n, 4)`` XYXY tensor per image in original pixels.
    """

    def __init__(
        self,
        net: nn.Module,
        original_size: tuple[int, int] = (512, 1024),
        input_size: tuple[int, int] = (128, 256),
        saliency: SaliencyKind = "uniform",
        grid_shape: tuple[int, int] = (31, 51),
        amplitude: float = 1.0,
        bandwidth: float = 32.0,
        jitter: float = 8.0,
        separable: bool = True,
        fwhm: float = 13.0,
        inverse: InverseMethod = "auto",
        size_power: float = 0.0,
        drop: float = 0.0,
        drop_max_side: float = float("inf"),
        unzoom: UnzoomMode = "bilinear",
        unzoom_to: Literal["logits", "labels"] = "logits",
    ):
        super().__init__()
        if unzoom_to not in ("logits", "labels"):
            raise ValueError(f"unzoom_to must be 'logits' or 'labels', got {unzoom_to!r}")
        zoom = ZoomSettings(
            saliency, (int(grid_shape[0]), int(grid_shape[1])), amplitude, bandwidth, jitter,
            separable, fwhm, inverse, size_power, drop, drop_max_side, unzoom,
        )  # fmt: skip
        self.build_zoom(net, input_size, original_size, zoom)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.unzoom_to = unzoom_to

    @property
    def net(self) -> nn.Module:
        return self.lzu.backbone

    @property
    def num_classes(self) -> int:
        return int(self.net.num_classes)

    def unzoomed_logits(
        self, images: Tensor, saliency_boxes: Sequence[Tensor] | None = None
    ) -> Tensor:
        """Logits in the original frame at the net's output resolution ``(B, K, h', w')``."""
        return self.lzu(images, saliency_boxes)

    def forward(
        self, images: Tensor, saliency_boxes: Sequence[Tensor] | None = None, label_stride: int = 1
    ) -> Tensor:
        if self.unzoom_to == "logits":
            return logits_at_label_pixels(
                self.unzoomed_logits(images, saliency_boxes), self.original_size, label_stride
            )
        zoomed, coarse = self.lzu.zoom_image(images, saliency_boxes)
        logits = self.net(zoomed)
        if self.lzu.unzoom_mode == "area":
            at_labels = self.lzu.unzoom_map(logits, coarse, self.original_size)
            return at_labels[..., ::label_stride, ::label_stride]
        # The grid at every label pixel, then every s-th: exactly the strided pixels' centres.
        grid = self.lzu.inverse_grid(coarse, self.original_size, logits.dtype)
        return unzoom(logits, grid[:, ::label_stride, ::label_stride])
