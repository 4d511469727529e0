"""Evaluation of a trained SSDIR (with its frozen detector) on scenes with ground truth.

One pass over the test scenes gives every number the SSDIR issue reports:

- **detection**: class-agnostic COCO AP50 / AP50:95 (:class:`~wherewhat.metrics.detection.
  DetectionAP`) of the objects SSDIR infers, i.e. the detector's boxes after SSDIR's own
  class-agnostic NMS, scored by z_present's probability, kept down to a low score (0.05) so
  that the precision-recall curve is complete;
- **reconstruction**: per-pixel MSE of the reconstruction (posterior means, eval mode) on
  [0, 1] pixels (:class:`~wherewhat.metrics.reconstruction.ReconstructionMSE`);
- **Table 2 probe**: the objects above the presence threshold (0.5) take the digit label of the
  ground-truth box they overlap most if that IoU is at least ``min_iou`` (0.5; the reference
  uses no minimum), a logistic regression is fitted on the train scenes' z_what and scored on
  the test scenes' (:func:`~wherewhat.metrics.probe.latent_probe`). Objects without such a
  box are *unmatched*: left out of the probe and counted, as are ground-truth digits that no
  object covers (*missed*) and extra objects on an already covered digit (*duplicates*).

Restricting the objects to those with score >= the presence threshold after NMS at 0.05 gives
exactly NMS at the presence threshold (greedy NMS only ever lets higher-scoring boxes suppress
lower ones), so one encoder pass serves both the AP and the probe.

The model only has to follow SSDIR's interface (:class:`ObjectEncoder`): ``encode(images,
score_threshold=...)`` -> per-image records with ``boxes``, ``scores``, ``labels``, ``z_what``,
``depth``; ``model(images)["reconstruction"]``; optionally ``present_threshold`` and
``detector.num_classes``. Scenes are a dataset of scattered-MNIST items or a loader of
:func:`~wherewhat.data.scatter.collate_scenes` batches (``image``, ``boxes``, ``labels``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import box_iou

from wherewhat.data.scatter import collate_scenes
from wherewhat.metrics.detection import DetectionAP
from wherewhat.metrics.probe import (
    ObjectMatches,
    accuracy_by_group,
    latent_probe,
    match_objects_in_scenes,
)
from wherewhat.metrics.reconstruction import ReconstructionMSE

__all__ = [
    "DEFAULT_MIN_IOU",
    "DEFAULT_SIZE_EDGES",
    "size_bucket_names",
    "size_buckets",
    "scene_batches",
    "batch_parts",
    "matched_box_sides",
    "AP_SCORE_THRESHOLD",
    "ObjectEncoder",
    "SceneObjects",
    "SSDIREvaluation",
    "encode_scenes",
    "detection_metrics",
    "coverage_counts",
    "detector_label_accuracy",
    "evaluate_ssdir",
]

DEFAULT_MIN_IOU = 0.5  # an inferred object carries a digit label only if it overlaps it this much
# Probe accuracy is also reported per bucket of the matched digit's tight-box longer side (px):
# <= 12, 12-20, 20-30, 30-45, > 45 on the default 128-px scenes.
DEFAULT_SIZE_EDGES = (12.0, 20.0, 30.0, 45.0)
AP_SCORE_THRESHOLD = 0.05  # detections kept for AP (low: the whole precision-recall curve)
RECORD_KEYS = ("boxes", "scores", "labels", "z_what", "depth")


class ObjectEncoder(Protocol):
    """What the evaluation needs from a model (``SSDIR`` has it)."""

    training: bool

    def encode(self, images: Tensor, score_threshold: float | None = None) -> list[dict]: ...

    def __call__(self, images: Tensor) -> Mapping[str, Any]: ...

    def train(self, mode: bool = True) -> Any: ...


@dataclass
class SceneObjects:
    """Inferred objects and ground truth of a set of scenes, one list entry per scene.

    ``boxes (n_i, 4)`` XYXY px, ``scores (n_i,)``, ``labels (n_i,)`` detector labels,
    ``z_what (n_i, D)``, ``depth (n_i,)``; ``gt_boxes (m_i, 4)``, ``gt_labels (m_i,)``;
    ``images`` keeps the first few scenes' images ``(C, H, W)`` when asked (for figures);
    ``levels (n_i,)``: each object's pyramid level, when the model's records give
    ``anchor_index`` and its detector ``anchor_level`` (else empty).
    """

    boxes: list[Tensor] = field(default_factory=list)
    scores: list[Tensor] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)
    z_what: list[Tensor] = field(default_factory=list)
    depth: list[Tensor] = field(default_factory=list)
    gt_boxes: list[Tensor] = field(default_factory=list)
    gt_labels: list[Tensor] = field(default_factory=list)
    images: list[Tensor] = field(default_factory=list)
    levels: list[Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def n_objects(self) -> int:
        return sum(len(b) for b in self.boxes)

    def above(self, threshold: float) -> SceneObjects:
        """The objects with ``score >= threshold`` (same scenes, same ground truth)."""
        keep = [s >= threshold for s in self.scores]
        return SceneObjects(
            *[[x[k] for x, k in zip(getattr(self, name), keep, strict=True)] for name in
              ("boxes", "scores", "labels", "z_what", "depth")],
            gt_boxes=self.gt_boxes, gt_labels=self.gt_labels, images=self.images,
            levels=[x[k] for x, k in zip(self.levels, keep, strict=False)],
        )  # fmt: skip

    def flat_z_what(self) -> Tensor:
        """``(N, D)``: every object's z_what in scene order."""
        if not self.z_what:
            return torch.zeros(0, 0)
        return torch.cat(self.z_what)

    def match(self, min_iou: float = DEFAULT_MIN_IOU) -> ObjectMatches:
        """Digit label of every object (flattened in scene order) by best IoU >= ``min_iou``."""
        return match_objects_in_scenes(self.boxes, self.gt_boxes, self.gt_labels, min_iou)


def scene_batches(scenes: Dataset | DataLoader | Iterable, batch_size: int) -> Iterable:
    if isinstance(scenes, DataLoader) or not isinstance(scenes, Dataset):
        return scenes
    return DataLoader(scenes, batch_size=batch_size, shuffle=False, collate_fn=collate_scenes)


def batch_parts(batch: Any, index: int) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Images, GT boxes and GT labels of a batch, or a ``ValueError`` naming the batch."""
    if not isinstance(batch, Mapping) or not {"image", "boxes", "labels"} <= set(batch):
        raise ValueError(
            f"scene batch {index}: expected a dict with 'image', 'boxes' and 'labels' "
            "(collate_scenes batches)"
        )
    images, boxes, labels = batch["image"], list(batch["boxes"]), list(batch["labels"])
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"scene batch {index}: 'image' must be a (B, C, H, W) tensor")
    if not len(boxes) == len(labels) == len(images):
        raise ValueError(
            f"scene batch {index}: {len(images)} images, {len(boxes)} box sets, "
            f"{len(labels)} label sets"
        )
    return images, boxes, labels


@torch.no_grad()
def encode_scenes(
    model: ObjectEncoder,
    scenes: Dataset | DataLoader | Iterable,
    *,
    score_threshold: float = AP_SCORE_THRESHOLD,
    batch_size: int = 32,
    reconstruction: ReconstructionMSE | None = None,
    keep_images: int = 0,
) -> SceneObjects:
    """Run ``model.encode`` (and, given a ``reconstruction`` metric, ``model(images)``) over
    every scene, in eval mode (the model's mode is restored afterwards).

    Args:
        model: an :class:`ObjectEncoder` (e.g. ``SSDIR``).
        scenes: a dataset of scene dicts or an iterable of collated batches.
        score_threshold: objects kept by ``encode``.
        batch_size: when ``scenes`` is a dataset.
        reconstruction: updated with each batch's reconstruction and images.
        keep_images: keep the images of the first this many scenes (for figures).
    """
    was_training = model.training
    model.train(False)
    objects = SceneObjects()
    anchor_level = getattr(getattr(model, "detector", None), "anchor_level", None)
    try:
        for index, batch in enumerate(scene_batches(scenes, batch_size)):
            images, gt_boxes, gt_labels = batch_parts(batch, index)
            records = model.encode(images, score_threshold=score_threshold)
            if len(records) != len(images):
                raise ValueError(
                    f"scene batch {index}: encode returned {len(records)} records for "
                    f"{len(images)} images"
                )
            for record, boxes, labels in zip(records, gt_boxes, gt_labels, strict=True):
                missing = [k for k in RECORD_KEYS if k not in record]
                if missing:
                    raise ValueError(f"scene batch {index}: encode records lack {missing}")
                for key in RECORD_KEYS:
                    getattr(objects, key).append(record[key].detach().cpu())
                if anchor_level is not None and "anchor_index" in record:
                    objects.levels.append(anchor_level[record["anchor_index"]].long().cpu())
                objects.gt_boxes.append(torch.as_tensor(boxes).reshape(-1, 4).float().cpu())
                objects.gt_labels.append(torch.as_tensor(labels).reshape(-1).long().cpu())
            free = keep_images - len(objects.images)
            if free > 0:
                objects.images.extend(image.cpu() for image in images[:free])
            if reconstruction is not None:
                reconstruction.update(model(images)["reconstruction"].cpu(), images.cpu())
    finally:
        model.train(was_training)
    if len(objects) == 0:
        raise ValueError("encode_scenes: no scene to evaluate (empty dataset or loader)")
    return objects


def detection_metrics(objects: SceneObjects) -> dict[str, float | int]:
    """Class-agnostic COCO AP of the objects against the ground truth: ``ap50``, ``ap``
    (AP50:95), ``ap75``, ``ar``, ``ap50_<size>`` per size bucket, ``n_gt``, ``n_detections``."""
    metric = DetectionAP(class_agnostic=True)
    metric.update(
        [{"boxes": b, "scores": s, "labels": torch.zeros(len(b), dtype=torch.long)}
         for b, s in zip(objects.boxes, objects.scores, strict=True)],
        [{"boxes": b, "labels": torch.zeros(len(b), dtype=torch.long)} for b in objects.gt_boxes],
    )  # fmt: skip
    result = metric.compute()
    keys = ["ap50", "ap", "ap75", "ar"] + [k for k in result if k.startswith("ap50_")]
    out: dict[str, float | int] = {k: float(result[k]) for k in keys}
    out.update(n_gt=int(result["n_gt"]), n_detections=int(result["n_detections"]))
    return out


def coverage_counts(objects: SceneObjects, min_iou: float = DEFAULT_MIN_IOU) -> dict[str, int]:
    """How the objects cover the ground truth at ``min_iou``: ``n_gt``, ``n_gt_missed`` (digits
    that no object overlaps enough) and ``n_duplicates`` (objects whose best digit is already
    claimed by a higher-scoring object of the same scene)."""
    n_gt = missed = duplicates = 0
    for boxes, scores, gt in zip(objects.boxes, objects.scores, objects.gt_boxes, strict=True):
        n_gt += len(gt)
        if len(gt) == 0:
            continue
        if len(boxes) == 0:
            missed += len(gt)
            continue
        iou = box_iou(boxes.float(), gt.float())  # (n, m)
        missed += int((iou.max(dim=0).values < min_iou).sum())
        best_iou, best = iou.max(dim=1)
        claimed: set[int] = set()
        for i in torch.argsort(scores, descending=True, stable=True).tolist():
            if best_iou[i] < min_iou:
                continue
            duplicates += int(best[i]) in claimed
            claimed.add(int(best[i]))
    return {"n_gt": n_gt, "n_gt_missed": missed, "n_duplicates": duplicates}


def detector_label_accuracy(objects: SceneObjects, matches: ObjectMatches) -> float:
    """Share of matched objects whose detector label - 1 (a per-class detector's digit) equals
    the matched digit: the supervised baseline that the z_what probe competes with."""
    if matches.n_objects == 0 or not bool(matches.matched.any()):
        return float("nan")
    predicted = torch.cat(objects.labels).long() - 1
    return float((predicted[matches.matched] == matches.labels[matches.matched]).float().mean())


@dataclass
class SSDIREvaluation:
    """Result of :func:`evaluate_ssdir`.

    ``metrics``: flat JSON-able numbers (see :func:`evaluate_ssdir`); ``probe``: the full
    :func:`~wherewhat.metrics.probe.latent_probe` result (confusion matrices, per seed);
    ``test_objects`` / ``test_matches``: the test objects above the presence threshold and their
    labels (for figures: t-SNE of z_what by matched label); ``all_test_objects``: down to the AP
    score threshold.
    """

    metrics: dict[str, Any]
    probe: dict[str, Any] | None
    test_objects: SceneObjects
    test_matches: ObjectMatches
    all_test_objects: SceneObjects


def _split_counts(
    prefix: str, objects: SceneObjects, matches: ObjectMatches, min_iou: float
) -> dict[str, int | float]:
    counts = coverage_counts(objects, min_iou)
    summary = matches.summary()
    return {
        f"{prefix}_scenes": len(objects),
        f"{prefix}_objects": summary["n_objects"],
        f"{prefix}_matched": summary["n_matched"],
        f"{prefix}_unmatched": summary["n_unmatched"],
        f"{prefix}_unmatched_fraction": summary["unmatched_fraction"],
        f"{prefix}_gt": counts["n_gt"],
        f"{prefix}_gt_missed": counts["n_gt_missed"],
        f"{prefix}_duplicates": counts["n_duplicates"],
    }


def evaluate_ssdir(
    model: ObjectEncoder,
    train_scenes: Dataset | DataLoader | Iterable,
    test_scenes: Dataset | DataLoader | Iterable,
    *,
    min_iou: float = DEFAULT_MIN_IOU,
    present_threshold: float | None = None,
    ap_score_threshold: float = AP_SCORE_THRESHOLD,
    probe_seeds: Sequence[int] = (0,),
    probe_max_iter: int = 5000,
    batch_size: int = 32,
    keep_images: int = 0,
    size_edges: Sequence[float] = DEFAULT_SIZE_EDGES,
) -> SSDIREvaluation:
    """Every SSDIR number on one trained model (module docstring for the protocol).

    Args:
        model: trained SSDIR (or any :class:`ObjectEncoder`).
        train_scenes: scenes whose objects' z_what fit the probe (their labels come from the
            ground truth through the same IoU matching).
        test_scenes: scenes for AP, reconstruction MSE and the probe's score.
        min_iou: minimum IoU for an object to take a ground-truth digit label.
        present_threshold: objects used by the probe; default ``model.present_threshold``
            (0.5 if the model has none).
        ap_score_threshold: lowest score kept for AP.
        probe_seeds: one logistic-regression fit per seed (deterministic lbfgs: spread over
            seeds comes from training the model with several seeds).
        batch_size: when the scenes are datasets.
        keep_images: test images kept in ``test_objects.images`` for figures.
        size_edges: bucket edges (px) of the matched digits' tight-box longer side for the
            probe's accuracy per size.

    Returns:
        :class:`SSDIREvaluation` whose ``metrics`` hold: ``ap50``, ``ap``, ``ap75``, ``ar``,
        ``ap50_<size>``, ``n_detections`` (detection, class-agnostic); ``recon_mse``;
        ``probe_accuracy`` / ``_precision`` / ``_recall`` / ``_f1`` (macro) and ``*_std``,
        ``probe_converged``, ``probe_n_train`` / ``probe_n_test``, per size bucket ``b``
        (:func:`size_bucket_names`) ``probe_accuracy_size_<b>`` and ``probe_n_size_<b>``, and
        per pyramid level ``l`` holding matched objects ``probe_accuracy_level_<l>`` /
        ``probe_n_level_<l>`` (when the model reports levels); per split (``train_`` /
        ``test_``): ``scenes``, ``objects``, ``matched``, ``unmatched``,
        ``unmatched_fraction``, ``gt``, ``gt_missed``, ``duplicates``; ``min_iou``,
        ``present_threshold``, ``ap_score_threshold``; and ``detector_label_accuracy`` (and
        ``detector_label_accuracy_train``, on the train scenes' objects) when the detector has
        one class per digit. The probe is skipped (``probe_*`` NaN, a
        ``probe_skipped`` reason) only when the matched train objects hold fewer than two
        classes or either split has no matched object.
    """
    if present_threshold is None:
        present_threshold = float(getattr(model, "present_threshold", 0.5))
    if not ap_score_threshold <= present_threshold:
        raise ValueError(
            f"ap_score_threshold={ap_score_threshold} must not exceed present_threshold="
            f"{present_threshold} (the probe's objects are a subset of the AP's)"
        )
    recon = ReconstructionMSE()
    all_test = encode_scenes(
        model, test_scenes, score_threshold=ap_score_threshold, batch_size=batch_size,
        reconstruction=recon, keep_images=keep_images,
    )  # fmt: skip
    test = all_test.above(present_threshold)
    train = encode_scenes(
        model, train_scenes, score_threshold=present_threshold, batch_size=batch_size
    )
    test_matches, train_matches = test.match(min_iou), train.match(min_iou)

    metrics: dict[str, Any] = detection_metrics(all_test)
    metrics["recon_mse"] = float(recon.compute())
    metrics.update(
        min_iou=float(min_iou),
        present_threshold=float(present_threshold),
        ap_score_threshold=float(ap_score_threshold),
    )
    metrics.update(_split_counts("test", test, test_matches, min_iou))
    metrics.update(_split_counts("train", train, train_matches, min_iou))
    num_classes = getattr(getattr(model, "detector", None), "num_classes", 1)
    if num_classes > 1:  # on the test digits, and on the train scenes' (the digits it saw)
        metrics["detector_label_accuracy"] = detector_label_accuracy(test, test_matches)
        metrics["detector_label_accuracy_train"] = detector_label_accuracy(train, train_matches)

    probe = None
    train_y = train_matches.labels[train_matches.matched]
    test_y = test_matches.labels[test_matches.matched]
    reason = None
    if len(test_y) == 0 or len(train_y) == 0:
        reason = f"no matched objects ({len(train_y)} train, {len(test_y)} test)"
    elif len(torch.unique(train_y)) < 2:
        reason = "the matched train objects hold a single digit class"
    if reason is None:
        probe = latent_probe(
            train.flat_z_what()[train_matches.matched], train_y,
            test.flat_z_what()[test_matches.matched], test_y,
            seeds=probe_seeds, max_iter=probe_max_iter,
        )  # fmt: skip
        metrics.update(_probe_by_size_and_level(probe, test, test_matches, size_edges))
        for key in ("accuracy", "precision", "recall", "f1"):
            metrics[f"probe_{key}"] = probe[key]
            metrics[f"probe_{key}_std"] = probe[f"{key}_std"]
        metrics.update(
            probe_converged=bool(probe["converged"]),
            probe_n_train=int(probe["n_train"]),
            probe_n_test=int(probe["n_test"]),
        )
    else:
        for key in ("accuracy", "precision", "recall", "f1"):
            metrics[f"probe_{key}"] = metrics[f"probe_{key}_std"] = float("nan")
        metrics.update(probe_skipped=reason, probe_n_train=len(train_y), probe_n_test=len(test_y))
    return SSDIREvaluation(
        metrics={k: _plain(v) for k, v in metrics.items()},
        probe=probe,
        test_objects=test,
        test_matches=test_matches,
        all_test_objects=all_test,
    )


def _probe_by_size_and_level(
    probe: Mapping[str, Any],
    test: SceneObjects,
    matches: ObjectMatches,
    size_edges: Sequence[float],
) -> dict[str, float | int]:
    """``probe_accuracy_size_<bucket>`` / ``probe_n_size_<bucket>`` for every size bucket (NaN
    / 0 when empty) and ``probe_accuracy_level_<l>`` / ``probe_n_level_<l>`` for every pyramid
    level holding matched objects (when the objects carry levels)."""
    correct = probe["test_correct"]
    names = size_bucket_names(size_edges)
    by_size = accuracy_by_group(correct, size_buckets(matched_box_sides(test, matches), size_edges))
    out: dict[str, float | int] = {}
    for name in names:
        group = by_size.get(name, {"accuracy": float("nan"), "n": 0})
        out[f"probe_accuracy_size_{name}"] = group["accuracy"]
        out[f"probe_n_size_{name}"] = group["n"]
    if len(test.levels) == len(test):
        levels = torch.cat(test.levels)[matches.matched].numpy()
        for level, group in accuracy_by_group(correct, levels).items():
            out[f"probe_accuracy_level_{level}"] = group["accuracy"]
            out[f"probe_n_level_{level}"] = group["n"]
    return out


def size_bucket_names(edges: Sequence[float]) -> list[str]:
    """Names of the buckets ``edges`` (increasing, px) cut: ``le12``, ``12_20``, ..., ``gt45``."""
    if list(edges) != sorted(edges) or not edges:
        raise ValueError(f"size edges must increase, got {list(edges)}")
    inner = [f"{a:g}_{b:g}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return [f"le{edges[0]:g}", *inner, f"gt{edges[-1]:g}"]


def size_buckets(sides: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """The :func:`size_bucket_names` bucket of each box side ``(N,)`` px (a side equal to an
    edge falls in the lower bucket)."""
    names = np.array(size_bucket_names(edges))
    return names[np.searchsorted(np.asarray(edges), np.asarray(sides), side="left")]


def matched_box_sides(objects: SceneObjects, matches: ObjectMatches) -> np.ndarray:
    """``(n_matched,)`` the longer side (px) of the ground-truth box each matched object took
    its label from (its best-IoU box), in the probe's order (matched objects, scene order)."""
    sides = []
    for boxes, gt in zip(objects.boxes, objects.gt_boxes, strict=True):
        if len(boxes) == 0:
            continue
        if len(gt) == 0:
            sides.append(np.zeros(len(boxes)))
            continue
        best = box_iou(boxes.float(), gt.float()).argmax(1)
        extent = (gt[:, 2:] - gt[:, :2]).max(1).values
        sides.append(extent[best].numpy())
    flat = np.concatenate(sides) if sides else np.zeros(0)
    return flat[matches.matched.numpy()]


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
