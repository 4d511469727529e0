"""Perspective layout and LZU's street preset: small digits in the horizon band, sizes that grow
with the distance from the horizon, no heavy overlaps, the band helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from wherewhat.data.scatter import generate_scatter, generate_scene
from wherewhat.data.scatter.perspective import perspective_side
from wherewhat.methods.lzu.street import band_rows, in_band, street_scene_config

SMALL_SIDE = 24.0  # sqrt(box area) <= 24 px: a small digit (the LZU benchmark's bucket)


def _box_sides(boxes: np.ndarray) -> np.ndarray:
    return np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def _overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / smaller


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_street_preset_puts_95_percent_of_small_digits_in_the_band(seed):
    config = street_scene_config(seed=seed, n_train=150)
    boxes = generate_scatter(config, "train").boxes_flat
    small = _box_sides(boxes) <= SMALL_SIDE
    assert small.mean() > 0.35  # plenty of small digits (about half of the boxes)
    assert small.sum() > 300
    assert in_band(boxes[small], config).mean() >= 0.95
    # the strays: a few small digits off the band, so that it can be measured there
    assert (~in_band(boxes[small], config)).sum() >= 3


def test_sizes_grow_with_the_distance_from_the_horizon():
    config = street_scene_config(stray_fraction=0.0)
    height = config.image_size[0]
    horizon = config.band_center * height
    distances, sides, box_distances, box_sides = [], [], [], []
    for index in range(40):
        scene = generate_scene(config, "train", index)
        for layer in scene.layers:
            side = layer.pixels.shape[0]
            distance = abs(layer.top + side / 2 - horizon)
            distances.append(distance)
            sides.append(side)
            if 0 < layer.top < height - side:  # not pushed back inside the image
                # the linear law, times the jitter, rounded and clipped
                law = float(perspective_side(config, distance))
                jitter = np.exp(config.size_jitter)
                low = max(min(law / jitter - 1.5, config.max_digit_size), config.min_digit_size)
                assert low <= side <= min(law * jitter + 1.5, config.max_digit_size)
        box_distances.extend(np.abs((scene.boxes[:, 1] + scene.boxes[:, 3]) / 2 - horizon))
        box_sides.extend(_box_sides(scene.boxes))
    assert len(sides) > 200
    assert spearmanr(distances, sides)[0] > 0.9
    assert spearmanr(box_distances, box_sides)[0] > 0.8  # also on the ink boxes


def test_perspective_side_is_linear_from_min_to_max():
    config = street_scene_config()  # horizon 230.4 px, farther border 281.6 px away
    reach = 0.55 * 281.6
    got = perspective_side(config, np.array([0.0, reach / 2, reach, 2 * reach]))
    assert np.allclose(got, [8, 68, 128, 128])


@pytest.mark.parametrize(
    "changes",
    [
        {},  # the preset
        {"image_size": (96, 128), "min_digit_size": 8, "max_digit_size": 48, "min_digits": 30,
         "max_digits": 30, "max_overlap": 0.0},  # crowded: many digits are skipped
        {"image_size": (96, 128), "min_digit_size": 8, "max_digit_size": 48, "min_digits": 20,
         "max_digits": 20, "max_overlap": 0.3, "stray_fraction": 0.5},
    ],
)  # fmt: skip
def test_no_two_boxes_overlap_more_than_max_overlap_and_digits_stay_inside(changes):
    config = street_scene_config(**changes)
    height, width = config.image_size
    n_layers = []
    for index in range(12):
        scene = generate_scene(config, "train", index)
        boxes = scene.boxes
        assert len(boxes) == len(scene.layers) <= config.max_digits  # every digit is visible
        for i in range(len(boxes)):
            for j in range(i):
                assert _overlap_of_smaller(boxes[i], boxes[j]) <= config.max_overlap + 1e-9
        for layer in scene.layers:
            side = layer.pixels.shape[0]
            assert 0 <= layer.top <= height - side and 0 <= layer.left <= width - side
            assert config.min_digit_size <= side <= config.max_digit_size
        n_layers.append(len(scene.layers))
    if not changes:
        assert min(n_layers) >= config.min_digits  # room enough: nothing skipped
    elif changes["max_overlap"] == 0.0:
        assert max(n_layers) < config.min_digits  # crowded: digits skipped, not forced in


def test_stray_fraction_moves_small_digits_off_the_band():
    def share_off_band(stray: float) -> float:
        config = street_scene_config(stray_fraction=stray, n_train=60)
        boxes = generate_scatter(config, "train").boxes_flat
        small = boxes[_box_sides(boxes) <= SMALL_SIDE]
        return float((~in_band(small, config)).mean())

    none, half = share_off_band(0.0), share_off_band(0.5)
    assert none < 0.02
    assert 0.25 < half < 0.55  # half are strays, about 4 in 5 of them land off the band


def test_perspective_scene_depends_only_on_seed_split_and_index():
    config = street_scene_config(image_size=(128, 256), min_digit_size=4, max_digit_size=32,
                                 n_train=10, n_test=4, with_masks=True)  # fmt: skip
    scenes = generate_scatter(config, "train")
    again = generate_scatter(config, "train")
    prefix = generate_scatter(config.replace(n_train=4), "train")
    assert np.array_equal(scenes.grey, again.grey) and np.array_equal(scenes.masks, again.masks)
    assert np.array_equal(prefix.grey, scenes.grey[:4])
    assert np.array_equal(prefix.boxes_flat, scenes.boxes_flat[: prefix.offsets[-1]])
    single = generate_scene(config, "train", 7)
    assert np.array_equal(single.image[0], scenes.grey[7])
    assert np.array_equal(single.boxes, scenes.boxes[7])
    assert np.array_equal(single.mask, scenes.masks[7])
    assert not np.array_equal(generate_scatter(config.replace(seed=1), "train").grey, scenes.grey)
    assert not np.array_equal(generate_scatter(config, "test").grey, scenes.grey[:4])


def test_band_rows_and_in_band():
    y0, y1 = band_rows(street_scene_config())
    assert (y0, y1) == pytest.approx((230.4 - 51.2, 230.4 + 51.2))  # 0.45 H -+ 0.1 H
    config = street_scene_config(band_center=0.5, band_width=0.125)  # rows 192-320, exact
    assert band_rows(config) == (192.0, 320.0)
    # centre rows 192 (edge, in), 191.5 (out), 250 (in), 320 (edge, in), 321 (out)
    boxes = np.array(
        [[0, 180, 9, 204], [0, 180, 9, 203], [5, 220, 30, 280], [0, 310, 4, 330],
         [0, 311, 8, 331]]
    )  # fmt: skip
    expected = [True, False, True, True, False]
    assert in_band(boxes, config).tolist() == expected
    as_tensor = in_band(torch.tensor(boxes, dtype=torch.float32), config)
    assert as_tensor.dtype == torch.bool and as_tensor.tolist() == expected
    assert in_band(np.zeros((0, 4)), config).shape == (0,)
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        in_band(np.zeros((3, 2)), config)


def test_the_preset_also_runs_with_the_grid_layout():
    grid = street_scene_config(layout="grid", n_train=1)  # grid knobs keep their defaults
    assert not grid.has_band_prior
    assert len(generate_scene(grid, "train", 0).boxes) >= 1
