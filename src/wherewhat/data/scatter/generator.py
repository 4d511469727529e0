"""Multi-scale scattered-MNIST scenes: real MNIST digits of many sizes on a black canvas.

A scene is made in two stages: a *layout* decides where each digit goes and how large it is
(``ScatterConfig.layout``), then one shared drawing step resizes the 28 x 28 digit to its side
(PIL bicubic), adds it to the canvas (sum clipped to 255), takes its tight ink box and, if asked,
updates the class mask (step 3-4 below, for both layouts).

**Grid layout** (``"grid"``, the default). It follows the algorithm of the public
``multiscalemnist`` package (the dataset of the SSDIR paper), with every one of its knobs,
re-implemented here:

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

**Perspective layout** (``"perspective"``, :mod:`wherewhat.data.scatter.perspective`): a
street seen from the road, without cells. The horizon is the row ``band_center * H``; a digit
is as large as its distance from that row makes it (``min_digit_size`` at the horizon, linearly
up to ``max_digit_size`` at ``full_size_distance`` of the way to the farther border), with a
little multiplicative jitter. Distances are drawn so that most digits sit near the horizon
(``perspective_power``), so the small digits crowd into a band around it while the large ones
fill the rest of the image; a ``stray_fraction`` of digits keeps its size but takes any row.
Digits lie fully inside the image and are redrawn (up to 30 times, then skipped) when their ink
box would overlap a placed one by more than ``max_overlap`` of the smaller box. Steps 3 (drawing)
and 4 (boxes, visibility) above apply unchanged; the grid knobs and the band prior are unused.

Storage: :mod:`wherewhat.data.scatter.store`; caching: :mod:`wherewhat.data.scatter.cache`.

"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from wherewhat.data.mnist import load_mnist_digits
from wherewhat.data.scatter.config import SPLITS, ScatterConfig, check_split
from wherewhat.data.scatter.perspective import PerspectivePlacer, Placement
from wherewhat.errors import ConfigError

log = logging.getLogger(__name__)

_STREAM_SALT = 0x5CA77E2  # keeps these random streams apart from other users of the same seed


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
    """Cumulative band prior over centre rows per digit size: (sizes, H + 1) float64, or None
    (no band prior, or the perspective layout)."""
    if not config.has_band_prior:
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


class _Placer(Protocol):
    """One scene's placement: ``next_digit()`` gives (top, left, source, pixels) of the next
    digit or None when the scene is done; ``record(box)`` is told its drawn ink box (XYXY
    integer pixel edges, None when no ink landed inside the image)."""

    def next_digit(self) -> Placement | None: ...

    def record(self, box: tuple[int, int, int, int] | None) -> None: ...


class _GridPlacer:
    """The grid layout's placement of one scene (steps 1-3 and 5 of the module docstring)."""

    def __init__(self, composer: _SceneComposer, rng: np.random.Generator):
        cfg = composer.config
        self.composer, self.config, self.rng = composer, cfg, rng
        height, width = cfg.image_size
        grid_rows, grid_cols = cfg.grid_sizes[int(rng.integers(len(cfg.grid_sizes)))]
        self.cell = (height // grid_rows, width // grid_cols)
        self.reach = (
            int(self.cell[0] * cfg.position_variance / 2),
            int(self.cell[1] * cfg.position_variance / 2),
        )
        n_cells = grid_rows * grid_cols
        low = min(max(n_cells // 2, cfg.min_digits), cfg.max_digits)
        high = min(max(n_cells, cfg.min_digits), cfg.max_digits)
        self.remaining = int(rng.integers(low, high + 1))
        self.filled = np.zeros((grid_rows, grid_cols), dtype=bool)

    def _size_caps(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Largest digit side allowed for each free cell (the reference's margin rule)."""
        filled, cell = self.filled, self.cell
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

    def _draw_row(self, size: int, low: int, high: int) -> int:
        row_cdf = self.composer.row_cdf
        if row_cdf is None:
            return int(self.rng.integers(low, high + 1))
        cdf = row_cdf[size - self.config.min_digit_size]
        u = cdf[low] + self.rng.random() * (cdf[high + 1] - cdf[low])
        return int(np.clip(np.searchsorted(cdf, u, side="right") - 1, low, high))

    def _place(self) -> tuple[int, int, int] | None:
        """Size and centre (size, y, x) of the next digit, or None when every cell is filled."""
        rng, cell, reach, row_cdf = self.rng, self.cell, self.reach, self.composer.row_cdf
        height, width = self.config.image_size
        smin = self.config.min_digit_size
        free = np.flatnonzero(~self.filled.ravel())
        if free.size == 0:
            return None
        rows, cols = np.divmod(free, self.filled.shape[1])
        caps = np.maximum(self._size_caps(rows, cols), smin)
        sizes = smin + (rng.random(free.size) * (caps - smin + 1)).astype(np.int64)
        centre_y = (cell[0] * (rows + 0.5)).astype(np.int64)
        row_low = np.maximum(centre_y - reach[0], 0)
        row_high = np.minimum(centre_y + reach[0], height - 1)
        if row_cdf is None:
            pick = int(rng.integers(free.size))
        else:  # importance resampling: each free cell weighted by its prior mass at its size
            size_rows = sizes - smin
            mass = row_cdf[size_rows, row_high + 1] - row_cdf[size_rows, row_low]
            pick = _draw_weighted(rng, mass)
        size = int(sizes[pick])
        y = self._draw_row(size, int(row_low[pick]), int(row_high[pick]))
        centre_x = int(cell[1] * (cols[pick] + 0.5))
        x = int(rng.integers(max(centre_x - reach[1], 0), min(centre_x + reach[1], width - 1) + 1))
        return size, y, x

    def next_digit(self) -> Placement | None:
        if self.remaining <= 0:
            return None
        self.remaining -= 1
        placement = self._place()
        if placement is None:
            self.remaining = 0
            return None
        size, y, x = placement
        source = int(self.rng.integers(len(self.composer.pool_labels)))
        return y - size // 2, x - size // 2, source, self.composer.resized(source, size)

    def record(self, box: tuple[int, int, int, int] | None) -> None:
        if box is not None:
            cfg = self.config
            self.filled |= _cells_covered(
                box, self.filled.shape, cfg.image_size, cfg.cell_filled_threshold
            )


class _SceneComposer:
    """Draws scenes from one split's digit pool; holds the precomputed prior table."""

    def __init__(self, config: ScatterConfig, pool_images: np.ndarray, pool_labels: np.ndarray):
        self.config = config
        self.pool_images = pool_images
        self.pool_labels = pool_labels
        self.row_cdf = _centre_row_cdf(config)
        self._pil_digits: dict[int, Image.Image] = {}  # PIL wrappers, made once per pool digit

    def resized(self, source: int, size: int) -> np.ndarray:
        """Pool digit ``source`` resized to (size, size) uint8 (PIL bicubic)."""
        image = self._pil_digits.get(source)
        if image is None:
            image = self._pil_digits[source] = Image.fromarray(self.pool_images[source])
        return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))

    def _placer(self, rng: np.random.Generator) -> _Placer:
        if self.config.layout == "perspective":
            return PerspectivePlacer(self.config, rng, len(self.pool_labels), self.resized)
        return _GridPlacer(self, rng)

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
        placer = self._placer(rng)
        brightest = None if mask_out is None else np.zeros_like(image_out)
        boxes: list[tuple[int, int, int, int]] = []
        labels: list[int] = []
        while (digit := placer.next_digit()) is not None:
            top, left, source, pixels = digit
            label = int(self.pool_labels[source])
            if layers is not None:
                layers.append(DigitLayer(top, left, pixels, source, label))
            box = _draw_digit(image_out, mask_out, brightest, (top, left), pixels, label)
            placer.record(box)
            if box is None:
                continue
            boxes.append(box)
            labels.append(label)
            if box_layers is not None and layers is not None:
                box_layers.append(len(layers) - 1)
        return boxes, labels


def _draw_digit(
    image_out: np.ndarray,
    mask_out: np.ndarray | None,
    brightest: np.ndarray | None,
    corner: tuple[int, int],
    pixels: np.ndarray,
    label: int,
) -> tuple[int, int, int, int] | None:
    """Add ``pixels`` (s, s) uint8 with its top-left at ``corner`` (may stick out) to
    ``image_out`` (H, W), clipped to 255; where it is the brightest digit so far (``brightest``
    (H, W)), write ``label + 1`` to ``mask_out``. Returns its ink box inside the image (XYXY
    integer pixel edges) or None when none of its ink lands inside."""
    (top, left), size = corner, pixels.shape[0]
    height, width = image_out.shape
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + size, height), min(left + size, width)
    visible = pixels[t0 - top : t1 - top, l0 - left : l1 - left]
    ink_rows = np.flatnonzero(visible.any(axis=1))
    if ink_rows.size == 0:
        return None
    ink_cols = np.flatnonzero(visible.any(axis=0))
    # additive blending clipped to 255, touching only this digit's window
    window = image_out[t0:t1, l0:l1]
    np.minimum(window + visible.astype(np.uint16), 255, out=window, casting="unsafe")
    if mask_out is not None and brightest is not None:
        region = brightest[t0:t1, l0:l1]
        wins = visible > region
        region[wins] = visible[wins]
        mask_out[t0:t1, l0:l1][wins] = label + 1
    return (
        l0 + int(ink_cols[0]),
        t0 + int(ink_rows[0]),
        l0 + int(ink_cols[-1]) + 1,
        t0 + int(ink_rows[-1]) + 1,
    )


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
    check_split(split)
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
    check_split(split)
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
