"""Scattered-MNIST scenes: generator properties, placement prior, cache, torch/Lightning side."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from wherewhat.data.mnist import load_mnist_digits
from wherewhat.data.scatter import (
    ScatterConfig,
    ScatterMNIST,
    ScatterMNISTDataModule,
    collate_scenes,
    generate_scatter,
    generate_scene,
    load_or_generate,
    scatter_cache_dir,
)
from wherewhat.data.scatter import store as scatter_cache
from wherewhat.data.scatter.cache import load_or_generate_reporting
from wherewhat.data.scatter.generator import _cells_covered
from wherewhat.errors import ConfigError, DataFormatError
from wherewhat.methods.lzu.street import street_scene_config

SMALL = ScatterConfig(
    image_size=(64, 80),
    grid_sizes=((1, 1), (2, 2), (2, 3)),
    min_digit_size=8,
    max_digit_size=40,
    n_train=24,
    n_test=12,
    seed=3,
)


def _layer_canvas(layer, height: int, width: int) -> np.ndarray:
    """The layer's pixels on an (H, W) int canvas, cropped to the image."""
    canvas = np.zeros((height + 2 * 512, width + 2 * 512), dtype=np.int64)
    size = layer.pixels.shape[0]
    canvas[512 + layer.top : 512 + layer.top + size, 512 + layer.left : 512 + layer.left + size] = (
        layer.pixels
    )
    return canvas[512 : 512 + height, 512 : 512 + width]


def _pool_keys(split: str) -> set[bytes]:
    images, _ = load_mnist_digits(split)
    return {bytes(img.numpy()) for img in images}


# --------------------------------------------------------------------------- generator


def test_same_seed_same_scenes_and_scene_depends_only_on_its_index():
    a = generate_scatter(SMALL, "train")
    b = generate_scatter(SMALL, "train")
    for name in ("grey", "boxes_flat", "labels_flat", "offsets"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    prefix = generate_scatter(SMALL.replace(n_train=5), "train")
    assert np.array_equal(prefix.grey, a.grey[:5])
    assert np.array_equal(prefix.boxes_flat, a.boxes_flat[: prefix.offsets[-1]])
    single = generate_scene(SMALL, "train", 7)
    assert np.array_equal(single.image[0], a.grey[7])
    assert np.array_equal(single.boxes, a.boxes[7]) and np.array_equal(single.labels, a.labels[7])
    other = generate_scatter(SMALL.replace(seed=4), "train")
    assert not np.array_equal(other.grey, a.grey)
    # the two splits are different streams even with the same seed and index
    assert not np.array_equal(generate_scatter(SMALL, "test").grey[:5], a.grey[:5])


def _scene_digest(scene) -> str:
    """Short hash of a scene's image, boxes, labels, mask and layers."""
    digest = hashlib.sha256()
    mask = np.zeros(0) if scene.mask is None else scene.mask
    for array in (scene.image, scene.boxes, scene.labels, mask):
        digest.update(np.ascontiguousarray(array).tobytes())
    for layer in scene.layers:
        digest.update(np.array([layer.top, layer.left, layer.source, layer.label]).tobytes())
        digest.update(layer.pixels.tobytes())
    return digest.hexdigest()[:16]


# Scenes of the grid layout before the perspective layout was added (train / test, scenes 0, 5):
# the default layout must stay bit-identical (PIL bicubic is deterministic across platforms).
_GRID_DIGESTS = {
    "plain": (
        dict(SMALL.to_dict(), with_masks=True),
        ("d873b411152e59ee", "145f3df15c39473f", "98e59671fb6e6786", "7624d62de4d6b1fb"),
    ),
    "band prior": (
        dict(
            image_size=(96, 96),
            grid_sizes=[(6, 6)],
            min_digit_size=8,
            max_digit_size=24,
            min_digits=4,
            max_digits=4,
            band_center=0.3,
            band_width=0.05,
            band_strength_small=1,
            band_strength_large=0.2,
            seed=1,
        ),
        ("01734f2c0a8f3d6b", "8d4dbca178569715", "7d678decbef1c62b", "6c7c0c1425913788"),
    ),
    "old street preset": (
        dict(
            image_size=(512, 1024),
            grid_sizes=((4, 8), (6, 12)),
            min_digit_size=16,
            max_digit_size=160,
            cell_filled_threshold=0.25,
            min_digits=4,
            max_digits=12,
            band_center=0.45,
            band_width=0.05,
            band_strength_small=0.9,
            with_masks=True,
        ),
        ("3a25821b751ebd57", "18ac2680d0e4981b", "fddb80ac3cb6ba28", "f54721c7ae39d412"),
    ),
}


@pytest.mark.parametrize("name", sorted(_GRID_DIGESTS))
def test_grid_layout_scenes_are_unchanged(name):
    knobs, expected = _GRID_DIGESTS[name]
    config = ScatterConfig(**knobs)
    assert config.layout == "grid"
    got = tuple(
        _scene_digest(generate_scene(config, split, index))
        for split in ("train", "test")
        for index in (0, 5)
    )
    assert got == expected


@pytest.mark.parametrize("layout", ["grid", "perspective"])
@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_boxes_are_tight_inside_and_image_is_clipped_sum_of_digits(seed, layout):
    # both layouts share the drawing step (blending, boxes, masks, layers)
    config = SMALL.replace(seed=seed, with_masks=True, digit_set=[1, 3, 7], layout=layout)
    height, width = config.image_size
    train_keys = _pool_keys("train")
    n_boxes = 0
    for index in range(8):
        scene = generate_scene(config, "train", index)
        layers = [_layer_canvas(layer, height, width) for layer in scene.layers]
        total = np.sum(layers, axis=0) if layers else np.zeros((height, width))
        assert np.array_equal(scene.image[0], np.minimum(total, 255))
        for k, box in enumerate(scene.boxes):
            ink_rows, ink_cols = np.nonzero(layers[scene.box_layers[k]])
            expected = [ink_cols.min(), ink_rows.min(), ink_cols.max() + 1, ink_rows.max() + 1]
            assert box.tolist() == expected  # each edge touches this digit's ink
            assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
            n_boxes += 1
        assert len(scene.boxes) == len(scene.labels) <= config.max_digits
        for layer in scene.layers:
            assert config.min_digit_size <= layer.pixels.shape[0] <= config.max_digit_size
            assert layer.label in config.digit_set
        # mask: 1 + class of the brightest digit, 0 where no digit has ink
        if layers:
            stack = np.stack(layers)
            winner = np.argmax(stack, axis=0)
            classes = np.array([layer.label for layer in scene.layers])
            expected_mask = np.where(stack.max(axis=0) > 0, classes[winner] + 1, 0)
            assert np.array_equal(scene.mask, expected_mask)
        # every digit is a resized image of the train pool, never of the test pool
        train_x, train_y = load_mnist_digits("train")
        keep = np.isin(train_y.numpy(), config.digit_set)
        pool = train_x.numpy()[keep]
        for layer in scene.layers:
            source = pool[layer.source]
            size = layer.pixels.shape[0]
            resized = np.asarray(Image.fromarray(source).resize((size, size), Image.BICUBIC))
            assert np.array_equal(resized, layer.pixels)
            assert bytes(source) in train_keys
    assert n_boxes >= 8


def test_train_and_test_scenes_draw_from_disjoint_pools():
    train_keys, test_keys = _pool_keys("train"), _pool_keys("test")
    test_x, _ = load_mnist_digits("test")
    for index in range(4):
        scene = generate_scene(SMALL, "test", index)
        for layer in scene.layers:
            source = bytes(test_x.numpy()[layer.source])
            assert source in test_keys and source not in train_keys


def test_digit_counts_follow_grid_rule_and_bounds():
    config = SMALL.replace(n_train=60, grid_sizes=[(3, 3)], min_digits=2, max_digits=5)
    scenes = generate_scatter(config, "train")
    counts = np.diff(scenes.offsets)
    assert counts.max() <= 5 and counts.min() >= 1
    # the 3x3 grid asks for 4..9, clamped to <= 5: most scenes are full at 4 or 5
    assert np.mean(counts >= 4) > 0.5
    assert set(np.unique(scenes.labels_flat)) <= set(config.digit_set)


@pytest.mark.parametrize(
    ("box", "threshold", "expected"),
    [
        ((0, 0, 30, 30), 0.4, [(0, 0)]),  # exactly one cell
        ((20, 20, 40, 40), 0.4, []),  # a third of four cells each: none counts
        ((35, 35, 55, 55), 0.4, [(1, 1)]),  # inside the centre cell, across its middle
        ((35, 35, 55, 55), 0.2, [(1, 1)]),
        ((35, 5, 55, 90), 0.4, [(0, 1), (1, 1), (2, 1)]),  # a tall box fills its column
        ((0, 0, 90, 13), 0.4, [(0, 0), (0, 1), (0, 2)]),  # 13/30 of the top row > 0.4
        ((0, 0, 90, 11), 0.4, []),  # 11/30 < 0.4
    ],
)
def test_cells_covered_follows_the_rounding_rule(box, threshold, expected):
    covered = _cells_covered(box, (3, 3), (90, 90), threshold)
    assert sorted(zip(*np.nonzero(covered), strict=True)) == expected


def _centre_rows(config: ScatterConfig, n_scenes: int) -> tuple[np.ndarray, np.ndarray]:
    rows, sizes = [], []
    for index in range(n_scenes):
        for layer in generate_scene(config, "train", index).layers:
            size = layer.pixels.shape[0]
            rows.append(layer.top + size // 2)
            sizes.append(size)
    return np.array(rows) / config.image_size[0], np.array(sizes)


def test_vertical_prior_moves_centres_into_the_band_and_depends_on_size():
    base = ScatterConfig(
        image_size=(96, 96),
        grid_sizes=[(6, 6)],
        min_digit_size=8,
        max_digit_size=24,
        min_digits=4,
        max_digits=4,
        band_center=0.3,
        band_width=0.05,
        n_train=40,
    )
    uniform_rows, _ = _centre_rows(base, 40)
    banded_rows, _ = _centre_rows(base.replace(band_strength_small=1, band_strength_large=1), 40)
    in_band = lambda rows: np.mean(np.abs(rows - 0.3) < 0.1)  # noqa: E731
    assert in_band(uniform_rows) < 0.35  # 20 % of the rows lie within +-0.1
    assert in_band(banded_rows) > 0.7
    rows, sizes = _centre_rows(base.replace(band_strength_small=1, band_strength_large=0), 60)
    small, large = rows[sizes <= 12], rows[sizes >= 19]
    assert len(small) > 20 and len(large) > 20
    assert in_band(small) > in_band(large) + 0.25


def test_lzu_preset_is_wide_and_valid():
    config = street_scene_config(n_train=2)
    assert config.image_size == (512, 1024) and config.has_prior
    assert config.layout == "perspective" and not config.has_band_prior
    scene = generate_scene(config, "train", 0)
    assert scene.image.shape == (1, 512, 1024) and len(scene.boxes) >= 1


# --------------------------------------------------------------------------- config


def test_config_round_trips_through_json_and_rejects_unknown_keys():
    config = SMALL.replace(grid_sizes=[[2, 4]], digit_set=[0, 8], band_strength_small=0.5)
    again = ScatterConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.grid_sizes == ((2, 4),)
    street = street_scene_config()
    assert ScatterConfig.from_dict(json.loads(json.dumps(street.to_dict()))) == street
    assert scatter_cache_dir(street) != scatter_cache_dir(street.replace(layout="grid"))
    with pytest.raises(ConfigError, match="gridsize"):
        ScatterConfig.from_dict({"gridsize": [(2, 2)]})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("image_size", (4, 64)),
        ("image_size", 64),
        ("channels", 2),
        ("grid_sizes", []),
        ("grid_sizes", [(0, 2)]),
        ("grid_sizes", [(2, 200)]),
        ("min_digit_size", 0),
        ("max_digit_size", 4),  # below min_digit_size = 12
        ("max_digit_size", 500),
        ("position_variance", 1.5),
        ("cell_filled_threshold", -0.1),
        ("digit_set", [10]),
        ("digit_set", [1, 1]),
        ("digit_set", []),
        ("min_digits", -1),
        ("max_digits", 0),
        ("n_train", -1),
        ("n_test", 2.5),
        ("seed", -3),
        ("band_center", float("nan")),
        ("band_width", 0.0),
        ("band_strength_small", 2),
        ("band_strength_large", True),
        ("layout", "street"),
        ("layout", None),
        ("full_size_distance", 0.0),
        ("perspective_power", 0),
        ("perspective_power", 11),
        ("size_jitter", -0.1),
        ("stray_fraction", 1.5),
        ("max_overlap", "0.1"),
        ("with_masks", "yes"),
    ],
)
def test_bad_config_values_raise_config_error_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        ScatterConfig(**{key: value})


# --------------------------------------------------------------------------- cache


def test_cache_hit_returns_identical_data_and_changed_knob_misses(tmp_path):
    first, generated = load_or_generate_reporting(SMALL, "train", tmp_path, None)
    assert generated
    again, generated = load_or_generate_reporting(SMALL, "train", tmp_path, None)
    assert not generated
    fresh = generate_scatter(SMALL, "train")
    for scenes in (first, again):
        assert np.array_equal(scenes.grey, fresh.grey)
        assert np.array_equal(scenes.boxes_flat, fresh.boxes_flat)
        assert np.array_equal(scenes.labels_flat, fresh.labels_flat)
        assert np.array_equal(scenes.offsets, fresh.offsets)
    folder = scatter_cache_dir(SMALL, tmp_path)
    assert again.cache_dir == folder / "train"
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "train").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    assert (folder / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert json.loads((folder / "config.json").read_text())["config"] == SMALL.to_dict()
    changed = SMALL.replace(position_variance=0.5)
    assert scatter_cache_dir(changed, tmp_path) != folder
    _, generated = load_or_generate_reporting(changed, "train", tmp_path, None)
    assert generated
    assert not list(folder.glob(".tmp-*"))  # no temporary leftovers


def test_cache_root_comes_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WHEREWHAT_CACHE", str(tmp_path / "env"))
    assert scatter_cache_dir(SMALL).parent == tmp_path / "env"
    assert scatter_cache_dir(SMALL, tmp_path / "arg").parent == tmp_path / "arg"


def test_corrupt_cache_file_raises_data_format_error_naming_it(tmp_path):
    config = SMALL.replace(n_train=4, with_masks=True)
    load_or_generate(config, "train", tmp_path)
    folder = scatter_cache_dir(config, tmp_path)
    images = folder / "train" / "images.npy"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match="images.npy"):
        load_or_generate(config, "train", tmp_path)
    load_or_generate(config, "test", tmp_path)  # the other split is unaffected
    (folder / "config.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="config.json"):
        load_or_generate(config, "test", tmp_path)


def test_read_split_checks_array_shapes(tmp_path):
    split_dir = tmp_path / "scatter-x" / "train"
    meta = {"format": 1, "key": "x", "split": "train", "count": 2, "image_size": (8, 8)}
    arrays = {
        "images": np.zeros((2, 8, 8), np.uint8),
        "boxes": np.zeros((3, 4), np.float32),
        "labels": np.zeros(2, np.int64),  # 3 boxes, 2 labels
        "offsets": np.array([0, 1, 3]),
    }
    assert scatter_cache.write_split(split_dir, arrays, {**meta, "with_masks": False})
    with pytest.raises(DataFormatError, match="labels.npy"):
        scatter_cache.read_split(split_dir, {**meta, "with_masks": False})
    with pytest.raises(DataFormatError, match="meta.json"):
        scatter_cache.read_split(split_dir, {**meta, "count": 5, "with_masks": False})


# --------------------------------------------------------------------------- torch side


def test_dataset_items_and_collate():
    scenes = generate_scatter(SMALL.replace(channels=3, with_masks=True), "test")
    dataset = ScatterMNIST(scenes, indices=[2, 5])
    item = dataset[1]
    assert item["image"].shape == (3, 64, 80) and item["image"].dtype == torch.float32
    assert torch.equal(item["image"][2] * 255, torch.from_numpy(scenes.grey[5]).float())
    assert item["boxes"].dtype == torch.float32 and item["labels"].dtype == torch.int64
    assert torch.equal(item["boxes"], torch.from_numpy(scenes.boxes[5]))
    assert item["mask"].shape == (64, 80) and item["mask"].dtype == torch.int64
    batch = collate_scenes([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 64, 80) and batch["mask"].shape == (2, 64, 80)
    assert [len(b) for b in batch["boxes"]] == [len(scenes.boxes[2]), len(scenes.boxes[5])]


def test_datamodule_arguments_mirror_the_config():
    params = inspect.signature(ScatterMNISTDataModule.__init__).parameters
    for f in dataclasses.fields(ScatterConfig):
        assert f.name in params, f.name
        assert params[f.name].default == f.default, f.name


def test_datamodule_yields_batches_and_fixed_validation_split(tmp_path):
    dm = ScatterMNISTDataModule.from_config(
        SMALL, batch_size=4, val_fraction=0.25, cache_root=str(tmp_path)
    )
    dm.prepare_data()
    assert (scatter_cache_dir(SMALL, tmp_path) / "test" / "meta.json").is_file()
    dm.setup("fit")
    assert len(dm.train_set) == 18 and len(dm.val_set) == 6
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 64, 80)
    assert len(batch["boxes"]) == len(batch["labels"]) == 4
    assert all(b.shape[1:] == (4,) for b in batch["boxes"])
    other = ScatterMNISTDataModule.from_config(SMALL, val_fraction=0.25, cache_root=str(tmp_path))
    other.setup("validate")
    assert np.array_equal(other.val_set.indices, dm.val_set.indices)
    dm.setup("test")
    assert next(iter(dm.test_dataloader()))["image"].shape[0] == 4
    with pytest.raises(ConfigError, match="val_fraction"):
        ScatterMNISTDataModule(val_fraction=1.0)


def test_train_loader_resumes_mid_epoch_with_the_same_batches(tmp_path):
    dm = ScatterMNISTDataModule.from_config(SMALL, batch_size=3, cache_root=str(tmp_path))
    dm.prepare_data()
    dm.setup("fit")
    uninterrupted = [batch["image"] for batch in dm.train_dataloader()]
    interrupted = dm.train_dataloader()
    iterator = iter(interrupted)
    next(iterator), next(iterator)
    state = interrupted.state_dict()
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    rest = [batch["image"] for batch in resumed]
    assert len(rest) == len(uninterrupted) - 2
    assert all(torch.equal(a, b) for a, b in zip(rest, uninterrupted[2:], strict=True))
