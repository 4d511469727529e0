"""Where the faces are: a small detector interface and the detectors that need no download.

A detector is any callable ``detector(image) -> list[DetectedFace]`` with ``image`` an
``(H, W, 3)`` uint8 RGB array. Its ``box_kind`` attribute (default ``"landmarks"``) names the
calibration that turns its boxes into the crops the landmark model was trained on (see
:mod:`.calibration`): detectors draw their boxes differently from a tight landmark box.

- :class:`OpenCVFaceDetector`: OpenCV's frontal-face Haar cascade, bundled in
  ``opencv-python-headless`` (``pip install 'wherewhat[faces]'``); offline once installed.
- :class:`WholeImage`: the whole photo is one face, framed like the training crops (for photos
  that are already face crops).

Boxes from ``.pts`` files or a boxes file are not detectors: give them to the predictor as
``boxes`` (``box_kind="landmarks"`` for tight landmark boxes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from wherewhat.errors import ConfigError, UserError

__all__ = ["DetectedFace", "FaceDetector", "OpenCVFaceDetector", "WholeImage", "detector_by_name"]


@dataclass(frozen=True)
class DetectedFace:
    """A face box ``(4,)`` float32 XYXY in image pixels and the detector's confidence."""

    box: np.ndarray
    score: float = 1.0


class FaceDetector(Protocol):
    box_kind: str

    def __call__(self, image: np.ndarray) -> list[DetectedFace]: ...


def _opencv():
    try:
        import cv2
    except ImportError:
        raise UserError(
            "the OpenCV face detector needs opencv-python-headless",
            hint="pip install 'wherewhat[faces]' (or pass --faces pts|whole|boxes FILE)",
        ) from None
    return cv2


class OpenCVFaceDetector:
    """OpenCV's bundled frontal-face Haar cascade (Viola-Jones).

    Args:
        cascade: file name inside ``cv2.data.haarcascades``.
        scale_factor, min_neighbors: ``detectMultiScale``'s search step and vote threshold.
        min_side: smallest face side searched, as a fraction of the image's shorter side.
        detect_side: the cascade runs on the photo shrunk so that its longer side is at most
            this many pixels (None: full size); boxes are scaled back. Its cost grows with the
            pixel count, and a face that fills 5 % of a photo's side is found at 480 px.

    The score is n / (n + min_neighbors), n the number of raw detection windows merged into
    the face (OpenCV's confidence for this detector), so it lies in [0.5, 1); faces come largest
    first.
    """

    box_kind = "opencv_haar"

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_default.xml",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_side: float = 0.05,
        detect_side: int | None = 480,
    ):
        cv2 = _opencv()
        path = f"{cv2.data.haarcascades}{cascade}"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise ConfigError(f"cascade {cascade!r}: OpenCV could not load {path}")
        self._cv2 = cv2
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_side = min_side
        self.detect_side = detect_side

    def __call__(self, image: np.ndarray) -> list[DetectedFace]:
        grey = self._cv2.cvtColor(np.ascontiguousarray(image), self._cv2.COLOR_RGB2GRAY)
        scale = 1.0
        if self.detect_side is not None and max(grey.shape) > self.detect_side:
            scale = self.detect_side / max(grey.shape)
            size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
            grey = self._cv2.resize(grey, size, interpolation=self._cv2.INTER_AREA)
        side = max(16, int(self.min_side * min(grey.shape)))
        # detectMultiScale2 also returns how many raw windows each face merged (its
        # confidence); detectMultiScale3's level weights would change which faces are returned.
        boxes, neighbours = self._cascade.detectMultiScale2(
            grey,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(side, side),
        )
        faces = [
            DetectedFace(
                np.array([x, y, x + w, y + h], dtype=np.float32) / np.float32(scale),
                float(count) / (float(count) + self.min_neighbors),
            )
            for (x, y, w, h), count in zip(
                np.reshape(boxes, (-1, 4)), np.ravel(neighbours), strict=True
            )
        ]
        return sorted(faces, key=lambda face: -float(np.prod(face.box[2:] - face.box[:2])))


class WholeImage:
    """One face per image: the whole image, taken to be framed as the model's training crops."""

    box_kind = "training_crop"

    def __call__(self, image: np.ndarray) -> list[DetectedFace]:
        height, width = image.shape[:2]
        return [DetectedFace(np.array([0, 0, width, height], dtype=np.float32))]


_DETECTORS: dict[str, Callable[[], FaceDetector]] = {
    "opencv": OpenCVFaceDetector,
    "whole": WholeImage,
}


def detector_by_name(name: str) -> FaceDetector:
    """``opencv`` or ``whole``."""
    if name not in _DETECTORS:
        raise ConfigError(f"face detector {name!r}: expected one of {sorted(_DETECTORS)}")
    return _DETECTORS[name]()
