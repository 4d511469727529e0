"""What every face-landmark model here shares: input statistics and the mean-shape prior.

WorldComp2D (:mod:`wherewhat.methods.worldcomp2d`) and the baselines
(:mod:`wherewhat.models.landmark_baselines`) both normalise with these statistics and regress
offsets from :func:`mean_shape_from_points`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wherewhat.geometry import pixel_to_normalized

__all__ = ["GREY_MEAN", "GREY_STD", "IMAGENET_MEAN", "IMAGENET_STD", "mean_shape_from_points"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Grey statistics the reference uses for COFW.
GREY_MEAN = (0.4637,)
GREY_STD = (0.2591,)


def mean_shape_from_points(
    points: Tensor, crop_size: int, num_landmarks: int | None = None
) -> Tensor:
    """Mean landmark shape in normalised crop coordinates: ``(N, K, 2)`` px -> ``(K, 2)``.

    Normalised as everywhere in wherewhat (u = 2x / S - 1, so -1 and 1 are the crop's edges).
    A point with a non-finite coordinate is left out of its landmark's mean. ``num_landmarks``:
    the K a model expects (checked).
    """
    k = points.shape[1] if num_landmarks is None and points.ndim == 3 else num_landmarks
    if points.ndim != 3 or tuple(points.shape[1:]) != (k, 2):
        raise ValueError(f"expected training shapes (N, {k or 'K'}, 2), got {tuple(points.shape)}")
    normalised = pixel_to_normalized(points.double(), (crop_size, crop_size))
    finite = torch.isfinite(normalised).all(dim=-1, keepdim=True)
    total = torch.where(finite, normalised, torch.zeros_like(normalised)).sum(dim=0)
    count = finite.sum(dim=0)
    if (count == 0).any():
        raise ValueError("some landmark has no finite position in any training shape")
    return (total / count).float()
