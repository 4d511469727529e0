"""The perspective layout: street-like scenes whose digit sizes grow away from a horizon row.

No grid cells. With ``y_h = band_center * H`` the horizon row and ``D`` the distance from it to
the farther image border (all rows in pixel-edge coordinates, pixel j spanning [j, j + 1)):

1. Ask for ``n`` digits, uniform on the integers ``[min_digits, max_digits]``.
2. Per digit, draw its pool image and whether it is a *stray* (chance ``stray_fraction``), then
   try up to :data:`MAX_TRIES` candidates:

   - distance ``d = D * u ** perspective_power`` (u uniform on [0, 1)) and a side of the horizon
     at random; a row outside the image takes the other side (which always fits, D being the
     farther border);
   - side ``min + (max - min) * min(1, d / (full_size_distance * D))`` (linear perspective:
     an object standing on a ground plane looks as tall as its image distance from the
     horizon, up to a factor), times
     ``exp(U(-size_jitter, size_jitter))``, rounded and clipped to ``[min, max]``;
   - a stray keeps that side but takes a centre row uniform over the rows where it fits;
   - the square is moved back inside the image when it sticks out (large digits near the
     border move towards the horizon), its left edge is uniform over the columns where it fits;
   - the candidate is kept when its ink box overlaps every placed ink box by at most
     ``max_overlap`` of the smaller box's area; after :data:`MAX_TRIES` misses the digit is
     skipped.

Every digit lies fully inside the image, so its ink box is known before it is drawn. Drawing
(blending, boxes, masks, layers) is the generator's, shared with the grid layout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from wherewhat.data.scatter.config import ScatterConfig

__all__ = ["MAX_TRIES", "PerspectivePlacer", "Placement", "ink_box", "perspective_side"]

MAX_TRIES = 30  # candidates per digit before it is skipped

# (top, left, source, pixels): where one digit goes, its pool index and its resized image
Placement = tuple[int, int, int, np.ndarray]


def perspective_side(config: ScatterConfig, distance: np.ndarray | float) -> np.ndarray:
    """Base digit side (before jitter and rounding) at ``distance`` px from the horizon; any
    shape, float64."""
    height = config.image_size[0]
    horizon = config.band_center * height
    reach = config.full_size_distance * max(horizon, height - horizon)
    t = np.minimum(np.asarray(distance, dtype=np.float64) / reach, 1.0)
    return config.min_digit_size + (config.max_digit_size - config.min_digit_size) * t


def ink_box(pixels: np.ndarray, top: int, left: int) -> np.ndarray | None:
    """XYXY box (4,) int64 around the nonzero pixels of ``pixels`` (s, s) placed at (top, left),
    or None when it has no ink."""
    rows = np.flatnonzero(pixels.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(pixels.any(axis=0))
    return np.array([left + cols[0], top + rows[0], left + cols[-1] + 1, top + rows[-1] + 1])


def _overlaps_too_much(box: np.ndarray, placed: np.ndarray, limit: float) -> bool:
    """Whether ``box`` (4,) covers more than ``limit`` of the smaller box with any of ``placed``
    (n, 4)."""
    if placed.shape[0] == 0:
        return False
    width = np.minimum(box[2], placed[:, 2]) - np.maximum(box[0], placed[:, 0])
    height = np.minimum(box[3], placed[:, 3]) - np.maximum(box[1], placed[:, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    areas = (placed[:, 2] - placed[:, 0]) * (placed[:, 3] - placed[:, 1])
    smaller = np.minimum(areas, (box[2] - box[0]) * (box[3] - box[1]))
    return bool(np.any(inter > limit * smaller))


class PerspectivePlacer:
    """Places the digits of one scene (see the module docstring).

    ``next_digit()`` returns the next :data:`Placement` or None when the scene is done;
    ``record(box)`` is told the drawn digit's ink box (XYXY, or None if invisible).
    ``resized(source, side)`` returns pool digit ``source`` resized to (side, side) uint8.
    """

    def __init__(
        self,
        config: ScatterConfig,
        rng: np.random.Generator,
        n_sources: int,
        resized: Callable[[int, int], np.ndarray],
    ):
        self.config = config
        self.rng = rng
        self.n_sources = n_sources
        self.resized = resized
        height = config.image_size[0]
        self.horizon = config.band_center * height
        self.reach = max(self.horizon, height - self.horizon)  # D: farther border
        self.remaining = int(rng.integers(config.min_digits, config.max_digits + 1))
        self.placed = np.zeros((0, 4), dtype=np.int64)

    def _candidate(self, source: int, stray: bool) -> tuple[int, int, np.ndarray, np.ndarray]:
        """One try: (top, left, pixels, ink box or None)."""
        cfg, rng = self.config, self.rng
        height, width = cfg.image_size
        distance = self.reach * rng.random() ** cfg.perspective_power
        row = self.horizon + distance if rng.random() < 0.5 else self.horizon - distance
        if not 0 <= row <= height:
            row = 2 * self.horizon - row
        jitter = np.exp(rng.uniform(-cfg.size_jitter, cfg.size_jitter))
        side = int(round(float(perspective_side(cfg, distance)) * jitter))
        side = int(min(max(side, cfg.min_digit_size), cfg.max_digit_size))
        if stray:
            row = rng.uniform(side / 2, height - side / 2)
        top = min(max(int(round(row - side / 2)), 0), height - side)
        left = int(rng.integers(0, width - side + 1))
        pixels = self.resized(source, side)
        return top, left, pixels, ink_box(pixels, top, left)

    def next_digit(self) -> Placement | None:
        while self.remaining > 0:
            self.remaining -= 1
            source = int(self.rng.integers(self.n_sources))
            stray = bool(self.rng.random() < self.config.stray_fraction)
            for _ in range(MAX_TRIES):
                top, left, pixels, box = self._candidate(source, stray)
                if box is None or not _overlaps_too_much(box, self.placed, self.config.max_overlap):
                    return top, left, source, pixels
        return None

    def record(self, box: tuple[int, int, int, int] | None) -> None:
        if box is not None:
            self.placed = np.vstack([self.placed, np.asarray(box, dtype=np.int64)[None]])
