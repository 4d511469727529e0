"""Semantic segmentation: per-class IoU and mIoU from a dataset-wide confusion matrix.

Used for LZU's digit-pixel segmentation (classes: background + 10 digits, see
:data:`DIGIT_SEGMENTATION_CLASSES`). Intersections and unions are summed over all pixels of all
images before dividing (the Cityscapes / mmsegmentation convention), not averaged per image. A
class absent from both predictions and ground truth has no IoU (NaN) and is left out of the mean;
torchmetrics' own ``JaccardIndex`` would count it as 0 and pull the mean down, which is why this
wrapper reads its confusion matrix and divides itself.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex

__all__ = ["DIGIT_SEGMENTATION_CLASSES", "SegmentationIoU", "iou_from_confusion"]

DIGIT_SEGMENTATION_CLASSES = ("background", *(str(d) for d in range(10)))


def iou_from_confusion(confusion: Tensor) -> Tensor:
    """Per-class IoU ``(C,)`` from a confusion matrix ``(C, C)`` (rows true, columns predicted):
    ``TP / (TP + FP + FN)``, NaN where the class is in neither (union 0)."""
    confusion = confusion.double()
    true_positive = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)


class SegmentationIoU(MulticlassJaccardIndex):
    """mIoU and per-class IoU, accumulated over batches (and processes).

    ``update(preds, target)``: ``preds`` ``(B, H, W)`` class indices or ``(B, C, H, W)`` scores
    (argmax over C), ``target`` ``(B, H, W)`` class indices; pixels equal to ``ignore_index``
    in the target do not count.

    ``compute()`` returns ``miou`` (mean over classes with a defined IoU), ``iou_per_class``
    ``(C,)`` (NaN where undefined), ``pixel_accuracy`` and ``n_classes_present``.
    """

    def __init__(self, num_classes: int = 11, ignore_index: int | None = None, **kwargs):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        super().__init__(num_classes=num_classes, average="none", ignore_index=ignore_index,
                         **kwargs)  # fmt: skip

    def compute(self) -> dict[str, Tensor]:
        confusion = self.confmat
        total = confusion.sum()
        if int(total) == 0:
            raise ValueError("SegmentationIoU.compute: no (non-ignored) pixel was added")
        iou = iou_from_confusion(confusion)
        present = ~iou.isnan()
        return {
            "miou": iou[present].mean().float(),
            "iou_per_class": iou.float(),
            "pixel_accuracy": (confusion.diagonal().sum().double() / total).float(),
            "n_classes_present": present.sum(),
        }
