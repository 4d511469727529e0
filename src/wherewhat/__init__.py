"""wherewhat: visual representations that know *what* is *where*.

Four methods on one core: SSDIR, WorldComp2D, LZU and Spatial Prediction. See README.md.

``wherewhat.landmarks(image)`` gives the 68 landmarks of every face in a photo with the shipped
model (see :mod:`wherewhat.landmarking`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_PREDICTORS: dict[tuple, Any] = {}


def landmarks(image: Any, *, detector: str = "opencv", backend: str = "onnx", threads: int = 1):
    """Every face in ``image`` (path, PIL image, ``(H, W, 3)`` uint8 array or ``(3, H, W)``
    tensor) as ``Face(box, points, score)``: box ``(4,)`` XYXY px, points ``(68, 2)`` px.

    The shipped model is loaded once per setting and kept; the package is imported lazily so
    that ``import wherewhat`` stays instant."""
    key = (detector, backend, threads)
    if key not in _PREDICTORS:
        from wherewhat.landmarking.predictor import LandmarkPredictor

        _PREDICTORS[key] = LandmarkPredictor.shipped(
            detector=detector, backend=backend, threads=threads
        )
    return _PREDICTORS[key](image)
