"""Training and evaluation of :class:`~wherewhat.models.ssd.SSDDetector` on scattered MNIST.

Batches are those of :class:`~wherewhat.data.scatter.ScatterMNISTDataModule`: ``image``
(B, C, H, W) in [0, 1], ``boxes`` list of (n, 4) XYXY px, ``labels`` list of (n,) digit classes.
A batch whose targets are malformed raises ``ValueError`` naming the batch index (no batch is
ever skipped). Logged: ``train/loss``, ``train/loc_loss``, ``train/cls_loss``, ``val/loss``,
``val/map_50``, ``val/map`` (COCO AP at IoU 0.5 and 0.5:0.95, torchmetrics with pycocotools),
and the same under ``test/``.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision

from wherewhat.models.spec import build_module, module_spec
from wherewhat.models.ssd import SSDDetector, SSDInference, validate_targets
from wherewhat.training.precision import float32_loss, to_float32
from wherewhat.training.schedules import adamw_warmup_cosine

__all__ = ["DEFAULT_WIDTH_MULT", "SSDTask", "default_detector"]

# The task's detector is a quarter-width VGG11-lite: SSDIR's scattered-MNIST budget on a CPU
# (SSDDetector's own default, 1.0, is the paper's full width).
DEFAULT_WIDTH_MULT = 0.25


def default_detector(**arguments: Any) -> SSDDetector:
    """``SSDDetector(width_mult=DEFAULT_WIDTH_MULT, **arguments)``: the detector the task
    trains when given none (``arguments`` may override the width too)."""
    return SSDDetector(**{"width_mult": DEFAULT_WIDTH_MULT, **arguments})


class SSDTask(pl.LightningModule):
    """SSD detector training: class-agnostic (``num_classes=1``) or one class per digit (10).

    Args:
        model: the detector (or its spec, see :mod:`wherewhat.models.spec`); default
            :func:`default_detector` (128-px grey scenes, class-agnostic, width 0.25). Image
            size, channels and classes are the detector's.
        lr, weight_decay: AdamW.
        warmup_steps: linear learning-rate warm-up from 1 % (BN + Adam on a fresh SSD head
            otherwise jumps around in the first steps).
        schedule: ``"cosine"`` decays to zero over ``trainer.estimated_stepping_batches``
            (a resumed run must keep ``max_epochs`` / ``max_steps``), ``"constant"`` keeps it.
        eval_score_threshold: detections kept for mAP (low, so that the precision-recall curve
            is complete); ``detect_score_threshold`` is the one used by ``predict``.
        nms_iou, max_detections: post-processing of :meth:`SSDDetector.detect`.
    """

    def __init__(
        self,
        model: SSDDetector | None = None,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        warmup_steps: int = 100,
        schedule: Literal["cosine", "constant"] = "cosine",
        eval_score_threshold: float = 0.05,
        detect_score_threshold: float = 0.5,
        nms_iou: float = 0.45,
        max_detections: int = 100,
    ):
        super().__init__()
        self.model = build_module(model if model is not None else default_detector(), SSDDetector)
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = module_spec(self.model)
        self.val_map = MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
        self.test_map = MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
        self.example_input_array = torch.zeros(1, self.model.in_channels, *self.model.image_size)

    def forward(self, images: Tensor) -> dict[str, Any]:
        return self.model(images)

    def export_model(self) -> nn.Module:
        """Images ``(B, C, H, W)`` -> ``{"boxes" (B, A, 4), "scores" (B, A, K)}``, NMS outside
        (see :class:`SSDInference`)."""
        return SSDInference(self.model).eval()

    # -- batches -------------------------------------------------------------------------------
    def targets_of(self, batch: dict, batch_idx: int) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """Images and detector targets (labels mapped to 1..K) of a data-module batch; a
        malformed batch raises ``ValueError`` naming ``batch_idx``."""
        try:
            if not isinstance(batch, dict) or not {"image", "boxes", "labels"} <= set(batch):
                raise ValueError("expected a dict with 'image', 'boxes' and 'labels'")
            images = batch["image"]
            if not isinstance(images, Tensor) or images.ndim != 4:
                raise ValueError("'image' must be a (B, C, H, W) tensor")
            boxes, labels = batch["boxes"], batch["labels"]
            if len(boxes) != len(images) or len(labels) != len(images):
                raise ValueError(
                    f"{len(images)} images but {len(boxes)} box sets and {len(labels)} label sets"
                )
            targets = []
            for index, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
                if not isinstance(lab, Tensor) or lab.is_floating_point():
                    raise ValueError(f"labels of image {index} must be an integer tensor")
                try:
                    targets.append({"boxes": b, "labels": self.model.detector_labels(lab)})
                except ValueError as error:
                    raise ValueError(f"labels of image {index}: {error}") from None
            validate_targets(targets, len(images), self.model.num_classes)
        except ValueError as error:
            raise ValueError(f"malformed batch {batch_idx}: {error}") from error
        return images, targets

    def _loss(self, batch: dict, batch_idx: int, stage: str) -> tuple[dict, dict[str, Tensor]]:
        images, targets = self.targets_of(batch, batch_idx)
        outputs = to_float32(self.model(images))  # bf16 under mixed precision
        with float32_loss(images):
            losses = self.model.loss(outputs, targets)
        on_step = stage == "train"
        for name, value in losses.items():
            self.log(
                f"{stage}/{name}",
                value,
                prog_bar=name == "loss",
                on_step=on_step,
                on_epoch=True,
                batch_size=len(images),
                sync_dist=not on_step,
            )
        return outputs, {"targets": targets, **losses}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._loss(batch, batch_idx, "train")[1]["loss"]

    def _evaluate(
        self, batch: dict, batch_idx: int, stage: str, metric: MeanAveragePrecision
    ) -> None:
        outputs, extra = self._loss(batch, batch_idx, stage)
        detections = self.model.detect(
            outputs,
            score_threshold=self.hparams.eval_score_threshold,
            nms_iou=self.hparams.nms_iou,
            max_detections=self.hparams.max_detections,
        )
        preds = [{k: d[k] for k in ("boxes", "scores", "labels")} for d in detections]
        metric.update(preds, extra["targets"])

    def _log_map(self, stage: str, metric: MeanAveragePrecision) -> None:
        result = metric.compute()
        self.log(f"{stage}/map_50", result["map_50"].float(), prog_bar=True, sync_dist=False)
        self.log(f"{stage}/map", result["map"].float(), prog_bar=True, sync_dist=False)
        metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val", self.val_map)

    def on_validation_epoch_end(self) -> None:
        self._log_map("val", self.val_map)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test", self.test_map)

    def on_test_epoch_end(self) -> None:
        self._log_map("test", self.test_map)

    def predict_step(self, batch: dict | Tensor, batch_idx: int) -> list[dict[str, Tensor]]:
        images = batch["image"] if isinstance(batch, dict) else batch
        return self.model.detect(
            self.model(images),
            score_threshold=self.hparams.detect_score_threshold,
            nms_iou=self.hparams.nms_iou,
            max_detections=self.hparams.max_detections,
        )

    def configure_optimizers(self) -> OptimizerLRScheduler:
        return adamw_warmup_cosine(self)
