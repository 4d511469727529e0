"""Detector box -> the box the landmark model's crops were cut around.

The models were trained on square crops centred on the tight box of the 68 landmarks, with a
side of ``side_factor`` x its longer side. A detector's box is placed and sized differently (the
Haar cascade's is square, includes the forehead and stops at the chin), so the crop built from it
must be corrected, or the face sits in the crop where the model never saw one.

:class:`BoxCalibration` is that correction: the landmark box's centre is the detector box's
centre shifted by ``(shift_x * w, shift_y * h)``, and its longer side is ``scale`` x the detector
box's longer side. :meth:`BoxCalibration.fit` takes medians of those ratios over training faces
(detector box matched to the ground-truth landmark box), so a few bad matches do not move it.

A box found on the mirrored photo (a profile cascade knows one side only) is drawn as the
mirror image of the faces the calibration describes: its horizontal shift is negated, in the fit
as in use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from wherewhat.errors import ConfigError

__all__ = ["BoxCalibration", "IDENTITY", "TRAINING_CROP"]


@dataclass(frozen=True)
class BoxCalibration:
    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0
    faces: int = 0  # how many matched faces it was fitted on (0: not fitted)

    def landmark_boxes(self, boxes: np.ndarray, mirrored: np.ndarray | None = None) -> np.ndarray:
        """``(n, 4)`` detector boxes -> ``(n, 4)`` square boxes standing for the landmark boxes
        (only their centre and longer side matter to the crop). ``mirrored`` ``(n,)`` bool: boxes
        found on the mirrored photo."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        size = boxes[:, 2:] - boxes[:, :2]
        shift = np.tile([self.shift_x, self.shift_y], (len(boxes), 1))
        shift[:, 0] *= _mirror_signs(mirrored, len(boxes))
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + size * shift
        half = self.scale * size.max(axis=1, keepdims=True) / 2
        return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)

    @classmethod
    def fit(
        cls,
        detector_boxes: np.ndarray,
        landmark_boxes: np.ndarray,
        mirrored: np.ndarray | None = None,
    ) -> BoxCalibration:
        """Median shift and scale over matched pairs of ``(n, 4)`` boxes (``mirrored`` ``(n,)``:
        detector boxes found on the mirrored photo)."""
        detector_boxes = np.asarray(detector_boxes, dtype=np.float64).reshape(-1, 4)
        landmark_boxes = np.asarray(landmark_boxes, dtype=np.float64).reshape(-1, 4)
        if len(detector_boxes) != len(landmark_boxes) or len(detector_boxes) == 0:
            raise ConfigError(
                f"calibration needs matched box pairs, got {len(detector_boxes)} detector and "
                f"{len(landmark_boxes)} landmark boxes"
            )
        size = detector_boxes[:, 2:] - detector_boxes[:, :2]
        shift = ((landmark_boxes[:, :2] + landmark_boxes[:, 2:]) / 2
                 - (detector_boxes[:, :2] + detector_boxes[:, 2:]) / 2) / size  # fmt: skip
        shift[:, 0] *= _mirror_signs(mirrored, len(detector_boxes))
        ratio = (landmark_boxes[:, 2:] - landmark_boxes[:, :2]).max(axis=1) / size.max(axis=1)
        return cls(
            float(np.median(shift[:, 0])),
            float(np.median(shift[:, 1])),
            float(np.median(ratio)),
            len(detector_boxes),
        )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _mirror_signs(mirrored: np.ndarray | None, n: int) -> np.ndarray:
    """``(n,)``: -1 for mirrored boxes, else 1."""
    if mirrored is None:
        return np.ones(n)
    return np.where(np.asarray(mirrored, dtype=bool).reshape(n), -1.0, 1.0)


IDENTITY = BoxCalibration()
# A photo framed like a training crop: the landmark box's longer side is 1 / side_factor of it.
TRAINING_CROP = BoxCalibration(scale=1 / 1.25)
