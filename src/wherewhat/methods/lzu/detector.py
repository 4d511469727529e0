"""LZU detection network: an SSD detector behind a zoom, heads in the unwarped frame.

Three frames (see :mod:`wherewhat.geometry.warp`):

- **original**: the full-resolution scene ``(H, W)`` (e.g. 512 x 1024), its ground-truth boxes,
  and every number reported (detections are mapped back here; AP size buckets use box areas in
  these pixels);
- **zoomed**: the detector's ``image_size`` (e.g. 128 x 256) the backbone sees, warped by a
  saliency;
- **detector**: the original frame scaled uniformly to that size. The backbone's features are
  unzoomed into it, so the SSD anchors, heads, box coding and loss are exactly those of a
  detector on a plainly downsampled image; ground truth only gets that uniform scale.

:class:`LZUDetector` works without Lightning; :func:`scene_ssd` builds the SSD it wraps with
anchors given in scene pixels; training and evaluation are
:class:`~wherewhat.methods.lzu.detection_task.LZUDetectionTask`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wherewhat.geometry.warp import InverseMethod
from wherewhat.methods.lzu.wrapper import UnzoomMode
from wherewhat.methods.lzu.zoomed import SaliencyKind, ZoomedNetwork, ZoomSettings
from wherewhat.models.spec import configurable
from wherewhat.models.ssd import SSDDetector

__all__ = ["LZUDetector", "plain_detector_outputs", "scale_boxes", "scene_ssd"]

SSDOutputs = dict[str, Tensor | list[Tensor]]


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """XYXY boxes ``(..., 4)`` in pixels of ``from_size`` (H, W) -> pixels of ``to_size``."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


def scene_ssd(
    original_size: tuple[int, int],
    input_size: tuple[int, int],
    *,
    anchor_range_px: tuple[float, float] = (12.0, 140.0),
    width_mult: float = 0.25,
    first_stride: int = 8,
    finest_cell_px: float | None = None,
    **ssd_args: float | int,
) -> SSDDetector:
    """The LZU experiment's SSD for ``input_size`` views of ``original_size`` scenes.

    ``anchor_range_px``: smallest / largest anchor side in *original* pixels, scaled to the
    detector frame, so every input size gets the same anchors on the scene. ``first_stride``
    is fixed, not derived from the size, so a 2x input gets a 2x finer pyramid; unless
    ``finest_cell_px`` is given: the finest head cell's side in original pixels, from which
    the stride is derived (16 px: stride 4 at a 4x smaller input, 8 at 2x smaller), so that
    inputs of every size get the same head grid on the scene and differ only in input pixels.
    Other keywords go to :class:`~wherewhat.models.ssd.SSDDetector`.
    """
    to_input = input_size[0] / original_size[0]
    if finest_cell_px is not None:
        derived = finest_cell_px * to_input
        if round(derived) not in (4, 8, 16) or abs(derived - round(derived)) > 1e-6:
            raise ValueError(
                f"finest_cell_px={finest_cell_px} at input {tuple(input_size)} of "
                f"{tuple(original_size)} needs a stride of {derived:g} px; the backbone has "
                "4, 8 or 16"
            )
        first_stride = int(round(derived))
    return SSDDetector(
        image_size=(int(input_size[0]), int(input_size[1])),
        width_mult=width_mult,
        first_stride=first_stride,
        min_anchor_size=anchor_range_px[0] * to_input,
        max_anchor_size=anchor_range_px[1] * to_input,
        **ssd_args,
    )


@configurable
class LZUDetector(ZoomedNetwork):
    """SSD behind an LZU zoom: original-frame images in, original-frame detections out.

    Args:
        detector: an :class:`~wherewhat.models.ssd.SSDDetector` built for the zoomed input size
            (its ``image_size``); its backbone is wrapped, its heads run on unzoomed features.
        original_size: ``(H, W)`` of the images given to :meth:`forward`.
        saliency, grid_shape, amplitude, bandwidth, jitter, separable, fwhm, inverse, size_power,
            drop, drop_max_side, unzoom: the zoom,
            see :class:`~wherewhat.methods.lzu.zoomed.ZoomSettings`.

    Shapes: images ``(B, C, H, W)`` in [0, 1]; ``saliency_boxes`` (adaptive saliency) one
    ``(n_i, 4)`` XYXY tensor per image in original pixels.
    """

    def __init__(
        self,
        detector: SSDDetector,
        original_size: tuple[int, int] = (512, 1024),
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
    ):
        super().__init__()
        self.detector = detector
        zoom = ZoomSettings(
            saliency, (int(grid_shape[0]), int(grid_shape[1])), amplitude, bandwidth, jitter,
            separable, fwhm, inverse, size_power, drop, drop_max_side, unzoom,
        )  # fmt: skip
        self.build_zoom(detector.backbone, detector.image_size, original_size, zoom)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.detector.image_size

    def to_detector_frame(self, boxes: Tensor) -> Tensor:
        return scale_boxes(boxes, self.original_size, self.input_size)

    def to_original_frame(self, boxes: Tensor) -> Tensor:
        return scale_boxes(boxes, self.input_size, self.original_size)

    def features(
        self, images: Tensor, saliency_boxes: Sequence[Tensor] | None = None
    ) -> list[Tensor]:
        """Unzoomed pyramid ``[(B, C_l, h_l, w_l)]`` in the detector frame."""
        if tuple(images.shape[-2:]) != self.original_size:
            raise ValueError(
                f"expected images of original_size={self.original_size}, got "
                f"{tuple(images.shape[-2:])}"
            )
        return list(self.lzu(images, saliency_boxes))

    def forward(self, images: Tensor, saliency_boxes: Sequence[Tensor] | None = None) -> SSDOutputs:
        """``{"loc" (B, A, 4), "logits" (B, A, K + 1), "features"}`` (detector frame)."""
        features = self.features(images, saliency_boxes)
        loc, logits = self.detector.head(features)
        return {"loc": loc, "logits": logits, "features": features}

    def loss(self, outputs: SSDOutputs, targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """SSD loss against ``targets`` with ``boxes`` in original pixels and detector labels."""
        scaled = [{**t, "boxes": self.to_detector_frame(t["boxes"])} for t in targets]
        return self.detector.loss(outputs, scaled)

    @torch.no_grad()
    def detect(
        self,
        outputs: SSDOutputs,
        score_threshold: float = 0.5,
        nms_iou: float = 0.45,
        max_detections: int = 100,
    ) -> list[dict[str, Tensor]]:
        """:meth:`SSDDetector.detect` with boxes mapped back to original pixels."""
        detections = self.detector.detect(
            outputs, score_threshold=score_threshold, nms_iou=nms_iou, max_detections=max_detections
        )
        return [{**d, "boxes": self.to_original_frame(d["boxes"])} for d in detections]


def plain_detector_outputs(detector: SSDDetector, images: Tensor) -> SSDOutputs:
    """The un-warped pipeline: bilinear downsampling to the detector's size, then SSD."""
    small = F.interpolate(images, detector.image_size, mode="bilinear", align_corners=False)
    return detector(small)
