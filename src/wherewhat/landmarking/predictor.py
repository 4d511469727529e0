"""68 landmarks per face on any photo: faces found, crops cut as in training, model run.

::

    predictor = LandmarkPredictor.shipped()          # the model inside the package, ONNX Runtime
    for face in predictor("photo.jpg"):
        face.box, face.points, face.score            # (4,) XYXY, (68, 2) px, detector confidence

Boxes come from the detector (default: OpenCV's bundled cascade) or are given (``boxes=``, with
the ``box_kind`` that says how they were drawn). Each box is turned into the box the model's
crops were cut around (:mod:`.calibration`), the crop is warped out of the photo exactly as in
training (square, ``side_factor`` x the longer side, ``crop_size`` px), the model predicts crop
pixels, and the crop's affine maps them back to the photo.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wherewhat.data.face_crops import face_crop_affine, uncrop_points, warp_to_crop
from wherewhat.errors import ConfigError
from wherewhat.geometry import apply_affine, invert_affine
from wherewhat.landmarking.calibration import IDENTITY, BoxCalibration
from wherewhat.landmarking.detectors import (
    PROFILE_KIND,
    DetectedFace,
    FaceDetector,
    detector_by_name,
)
from wherewhat.landmarking.images import rgb_array

__all__ = ["Face", "LandmarkPredictor", "BACKENDS"]

BACKENDS = ("onnx", "torch")


@dataclass(frozen=True)
class Face:
    """One face: its box ``(4,)`` XYXY as found (image px), ``points`` ``(K, 2)`` (x, y) image
    px in the project's frame (pixel centres at +0.5), the detector's ``score``, and
    ``landmark_box`` ``(4,)``: the calibrated box the crop was cut around (where the model
    expected the tight landmark box)."""

    box: np.ndarray
    points: np.ndarray
    score: float
    landmark_box: np.ndarray


class LandmarkPredictor:
    """A face-crop landmark model with its face finder.

    Args:
        model: crops ``(B, 3, S, S)`` in [0, 1] -> landmarks ``(B, K, 2)`` in crop pixels.
        crop_size, side_factor: the crops the model was trained on.
        backend: ``onnx`` (ONNX Runtime; the model is exported once, here) or ``torch``.
        threads: threads of either backend.
        detector: a :class:`~.detectors.FaceDetector`, ``"opencv"`` (OpenCV's cascades on
            ``threads`` threads, with ``detector_options``), ``"whole"`` or None (then every
            call must give ``boxes``).
        calibrations: ``box_kind`` -> :class:`BoxCalibration` for detectors' boxes.
        onnx_model: an exported model file to use instead of exporting.
        detector_options: :class:`~.detectors.OpenCVFaceDetector` settings (``min_face``,
            ``detect_side``, ...) for ``detector="opencv"``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        crop_size: int = 256,
        side_factor: float = 1.25,
        backend: str = "onnx",
        threads: int = 1,
        detector: FaceDetector | str | None = "opencv",
        calibrations: Mapping[str, BoxCalibration] | None = None,
        onnx_model: str | Path | None = None,
        detector_options: Mapping[str, Any] | None = None,
    ):
        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend!r}: expected one of {BACKENDS}")
        self.model = model.eval()
        self.crop_size = int(crop_size)
        self.side_factor = float(side_factor)
        self.backend = backend
        self.threads = int(threads)
        self.calibrations = dict(calibrations or {})
        if isinstance(detector, str):
            options = dict(detector_options or {})
            if detector == "opencv":
                options.setdefault("threads", self.threads)
                # Profile faces only where this model has their calibration.
                options.setdefault("profiles", PROFILE_KIND in self.calibrations)
            detector = detector_by_name(detector, **options)
        elif detector_options:
            raise ConfigError("detector_options go with a detector given by name")
        self.detector = detector
        self._session = self._onnx_session(onnx_model) if backend == "onnx" else None

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_release(cls, weights: str | Path, **kwargs: Any) -> LandmarkPredictor:
        """A release file (``<name>.pt``, its ``<name>.json`` beside it, and ``<name>.onnx``
        when present): the crop settings and calibrations come from the JSON."""
        from wherewhat.models.landmark_release import load_release

        weights = Path(weights)
        info_path = weights.with_suffix(".json")
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        crop = info.get("crop", {})
        calibrations = {
            kind: BoxCalibration(**values) for kind, values in info.get("calibrations", {}).items()
        }
        onnx_path = weights.with_suffix(".onnx")
        options: dict[str, Any] = {
            "crop_size": crop.get("crop_size", 256),
            "side_factor": crop.get("side_factor", 1.25),
            "calibrations": calibrations,
            "onnx_model": onnx_path if onnx_path.is_file() else None,
        }
        return cls(load_release(weights), **{**options, **kwargs})

    @classmethod
    def shipped(cls, **kwargs: Any) -> LandmarkPredictor:
        """The landmark model shipped inside the package (see :mod:`.shipped`)."""
        from wherewhat.landmarking.shipped import shipped_weights

        return cls.from_release(shipped_weights(), **kwargs)

    def _onnx_session(self, onnx_model: str | Path | None) -> Any:
        from wherewhat.bench.runtime import make_ort_session

        if onnx_model is not None:
            return make_ort_session(str(onnx_model), threads=self.threads)
        from wherewhat.bench.onnx_export import export_onnx

        example = torch.rand(2, 3, self.crop_size, self.crop_size)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.onnx"
            export_onnx(self.model, example, path, input_names=["crops"], output_names=["points"])
            return make_ort_session(path.read_bytes(), threads=self.threads)

    # -- the steps -----------------------------------------------------------------------------
    def calibration(self, box_kind: str) -> BoxCalibration:
        if box_kind == "landmarks":
            return IDENTITY
        if box_kind == "training_crop":
            return BoxCalibration(scale=1.0 / self.side_factor)
        if box_kind not in self.calibrations:
            raise ConfigError(
                f"no calibration for {box_kind!r} boxes (this model has "
                f"{sorted(self.calibrations) or 'none'}); its crops would not match training",
                hint="give boxes of another kind, or fit one with BoxCalibration.fit",
            )
        return self.calibrations[box_kind]

    def crops(
        self, image: np.ndarray, landmark_boxes: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops ``(n, 3, S, S)`` float32 and their original -> crop affines ``(n, 3, 3)``.

        Each crop is warped from the part of the photo it covers (plus a margin), not from the
        whole photo: on a large photo the antialiasing pre-filter would otherwise process every
        pixel for every face."""
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        crops, affines = [], []
        for box in landmark_boxes:
            affine = face_crop_affine(torch.from_numpy(box), self.crop_size, self.side_factor)
            (x0, y0, x1, y1), to_image = _covered_region(affine, self.crop_size, pixels.shape[-2:])
            window = pixels[:, y0:y1, x0:x1]
            crops.append(warp_to_crop(window, affine.double() @ to_image, self.crop_size))
            affines.append(affine)
        return torch.stack(crops), torch.stack(affines)

    def crop_points(self, crops: torch.Tensor) -> torch.Tensor:
        """Model output ``(n, K, 2)`` crop pixels for crops ``(n, 3, S, S)``."""
        if self._session is not None:
            (points,) = self._session.run(None, {"crops": crops.numpy().astype(np.float32)})
            return torch.from_numpy(points)
        from wherewhat.bench.runtime import torch_num_threads

        with torch_num_threads(self.threads), torch.inference_mode():
            return self.model(crops).float()

    def __call__(
        self,
        image: Any,
        boxes: Sequence[Sequence[float]] | np.ndarray | None = None,
        box_kind: str = "landmarks",
        scores: Sequence[float] | None = None,
    ) -> list[Face]:
        """Landmarks of every face in ``image`` (path, PIL image, array or tensor).

        Without ``boxes`` the detector finds the faces (its own ``box_kind``); with ``boxes``
        (``(n, 4)`` XYXY image px) those faces are used as given."""
        array = rgb_array(image)
        if boxes is None:
            if self.detector is None:
                raise ConfigError("no face detector: give boxes=, or build with a detector")
            found: list[DetectedFace] = list(self.detector(array))
            kind = getattr(self.detector, "box_kind", "landmarks")
        else:
            box_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
            given = [1.0] * len(box_array) if scores is None else list(scores)
            found = [DetectedFace(b, float(s)) for b, s in zip(box_array, given, strict=True)]
            kind = box_kind
        if not found:
            return []
        landmark_boxes = self.landmark_boxes(found, kind)
        crops, affines = self.crops(array, landmark_boxes)
        points = uncrop_points(self.crop_points(crops), affines.float())
        return [
            Face(face.box.astype(np.float32), p.numpy().astype(np.float32), face.score, box)
            for face, p, box in zip(found, points, landmark_boxes, strict=True)
        ]

    def landmark_boxes(self, faces: Sequence[DetectedFace], kind: str) -> np.ndarray:
        """``(n, 4)`` calibrated boxes of ``faces``, each by its own kind (else ``kind``)."""
        return np.concatenate([
            self.calibration(face.kind or kind).landmark_boxes(face.box[None], [face.mirrored])
            for face in faces
        ])  # fmt: skip


def _covered_region(
    affine: torch.Tensor, crop_size: int, image_hw: tuple[int, int]
) -> tuple[tuple[int, int, int, int], torch.Tensor]:
    """The integer pixel window ``(x0, y0, x1, y1)`` of the image that a crop samples (with a
    margin of 2 source pixels per crop pixel, for the bilinear and antialias filters),
    clipped to the image, and the window -> image translation ``(3, 3)`` float64."""
    inverse = invert_affine(affine.double())
    corners = torch.tensor(
        [[0, 0], [crop_size, 0], [0, crop_size], [crop_size, crop_size]], dtype=torch.float64
    )
    source = apply_affine(corners, inverse)
    margin = 2.0 * float(torch.linalg.det(inverse[:2, :2]).abs().sqrt()) + 2.0
    height, width = image_hw
    x0 = max(0, math.floor(float(source[:, 0].min()) - margin))
    y0 = max(0, math.floor(float(source[:, 1].min()) - margin))
    x1 = min(width, math.ceil(float(source[:, 0].max()) + margin))
    y1 = min(height, math.ceil(float(source[:, 1].max()) + margin))
    if x1 <= x0 or y1 <= y0:  # the crop lies outside the photo: any window, all zeros
        x0, y0, x1, y1 = 0, 0, 1, 1
    to_image = torch.eye(3, dtype=torch.float64)
    to_image[0, 2], to_image[1, 2] = x0, y0
    return (x0, y0, x1, y1), to_image
