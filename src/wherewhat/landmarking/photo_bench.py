"""How the photo path does on annotated faces: detector recall, the box calibration, NME of
detector boxes against ground-truth boxes, and photos per second.

Used by ``benchmarks/landmarks_on_photos.py``. A detection *finds* an annotated face when its IoU
with the face's tight landmark box is at least ``MATCH_IOU`` after calibration (detector boxes
are larger than landmark boxes, so the raw IoU would understate matches); before a calibration
exists, a looser raw-IoU rule picks the pairs it is fitted on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_iou

from wherewhat.data.faces import FaceRecord
from wherewhat.landmarking.calibration import BoxCalibration
from wherewhat.landmarking.detectors import DetectedFace, FaceDetector
from wherewhat.landmarking.images import rgb_array
from wherewhat.landmarking.predictor import LandmarkPredictor
from wherewhat.metrics.landmarks import nme

__all__ = [
    "MATCH_IOU",
    "FIT_IOU",
    "PhotoEvaluation",
    "landmark_box",
    "best_match",
    "MIN_CALIBRATION_FACES",
    "fit_calibrations",
    "evaluate_photos",
    "face_nme",
    "truth_box_nme",
    "mean_box_shape",
]

MATCH_IOU = 0.5  # calibrated detector box vs landmark box
FIT_IOU = 0.25  # raw detector box vs landmark box, only to pick calibration pairs
MIN_CALIBRATION_FACES = 20  # a median of fewer matched faces is not trusted


def landmark_box(points: torch.Tensor) -> np.ndarray:
    """Tight XYXY box ``(4,)`` of landmarks ``(K, 2)``."""
    return torch.cat([points.min(0).values, points.max(0).values]).numpy().astype(np.float32)


def face_nme(points: np.ndarray, record: FaceRecord) -> float:
    """NME (a fraction) of predicted points ``(K, 2)`` against the record's landmarks."""
    return float(nme(torch.as_tensor(points, dtype=torch.float32)[None], record.points[None])[0])


def truth_box_nme(predictor: LandmarkPredictor, record: FaceRecord, image=None) -> float:
    """NME of ``predictor`` on ``record``'s face cropped around its ground-truth landmark box
    (``image``: the decoded photo, when the caller has it already)."""
    image = rgb_array(record.image_path) if image is None else image
    (face,) = predictor(image, boxes=landmark_box(record.points)[None], box_kind="landmarks")
    return face_nme(face.points, record)


def mean_box_shape(records: Sequence[FaceRecord]) -> np.ndarray:
    """The mean landmark shape ``(K, 2)`` relative to each face's tight landmark box: centre at
    0, the box's longer side 1 (the floor a model must beat, placed in any box)."""
    shapes = []
    for record in records:
        box = landmark_box(record.points)
        side = float((box[2:] - box[:2]).max())
        shapes.append((record.points.numpy() - (box[:2] + box[2:]) / 2) / side)
    return np.mean(shapes, axis=0)


def _placed(shape: np.ndarray, box: np.ndarray) -> np.ndarray:
    """``shape`` (:func:`mean_box_shape`) placed in the square box ``box`` ``(4,)``."""
    return shape * float((box[2:] - box[:2]).max()) + (box[:2] + box[2:]) / 2


def best_match(boxes: np.ndarray, target: np.ndarray, min_iou: float) -> int | None:
    """Index of the box ``(n, 4)`` with the highest IoU with ``target`` ``(4,)``, if >= min."""
    if len(boxes) == 0:
        return None
    ious = box_iou(torch.from_numpy(np.asarray(boxes, np.float32)), torch.from_numpy(target[None]))
    best = int(ious[:, 0].argmax())
    return best if float(ious[best, 0]) >= min_iou else None


def _detections(detector: FaceDetector, records: Sequence[FaceRecord]) -> list[list[DetectedFace]]:
    return [detector(rgb_array(record.image_path)) for record in records]


def fit_calibrations(
    detector: FaceDetector, records: Sequence[FaceRecord], min_faces: int = MIN_CALIBRATION_FACES
) -> dict[str, BoxCalibration]:
    """The detector's box calibrations, one per box kind it draws, fitted on the faces it finds
    among ``records``; kinds matched on fewer than ``min_faces`` faces get none."""
    pairs: dict[str, tuple[list, list, list]] = {}
    default_kind = getattr(detector, "box_kind", "landmarks")
    for record, found in zip(records, _detections(detector, records), strict=True):
        truth = landmark_box(record.points)
        boxes = np.array([face.box for face in found]).reshape(-1, 4)
        match = best_match(boxes, truth, FIT_IOU)
        if match is not None:
            face = found[match]
            detected, truths, mirrored = pairs.setdefault(face.kind or default_kind, ([], [], []))
            detected.append(face.box)
            truths.append(truth)
            mirrored.append(face.mirrored)
    return {
        kind: BoxCalibration.fit(np.array(detected), np.array(truths), np.array(mirrored))
        for kind, (detected, truths, mirrored) in pairs.items()
        if len(detected) >= min_faces
    }


@dataclass
class PhotoEvaluation:
    faces: int = 0
    found: int = 0
    nme_truth_boxes: list[float] = field(default_factory=list)  # every face
    nme_detector: list[float] = field(default_factory=list)  # faces found
    nme_truth_on_found: list[float] = field(default_factory=list)  # the same faces, truth boxes
    # Floors: the mean training shape placed in the ground-truth box (every face) and in the
    # calibrated detector box (faces found); given a mean shape only.
    floor_truth_boxes: list[float] = field(default_factory=list)
    floor_detector_boxes: list[float] = field(default_factory=list)
    # Calibrated box against the landmark box, per face found: centre offset (the larger axis)
    # and side ratio, both relative to the landmark box's longer side.
    box_offsets: list[float] = field(default_factory=list)
    box_scales: list[float] = field(default_factory=list)
    seconds_detector_path: float = 0.0  # detector + crops + model, decode excluded
    seconds_detector_only: float = 0.0  # the detector alone, on the same photos
    photos: int = 0

    def summary(self) -> dict[str, float | int]:
        def mean(values: list[float]) -> float | None:
            return float(np.mean(values)) if values else None

        def quantile(values: list[float], q: float) -> float | None:
            return float(np.quantile(values, q)) if values else None

        detector, truth_found = mean(self.nme_detector), mean(self.nme_truth_on_found)
        return {
            "faces": self.faces,
            "found": self.found,
            "found_rate": self.found / self.faces if self.faces else 0.0,
            "nme_truth_boxes": mean(self.nme_truth_boxes),
            "nme_detector_boxes": detector,
            "nme_truth_boxes_on_found": truth_found,
            "nme_gap_points": None if detector is None else 100 * (detector - truth_found),
            "floor_truth_boxes": mean(self.floor_truth_boxes),
            "floor_detector_boxes": mean(self.floor_detector_boxes),
            "box_offset_median": quantile(self.box_offsets, 0.5),
            "box_offset_p90": quantile(self.box_offsets, 0.9),
            "box_scale_p10": quantile(self.box_scales, 0.1),
            "box_scale_p90": quantile(self.box_scales, 0.9),
            "photos_per_s": self.photos / self.seconds_detector_path if self.photos else None,
            "detector_ms_per_photo": 1000 * self.seconds_detector_only / self.photos
            if self.photos
            else None,
            "landmarks_ms_per_photo": 1000
            * (self.seconds_detector_path - self.seconds_detector_only)
            / self.photos
            if self.photos
            else None,
        }


def evaluate_photos(
    predictor: LandmarkPredictor,
    records: Sequence[FaceRecord],
    mean_shape: np.ndarray | None = None,
) -> PhotoEvaluation:
    """Each face through both paths: its ground-truth landmark box, and the predictor's
    detector (the detection matching the face, calibrated); timing covers the detector path
    from decoded pixels to landmarks. ``mean_shape`` (:func:`mean_box_shape` of the training
    faces): also the floor of each path, that shape placed in the same box."""
    if predictor.detector is None:
        raise ValueError("evaluate_photos needs a predictor with a detector")
    result = PhotoEvaluation()
    for record in records:
        image = rgb_array(record.image_path)
        truth = landmark_box(record.points)
        truth_nme = truth_box_nme(predictor, record, image)
        result.nme_truth_boxes.append(truth_nme)
        if mean_shape is not None:
            result.floor_truth_boxes.append(face_nme(_placed(mean_shape, truth), record))
        began = time.perf_counter()
        faces = predictor(image)
        result.seconds_detector_path += time.perf_counter() - began
        began = time.perf_counter()
        predictor.detector(image)
        result.seconds_detector_only += time.perf_counter() - began
        result.photos += 1
        result.faces += 1
        if not faces:
            continue
        match = best_match(np.stack([face.landmark_box for face in faces]), truth, MATCH_IOU)
        if match is None:
            continue
        result.found += 1
        placed, side = faces[match].landmark_box, float((truth[2:] - truth[:2]).max())
        offset = np.abs((placed[:2] + placed[2:]) / 2 - (truth[:2] + truth[2:]) / 2).max()
        result.box_offsets.append(float(offset) / side)
        result.box_scales.append(float((placed[2:] - placed[:2]).max()) / side)
        result.nme_detector.append(face_nme(faces[match].points, record))
        result.nme_truth_on_found.append(truth_nme)
        if mean_shape is not None:
            result.floor_detector_boxes.append(face_nme(_placed(mean_shape, placed), record))
    return result
