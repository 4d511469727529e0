"""LZU's data: scattered-MNIST street scenes with small digits near a horizon band.

The generator is the core's (:mod:`wherewhat.data.scatter`); this is the preset that gives it
a road-like prior: the regime where a fixed, dataset-wide zoom can pay.
"""

from __future__ import annotations

from typing import Any

from wherewhat.data.scatter import ScatterConfig

__all__ = ["street_scene_config"]


def street_scene_config(**changes: Any) -> ScatterConfig:
    """A 512 x 1024 road-like preset for LZU: small digits near a horizon band at 45 % height,
    large ones anywhere; 4-12 digits of 16-160 px. Keyword arguments override any knob."""
    preset = ScatterConfig(
        image_size=(512, 1024),
        grid_sizes=((4, 8), (6, 12)),
        min_digit_size=16,
        max_digit_size=160,
        cell_filled_threshold=0.25,  # small digits fill their cell too: fewer pile-ups in the band
        min_digits=4,
        max_digits=12,
        n_train=2_000,
        n_test=500,
        band_center=0.45,
        band_width=0.05,
        band_strength_small=0.9,
        band_strength_large=0.0,
    )
    return preset.replace(**changes)
