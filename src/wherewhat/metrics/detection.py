"""Detection average precision (COCO protocol) with object-size buckets chosen per dataset.

:class:`DetectionAP` keeps torchmetrics' ``MeanAveragePrecision`` for what it does well (input
validation, state accumulation over batches and processes) and replaces its ``compute`` with a
direct pycocotools ``COCOeval`` run, because torchmetrics hard-codes COCO's size ranges
(32^2 / 96^2 px^2), which are meaningless for 128-px scenes, and reports size buckets only
averaged over IoU 0.50:0.95 (we also need AP50 per size).

Protocol (COCO, unchanged): greedy matching by score per image and class, IoU >= threshold,
101-point interpolated precision, mean over classes that have ground truth. A box belongs to a
size bucket by its area ``w * h`` in pixels; ground truth outside the bucket is ignored (and so
are detections matched to it); unmatched detections outside the bucket are ignored. Bounds are
inclusive on both sides, as in COCO, so an area exactly on a threshold is in both buckets.

Every image added counts: images without ground truth contribute their detections as false
positives, images without detections contribute their ground truth as misses. An AP that is
undefined (no ground truth in that bucket) is NaN, never -1, so that averaging it by mistake
shows.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

__all__ = ["SCATTER_AREA_RANGES", "COCO_AREA_RANGES", "DetectionAP", "area_ranges_from_sides"]

_INF = math.inf


def area_ranges_from_sides(
    small_below: float, large_above: float
) -> dict[str, tuple[float, float]]:
    """Small / medium / large area ranges ``(lo, hi)`` in px^2 from two box sides in px:
    small ``area <= small_below^2``, medium between, large ``area >= large_above^2``."""
    if not 0 < small_below < large_above:
        raise ValueError(
            f"expected 0 < small_below < large_above, got {small_below}, {large_above}"
        )
    return {
        "small": (0.0, small_below**2),
        "medium": (small_below**2, large_above**2),
        "large": (large_above**2, _INF),
    }


# Default 128-px scattered-MNIST scenes (digits of 12-64 px): tight boxes have sqrt(area) from
# ~5 to ~48 px (thin "1"s are narrow; the grid caps the size). Thresholds 16 / 32 px split the
# default test split into about 36 % / 52 % / 12 % of boxes, so every bucket is populated.
SCATTER_AREA_RANGES = area_ranges_from_sides(16.0, 32.0)
# COCO's own buckets (640-px photos), for scenes at that scale.
COCO_AREA_RANGES = area_ranges_from_sides(32.0, 96.0)


def _check_area_ranges(area_ranges: Mapping[str, tuple[float, float]]) -> dict:
    checked = {}
    for name, bounds in area_ranges.items():
        if name == "all" or not name.isidentifier():
            raise ValueError(f"area range name {name!r}: expected an identifier other than 'all'")
        lo, hi = (float(v) for v in bounds)
        if not 0 <= lo < hi:
            raise ValueError(f"area range {name!r}: expected 0 <= lo < hi px^2, got ({lo}, {hi})")
        checked[name] = (lo, hi)
    return checked


class DetectionAP(MeanAveragePrecision):
    """COCO-style AP50, AP75, AP50:95 and AP per object size for per-image detection dicts.

    ``update(preds, target)`` takes one dict per image, as torchmetrics does:
    ``preds[i] = {"boxes": (n, 4) XYXY px, "scores": (n,), "labels": (n,) int}`` and
    ``target[i] = {"boxes": (m, 4) XYXY px, "labels": (m,) int}`` (``n`` or ``m`` may be 0).

    Args:
        area_ranges: bucket name -> ``(lo, hi)`` box area in px^2; defaults to
            :data:`SCATTER_AREA_RANGES` (side 16 / 32 px). Pass :data:`COCO_AREA_RANGES` or
            :func:`area_ranges_from_sides` for other scales (e.g. LZU's 512 x 1024 scenes).
        class_agnostic: map every label to one class, so only localisation is scored.
        max_detections: detections kept per image (highest scores first), COCO's 100.
        class_metrics: also return AP50 and AP50:95 per class.

    ``compute()`` returns 0-d tensors: ``ap`` (AP50:95), ``ap50``, ``ap75``, ``ar`` (recall
    at ``max_detections``, mean over IoU 0.50:0.95), ``ap_<bucket>``, ``ap50_<bucket>``,
    ``n_gt_<bucket>`` for each bucket, and counts ``n_images``, ``n_gt``, ``n_detections``;
    with ``class_metrics`` also ``classes``, ``ap50_per_class``, ``ap_per_class`` ``(K,)``.
    """

    def __init__(
        self,
        area_ranges: Mapping[str, tuple[float, float]] | None = None,
        class_agnostic: bool = False,
        max_detections: int = 100,
        class_metrics: bool = False,
        **kwargs,
    ):
        if max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        # The parent's thresholds only drive its too-many-detections warning; ours is below.
        super().__init__(
            box_format="xyxy",
            iou_type="bbox",
            max_detection_thresholds=[1, 10, max(100, int(max_detections))],
            class_metrics=class_metrics,
            backend="pycocotools",
            **kwargs,
        )
        self.area_ranges = _check_area_ranges(
            SCATTER_AREA_RANGES if area_ranges is None else area_ranges
        )
        self.class_agnostic = class_agnostic
        self.max_detections = int(max_detections)

    def update(
        self, preds: Sequence[Mapping[str, Tensor]], target: Sequence[Mapping[str, Tensor]]
    ) -> None:
        """Add a batch of images (see the class docstring for the dict layout)."""
        if len(preds) != len(target):
            raise ValueError(
                f"expected one prediction dict per target dict, got {len(preds)} and {len(target)}"
            )
        for index, (pred, true) in enumerate(zip(preds, target, strict=True)):
            for name, item, keys in (
                ("preds", pred, ("boxes", "scores", "labels")),
                ("target", true, ("boxes", "labels")),
            ):
                missing = [k for k in keys if k not in item]
                if missing:
                    raise ValueError(f"{name}[{index}]: missing keys {missing}, expected {keys}")
                for key in ("boxes", "scores"):
                    if key in item and not torch.isfinite(torch.as_tensor(item[key])).all():
                        raise ValueError(f"{name}[{index}]['{key}'] holds non-finite values")
        if self.class_agnostic:
            preds = [{**p, "labels": torch.zeros_like(p["labels"])} for p in preds]
            target = [{**t, "labels": torch.zeros_like(t["labels"])} for t in target]
        super().update(preds, target)

    def compute(self) -> dict[str, Tensor]:
        n_images = len(self.groundtruth_labels)
        if n_images == 0:
            raise ValueError("DetectionAP.compute: no image was added (call update first)")
        gt_boxes = [b.reshape(-1, 4).double().cpu() for b in self.groundtruth_box]  # XYWH
        gt_labels = [x.reshape(-1).cpu() for x in self.groundtruth_labels]
        gt_crowds = [x.reshape(-1).cpu() for x in self.groundtruth_crowds]
        gt_areas = [x.reshape(-1).double().cpu() for x in self.groundtruth_area]
        dt_boxes = [b.reshape(-1, 4).double().cpu() for b in self.detection_box]
        dt_labels = [x.reshape(-1).cpu() for x in self.detection_labels]
        dt_scores = [x.reshape(-1).double().cpu() for x in self.detection_scores]
        if len(dt_boxes) != n_images:
            raise RuntimeError(f"{len(dt_boxes)} prediction entries for {n_images} images")

        n_gt = sum(len(x) for x in gt_labels)
        n_det = sum(len(x) for x in dt_labels)
        classes = sorted(set(torch.cat(gt_labels + dt_labels).tolist()))
        bucket_names = ["all", *self.area_ranges]
        area_rng = [[0.0, 1e10]] + [[lo, min(hi, 1e10)] for lo, hi in self.area_ranges.values()]

        precision = None
        if classes and n_gt > 0:
            precision, recall = _run_cocoeval(
                gt_boxes, gt_labels, gt_crowds, gt_areas, dt_boxes, dt_labels, dt_scores,
                classes, self.iou_thresholds, self.rec_thresholds, area_rng, self.max_detections,
            )  # fmt: skip

        ious = np.asarray(self.iou_thresholds)

        def mean_ap(iou: float | None, area: int, cls: int | None = None) -> float:
            if precision is None:
                return math.nan
            p = precision if iou is None else precision[np.isclose(ious, iou)]
            if p.shape[0] == 0:
                return math.nan
            p = p[:, :, :, area, -1] if cls is None else p[:, :, cls : cls + 1, area, -1]
            valid = p[p > -1]
            return float(valid.mean()) if valid.size else math.nan

        # COCOeval runs on the CPU; the results go back to the metric's device.
        device = self.device

        def scalar(value: float) -> Tensor:
            return torch.tensor(value, dtype=torch.float32, device=device)

        all_areas = torch.cat([_box_areas(b, a) for b, a in zip(gt_boxes, gt_areas, strict=True)])
        result: dict[str, Tensor] = {
            "ap": scalar(mean_ap(None, 0)),
            "ap50": scalar(mean_ap(0.5, 0)),
            "ap75": scalar(mean_ap(0.75, 0)),
        }
        if precision is None:
            result["ar"] = scalar(math.nan)
        else:
            r = recall[:, :, 0, -1]
            valid = r[r > -1]
            result["ar"] = scalar(float(valid.mean()) if valid.size else math.nan)
        for index, name in enumerate(bucket_names[1:], start=1):
            lo, hi = self.area_ranges[name]
            result[f"ap_{name}"] = scalar(mean_ap(None, index))
            result[f"ap50_{name}"] = scalar(mean_ap(0.5, index))
            in_bucket = (all_areas >= lo) & (all_areas <= hi)
            result[f"n_gt_{name}"] = torch.tensor(int(in_bucket.sum()), device=device)
        result["n_images"] = torch.tensor(n_images, device=device)
        result["n_gt"] = torch.tensor(n_gt, device=device)
        result["n_detections"] = torch.tensor(n_det, device=device)
        if self.class_metrics:
            result["classes"] = torch.tensor(classes, dtype=torch.int64, device=device)
            result["ap50_per_class"] = torch.tensor(
                [mean_ap(0.5, 0, k) for k in range(len(classes))],
                dtype=torch.float32,
                device=device,
            )
            result["ap_per_class"] = torch.tensor(
                [mean_ap(None, 0, k) for k in range(len(classes))],
                dtype=torch.float32,
                device=device,
            )
        return result


def _box_areas(boxes_xywh: Tensor, given: Tensor) -> Tensor:
    """Area per box: a positive user-given ``area`` wins, as in torchmetrics; else ``w * h``."""
    computed = boxes_xywh[:, 2] * boxes_xywh[:, 3]
    if given.numel() == computed.numel():
        return torch.where(given > 0, given, computed)
    return computed


def _run_cocoeval(
    gt_boxes, gt_labels, gt_crowds, gt_areas, dt_boxes, dt_labels, dt_scores,
    classes, iou_thresholds, rec_thresholds, area_rng, max_detections,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """COCOeval over all images; returns ``precision`` ``(T, R, K, A, 1)`` and ``recall``
    ``(T, K, A, 1)`` with -1 where a class has no ground truth in that area range."""
    images = [{"id": i} for i in range(len(gt_boxes))]
    categories = [{"id": int(c), "name": str(c)} for c in classes]
    gt_annotations, dt_annotations = [], []
    for image_id in range(len(gt_boxes)):
        areas = _box_areas(gt_boxes[image_id], gt_areas[image_id])
        for box, label, crowd, area in zip(
            gt_boxes[image_id].tolist(),
            gt_labels[image_id].tolist(),
            gt_crowds[image_id].tolist(),
            areas.tolist(),
            strict=True,
        ):
            gt_annotations.append(
                {"id": len(gt_annotations) + 1, "image_id": image_id, "bbox": box,
                 "area": area, "category_id": int(label), "iscrowd": int(crowd)}
            )  # fmt: skip
        for box, label, score in zip(
            dt_boxes[image_id].tolist(),
            dt_labels[image_id].tolist(),
            dt_scores[image_id].tolist(),
            strict=True,
        ):
            dt_annotations.append(
                {"id": len(dt_annotations) + 1, "image_id": image_id, "bbox": box,
                 "area": box[2] * box[3], "category_id": int(label), "score": score,
                 "iscrowd": 0}
            )  # fmt: skip

    # pycocotools talks on stdout; keep the caller's output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_annotations,
                           "categories": categories}  # fmt: skip
        coco_dt.dataset = {"images": images, "annotations": dt_annotations,
                           "categories": categories}  # fmt: skip
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        params = evaluator.params
        params.imgIds = list(range(len(images)))  # every image, even one without any box
        params.catIds = [int(c) for c in classes]
        params.iouThrs = np.asarray(iou_thresholds, dtype=np.float64)
        params.recThrs = np.asarray(rec_thresholds, dtype=np.float64)
        params.areaRng = [list(r) for r in area_rng]
        params.areaRngLbl = [str(i) for i in range(len(area_rng))]
        params.maxDets = [int(max_detections)]
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["precision"], evaluator.eval["recall"]
