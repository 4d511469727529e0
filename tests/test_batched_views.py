"""Batched view drawing (issue 15): one call per batch gives the per-image views, boxes and all;
the crop and jitter rules give hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wherewhat.data.images import SelfSupervisedDataModule
from wherewhat.methods.spatial_prediction.views import (
    CropConfig,
    PhotometricConfig,
    ViewSampler,
    ViewSamplerConfig,
    crop_boxes_from_uniforms,
    jitter_views_from_uniforms,
)

BOX_KEYS = ("global_boxes", "local_boxes", "flipped", "image_size")
VIEW_KEYS = ("global_views", "local_views")


def busy_sampler(num_pairs: int = 2) -> ViewSampler:
    """Every random step in play: flips, colour, greyscale, blur on both kinds, min_gap redraws."""
    return ViewSampler(
        ViewSamplerConfig(
            local_crop=CropConfig(scale=(0.05, 0.4), size=(12, 12)),
            num_pairs=num_pairs,
            min_gap=0.3,
            global_photometric=PhotometricConfig(p_blur=0.5),
            local_photometric=PhotometricConfig(p_blur=0.5),
        )
    )


def assert_same_views(batched: dict, per_image: list[dict]) -> None:
    for key in BOX_KEYS:
        assert torch.equal(batched[key], torch.stack([v[key] for v in per_image])), key
    for key in VIEW_KEYS:
        stacked = torch.stack([v[key] for v in per_image])
        assert batched[key].shape == stacked.shape
        assert (batched[key] - stacked).abs().max() <= 1e-5, key


def test_a_batch_gives_the_per_image_views_for_the_same_seeds():
    sampler = busy_sampler()
    images = torch.rand(12, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    seeds = [11 * i + 5 for i in range(12)]
    batched = sampler.batch(images, [torch.Generator().manual_seed(s) for s in seeds])
    per_image = [
        sampler(image, torch.Generator().manual_seed(s))
        for image, s in zip(images, seeds, strict=True)
    ]
    assert_same_views(batched, per_image)
    # The draws really vary: flips both ways, pairs redrawn apart, views not all alike.
    assert 0 < int(batched["flipped"].sum()) < 12
    boxes = batched["local_boxes"]
    gap = torch.hypot(
        (boxes[..., 1, 0] + boxes[..., 1, 2] - boxes[..., 0, 0] - boxes[..., 0, 2]) / (2 * 20),
        (boxes[..., 1, 1] + boxes[..., 1, 3] - boxes[..., 0, 1] - boxes[..., 0, 3]) / (2 * 24),
    )
    assert (gap >= 0.3).all()
    # An image's views do not depend on the other images of its batch.
    alone = sampler.batch(images[3:4], [torch.Generator().manual_seed(seeds[3])])
    assert torch.equal(alone["global_boxes"][0], batched["global_boxes"][3])


def test_uint8_batches_are_scaled_like_float_images():
    sampler = busy_sampler(num_pairs=1)
    pixels = torch.randint(0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(1))
    pixels = pixels.to(torch.uint8)
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(4)]  # noqa: E731
    from_uint8 = sampler.batch(pixels, gens())
    from_float = sampler.batch(pixels.float() / 255, gens())
    for key in VIEW_KEYS:
        assert torch.equal(from_uint8[key], from_float[key])
    with pytest.raises(ValueError, match="generators for"):
        sampler.batch(pixels, gens()[:2])


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("views") / "tiny.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8),
        y_train=np.arange(40) % 4,
        x_test=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
        y_test=np.arange(8) % 4,
    )
    return str(path)


def test_batched_loader_yields_the_per_image_loaders_batches(small_npz):
    """The data module's batched path (views drawn in the collate) and its per-image path give
    the same batches: same order, same per-sample seeds, same views."""
    loaders = [
        SelfSupervisedDataModule(
            npz_path=small_npz, batch_size=8, seed=4, train_transform=busy_sampler(),
            batch_transform=batched,
        ).train_dataloader()
        for batched in (True, False)
    ]  # fmt: skip
    count = 0
    for (fast, labels_fast), (slow, labels_slow) in zip(*loaders, strict=True):
        assert torch.equal(labels_fast, labels_slow)
        assert_same_views(
            fast, [{k: v[i] for k, v in slow.items()} for i in range(len(labels_slow))]
        )
        count += 1
    assert count == 40 // 8


def test_crop_boxes_from_uniforms_hand_computed():
    square = CropConfig(scale=(0.25, 0.25), ratio=(1.0, 1.0))
    # Area 0.25 of 40 x 40 -> a 20 px square; the corner at half the free range.
    u = torch.tensor([[0.3, 0.7, 0.5, 0.5]], dtype=torch.float64)  # 1 try: area, aspect, x, y
    assert torch.allclose(
        crop_boxes_from_uniforms(u, (40, 40), square), torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    )
    # Too wide in every try: the last try is clamped to the image width.
    wide = CropConfig(scale=(1.0, 1.0), ratio=(2.0, 2.0))
    u = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # 2 tries
    box = crop_boxes_from_uniforms(u, (40, 40), wide)[0]
    assert torch.allclose(box, torch.tensor([0.0, 0.0, 40.0, 40 / 2**0.5]))
    with pytest.raises(ValueError, match="2 \\* tries \\+ 2"):
        crop_boxes_from_uniforms(torch.zeros(1, 5, dtype=torch.float64), (40, 40), square)


def test_jitter_from_uniforms_hand_computed():
    views = torch.full((2, 3, 4, 4), 0.4)
    config = PhotometricConfig(
        brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0, p_jitter=0.5, p_grey=0.0
    )
    u = torch.zeros(2, 8, dtype=torch.float64)
    u[:, 1] = 1.0  # brightness factor at the top of its range: 1.5
    u[1, 0] = 0.9  # the second view's jitter is off
    u[:, 5] = 0.5  # greyscale off (p_grey 0)
    out = jitter_views_from_uniforms(views, config, u)
    assert torch.allclose(out[0], torch.full((3, 4, 4), 0.6))
    assert torch.equal(out[1], views[1])  # untouched, bit for bit
