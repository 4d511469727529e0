"""Metrics that see small objects where the zoom works: AP inside / outside the horizon band,
and segmentation IoU over the pixels of small digits.

Pooled metrics hide what LZU changes: on street scenes small digits are a minority of boxes
and ~3 % of foreground pixels. These split the evaluation by where an object is (its box
centre row in the band ``[y0, y1)`` of original pixels, or not) and restrict segmentation to
the boxes of small digits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from wherewhat.metrics.detection import DetectionAP
from wherewhat.metrics.segmentation import SegmentationIoU

__all__ = ["BandDetectionAP", "SmallObjectIoU", "box_sides", "in_band"]

REGIONS = ("band", "outside")
_IGNORE = 255  # target value of pixels outside every small box


def in_band(boxes: Tensor, band_rows: tuple[float, float]) -> Tensor:
    """``(n,)`` bool: the centre row of each XYXY box ``(n, 4)`` lies in ``[y0, y1]``."""
    centre = 0.5 * (boxes[:, 1] + boxes[:, 3])
    return (centre >= band_rows[0]) & (centre <= band_rows[1])


def box_sides(boxes: Tensor) -> Tensor:
    """``(n,)`` side ``sqrt(w * h)`` of XYXY boxes ``(n, 4)``: the size the AP buckets use."""
    return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(0).sqrt()


def _subset(item: Mapping[str, Tensor], keep: Tensor) -> dict[str, Tensor]:
    return {k: v[keep] if isinstance(v, Tensor) and v.shape[:1] == keep.shape else v
            for k, v in item.items()}  # fmt: skip


class BandDetectionAP:
    """:class:`~wherewhat.metrics.detection.DetectionAP` on all objects, and again on the
    objects (ground truth and detections alike) whose box centre is inside / outside the band.

    ``compute()`` returns the pooled metric's scalars plus ``<key>_band`` and
    ``<key>_outside`` for each AP and ``n_gt`` key (e.g. ``ap50_small_band``). A region
    without ground truth gets NaN APs.
    """

    def __init__(self, band_rows: tuple[float, float], **ap_args):
        self.band_rows = (float(band_rows[0]), float(band_rows[1]))
        self.metrics = {name: DetectionAP(**ap_args) for name in ("all", *REGIONS)}

    def update(
        self, preds: Sequence[Mapping[str, Tensor]], target: Sequence[Mapping[str, Tensor]]
    ) -> None:
        self.metrics["all"].update(preds, target)
        pred_in = [in_band(p["boxes"], self.band_rows) for p in preds]
        true_in = [in_band(t["boxes"], self.band_rows) for t in target]
        for name, flip in (("band", False), ("outside", True)):
            self.metrics[name].update(
                [_subset(p, m ^ flip) for p, m in zip(preds, pred_in, strict=True)],
                [_subset(t, m ^ flip) for t, m in zip(target, true_in, strict=True)],
            )

    def compute(self) -> dict[str, Tensor]:
        result = dict(self.metrics["all"].compute())
        for name in REGIONS:
            part = self.metrics[name].compute()
            result.update(
                {f"{k}_{name}": v for k, v in part.items() if k.startswith(("ap", "n_gt"))}
            )
        return result

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()


class SmallObjectIoU:
    """Class IoU over the pixels inside the boxes of small objects (side <= ``max_side`` px).

    ``update(preds (B, H, W), target (B, H, W), boxes)``: ``boxes`` one ``(n, 4)`` XYXY tensor
    per image in label pixels. ``compute()`` gives ``small_iou``: the mean IoU over the object
    classes 1..K-1 present there (background pixels inside the boxes still count as errors
    when a class is predicted on them), plus ``small_pixels``.
    """

    def __init__(self, num_classes: int, max_side: float):
        self.max_side = float(max_side)
        self.metric = SegmentationIoU(num_classes, ignore_index=_IGNORE)
        self.pixels = 0

    def update(self, preds: Tensor, target: Tensor, boxes: Sequence[Tensor]) -> None:
        region = torch.zeros_like(target, dtype=torch.bool)
        height, width = target.shape[-2:]
        for index, image_boxes in enumerate(boxes):
            small = image_boxes[box_sides(image_boxes) <= self.max_side]
            for x0, y0, x1, y1 in small.tolist():  # pixels the box touches
                top, bottom = max(math.floor(y0), 0), min(math.ceil(y1), height)
                left, right = max(math.floor(x0), 0), min(math.ceil(x1), width)
                region[index, top:bottom, left:right] = True
        self.pixels += int(region.sum())
        if bool(region.any()):
            self.metric.update(preds, torch.where(region, target, _IGNORE))

    def compute(self) -> dict[str, float]:
        if self.pixels == 0:
            return {"small_iou": float("nan"), "small_pixels": 0.0}
        iou = self.metric.compute()["iou_per_class"][1:]
        present = ~iou.isnan()
        value = float(iou[present].mean()) if bool(present.any()) else float("nan")
        return {"small_iou": value, "small_pixels": float(self.pixels)}

    def reset(self) -> None:
        self.metric.reset()
        self.pixels = 0
