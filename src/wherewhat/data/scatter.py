"""Multi-scale scattered-MNIST scenes: real MNIST digits of many sizes on a black canvas.

The generator follows the algorithm of the public ``multiscalemnist`` package (the dataset of
the SSDIR paper), with every one of its knobs, re-implemented here:

1. Pick a grid (rows, cols) uniformly from ``grid_sizes``; cells are ``H // rows`` by
   ``W // cols`` pixels. Ask for ``n`` digits, uniform on the integers
   ``[clamp(cells // 2), clamp(cells)]`` where ``clamp`` bounds to ``[min_digits, max_digits]``.
2. For each digit, pick a random cell that is not yet filled; stop early when none is left.
   Its size is uniform on the integers ``[min_digit_size, cap]``, where ``cap`` lets the digit
   reach at most ``m - 1/2`` cells from its cell centre, ``m`` being the distance (in cells) to the
   image border or to the nearest filled cell in the same row / column, and is at most
   ``max_digit_size`` (``min_digit_size`` when ``cap`` is smaller).
3. Its centre is the cell centre moved by up to ``position_variance / 2`` of a cell along each
   axis (uniform integer offset). The 28 x 28 digit is resized to ``size x size`` (PIL bicubic)
   and added to the canvas; the sum is clipped to 255.
4. Its box is tight around the resized digit's nonzero pixels that fall inside the image, XYXY in
   the pixel frame of ``ARCHITECTURE.md`` (pixel j spans [j, j + 1)); its label is the digit class.
   A digit none of whose ink lands inside the image gets no box (it is invisible).
5. Cell (r, c) becomes filled when, along each axis, the box starts no later than
   ``1 - cell_filled_threshold`` and ends later than ``cell_filled_threshold`` of the way through
   the cell (the reference's rounding rule). Small digits may leave their cell unfilled, so a
   later digit can land in it and overlap them, as in the reference.

Differences from the reference, on purpose: scene i of a split depends only on
``(seed, split, i)`` (its own random stream), so any prefix or single scene can be regenerated;
digits are drawn from the split's pool at random with replacement (the reference cycles through
a shuffled pool); grey scenes are stored once and repeated over ``channels``.

**Vertical placement prior** (off by default, exactly the reference then). Digit centres get a
density over image rows that depends on the digit size ``s``::

    p(row | s) = (1 - a(s)) / H + a(s) * Normal(row + 0.5; band_center * H, (band_width * H)^2)
    a(s) = band_strength_small + (band_strength_large - band_strength_small) * t,
    t = (s - min_digit_size) / (max_digit_size - min_digit_size)

(the Gaussian is normalised over the H rows). ``band_strength_small = 0.9`` with
``band_strength_large = 0`` puts nine in ten of the smallest digits in a horizon band and lets
the largest go anywhere, as road scenes do for LZU. It acts through step 2 and 3: every free
cell draws a candidate size; a cell is picked with probability proportional to the prior mass
that its reachable centre rows carry for that size (one-candidate-per-cell importance
resampling); the centre row is drawn from the prior restricted to those rows. The grid still
limits where digits can go, so the realised density follows the prior as far as free cells allow
(finer grids and fewer digits than cells follow it more closely).

Storage: see :mod:`wherewhat.data.scatter_cache`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from wherewhat.data.loader import ResumableDataLoader
from wherewhat.data.mnist import load_mnist_digits
from wherewhat.data.scatter_cache import (
    FORMAT_VERSION,
    cache_key,
    default_cache_root,
    read_json,
    read_split,
    write_json_atomic,
    write_split,
)
from wherewhat.errors import ConfigError, DataFormatError

__all__ = [
    "ScatterConfig",
    "lzu_scatter_config",
    "DigitLayer",
    "SceneDetail",
    "ScatterScenes",
    "generate_scene",
    "generate_scatter",
    "load_or_generate",
    "scatter_cache_dir",
    "ScatterMNIST",
    "collate_scenes",
    "ScatterMNISTDataModule",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
_STREAM_SALT = 0x5CA77E2  # keeps these random streams apart from other users of the same seed
_MAX_SIDE = 8192
_MAX_COUNT = 10_000_000


# --------------------------------------------------------------------------- configuration


def _as_int(key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"ScatterConfig.{key}={value!r}: expected an integer in [{lo}, {hi}]")
    try:
        number = operator.index(value)
    except TypeError:
        raise ConfigError(
            f"ScatterConfig.{key}={value!r}: expected an integer in [{lo}, {hi}]"
        ) from None
    if not lo <= number <= hi:
        raise ConfigError(f"ScatterConfig.{key}={value!r}: expected an integer in [{lo}, {hi}]")
    return number


def _as_float(key: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ConfigError(f"ScatterConfig.{key}={value!r}: expected a number in [{lo}, {hi}]")
    number = float(value)
    if not (math.isfinite(number) and lo <= number <= hi):
        raise ConfigError(f"ScatterConfig.{key}={value!r}: expected a number in [{lo}, {hi}]")
    return number


def _as_pair(key: str, value: Any, his: tuple[int, int], names: str) -> tuple[int, int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(f"ScatterConfig.{key}={value!r}: expected a pair {names}")
    return (
        _as_int(f"{key}[0]", value[0], 1, his[0]),
        _as_int(f"{key}[1]", value[1], 1, his[1]),
    )


@dataclass(frozen=True)
class ScatterConfig:
    """Every knob of the scattered-MNIST generator; plain data (see ``to_dict``/``from_dict``).

    Defaults: the SSDIR set scaled to 2 CPU cores: 128 x 128 grey scenes holding 1-9 digits of
    12-64 px (the paper: 512 px, 96-384 px digits, position variance 0.7).

    Attributes:
        image_size: (H, W) in pixels, 8..8192 each; non-square allowed (e.g. (512, 1024)).
        channels: 1 (grey) or 3 (the grey plane repeated, as the reference does).
        grid_sizes: candidate grids as (rows, cols); one is picked uniformly per scene.
        min_digit_size / max_digit_size: digit side in pixels, 1 <= min <= max <= min(H, W).
        position_variance: in [0, 1]: the centre moves up to this fraction of a cell (half each
            way) from the cell centre.
        cell_filled_threshold: in [0, 1]: how far a box must reach into a cell to fill it.
        digit_set: which digit classes (0-9) appear.
        min_digits / max_digits: bounds on the number of digits asked for per scene (the grid
            rule asks for cells//2..cells); fewer are placed when the grid fills up first.
        n_train / n_test: number of scenes per split.
        seed: non-negative integer; scene i of a split depends only on (seed, split, i).
        band_center / band_width: horizon band centre and standard deviation, fractions of H
            (band_width in [0.01, 1]).
        band_strength_small / band_strength_large: in [0, 1]: mixture weight of the band
            (versus uniform rows) for the smallest / largest digits, linear in size between;
            both 0 (default) = no prior.
        with_masks: also produce per-pixel class masks (0 background, 1 + class of the digit
            that is brightest at that pixel; ties go to the digit drawn first).
    """

    image_size: tuple[int, int] = (128, 128)
    channels: int = 1
    grid_sizes: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (3, 3))
    min_digit_size: int = 12
    max_digit_size: int = 64
    position_variance: float = 0.7
    cell_filled_threshold: float = 0.4
    digit_set: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
    min_digits: int = 1
    max_digits: int = 9
    n_train: int = 10_000
    n_test: int = 1_000
    seed: int = 0
    band_center: float = 0.5
    band_width: float = 0.1
    band_strength_small: float = 0.0
    band_strength_large: float = 0.0
    with_masks: bool = False

    def __post_init__(self) -> None:
        # Normalise YAML/JSON lists to tuples and numbers to Python types, then validate.
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        size = _as_pair("image_size", self.image_size, (_MAX_SIDE, _MAX_SIDE), "(H, W)")
        if min(size) < 8:
            raise ConfigError(
                f"ScatterConfig.image_size={self.image_size!r}: expected (H, W) each in [8, {_MAX_SIDE}]"
            )
        put("image_size", size)
        height, width = size
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ConfigError(f"ScatterConfig.channels={self.channels!r}: expected 1 or 3")
        put("channels", int(self.channels))
        grids = self.grid_sizes
        if isinstance(grids, (str, bytes)) or not isinstance(grids, Sequence) or not grids:
            raise ConfigError(
                f"ScatterConfig.grid_sizes={grids!r}: expected a non-empty list of (rows, cols)"
            )
        put(
            "grid_sizes",
            tuple(
                _as_pair(
                    f"grid_sizes[{i}]", g, (height, width), f"(rows <= {height}, cols <= {width})"
                )
                for i, g in enumerate(grids)
            ),
        )
        side = min(height, width)
        put("min_digit_size", _as_int("min_digit_size", self.min_digit_size, 1, side))
        put(
            "max_digit_size",
            _as_int("max_digit_size", self.max_digit_size, self.min_digit_size, side),
        )
        put("position_variance", _as_float("position_variance", self.position_variance, 0, 1))
        put(
            "cell_filled_threshold",
            _as_float("cell_filled_threshold", self.cell_filled_threshold, 0, 1),
        )
        digits = self.digit_set
        if isinstance(digits, (str, bytes)) or not isinstance(digits, Sequence) or not digits:
            raise ConfigError(
                f"ScatterConfig.digit_set={digits!r}: expected a non-empty list of classes 0-9"
            )
        digits = tuple(_as_int(f"digit_set[{i}]", d, 0, 9) for i, d in enumerate(digits))
        if len(set(digits)) != len(digits):
            raise ConfigError(f"ScatterConfig.digit_set={digits!r}: classes must not repeat")
        put("digit_set", digits)
        put("min_digits", _as_int("min_digits", self.min_digits, 0, 10_000))
        put("max_digits", _as_int("max_digits", self.max_digits, max(1, self.min_digits), 10_000))
        put("n_train", _as_int("n_train", self.n_train, 0, _MAX_COUNT))
        put("n_test", _as_int("n_test", self.n_test, 0, _MAX_COUNT))
        put("seed", _as_int("seed", self.seed, 0, 2**63 - 1))
        put("band_center", _as_float("band_center", self.band_center, 0, 1))
        put("band_width", _as_float("band_width", self.band_width, 0.01, 1))
        put(
            "band_strength_small",
            _as_float("band_strength_small", self.band_strength_small, 0, 1),
        )
        put(
            "band_strength_large",
            _as_float("band_strength_large", self.band_strength_large, 0, 1),
        )
        if not isinstance(self.with_masks, (bool, np.bool_)):
            raise ConfigError(f"ScatterConfig.with_masks={self.with_masks!r}: expected true/false")
        put("with_masks", bool(self.with_masks))

    def count(self, split: str) -> int:
        """Number of scenes in ``split`` (``"train"`` or ``"test"``)."""
        _check_split(split)
        return self.n_train if split == "train" else self.n_test

    @property
    def has_prior(self) -> bool:
        """Whether the vertical placement prior is active."""
        return max(self.band_strength_small, self.band_strength_large) > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready dict (tuples become lists)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "grid_sizes":
                value = [list(g) for g in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ScatterConfig:
        """Build from a plain dict; unknown keys raise ``ConfigError``, missing keys default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"ScatterConfig: unknown key(s) {unknown}; accepted keys: {sorted(known)}"
            )
        return cls(**values)

    def replace(self, **changes: Any) -> ScatterConfig:
        """A copy with some knobs changed (validated)."""
        return self.from_dict({**self.to_dict(), **changes})


def lzu_scatter_config(**changes: Any) -> ScatterConfig:
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


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class DigitLayer:
    """One placed digit: ``pixels`` (s, s) uint8 with its top-left corner at (top, left) in
    image pixels (may be negative: digits can stick out), its index ``source`` in the split's
    filtered digit pool and its class ``label``."""

    top: int
    left: int
    pixels: np.ndarray
    source: int
    label: int


@dataclass(frozen=True)
class SceneDetail:
    """One scene with per-digit layers (for inspection and tests).

    ``image`` (C, H, W) uint8, ``boxes`` (n, 4) float32 XYXY, ``labels`` (n,) int64, ``mask``
    (H, W) uint8 or None; ``layers`` holds every placed digit, ``box_layers[k]`` is the index in
    ``layers`` of the digit that box k belongs to.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None
    layers: tuple[DigitLayer, ...]
    box_layers: tuple[int, ...]


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([_STREAM_SALT, seed, SPLITS.index(split), index])


def _centre_row_cdf(config: ScatterConfig) -> np.ndarray | None:
    """Cumulative prior over centre rows per digit size: (sizes, H + 1) float64, or None."""
    if not config.has_prior:
        return None
    height = config.image_size[0]
    rows = np.arange(height) + 0.5
    band = np.exp(-0.5 * ((rows - config.band_center * height) / (config.band_width * height)) ** 2)
    band /= band.sum()
    sizes = np.arange(config.min_digit_size, config.max_digit_size + 1)
    t = (sizes - config.min_digit_size) / max(config.max_digit_size - config.min_digit_size, 1)
    strength = (
        config.band_strength_small + (config.band_strength_large - config.band_strength_small) * t
    )
    density = (1 - strength)[:, None] / height + strength[:, None] * band[None, :]
    cdf = np.zeros((len(sizes), height + 1))
    np.cumsum(density, axis=1, out=cdf[:, 1:])
    return cdf


def _draw_weighted(rng: np.random.Generator, weights: np.ndarray) -> int:
    total = float(weights.sum())
    if total <= 0:  # every free cell lies where the prior has no mass: fall back to uniform
        return int(rng.integers(len(weights)))
    cumulative = np.cumsum(weights)
    return min(
        int(np.searchsorted(cumulative, rng.random() * total, side="right")), len(weights) - 1
    )


class _SceneComposer:
    """Draws scenes from one split's digit pool; holds the precomputed prior table."""

    def __init__(self, config: ScatterConfig, pool_images: np.ndarray, pool_labels: np.ndarray):
        self.config = config
        self.pool_images = pool_images
        self.pool_labels = pool_labels
        self.row_cdf = _centre_row_cdf(config)
        self._pil_digits: dict[int, Image.Image] = {}  # PIL wrappers, made once per pool digit

    def _size_caps(
        self, filled: np.ndarray, rows: np.ndarray, cols: np.ndarray, cell: tuple[int, int]
    ) -> np.ndarray:
        """Largest digit side allowed for each free cell (the reference's margin rule)."""
        grid_rows, grid_cols = filled.shape
        margin_y = np.minimum(rows + 1, grid_rows - rows)
        margin_x = np.minimum(cols + 1, grid_cols - cols)
        filled_rows, filled_cols = np.nonzero(filled)
        if filled_rows.size:
            same_col = cols[:, None] == filled_cols[None, :]
            same_row = rows[:, None] == filled_rows[None, :]
            gap_y = np.where(same_col, np.abs(rows[:, None] - filled_rows[None, :]), grid_rows)
            gap_x = np.where(same_row, np.abs(cols[:, None] - filled_cols[None, :]), grid_cols)
            margin_y = np.minimum(margin_y, gap_y.min(axis=1))
            margin_x = np.minimum(margin_x, gap_x.min(axis=1))
        caps = np.minimum(cell[0] * (2 * margin_y - 1), cell[1] * (2 * margin_x - 1))
        return np.minimum(caps, self.config.max_digit_size)

    def _draw_row(self, rng: np.random.Generator, size: int, low: int, high: int) -> int:
        if self.row_cdf is None:
            return int(rng.integers(low, high + 1))
        cdf = self.row_cdf[size - self.config.min_digit_size]
        u = cdf[low] + rng.random() * (cdf[high + 1] - cdf[low])
        return int(np.clip(np.searchsorted(cdf, u, side="right") - 1, low, high))

    def _resized(self, source: int, size: int) -> np.ndarray:
        image = self._pil_digits.get(source)
        if image is None:
            image = self._pil_digits[source] = Image.fromarray(self.pool_images[source])
        return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))

    def _place(
        self,
        rng: np.random.Generator,
        filled: np.ndarray,
        cell: tuple[int, int],
        reach: tuple[int, int],
    ) -> tuple[int, int, int] | None:
        """Size and centre (size, y, x) of the next digit, or None when every cell is filled."""
        height, width = self.config.image_size
        smin = self.config.min_digit_size
        free = np.flatnonzero(~filled.ravel())
        if free.size == 0:
            return None
        rows, cols = np.divmod(free, filled.shape[1])
        caps = np.maximum(self._size_caps(filled, rows, cols, cell), smin)
        sizes = smin + (rng.random(free.size) * (caps - smin + 1)).astype(np.int64)
        centre_y = (cell[0] * (rows + 0.5)).astype(np.int64)
        row_low = np.maximum(centre_y - reach[0], 0)
        row_high = np.minimum(centre_y + reach[0], height - 1)
        if self.row_cdf is None:
            pick = int(rng.integers(free.size))
        else:  # importance resampling: each free cell weighted by its prior mass at its size
            size_rows = sizes - smin
            mass = self.row_cdf[size_rows, row_high + 1] - self.row_cdf[size_rows, row_low]
            pick = _draw_weighted(rng, mass)
        size = int(sizes[pick])
        y = self._draw_row(rng, size, int(row_low[pick]), int(row_high[pick]))
        centre_x = int(cell[1] * (cols[pick] + 0.5))
        x = int(rng.integers(max(centre_x - reach[1], 0), min(centre_x + reach[1], width - 1) + 1))
        return size, y, x

    def compose(
        self,
        rng: np.random.Generator,
        image_out: np.ndarray,
        mask_out: np.ndarray | None,
        layers: list[DigitLayer] | None = None,
        box_layers: list[int] | None = None,
    ) -> tuple[list[tuple[int, int, int, int]], list[int]]:
        """Draw one scene into ``image_out`` (H, W) uint8 (and ``mask_out``), both zero on entry.

        Returns the boxes (XYXY integer pixel edges) and labels of its visible digits; appends
        every placed digit to ``layers`` and each box's layer index to ``box_layers`` if given.
        """
        cfg = self.config
        height, width = cfg.image_size
        grid_rows, grid_cols = cfg.grid_sizes[int(rng.integers(len(cfg.grid_sizes)))]
        cell = (height // grid_rows, width // grid_cols)
        reach = (int(cell[0] * cfg.position_variance / 2), int(cell[1] * cfg.position_variance / 2))
        n_cells = grid_rows * grid_cols
        low = min(max(n_cells // 2, cfg.min_digits), cfg.max_digits)
        high = min(max(n_cells, cfg.min_digits), cfg.max_digits)
        n_digits = int(rng.integers(low, high + 1))

        filled = np.zeros((grid_rows, grid_cols), dtype=bool)
        brightest = None if mask_out is None else np.zeros((height, width), dtype=np.uint8)
        boxes: list[tuple[int, int, int, int]] = []
        labels: list[int] = []
        for _ in range(n_digits):
            placement = self._place(rng, filled, cell, reach)
            if placement is None:
                break
            size, y, x = placement
            source = int(rng.integers(len(self.pool_labels)))
            label = int(self.pool_labels[source])
            pixels = self._resized(source, size)
            top, left = y - size // 2, x - size // 2
            if layers is not None:
                layers.append(DigitLayer(top, left, pixels, source, label))

            t0, l0 = max(top, 0), max(left, 0)
            t1, l1 = min(top + size, height), min(left + size, width)
            visible = pixels[t0 - top : t1 - top, l0 - left : l1 - left]
            ink_rows = np.flatnonzero(visible.any(axis=1))
            if ink_rows.size == 0:
                continue
            ink_cols = np.flatnonzero(visible.any(axis=0))
            # additive blending clipped to 255, touching only this digit's window
            window = image_out[t0:t1, l0:l1]
            np.minimum(window + visible.astype(np.uint16), 255, out=window, casting="unsafe")
            if mask_out is not None:
                region = brightest[t0:t1, l0:l1]
                wins = visible > region
                region[wins] = visible[wins]
                mask_out[t0:t1, l0:l1][wins] = label + 1
            box = (
                l0 + int(ink_cols[0]),
                t0 + int(ink_rows[0]),
                l0 + int(ink_cols[-1]) + 1,
                t0 + int(ink_rows[-1]) + 1,
            )
            boxes.append(box)
            labels.append(label)
            if box_layers is not None and layers is not None:
                box_layers.append(len(layers) - 1)
            filled |= _cells_covered(box, filled.shape, cfg.image_size, cfg.cell_filled_threshold)
        return boxes, labels


def _cells_covered(
    box: tuple[int, int, int, int],
    grid: tuple[int, int],
    image_size: tuple[int, int],
    threshold: float,
) -> np.ndarray:
    """(rows, cols) bool: cells this box fills. Along each axis the box must start no later than
    ``1 - threshold`` and end later than ``threshold`` of the way through the cell (the
    reference's rounding rule)."""
    (height, width), (grid_rows, grid_cols) = image_size, grid
    row_ids, col_ids = np.arange(grid_rows), np.arange(grid_cols)
    v0, v1 = grid_rows * box[1] / height, grid_rows * box[3] / height
    u0, u1 = grid_cols * box[0] / width, grid_cols * box[2] / width
    hit_rows = (v0 <= row_ids + 1 - threshold) & (v1 > row_ids + threshold)
    hit_cols = (u0 <= col_ids + 1 - threshold) & (u1 > col_ids + threshold)
    return hit_rows[:, None] & hit_cols[None, :]


def _digit_pool(
    config: ScatterConfig, split: str, digits_root: str | Path | None
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_mnist_digits(split, digits_root)
    images, labels = images.numpy(), labels.numpy()
    keep = np.isin(labels, config.digit_set)
    if not keep.any():
        where = "the embedded digits" if digits_root is None else str(digits_root)
        raise ConfigError(
            f"ScatterConfig.digit_set={list(config.digit_set)}: no such digit in the {split} "
            f"pool of {where}"
        )
    return np.ascontiguousarray(images[keep]), labels[keep]


def generate_scene(
    config: ScatterConfig, split: str, index: int, digits_root: str | Path | None = None
) -> SceneDetail:
    """Scene ``index`` of ``split`` with its per-digit layers; identical to that scene of
    :func:`generate_scatter` (the same random stream and code)."""
    _check_split(split)
    composer = _SceneComposer(config, *_digit_pool(config, split, digits_root))
    height, width = config.image_size
    grey = np.zeros((height, width), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8) if config.with_masks else None
    layers: list[DigitLayer] = []
    box_layers: list[int] = []
    boxes, labels = composer.compose(
        _scene_rng(config.seed, split, index), grey, mask, layers, box_layers
    )
    return SceneDetail(
        image=np.repeat(grey[None], config.channels, axis=0),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        mask=mask,
        layers=tuple(layers),
        box_layers=tuple(box_layers),
    )


@dataclass(eq=False)
class ScatterScenes:
    """A split of scenes, stored compactly.

    ``grey`` (N, H, W) uint8 (one plane, repeated over ``config.channels`` on access; a
    read-only memory map when loaded from the cache, then ``cache_dir`` is its folder),
    ``boxes_flat`` (M, 4) float32 XYXY pixels and ``labels_flat`` (M,) int64 for all scenes,
    scene i owning rows ``offsets[i]:offsets[i + 1]``; ``masks`` (N, H, W) uint8 or None.
    """

    config: ScatterConfig
    split: str
    grey: np.ndarray
    boxes_flat: np.ndarray
    labels_flat: np.ndarray
    offsets: np.ndarray
    masks: np.ndarray | None = field(default=None)
    cache_dir: Path | None = field(default=None)  # the split's folder when loaded from the cache

    @property
    def images(self) -> np.ndarray:
        """(N, C, H, W) uint8 read-only view (no copy)."""
        n, height, width = self.grey.shape
        return np.broadcast_to(self.grey[:, None], (n, self.config.channels, height, width))

    @cached_property
    def boxes(self) -> list[np.ndarray]:
        """Per scene (n_i, 4) float32 XYXY pixel boxes (views)."""
        return [
            self.boxes_flat[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)
        ]

    @cached_property
    def labels(self) -> list[np.ndarray]:
        """Per scene (n_i,) int64 digit classes (views)."""
        return [
            self.labels_flat[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)
        ]

    def __len__(self) -> int:
        return self.grey.shape[0]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """``image`` (C, H, W) uint8, ``boxes`` (n, 4), ``labels`` (n,) [, ``mask`` (H, W)]."""
        start, stop = self.offsets[index], self.offsets[index + 1]
        item = {
            "image": self.images[index],
            "boxes": self.boxes_flat[start:stop],
            "labels": self.labels_flat[start:stop],
        }
        if self.masks is not None:
            item["mask"] = self.masks[index]
        return item


def generate_scatter(
    config: ScatterConfig, split: str, digits_root: str | Path | None = None
) -> ScatterScenes:
    """Generate all ``config.count(split)`` scenes of ``split`` in memory.

    Train scenes use the digits of ``load_mnist_digits("train", digits_root)`` only, test scenes
    those of the ``"test"`` pool, so no digit image appears in both.
    """
    _check_split(split)
    composer = _SceneComposer(config, *_digit_pool(config, split, digits_root))
    count = config.count(split)
    height, width = config.image_size
    grey = np.zeros((count, height, width), dtype=np.uint8)
    masks = np.zeros((count, height, width), dtype=np.uint8) if config.with_masks else None
    offsets = np.zeros(count + 1, dtype=np.int64)
    all_boxes: list[tuple[int, int, int, int]] = []
    all_labels: list[int] = []
    for index in range(count):
        boxes, labels = composer.compose(
            _scene_rng(config.seed, split, index),
            grey[index],
            None if masks is None else masks[index],
        )
        all_boxes.extend(boxes)
        all_labels.extend(labels)
        offsets[index + 1] = len(all_labels)
    return ScatterScenes(
        config=config,
        split=split,
        grey=grey,
        boxes_flat=np.asarray(all_boxes, dtype=np.float32).reshape(-1, 4),
        labels_flat=np.asarray(all_labels, dtype=np.int64),
        offsets=offsets,
        masks=masks,
    )


# --------------------------------------------------------------------------- cache


@lru_cache(maxsize=4)
def _digits_fingerprint(digits_root: str | None) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for split in SPLITS:
        images, labels = load_mnist_digits(split, digits_root)
        digest.update(images.numpy().tobytes())
        digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


def _root_key(digits_root: str | Path | None) -> str | None:
    return None if digits_root is None else str(Path(digits_root).expanduser().resolve())


def scatter_cache_dir(
    config: ScatterConfig,
    cache_root: str | Path | None = None,
    digits_root: str | Path | None = None,
) -> Path:
    """The ``<cache_root>/scatter-<key>`` folder that holds (or will hold) this config's scenes."""
    key = cache_key(config.to_dict(), _digits_fingerprint(_root_key(digits_root)))
    return default_cache_root(cache_root) / f"scatter-{key}"


def _load_or_generate(
    config: ScatterConfig,
    split: str,
    cache_root: str | Path | None,
    digits_root: str | Path | None,
) -> tuple[ScatterScenes, bool]:
    """Return the scenes and whether they had to be generated."""
    _check_split(split)
    folder = scatter_cache_dir(config, cache_root, digits_root)
    key = folder.name.removeprefix("scatter-")
    config_path = folder / "config.json"
    expected = {
        "format": FORMAT_VERSION,
        "key": key,
        "split": split,
        "count": config.count(split),
        "image_size": tuple(config.image_size),
        "with_masks": config.with_masks,
    }
    generated = False
    if not (folder / split).exists():
        log.info(
            "generating %d scattered-MNIST %s scenes into %s", expected["count"], split, folder
        )
        scenes = generate_scatter(config, split, digits_root)
        write_json_atomic(
            config_path,
            {
                "format": FORMAT_VERSION,
                "key": key,
                "config": config.to_dict(),
                "digits": "embedded" if digits_root is None else _root_key(digits_root),
            },
        )
        arrays = {
            "images": scenes.grey,
            "boxes": scenes.boxes_flat,
            "labels": scenes.labels_flat,
            "offsets": scenes.offsets,
            "masks": scenes.masks,
        }
        write_split(folder / split, arrays, {**expected, "n_boxes": len(scenes.labels_flat)})
        generated = True
    stored = read_json(config_path)
    if stored.get("config") != config.to_dict():
        raise DataFormatError(
            config_path,
            f"holds a different config than its key says; delete {folder} to regenerate",
        )
    arrays = read_split(folder / split, expected)
    scenes = ScatterScenes(
        config=config,
        split=split,
        grey=arrays["images"],
        boxes_flat=arrays["boxes"],
        labels_flat=arrays["labels"],
        offsets=arrays["offsets"],
        masks=arrays["masks"],
        cache_dir=folder / split,
    )
    if not generated:
        log.info("loaded %d scattered-MNIST %s scenes from %s", len(scenes), split, folder)
    return scenes, generated


def load_or_generate(
    config: ScatterConfig,
    split: str,
    cache_root: str | Path | None = None,
    digits_root: str | Path | None = None,
) -> ScatterScenes:
    """Scenes of ``split`` from the disk cache, generating and storing them on a miss.

    The cache folder is keyed on every config knob and on the digit pools, so a changed knob
    never reuses stale scenes. Images and masks come back memory-mapped (read-only).
    Raises ``DataFormatError`` naming the file if a cached file is corrupt.
    """
    return _load_or_generate(config, split, cache_root, digits_root)[0]


# --------------------------------------------------------------------------- torch side


class ScatterMNIST(Dataset):
    """Torch view of :class:`ScatterScenes` (optionally a subset ``indices``).

    Items: ``image`` float32 (C, H, W) in [0, 1], ``boxes`` float32 (n, 4) XYXY pixels,
    ``labels`` int64 (n,) digit classes, and ``mask`` int64 (H, W) when the scenes have masks.
    """

    def __init__(self, scenes: ScatterScenes, indices: Sequence[int] | None = None):
        self.scenes = scenes
        self.indices = np.arange(len(scenes)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        scene = int(self.indices[index])
        start, stop = self.scenes.offsets[scene], self.scenes.offsets[scene + 1]
        grey = torch.from_numpy(np.array(self.scenes.grey[scene])).float().div_(255.0)
        item = {
            "image": grey.unsqueeze(0).repeat(self.scenes.config.channels, 1, 1),
            "boxes": torch.from_numpy(np.array(self.scenes.boxes_flat[start:stop])),
            "labels": torch.from_numpy(np.array(self.scenes.labels_flat[start:stop])),
        }
        if self.scenes.masks is not None:
            item["mask"] = torch.from_numpy(np.array(self.scenes.masks[scene])).long()
        return item


def collate_scenes(batch: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor | list[Tensor]]:
    """Stack ``image`` (B, C, H, W) and ``mask`` (B, H, W); keep ``boxes``/``labels`` as lists."""
    out: dict[str, Tensor | list[Tensor]] = {
        "image": torch.stack([item["image"] for item in batch]),
        "boxes": [item["boxes"] for item in batch],
        "labels": [item["labels"] for item in batch],
    }
    if "mask" in batch[0]:
        out["mask"] = torch.stack([item["mask"] for item in batch])
    return out


_D = ScatterConfig()


class ScatterMNISTDataModule(L.LightningDataModule):
    """Scattered-MNIST scenes for Lightning; every ScatterConfig knob is an init argument.

    Validation scenes are ``round(val_fraction * n_train)`` train scenes chosen with
    ``split_seed`` (the same on every process); test and predict use the test split.
    ``prepare_data`` generates and caches both splits once (rank 0 per node); ``setup`` only loads
    them (it generates, with a warning, if the cache is missing, e.g. outside a Trainer).
    """

    def __init__(
        self,
        image_size: tuple[int, int] = _D.image_size,
        channels: int = _D.channels,
        grid_sizes: Sequence[tuple[int, int]] = _D.grid_sizes,
        min_digit_size: int = _D.min_digit_size,
        max_digit_size: int = _D.max_digit_size,
        position_variance: float = _D.position_variance,
        cell_filled_threshold: float = _D.cell_filled_threshold,
        digit_set: Sequence[int] = _D.digit_set,
        min_digits: int = _D.min_digits,
        max_digits: int = _D.max_digits,
        n_train: int = _D.n_train,
        n_test: int = _D.n_test,
        seed: int = _D.seed,
        band_center: float = _D.band_center,
        band_width: float = _D.band_width,
        band_strength_small: float = _D.band_strength_small,
        band_strength_large: float = _D.band_strength_large,
        with_masks: bool = _D.with_masks,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        cache_root: str | None = None,
        digits_root: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.config = ScatterConfig(
            image_size=image_size,
            channels=channels,
            grid_sizes=grid_sizes,
            min_digit_size=min_digit_size,
            max_digit_size=max_digit_size,
            position_variance=position_variance,
            cell_filled_threshold=cell_filled_threshold,
            digit_set=digit_set,
            min_digits=min_digits,
            max_digits=max_digits,
            n_train=n_train,
            n_test=n_test,
            seed=seed,
            band_center=band_center,
            band_width=band_width,
            band_strength_small=band_strength_small,
            band_strength_large=band_strength_large,
            with_masks=with_masks,
        )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r}: expected an integer >= 1")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers={num_workers!r}: expected an integer >= 0")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"val_fraction={val_fraction!r}: expected a number in [0, 1)")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = float(val_fraction)
        self.split_seed = split_seed
        self.cache_root = cache_root
        self.digits_root = digits_root
        self.train_set: ScatterMNIST | None = None
        self.val_set: ScatterMNIST | None = None
        self.test_set: ScatterMNIST | None = None

    @classmethod
    def from_config(cls, config: ScatterConfig, **kwargs: Any) -> ScatterMNISTDataModule:
        """Build from a :class:`ScatterConfig` plus loader arguments (batch_size, ...)."""
        return cls(**config.to_dict(), **kwargs)

    def _scenes(self, split: str) -> ScatterScenes:
        scenes, generated = _load_or_generate(self.config, split, self.cache_root, self.digits_root)
        if generated:
            log.warning(
                "setup() generated the %s scenes: prepare_data() was not run first; in DDP every "
                "process would do this work",
                split,
            )
        return scenes

    def prepare_data(self) -> None:
        for split in SPLITS:
            load_or_generate(self.config, split, self.cache_root, self.digits_root)

    def train_val_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted train and validation scene indices into the train split (fixed by split_seed)."""
        order = np.random.default_rng(self.split_seed).permutation(self.config.n_train)
        n_val = int(round(self.val_fraction * self.config.n_train))
        return np.sort(order[n_val:]), np.sort(order[:n_val])

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            train = self._scenes("train")
            train_idx, val_idx = self.train_val_indices()
            self.train_set = ScatterMNIST(train, train_idx)
            self.val_set = ScatterMNIST(train, val_idx)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = ScatterMNIST(self._scenes("test"))

    def _loader(self, dataset: ScatterMNIST | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() with the matching stage before asking for a loader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_scenes,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        # Resumable: its position inside the epoch is saved in checkpoints, so a run resumed
        # mid-epoch sees exactly the batches an uninterrupted run would have seen.
        if self.train_set is None:
            raise RuntimeError("call setup('fit') before asking for the train loader")
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.split_seed,
            num_workers=self.num_workers,
            collate_fn=collate_scenes,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
