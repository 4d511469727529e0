"""Where the faces are: a small detector interface and the detectors that need no download.

A detector is any callable ``detector(image) -> list[DetectedFace]`` with ``image`` an
``(H, W, 3)`` uint8 RGB array. Each face's box kind (its ``kind``, else the detector's
``box_kind``, default ``"landmarks"``) names the calibration that turns its box into the crop the
landmark model was trained on (see :mod:`.calibration`): detectors draw their boxes differently
from a tight landmark box.

- :class:`OpenCVFaceDetector`: OpenCV's bundled Haar cascades (frontal faces, then profiles when
  no frontal face is found), shipped in ``opencv-python-headless`` (``pip install
  'wherewhat[faces]'``); offline once installed.
- :class:`WholeImage`: the whole photo is one face, framed like the training crops (for photos
  that are already face crops).

Boxes from ``.pts`` files or a boxes file are not detectors: give them to the predictor as
``boxes`` (``box_kind="landmarks"`` for tight landmark boxes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from wherewhat.errors import ConfigError, UserError

__all__ = [
    "DetectedFace",
    "FaceDetector",
    "OpenCVFaceDetector",
    "WholeImage",
    "detector_by_name",
    "PROFILE_KIND",
]

FRONTAL_KIND = "opencv_haar"
PROFILE_KIND = "opencv_haar_profile"


@dataclass(frozen=True)
class DetectedFace:
    """A face box ``(4,)`` float32 XYXY in image pixels and the detector's confidence.

    ``kind``: how the box was drawn (None: the detector's ``box_kind``); ``mirrored``: the box
    was found on the left-right mirrored photo (and mapped back), so its calibration's
    horizontal shift applies mirrored too."""

    box: np.ndarray
    score: float = 1.0
    kind: str | None = None
    mirrored: bool = False


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
    """OpenCV's bundled Haar cascades (Viola-Jones): frontal faces; where none is found, faces
    in profile (the profile cascade knows one side, so it also runs on the mirrored photo).

    Args:
        scale_factor, min_neighbors: ``detectMultiScale``'s search step and vote threshold.
        min_face: smallest face side searched, as a fraction of the photo's shorter side.
        detect_side: the cascades run on the photo shrunk so that its longer side is at most
            this many pixels (None: full size); boxes are scaled back.
        profiles: fall back to the profile cascade when no frontal face is found.
        threads: OpenCV's thread count (a process-wide setting; None leaves it alone).

    The defaults look for faces that fill at least a fifth of the photo, as a selfie or
    portrait detector does (MediaPipe's short-range face detector sees a 128 px image): the
    search then costs about 10 ms per photo on one core. For group photos and small faces lower ``min_face``
    and raise ``detect_side`` (e.g. 0.05 and 640); the cost grows with the searched pixels.

    The score is n / (n + min_neighbors), n the number of raw detection windows merged into
    the face (OpenCV's confidence for this detector), so it lies in [0.5, 1); faces come largest
    first.
    """

    box_kind = FRONTAL_KIND

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 3,
        min_face: float = 0.2,
        detect_side: int | None = 128,
        profiles: bool = True,
        threads: int | None = None,
    ):
        cv2 = _opencv()
        self._cv2 = cv2
        self._frontal = self._load("haarcascade_frontalface_default.xml")
        self._profile = self._load("haarcascade_profileface.xml") if profiles else None
        if threads is not None:
            cv2.setNumThreads(int(threads))
        if not 0 < min_face <= 1:
            raise ConfigError(f"min_face={min_face}: expected a fraction of the shorter side")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face = min_face
        self.detect_side = detect_side

    @property
    def profiles(self) -> bool:
        return self._profile is not None

    def _load(self, cascade: str) -> Any:
        path = f"{self._cv2.data.haarcascades}{cascade}"
        classifier = self._cv2.CascadeClassifier(path)
        if classifier.empty():
            raise ConfigError(f"cascade {cascade!r}: OpenCV could not load {path}")
        return classifier

    def _search(self, cascade: Any, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``(n, 4)`` XYWH and merged-window counts ``(n,)`` in ``grey``'s pixels."""
        side = max(16, int(self.min_face * min(grey.shape)))
        # detectMultiScale2 also returns how many raw windows each face merged (its
        # confidence); detectMultiScale3's level weights would change which faces are returned.
        boxes, counts = cascade.detectMultiScale2(
            grey,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(side, side),
        )
        return np.reshape(boxes, (-1, 4)).astype(np.float32), np.ravel(counts).astype(np.float32)

    def _faces(
        self, boxes: np.ndarray, counts: np.ndarray, scale: float, kind: str, mirrored: bool,
        width: int,
    ) -> list[DetectedFace]:  # fmt: skip
        xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
        if mirrored:  # back from the mirrored photo: x -> width - x
            xyxy = np.stack([width - xyxy[:, 2], xyxy[:, 1], width - xyxy[:, 0], xyxy[:, 3]], 1)
        return [
            DetectedFace(
                box / np.float32(scale), float(n / (n + self.min_neighbors)), kind, mirrored
            )
            for box, n in zip(xyxy, counts, strict=True)
        ]

    def __call__(self, image: np.ndarray) -> list[DetectedFace]:
        grey = self._cv2.cvtColor(np.ascontiguousarray(image), self._cv2.COLOR_RGB2GRAY)
        scale = 1.0
        if self.detect_side is not None and max(grey.shape) > self.detect_side:
            scale = self.detect_side / max(grey.shape)
            size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
            grey = self._cv2.resize(grey, size, interpolation=self._cv2.INTER_AREA)
        width = grey.shape[1]
        faces = self._faces(*self._search(self._frontal, grey), scale, FRONTAL_KIND, False, width)
        if not faces and self._profile is not None:
            for mirrored, view in ((False, grey), (True, np.ascontiguousarray(grey[:, ::-1]))):
                found = self._search(self._profile, view)
                faces += self._faces(*found, scale, PROFILE_KIND, mirrored, width)
            faces = _suppress_overlaps(faces)
        return sorted(faces, key=lambda face: -float(np.prod(face.box[2:] - face.box[:2])))


def _suppress_overlaps(faces: list[DetectedFace], max_iou: float = 0.3) -> list[DetectedFace]:
    """Of faces overlapping by more than ``max_iou`` (the same face seen facing either way),
    the one with the higher score."""
    if len(faces) < 2:
        return faces
    import torch
    from torchvision.ops import nms

    boxes = torch.from_numpy(np.stack([face.box for face in faces]))
    scores = torch.tensor([face.score for face in faces])
    return [faces[i] for i in nms(boxes, scores, max_iou).tolist()]


class WholeImage:
    """One face per image: the whole image, taken to be framed as the model's training crops."""

    box_kind = "training_crop"

    def __call__(self, image: np.ndarray) -> list[DetectedFace]:
        height, width = image.shape[:2]
        return [DetectedFace(np.array([0, 0, width, height], dtype=np.float32))]


_DETECTORS: dict[str, Callable[..., FaceDetector]] = {
    "opencv": OpenCVFaceDetector,
    "whole": WholeImage,
}


def detector_by_name(name: str, **options: Any) -> FaceDetector:
    """``opencv`` (with :class:`OpenCVFaceDetector`'s ``options``) or ``whole``."""
    if name not in _DETECTORS:
        raise ConfigError(f"face detector {name!r}: expected one of {sorted(_DETECTORS)}")
    return _DETECTORS[name](**options)
