"""Detection AP (COCO protocol, our size buckets) and segmentation IoU: known values."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision

from wherewhat.metrics.detection import (
    COCO_AREA_RANGES,
    SCATTER_AREA_RANGES,
    DetectionAP,
    area_ranges_from_sides,
)
from wherewhat.metrics.segmentation import SegmentationIoU, iou_from_confusion

# COCO interpolates precision at 101 recall points 0, 0.01, ..., 1.
POINTS = 101


def det(boxes, scores, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.zeros(len(boxes), dtype=torch.int64) if labels is None else labels
    return {"boxes": boxes, "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.as_tensor(labels, dtype=torch.int64)}  # fmt: skip


def gt(boxes, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.zeros(len(boxes), dtype=torch.int64) if labels is None else labels
    return {"boxes": boxes, "labels": torch.as_tensor(labels, dtype=torch.int64)}


def evaluate(preds, targets, **kwargs):
    metric = DetectionAP(**kwargs)
    metric.update(preds, targets)
    return {k: v.item() if v.ndim == 0 else v for k, v in metric.compute().items()}


def random_scenes(seed: int, n_images: int = 12, n_classes: int = 3, size: float = 128.0):
    """Jittered copies of random GT boxes plus random false positives, random scores."""
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(n_images):
        m, extra = (int(torch.randint(0, 6, (1,), generator=g)) for _ in range(2))
        xy = torch.rand(m + extra, 2, generator=g) * size * 0.7
        wh = torch.rand(m + extra, 2, generator=g) * size * 0.3 + 4
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, n_classes, (m + extra,), generator=g)
        kept = int(torch.randint(0, m + 1, (1,), generator=g))
        pred_boxes = torch.cat([boxes[:kept] + torch.randn(kept, 4, generator=g) * 2, boxes[m:]])
        pred_labels = torch.cat([labels[:kept], labels[m:]])
        scores = torch.rand(len(pred_boxes), generator=g)
        preds.append({"boxes": pred_boxes, "scores": scores, "labels": pred_labels})
        targets.append({"boxes": boxes[:m], "labels": labels[:m]})
    return preds, targets


def test_perfect_detections_score_one():
    _, targets = random_scenes(0)
    preds = [{**t, "scores": torch.linspace(0.9, 0.5, len(t["labels"]))} for t in targets]
    result = evaluate(preds, targets)
    assert result["ap50"] == pytest.approx(1.0)
    assert result["ap"] == pytest.approx(1.0)
    assert result["n_detections"] == result["n_gt"] > 0


def test_false_positive_ranked_above_true_positive_halves_ap():
    # Ranked: FP (0.9) then TP (0.8): precision 1/2 at recall 1, so every recall point gets 1/2.
    result = evaluate([det([[50, 50, 60, 60], [0, 0, 20, 20]], [0.9, 0.8])], [gt([[0, 0, 20, 20]])])
    assert result["ap50"] == pytest.approx(0.5)
    # Same detections, TP first: precision 1 up to recall 1.
    result = evaluate([det([[50, 50, 60, 60], [0, 0, 20, 20]], [0.1, 0.8])], [gt([[0, 0, 20, 20]])])
    assert result["ap50"] == pytest.approx(1.0)


def test_missed_object_caps_recall_in_101_point_interpolation():
    # Two GT, FP above the single TP: recall reaches 0.5 with precision 1/2; recall points
    # 0, 0.01, ..., 0.50 (51 of 101) get 1/2, the rest 0.
    preds = [det([[90, 90, 100, 100], [0, 0, 20, 20]], [0.9, 0.8])]
    result = evaluate(preds, [gt([[0, 0, 20, 20], [40, 40, 60, 60]])])
    assert result["ap50"] == pytest.approx(51 * 0.5 / POINTS)


def test_iou_threshold_sweep_on_a_shifted_box():
    # A 20x20 box shifted by 4 px: IoU = 16*20 / (2*400 - 320) = 2/3 -> TP at 0.50..0.65 only.
    result = evaluate([det([[4, 0, 24, 20]], [0.9])], [gt([[0, 0, 20, 20]])])
    assert result["ap50"] == pytest.approx(1.0)
    assert result["ap75"] == pytest.approx(0.0)
    assert result["ap"] == pytest.approx(4 / 10)  # 0.50, 0.55, 0.60, 0.65 of ten thresholds


def test_size_buckets_route_boxes_and_ignore_other_sizes():
    small_gt, large_gt = [0, 0, 10, 10], [50, 50, 90, 90]  # areas 100 (< 16^2), 1600 (> 32^2)
    small_fp = [100, 100, 110, 110]
    preds = [det([small_fp, small_gt, large_gt], [0.99, 0.8, 0.7])]
    result = evaluate(preds, [gt([small_gt, large_gt])])
    assert (result["n_gt_small"], result["n_gt_medium"], result["n_gt_large"]) == (1, 0, 1)
    assert result["ap50_small"] == pytest.approx(0.5)  # the small FP outranks the small TP
    assert result["ap50_large"] == pytest.approx(1.0)  # a small FP is no concern of "large"
    assert math.isnan(result["ap50_medium"]) and math.isnan(result["ap_medium"])
    # All sizes: FP, TP, TP -> precision 1/2 at recall 1/2, 2/3 at recall 1 -> 2/3 everywhere.
    assert result["ap50"] == pytest.approx(2 / 3)
    # Buckets are configurable: with COCO's 32 / 96 px the 40 px box is medium; with 48 / 96 px
    # both boxes are small and the small bucket becomes the whole ranking.
    coco = evaluate(preds, [gt([small_gt, large_gt])], area_ranges=COCO_AREA_RANGES)
    assert (coco["n_gt_small"], coco["n_gt_medium"], coco["n_gt_large"]) == (1, 1, 0)
    coarse = evaluate(preds, [gt([small_gt, large_gt])], area_ranges=area_ranges_from_sides(48, 96))
    assert coarse["n_gt_small"] == 2
    assert coarse["ap50_small"] == pytest.approx(2 / 3)


def test_custom_bucket_names_and_bounds():
    ranges = {"tiny": (0.0, 50.0), "rest": (50.0, math.inf)}
    result = evaluate([det([[0, 0, 5, 5]], [0.9])], [gt([[0, 0, 5, 5], [20, 20, 40, 40]])],
                      area_ranges=ranges)  # fmt: skip
    assert result["ap50_tiny"] == pytest.approx(1.0)
    assert result["ap50_rest"] == pytest.approx(0.0)
    assert "ap50_small" not in result
    assert area_ranges_from_sides(16, 32) == SCATTER_AREA_RANGES
    with pytest.raises(ValueError, match="lo < hi"):
        DetectionAP(area_ranges={"bad": (10.0, 5.0)})


def test_images_without_gt_or_detections_count():
    perfect = (det([[0, 0, 20, 20]], [0.8]), gt([[0, 0, 20, 20]]))
    no_gt = (det([[30, 30, 50, 50]], [0.95]), gt([]))
    no_det = (det([], []), gt([[60, 60, 80, 80]]))
    # An image without GT adds its detection as a false positive ranked first.
    result = evaluate(*zip(perfect, no_gt, strict=True))
    assert result["ap50"] == pytest.approx(0.5)
    assert result["n_images"] == 2
    # An image without detections adds a miss: recall stops at 1/2.
    result = evaluate(*zip(perfect, no_det, strict=True))
    assert result["ap50"] == pytest.approx(51 / POINTS)
    # Nothing to find anywhere: AP is undefined (NaN), not 0 or -1.
    result = evaluate(*zip(no_gt, no_gt, strict=True))
    assert math.isnan(result["ap50"]) and result["n_images"] == 2


def test_class_agnostic_mode_scores_only_localisation():
    preds = [det([[0, 0, 20, 20], [30, 30, 60, 60]], [0.9, 0.8], labels=[4, 2])]
    targets = [gt([[0, 0, 20, 20], [30, 30, 60, 60]], labels=[4, 7])]
    per_class = evaluate(preds, targets, class_metrics=True)
    # Class 4 is found, class 7 never predicted; class 2 has no GT and does not count.
    assert per_class["ap50"] == pytest.approx(0.5)
    assert per_class["classes"].tolist() == [2, 4, 7]
    assert math.isnan(per_class["ap50_per_class"][0].item())
    assert per_class["ap50_per_class"][1:].tolist() == pytest.approx([1.0, 0.0])
    assert evaluate(preds, targets, class_agnostic=True)["ap50"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_torchmetrics_with_coco_ranges(seed):
    preds, targets = random_scenes(seed, size=400.0)
    ours = evaluate(preds, targets, area_ranges=COCO_AREA_RANGES)
    reference = MeanAveragePrecision(backend="pycocotools")
    reference.update(preds, targets)
    theirs = reference.compute()
    pairs = {"ap": "map", "ap50": "map_50", "ap75": "map_75", "ar": "mar_100",
             "ap_small": "map_small", "ap_medium": "map_medium", "ap_large": "map_large"}  # fmt: skip
    for key, other in pairs.items():
        expected = theirs[other].item()
        if expected == -1:  # torchmetrics' "undefined"
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(expected, abs=1e-6), key


def test_batches_accumulate_like_one_update():
    preds, targets = random_scenes(3)
    metric = DetectionAP()
    for start, stop in ((0, 5), (5, 6), (6, len(preds))):
        metric.update(preds[start:stop], targets[start:stop])
    batched = metric.compute()
    one_shot = evaluate(preds, targets)
    assert batched["n_images"].item() == len(preds)
    for key, value in batched.items():
        assert value.item() == pytest.approx(one_shot[key], nan_ok=True), key


def test_bad_inputs_raise():
    metric = DetectionAP()
    with pytest.raises(ValueError, match="one prediction dict per target"):
        metric.update([det([], [])], [])
    with pytest.raises(ValueError, match="missing keys"):
        metric.update([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0).long()}], [gt([])])
    with pytest.raises(ValueError, match="non-finite"):
        metric.update([det([[0, 0, float("nan"), 1]], [0.5])], [gt([])])
    with pytest.raises(ValueError, match="no image"):
        metric.compute()


# --------------------------------------------------------------------------- segmentation


def test_miou_hand_computed_with_absent_class_and_ignored_pixels():
    # 4 classes; class 3 appears nowhere (its IoU is undefined and left out of the mean).
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, 255]]])
    preds = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 3]]])  # the 3 sits on an ignored pixel
    metric = SegmentationIoU(num_classes=4, ignore_index=255)
    metric.update(preds, target)
    result = metric.compute()
    # class 0: TP 1, FP 1 (pixel 6), FN 1 (pixel 1) -> 1/3; class 1: TP 2, FP 1 -> 2/3;
    # class 2: TP 2, FN 1 -> 2/3.
    expected = [1 / 3, 2 / 3, 2 / 3]
    assert result["iou_per_class"][:3].tolist() == pytest.approx(expected)
    assert math.isnan(result["iou_per_class"][3].item())
    assert result["miou"].item() == pytest.approx(sum(expected) / 3)
    assert result["pixel_accuracy"].item() == pytest.approx(5 / 7)
    assert result["n_classes_present"].item() == 3


def test_miou_accepts_scores_and_accumulates_over_batches():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 11, 8, 8, generator=g)
    target = torch.randint(0, 11, (5, 8, 8), generator=g)
    batched = SegmentationIoU()
    batched.update(logits[:2], target[:2])
    batched.update(logits[2:], target[2:])
    one_shot = SegmentationIoU()
    one_shot.update(logits.argmax(1), target)
    assert batched.compute()["miou"].item() == pytest.approx(one_shot.compute()["miou"].item())
    perfect = SegmentationIoU()
    perfect.update(target, target)
    assert perfect.compute()["miou"].item() == pytest.approx(1.0)


def test_iou_from_confusion_known_matrix():
    confusion = torch.tensor([[3, 1], [2, 4]])
    # class 0: 3 / (3 + 2 + 1); class 1: 4 / (4 + 1 + 2)
    assert iou_from_confusion(confusion).tolist() == pytest.approx([3 / 6, 4 / 7])
