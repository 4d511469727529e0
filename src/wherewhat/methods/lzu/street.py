"""LZU's data: scattered-MNIST street scenes whose small digits sit in a horizon band.

The generator is the core's (:mod:`wherewhat.data.scatter`, perspective layout); this is the
preset that makes a road-like prior true, the regime where a fixed, dataset-wide zoom can pay:
digits are small at the horizon (45 % of the height) and grow linearly with their distance from
it, so the small ones (box side ``sqrt(area) <= 24`` px) are almost all in the band
``|y - y_h| <= band_width * H`` while medium and large ones fill the rest of the image.

:func:`band_rows` and :func:`in_band` give the band the evaluation splits boxes by.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from wherewhat.data.scatter import ScatterConfig
from wherewhat.methods.lzu.region_metrics import in_band as region_in_band

__all__ = ["band_rows", "in_band", "street_scene_config"]


def street_scene_config(**changes: Any) -> ScatterConfig:
    """A 512 x 1024 street preset for LZU; keyword arguments override any knob.

    Perspective layout: horizon at 0.45 H, digits of 8 px there growing linearly to 128 px at
    0.55 of the way to the bottom border (0.30 H from the horizon), distances ``D * u ** 3`` so
    that about half of the boxes are small, +-10 % size jitter, 3 % strays (rows anywhere: the
    small digits off the band), 4-12 digits whose ink boxes overlap by at most 10 %.
    ``band_width`` = 0.1: the band is the rows within 0.1 H (51 px) of the horizon.

    Why these values: a digit's ink box is 0.4-0.75 of its side, so digits up to ~40-60 px are
    still small; with full size only at the border (``full_size_distance=1``) they would reach
    ~100 px from the horizon and only ~85 % of the small boxes would be in the band. Measured
    over 200 train scenes (seed 0): boxes 50 % small, 26 % medium, 24 % large; 97.5 % of the
    small ones have their centre in the band (seeds 1, 2: 97.1 %, 96.0 %). A 5 % stray fraction
    gives 94.7-96.1 % over five seeds, too close to the 95 % target, hence 3 %.
    """
    preset = ScatterConfig(
        image_size=(512, 1024),
        layout="perspective",
        min_digit_size=8,
        max_digit_size=128,
        min_digits=4,
        max_digits=12,
        n_train=2_000,
        n_test=500,
        band_center=0.45,
        band_width=0.1,
        full_size_distance=0.55,
        perspective_power=3.0,
        size_jitter=0.1,
        stray_fraction=0.03,
        max_overlap=0.1,
    )
    return preset.replace(**changes)


def band_rows(config: ScatterConfig) -> tuple[float, float]:
    """The horizon band ``(y0, y1)`` in original pixel-edge rows (pixel j spans [j, j + 1)):
    ``band_center * H -+ band_width * H``, not clipped to the image."""
    height = config.image_size[0]
    centre, half = config.band_center * height, config.band_width * height
    return centre - half, centre + half


def in_band(boxes: Tensor | np.ndarray, config: ScatterConfig) -> Tensor | np.ndarray:
    """Whether each box's centre row lies in the band (ends included): ``boxes`` (n, 4) XYXY in
    original pixels -> (n,) bool, a tensor for a tensor input, else a numpy array."""
    as_tensor = isinstance(boxes, Tensor)
    values = boxes if as_tensor else torch.from_numpy(np.asarray(boxes, dtype=np.float64))
    if values.ndim != 2 or values.shape[-1] != 4:
        raise ValueError(f"in_band: expected boxes of shape (n, 4), got {tuple(values.shape)}")
    inside = region_in_band(values.to(torch.float64), band_rows(config))
    return inside if as_tensor else inside.numpy()
