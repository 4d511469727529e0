"""Training and evaluation of :class:`~wherewhat.methods.lzu.detector.LZUDetector` on
high-resolution scattered-MNIST scenes.

Saliency kinds (:attr:`LZUDetectionTask.SALIENCIES`, chosen by the network):

- ``uniform``: no warp, i.e. bilinear downsampling (the baseline; at another input size the
  2x upper bound);
- ``fixed``: one KDE over every training box, computed once from the training scenes and saved
  (:func:`~wherewhat.methods.lzu.saliency_cache.load_or_compute_fixed_saliency`), restored
  from checkpoints;
- ``adaptive``: a KDE per image over ground-truth boxes jittered by U[-jitter, jitter] px at
  training time, and at evaluation over the detections (score >= ``prior_score_threshold``) of a
  frozen *prior* detector, the uniform model (:meth:`LZUDetectionTask.attach_prior` or
  ``prior_checkpoint``): scattered-MNIST scenes are still images, so there is no previous frame.

Logged: ``train/loss`` (+ ``loc_loss``, ``cls_loss``), and for ``val`` / ``test``: ``ap50``,
``ap``, ``ap50_<bucket>``, ``ap_<bucket>`` (buckets small / medium / large by ``sqrt(area)`` in
original pixels, :func:`~wherewhat.metrics.detection.area_ranges_from_sides`); with
``band_rows`` also every AP key inside / outside the horizon band (``ap50_small_band``, ...,
:class:`~wherewhat.methods.lzu.region_metrics.BandDetectionAP`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from wherewhat.errors import ConfigError
from wherewhat.methods.lzu.detector import LZUDetector, SSDOutputs
from wherewhat.methods.lzu.region_metrics import BandDetectionAP
from wherewhat.methods.lzu.task_base import LZUTaskBase, SceneBatch
from wherewhat.methods.lzu.zoomed import ZoomedNetwork
from wherewhat.metrics.detection import DetectionAP, area_ranges_from_sides
from wherewhat.models.spec import build_module
from wherewhat.models.ssd import validate_targets

__all__ = ["LZUDetectionTask", "load_prior"]


class LZUDetectionTask(LZUTaskBase):
    """Train / evaluate :class:`~wherewhat.methods.lzu.detector.LZUDetector` on
    original-resolution scattered-MNIST batches.

    Batches: ``image`` (B, C, H, W) at the network's ``original_size``, ``boxes`` list of (n, 4)
    XYXY original px, ``labels`` list of (n,) digit classes (from
    :class:`~wherewhat.data.scatter.ScatterMNISTDataModule`).

    Args:
        model: the network (or its spec, see :mod:`wherewhat.models.spec`); it fixes the
            saliency kind, the sizes and the zoom.
        fixed_saliency_path: where the fixed map is read from / written to (computed from the
            data module's training boxes when missing; None: computed, not saved).
        prior_checkpoint: checkpoint of a uniform :class:`LZUDetectionTask` whose detections give
            the adaptive saliency at evaluation (or call :meth:`attach_prior`).
        prior_score_threshold: detections of the prior kept for the saliency.
        area_sides_px: ``(small_below, large_above)`` box sides (sqrt of the area) in original
            px splitting small / medium / large.
        band_rows: ``(y0, y1)`` original rows of the horizon band: AP is also reported for the
            objects whose box centre is inside / outside it (None: pooled only).
        lr, weight_decay, warmup_steps, schedule: AdamW with warm-up and cosine decay.
        eval_score_threshold, detect_score_threshold, nms_iou, max_detections: post-processing
            for AP (low threshold) and for :meth:`predict_step`.
    """

    def __init__(
        self,
        model: LZUDetector,
        fixed_saliency_path: str | None = None,
        prior_checkpoint: str | None = None,
        prior_score_threshold: float = 0.3,
        area_sides_px: tuple[float, float] = (24.0, 64.0),
        band_rows: tuple[float, float] | None = None,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        warmup_steps: int = 50,
        schedule: Literal["cosine", "constant"] = "cosine",
        eval_score_threshold: float = 0.05,
        detect_score_threshold: float = 0.5,
        nms_iou: float = 0.45,
        max_detections: int = 100,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.adopt(build_module(model, LZUDetector))

    def new_metric(self) -> DetectionAP | BandDetectionAP:
        ap_args = {
            "area_ranges": area_ranges_from_sides(*self.hparams.area_sides_px),
            "class_agnostic": self.model.detector.num_classes == 1,
        }
        if self.hparams.band_rows is None:
            return DetectionAP(**ap_args)
        return BandDetectionAP(tuple(self.hparams.band_rows), **ap_args)

    def check_prior(self, prior: ZoomedNetwork) -> None:
        if not isinstance(prior, LZUDetector):
            raise ConfigError(f"the prior must be an LZUDetector, got {type(prior).__name__}")
        if prior.original_size != self.model.original_size:
            raise ConfigError(
                f"prior works on {prior.original_size} images, this task on "
                f"{self.model.original_size}"
            )

    @torch.no_grad()
    def prior_boxes(self, images: Tensor) -> list[Tensor]:
        """The prior's detections with score >= ``prior_score_threshold`` (original px)."""
        prior = self._prior_or_raise(images)
        detections = prior.detect(
            prior(images),
            score_threshold=self.hparams.prior_score_threshold,
            nms_iou=self.hparams.nms_iou,
            max_detections=self.hparams.max_detections,
        )
        return [d["boxes"] for d in detections]

    # -- batches -------------------------------------------------------------------------------
    def forward(self, images: Tensor, saliency_boxes: list[Tensor] | None = None) -> SSDOutputs:
        return self.model(images, saliency_boxes)

    def targets_of(self, batch: SceneBatch, batch_idx: int) -> list[dict[str, Tensor]]:
        """Targets in original pixels with detector labels; malformed batches raise
        ``ValueError`` naming ``batch_idx``."""
        try:
            if not isinstance(batch, dict) or not {"image", "boxes", "labels"} <= set(batch):
                raise ValueError("expected a dict with 'image', 'boxes' and 'labels'")
            images = batch["image"]
            if len(batch["boxes"]) != len(images) or len(batch["labels"]) != len(images):
                raise ValueError(f"{len(images)} images but other counts of box / label sets")
            targets = [
                {"boxes": b, "labels": self.model.detector.detector_labels(lab)}
                for b, lab in zip(batch["boxes"], batch["labels"], strict=True)
            ]
            validate_targets(targets, len(images), self.model.detector.num_classes)
        except ValueError as error:
            raise ValueError(f"malformed batch {batch_idx}: {error}") from error
        return targets

    def training_step(self, batch: SceneBatch, batch_idx: int) -> Tensor:
        self.check_ready()
        targets = self.targets_of(batch, batch_idx)
        outputs = self.model(batch["image"], self.saliency_boxes(batch, training=True))
        losses = self.model.loss(outputs, targets)
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=len(targets))
        return losses["loss"]

    @torch.no_grad()
    def predict_batch(
        self, batch: SceneBatch, score_threshold: float | None = None
    ) -> list[dict[str, Tensor]]:
        """Detections in original pixels (``boxes``, ``scores``, ``labels``, ``anchor_index``)
        plus ``saliency_boxes`` (adaptive) for a batch, in the current mode."""
        self.check_ready()
        sal_boxes = self.saliency_boxes(batch, training=False)
        outputs = self.model(batch["image"], sal_boxes)
        detections = self.model.detect(
            outputs,
            score_threshold=self.hparams.eval_score_threshold
            if score_threshold is None
            else score_threshold,
            nms_iou=self.hparams.nms_iou,
            max_detections=self.hparams.max_detections,
        )
        if sal_boxes is not None:
            for d, s in zip(detections, sal_boxes, strict=True):
                d["saliency_boxes"] = s
        return detections

    def update_metric(
        self, batch: SceneBatch, batch_idx: int, metric: DetectionAP | BandDetectionAP
    ) -> None:
        targets = self.targets_of(batch, batch_idx)
        detections = self.predict_batch(batch)
        metric.update(
            [{k: d[k] for k in ("boxes", "scores", "labels")} for d in detections], targets
        )

    def log_metric(self, stage: str, metric: DetectionAP | BandDetectionAP) -> None:
        result = metric.compute()
        metric.reset()
        numbers = {
            k: float(v) for k, v in result.items() if k.startswith("ap") or k.startswith("n_gt")
        }
        for key in ("ap50", "ap", *(k for k in numbers if k.startswith("ap50_"))):
            self.log(f"{stage}/{key}", numbers[key], prog_bar=key == "ap50")

    def predict_step(self, batch: SceneBatch, batch_idx: int) -> list[dict[str, Tensor]]:
        return self.predict_batch(batch, self.hparams.detect_score_threshold)

    def evaluate(self, batches: Iterable[SceneBatch]) -> dict[str, float]:
        """AP numbers over ``batches`` (eval mode, no Lightning trainer needed): ``ap50``,
        ``ap``, ``ap75``, ``ar``, ``ap50_<bucket>``, ``ap_<bucket>``, ``n_gt_<bucket>``."""
        result = self.compute_metric(batches)
        return {k: float(v) for k, v in result.items() if v.ndim == 0}


def load_prior(checkpoint: str | Path) -> LZUDetector:
    """The network of a (non-adaptive) :class:`LZUDetectionTask` checkpoint, frozen."""
    network = LZUDetectionTask.frozen_network(checkpoint)
    assert isinstance(network, LZUDetector)  # the task builds nothing else
    return network
