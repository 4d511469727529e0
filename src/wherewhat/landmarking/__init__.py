"""Landmarks on a user's own photos: faces found (:mod:`.detectors`), detector boxes turned into
training crops (:mod:`.calibration`), the shipped model run (:mod:`.predictor`, :mod:`.shipped`),
results written (:mod:`.outputs`). ``wherewhat.landmarks(image)`` is the one-call entry point.
"""

from wherewhat.landmarking.calibration import BoxCalibration
from wherewhat.landmarking.detectors import (
    DetectedFace,
    FaceDetector,
    OpenCVFaceDetector,
    WholeImage,
)
from wherewhat.landmarking.predictor import Face, LandmarkPredictor

__all__ = [
    "BoxCalibration",
    "DetectedFace",
    "FaceDetector",
    "OpenCVFaceDetector",
    "WholeImage",
    "Face",
    "LandmarkPredictor",
]
