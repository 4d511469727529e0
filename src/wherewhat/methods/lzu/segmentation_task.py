"""LZU semantic segmentation of digit pixels by class on high-resolution scenes.

The network (:class:`~wherewhat.methods.lzu.segmentation_net.LZUSegmenter`) zooms the original image to
``input_size``, predicts class logits there, unzooms them to the original frame at their own
resolution and upsamples them bilinearly to the label resolution (the scenes' masks: 0
background, 1 + digit class), so labels are never warped. Classes: background + 10 digits.

Saliency kinds as in :mod:`wherewhat.methods.lzu.detection_task` (same fixed map, same adaptive
training on jittered ground-truth boxes); at evaluation the adaptive map comes from the boxes of
the connected foreground components predicted by a frozen uniform segmenter (the *prior*).

Logged: ``train/loss`` (cross-entropy at the label pixels, every ``loss_stride``-th row and
column), and for ``val`` / ``test``: ``miou`` and ``pixel_accuracy`` at full label resolution
(:class:`~wherewhat.metrics.segmentation.SegmentationIoU`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from wherewhat.errors import ConfigError
from wherewhat.methods.lzu.region_metrics import SmallObjectIoU
from wherewhat.methods.lzu.segmentation_net import LZUSegmenter
from wherewhat.methods.lzu.task_base import LZUTaskBase, SceneBatch
from wherewhat.methods.lzu.zoomed import ZoomedNetwork
from wherewhat.metrics.segmentation import SegmentationIoU
from wherewhat.models.spec import build_module

__all__ = [
    "LZUSegmentationTask",
    "boxes_from_label_map",
    "load_segmentation_prior",
    "weighted_cross_entropy",
]


def boxes_from_label_map(labels: Tensor, min_pixels: int = 4) -> Tensor:
    """XYXY pixel boxes ``(n, 4)`` of the 8-connected foreground (label > 0) components of one
    ``(H, W)`` label map with at least ``min_pixels`` pixels, on the map's device (the
    components are found on the CPU)."""
    foreground = (labels > 0).cpu().numpy()
    components, count = ndimage.label(foreground, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return torch.zeros(0, 4, device=labels.device)
    sizes = ndimage.sum_labels(foreground, components, index=np.arange(1, count + 1))
    boxes = [
        (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        for sl, size in zip(ndimage.find_objects(components), sizes, strict=True)
        if size >= min_pixels
    ]
    return torch.tensor(boxes, dtype=torch.float32, device=labels.device).reshape(-1, 4)


def weighted_cross_entropy(logits: Tensor, labels: Tensor, foreground_weight: float) -> Tensor:
    """Cross-entropy of ``logits (B, K, H, W)`` against ``labels (B, H, W)``, pixels of class > 0
    weighted ``foreground_weight`` and background 1, normalised by the total weight."""
    per_pixel = F.cross_entropy(logits, labels, reduction="none")
    weights = torch.where(labels > 0, foreground_weight, 1.0).to(per_pixel)
    return (per_pixel * weights).sum() / weights.sum()


@dataclass
class SegmentationMetrics:
    """The task's evaluation: pooled IoU and the IoU over small digits' pixels."""

    iou: SegmentationIoU
    small: SmallObjectIoU

    def compute(self) -> dict[str, Tensor | float]:
        return {**self.iou.compute(), **self.small.compute()}


class LZUSegmentationTask(LZUTaskBase):
    """Train / evaluate :class:`~wherewhat.methods.lzu.segmentation_net.LZUSegmenter`.

    Batches: ``image`` (B, C, H, W) at the network's ``original_size``, ``mask`` (B, H, W) class
    ids, ``boxes`` list of (n, 4) XYXY original px (adaptive training), from
    :class:`~wherewhat.data.scatter.ScatterMNISTDataModule` with ``with_masks: true``.

    Args:
        model: the network (or its spec, see :mod:`wherewhat.models.spec`); it fixes the
            saliency kind, the sizes, the zoom, the classes and where logits are unzoomed to.
        fixed_saliency_path: as for
            :class:`~wherewhat.methods.lzu.detection_task.LZUDetectionTask`.
        prior_checkpoint: a uniform :class:`LZUSegmentationTask` checkpoint whose predicted
            foreground components give the adaptive saliency at evaluation (or
            :meth:`attach_prior`); prior_min_pixels: smallest component kept, in cells of the
            prior's unzoomed logits map.
        loss_stride: the training loss uses label pixels ``mask[::s, ::s]`` (logits sampled at
            their centres); evaluation always uses every pixel.
        foreground_weight: weight of digit pixels against background pixels (1) in the
            cross-entropy: digits cover ~3 % of a scene, and mIoU weighs every class alike.
        small_side_px: evaluation also reports ``small_iou``, the digit-class IoU over the
            pixels of the boxes of digits this small (sqrt of the box area, original px):
            pooled mIoU cannot see them.
        lr, weight_decay, warmup_steps, schedule: AdamW with warm-up and cosine decay.
    """

    def __init__(
        self,
        model: LZUSegmenter,
        fixed_saliency_path: str | None = None,
        prior_checkpoint: str | None = None,
        prior_min_pixels: int = 1,
        loss_stride: int = 2,
        foreground_weight: float = 10.0,
        small_side_px: float = 24.0,
        lr: float = 6e-3,
        weight_decay: float = 1e-4,
        warmup_steps: int = 50,
        schedule: Literal["cosine", "constant"] = "cosine",
    ):
        super().__init__()
        if loss_stride < 1:
            raise ConfigError(f"loss_stride must be >= 1, got {loss_stride}")
        if foreground_weight <= 0:
            raise ConfigError(f"foreground_weight must be > 0, got {foreground_weight}")
        self.save_hyperparameters(ignore=["model"])
        self.adopt(build_module(model, LZUSegmenter))

    def new_metric(self) -> SegmentationMetrics:
        return SegmentationMetrics(
            SegmentationIoU(self.model.num_classes),
            SmallObjectIoU(self.model.num_classes, self.hparams.small_side_px),
        )

    # -- prior ---------------------------------------------------------------------------------
    def check_prior(self, prior: ZoomedNetwork) -> None:
        if not isinstance(prior, LZUSegmenter):
            raise ConfigError(f"the prior must be an LZUSegmenter, got {type(prior).__name__}")
        if prior.original_size != self.model.original_size:
            raise ConfigError(f"prior labels {prior.original_size} != {self.model.original_size}")

    @torch.no_grad()
    def prior_boxes(self, images: Tensor) -> list[Tensor]:
        """Boxes (original px) of the foreground components the prior predicts."""
        prior = self._prior_or_raise(images)
        # Components of the prior's unzoomed logits at their own resolution (8 scene px per
        # cell at the default sizes): boxes that coarse suit a KDE of bandwidth >= 8 px, and
        # labelling them costs ~1/64 of doing it at the label resolution.
        predicted = prior.unzoomed_logits(images).argmax(dim=1)
        sy = images.shape[-2] / predicted.shape[-2]
        sx = images.shape[-1] / predicted.shape[-1]
        scale = torch.tensor([sx, sy, sx, sy], dtype=images.dtype, device=images.device)
        return [
            boxes_from_label_map(p, self.hparams.prior_min_pixels).to(images) * scale
            for p in predicted
        ]

    # -- batches -------------------------------------------------------------------------------
    def forward(self, images: Tensor, saliency_boxes: list[Tensor] | None = None) -> Tensor:
        return self.model(images, saliency_boxes)

    def masks_of(self, batch: SceneBatch, batch_idx: int) -> Tensor:
        """The batch's ``(B, H, W)`` long masks; a missing or misshapen one raises ValueError."""
        mask = batch.get("mask") if isinstance(batch, dict) else None
        images = batch.get("image") if isinstance(batch, dict) else None
        if mask is None or images is None:
            raise ValueError(
                f"malformed batch {batch_idx}: expected 'image' and 'mask' (a ScatterMNIST data "
                "module with with_masks: true)"
            )
        if mask.shape != (images.shape[0], *images.shape[-2:]):
            raise ValueError(
                f"malformed batch {batch_idx}: mask {tuple(mask.shape)} does not match images "
                f"{tuple(images.shape)}"
            )
        if int(mask.max()) >= self.model.num_classes or int(mask.min()) < 0:
            raise ValueError(
                f"malformed batch {batch_idx}: mask classes must be in "
                f"[0, {self.model.num_classes}), got {int(mask.min())}..{int(mask.max())}"
            )
        return mask.long()

    def training_step(self, batch: SceneBatch, batch_idx: int) -> Tensor:
        self.check_ready()
        mask = self.masks_of(batch, batch_idx)
        stride = int(self.hparams.loss_stride)
        logits = self.model(batch["image"], self.saliency_boxes(batch, True), label_stride=stride)
        loss = weighted_cross_entropy(
            logits, mask[:, ::stride, ::stride], self.hparams.foreground_weight
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(mask))
        return loss

    @torch.no_grad()
    def predict_batch(self, batch: SceneBatch) -> Tensor:
        """Predicted class per label pixel ``(B, H, W)`` long, in the current mode."""
        self.check_ready()
        return self.model(batch["image"], self.saliency_boxes(batch, False)).argmax(dim=1)

    def update_metric(self, batch: SceneBatch, batch_idx: int, metric: SegmentationMetrics) -> None:
        mask = self.masks_of(batch, batch_idx)
        predicted = self.predict_batch(batch)
        metric.iou.update(predicted, mask)
        metric.small.update(predicted, mask, batch["boxes"])

    def log_metric(self, stage: str, metric: SegmentationMetrics) -> None:
        result, small = metric.iou.compute(), metric.small.compute()
        metric.iou.reset()
        metric.small.reset()
        self.log(f"{stage}/miou", result["miou"], prog_bar=True)
        self.log(f"{stage}/pixel_accuracy", result["pixel_accuracy"])
        self.log(f"{stage}/small_iou", small["small_iou"])

    def predict_step(self, batch: SceneBatch, batch_idx: int) -> Tensor:
        return self.predict_batch(batch)

    def evaluate(self, batches: Iterable[SceneBatch]) -> dict[str, float | list[float]]:
        """``miou``, ``pixel_accuracy``, ``iou_per_class`` (list), ``small_iou`` and
        ``small_pixels`` over ``batches``."""
        result = self.compute_metric(batches)
        return {
            "miou": float(result["miou"]),
            "pixel_accuracy": float(result["pixel_accuracy"]),
            "iou_per_class": [float(v) for v in result["iou_per_class"]],
            "small_iou": float(result["small_iou"]),
            "small_pixels": float(result["small_pixels"]),
        }


def load_segmentation_prior(checkpoint: str | Path) -> LZUSegmenter:
    """The network of a (non-adaptive) :class:`LZUSegmentationTask` checkpoint, frozen."""
    network = LZUSegmentationTask.frozen_network(checkpoint)
    assert isinstance(network, LZUSegmenter)  # the task builds nothing else
    return network
