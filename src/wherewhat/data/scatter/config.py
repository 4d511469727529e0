"""The knobs of a scattered-MNIST data set (:class:`ScatterConfig`), validated on creation."""

from __future__ import annotations

import dataclasses
import logging
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wherewhat.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
LAYOUTS = ("grid", "perspective")
# (knob, lowest, highest) of the perspective layout's numbers
_PERSPECTIVE_RANGES = (
    ("full_size_distance", 0.01, 1.0),
    ("perspective_power", 0.1, 10.0),
    ("size_jitter", 0.0, 2.0),
    ("stray_fraction", 0.0, 1.0),
    ("max_overlap", 0.0, 1.0),
)
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
    12-64 px (the paper: 512 px, 96-384 px digits, position variance 0.7), grid layout.

    Attributes:
        image_size: (H, W) in pixels, 8..8192 each; non-square allowed (e.g. (512, 1024)).
        channels: 1 (grey) or 3 (the grey plane repeated, as the reference does).
        layout: where digits go. ``"grid"`` (default): the reference's grid of cells, with the
            optional band prior below. ``"perspective"``: a street-like scene without cells:
            digits are small at the horizon row ``band_center * H`` and grow linearly with
            their distance from it (see :mod:`wherewhat.data.scatter.perspective`).
        grid_sizes: (grid) candidate grids as (rows, cols); one is picked uniformly per scene.
        min_digit_size / max_digit_size: digit side in pixels, 1 <= min <= max <= min(H, W).
        position_variance: (grid) in [0, 1]: the centre moves up to this fraction of a cell
            (half each way) from the cell centre.
        cell_filled_threshold: (grid) in [0, 1]: how far a box must reach into a cell to fill it.
        digit_set: which digit classes (0-9) appear.
        min_digits / max_digits: bounds on the number of digits asked for per scene. Grid: the
            grid rule asks for cells//2..cells, clamped to these bounds; fewer are placed when
            the grid fills up first. Perspective: uniform on [min_digits, max_digits]; a digit
            that finds no free spot is skipped.
        n_train / n_test: number of scenes per split.
        seed: non-negative integer; scene i of a split depends only on (seed, split, i).
        band_center: horizon row as a fraction of H, in [0, 1] (both layouts).
        band_width: in [0.01, 1], a fraction of H. Grid: the standard deviation of the band
            prior. Perspective: the half-width of the horizon band, i.e. rows within
            ``band_width * H`` of the horizon; the generator does not use it, the evaluation
            does (:func:`wherewhat.methods.lzu.street.band_rows`).
        band_strength_small / band_strength_large: (grid) in [0, 1]: mixture weight of the band
            (versus uniform rows) for the smallest / largest digits, linear in size between;
            both 0 (default) = no prior.
        full_size_distance: (perspective) in [0.01, 1]: the distance from the horizon at which
            digits reach ``max_digit_size``, as a fraction of D, the distance from the horizon
            to the farther image border (1 = at that border; smaller = sizes grow faster and
            stay at the maximum beyond it).
        perspective_power: (perspective) in [0.1, 10]: a digit's distance from the horizon is
            ``D * u ** perspective_power`` with u uniform on [0, 1); above 1, most digits sit
            near the horizon (and are therefore small).
        size_jitter: (perspective) in [0, 2]: the perspective size is multiplied by
            ``exp(U(-size_jitter, size_jitter))``, then clipped to [min, max] digit size.
        stray_fraction: (perspective) in [0, 1]: the chance that a digit keeps its perspective
            size but gets a centre row uniform over the image (small digits off the band).
        max_overlap: (perspective) in [0, 1]: a new digit's ink box may cover at most this
            fraction of the smaller of itself and any placed box (else it is redrawn).
        with_masks: also produce per-pixel class masks (0 background, 1 + class of the digit
            that is brightest at that pixel; ties go to the digit drawn first).
        Knobs marked (grid) or (perspective) are ignored by the other layout.
    """

    image_size: tuple[int, int] = (128, 128)
    channels: int = 1
    layout: str = "grid"
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
    full_size_distance: float = 1.0
    perspective_power: float = 2.0
    size_jitter: float = 0.1
    stray_fraction: float = 0.0
    max_overlap: float = 0.1
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
        if self.layout not in LAYOUTS:
            raise ConfigError(
                f"ScatterConfig.layout={self.layout!r}: expected one of {', '.join(LAYOUTS)}"
            )
        put("layout", str(self.layout))
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
        for name, lo, hi in _PERSPECTIVE_RANGES:
            put(name, _as_float(name, getattr(self, name), lo, hi))
        if not isinstance(self.with_masks, (bool, np.bool_)):
            raise ConfigError(f"ScatterConfig.with_masks={self.with_masks!r}: expected true/false")
        put("with_masks", bool(self.with_masks))

    def count(self, split: str) -> int:
        """Number of scenes in ``split`` (``"train"`` or ``"test"``)."""
        check_split(split)
        return self.n_train if split == "train" else self.n_test

    @property
    def has_prior(self) -> bool:
        """Whether digit rows follow a prior (the perspective layout, or the grid's band)."""
        return self.layout == "perspective" or self.has_band_prior

    @property
    def has_band_prior(self) -> bool:
        """Whether the grid layout's size-dependent band prior is active."""
        return self.layout == "grid" and max(self.band_strength_small, self.band_strength_large) > 0

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


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
