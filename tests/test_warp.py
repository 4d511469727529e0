"""LZU warps: identity, exact inverse (separable and tiles), point/box maps, batching."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wherewhat.geometry.coords import normalized_to_pixel, pixel_centers
from wherewhat.geometry.warp import (
    identity_grid,
    node_positions,
    saliency_to_grid,
    sampling_grid,
    unwarp_boxes,
    unwarp_points,
    unzoom,
    unzoom_grid,
    warp_boxes,
    warp_points,
    zoom,
)

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_saliency(seed: int, shape: tuple[int, int], batch: int = 1, sharpness: float = 4.0):
    """Positive saliency with a few strong blobs: a strong, realistic warp."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, 1, *shape, generator=gen) ** sharpness + 0.02
    for b in range(batch):
        for _ in range(2):
            r = int(torch.randint(0, shape[0] - 1, (1,), generator=gen))
            c = int(torch.randint(0, shape[1] - 1, (1,), generator=gen))
            base[b, 0, r : r + 2, c : c + 3] += 3.0
    return base


def round_trip_error_px(coarse: torch.Tensor, size: tuple[int, int], method: str = "auto"):
    """max |T(T^-1(u)) - u| over the pixel centres u of a map of ``size``, and the coverage."""
    inverse = unzoom_grid(coarse, size, method=method)
    batch = coarse.shape[0]
    zoomed_px = normalized_to_pixel(inverse.grid, size).reshape(batch, -1, 2)
    back = unwarp_points(zoomed_px, coarse, size, size).reshape(batch, *size, 2)
    centres = pixel_centers(size, dtype=coarse.dtype)
    return float((back - centres).abs().max()), inverse.coverage


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize("separable", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_saliency_gives_identity_grid(separable, dtype):
    grid = saliency_to_grid(torch.ones(2, 1, 9, 13, dtype=dtype), separable=separable)
    assert grid.dtype == dtype
    assert torch.allclose(grid, identity_grid((9, 13), 2, dtype=dtype), atol=1e-7, rtol=0)


@pytest.mark.parametrize("separable", [True, False])
def test_uniform_zoom_equals_resize(separable):
    image = torch.rand(2, 3, 40, 72, dtype=torch.float64)
    grid = saliency_to_grid(torch.ones(2, 1, 9, 13, dtype=torch.float64), separable=separable)
    for size in [(20, 36), (17, 50), (80, 100)]:
        expected = F.interpolate(image, size, mode="bilinear", align_corners=False)
        assert (zoom(image, grid, size) - expected).abs().max() < 1e-10
    # float32: only grid_sample's own coordinate rounding (~1 ulp of +-1 times W/2 px) remains.
    image32, grid32 = image.float(), grid.float()
    expected = F.interpolate(image32, (20, 36), mode="bilinear", align_corners=False)
    assert (zoom(image32, grid32, (20, 36)) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("method", ["separable", "tiles"])
def test_uniform_unzoom_is_identity(method):
    features = torch.rand(2, 5, 24, 40)
    inverse = unzoom_grid(identity_grid((9, 13), 2), (24, 40), method=method)
    assert bool(inverse.coverage.all())
    assert (unzoom(features, inverse) - features).abs().max() < 1e-5


@pytest.mark.parametrize("separable", [True, False])
def test_uniform_pipeline_reproduces_unwarped_features(separable):
    """zoom -> backbone -> unzoom with a uniform saliency == backbone on the resized image."""
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
    ).double()
    image = torch.rand(2, 3, 96, 160, dtype=torch.float64)
    grid = saliency_to_grid(torch.ones(1, 1, 11, 17, dtype=torch.float64), separable=separable)
    warped = backbone(zoom(image, grid, (48, 80)))
    unwarped = unzoom(warped, unzoom_grid(grid, warped.shape[-2:]))
    plain = backbone(F.interpolate(image, (48, 80), mode="bilinear", align_corners=False))
    assert (unwarped - plain).abs().max() < 1e-10
    # float32 end to end stays within the float32 resampling noise
    b32 = backbone.float()
    warped = b32(zoom(image.float(), grid.float(), (48, 80)))
    unwarped = unzoom(warped, unzoom_grid(grid.float(), warped.shape[-2:]))
    plain = b32(F.interpolate(image.float(), (48, 80), mode="bilinear", align_corners=False))
    assert (unwarped - plain).abs().max() < 1e-5


# --------------------------------------------------------------------------- exact inverse


@FAST
@given(
    seed=st.integers(0, 10_000),
    grid_shape=st.tuples(st.integers(5, 12), st.integers(5, 16)),
    size=st.tuples(st.integers(12, 48), st.integers(12, 64)),
    separable=st.booleans(),
    fwhm=st.floats(2.0, 13.0),
)
def test_round_trip_exact_with_full_coverage(seed, grid_shape, size, separable, fwhm):
    saliency = random_saliency(seed, grid_shape, batch=2)
    coarse = saliency_to_grid(saliency, separable=separable, fwhm=fwhm)
    error, coverage = round_trip_error_px(coarse, size)
    assert bool(coverage.all())
    assert error <= 1e-3


@FAST
@given(seed=st.integers(0, 10_000), size=st.tuples(st.integers(12, 40), st.integers(12, 40)))
def test_tile_solver_agrees_with_separable_inverse(seed, size):
    coarse = saliency_to_grid(random_saliency(seed, (7, 10)), separable=True, fwhm=4.0)
    by_search = unzoom_grid(coarse, size, method="separable")
    by_tiles = unzoom_grid(coarse, size, method="tiles")
    assert bool(by_tiles.coverage.all())
    assert torch.allclose(by_search.grid, by_tiles.grid, atol=1e-5, rtol=0)


def test_round_trip_at_the_default_setting():
    """The benchmark's map size (152 x 240) and the default 31 x 51 lattice, both warps."""
    saliency = random_saliency(3, (31, 51), sharpness=6.0)
    for separable in (True, False):
        coarse = saliency_to_grid(saliency, separable=separable)
        error, coverage = round_trip_error_px(coarse, (152, 240))
        assert bool(coverage.all()) and error <= 1e-3


def _parallelogram_grid(dtype):
    # Dyadic node positions and shear: every tile is an exact parallelogram (A = 0 exactly).
    nodes = node_positions((9, 17), dtype=dtype)
    x = 0.75 * nodes[..., 0] + 0.125 * nodes[..., 1]
    y = 0.25 * nodes[..., 0] + 0.5 * nodes[..., 1] + 0.25
    return torch.stack([x, y], dim=-1)[None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tile_inverse_on_pure_parallelograms(dtype):
    """The reference's failure case (degenerate quadratic; `mu = c / b` has the wrong sign)."""
    coarse = _parallelogram_grid(dtype)
    corners = coarse[0]
    g = corners[:-1, :-1] - corners[:-1, 1:] - corners[1:, :-1] + corners[1:, 1:]
    assert bool((g == 0).all())  # precondition: the quadratic term vanishes in every tile
    size = (40, 64)
    inverse = unzoom_grid(coarse, size, method="tiles")
    u = pixel_centers(size, dtype=dtype) * torch.tensor([2 / 64, 2 / 40], dtype=dtype) - 1
    # analytic inverse of the affine map u = M v + c
    m = torch.tensor([[0.75, 0.125], [0.25, 0.5]], dtype=dtype)
    c = torch.tensor([0.0, 0.25], dtype=dtype)
    expected = (u - c) @ torch.linalg.inv(m).T
    inside = (expected.abs() <= 1.0).all(-1)
    margin = (expected.abs() <= 0.99).all(-1)
    assert bool(inverse.coverage[0][margin].all())
    outside = (expected.abs() >= 1.01).any(-1)
    assert bool(outside.any()) and not bool(inverse.coverage[0][outside].any())
    error_px = ((inverse.grid[0] - expected)[inside].abs() * torch.tensor([32, 20])).max()
    assert error_px < (1e-3 if dtype == torch.float32 else 1e-9)


def test_identity_grid_through_tiles_claims_every_pixel():
    """The reference misses ~2 % of pixels of an identity warp; every tile is a rectangle here."""
    inverse = unzoom_grid(identity_grid((31, 51)), (152, 240), method="tiles")
    assert bool(inverse.coverage.all())
    expected = (pixel_centers((152, 240)) * torch.tensor([2 / 240, 2 / 152])) - 1
    assert (inverse.grid[0] - expected).abs().max() < 1e-6


def test_uncovered_pixels_are_flagged_and_clamped():
    """A cropping warp (replicate padding, the original sampler) leaves pixels unreached."""
    saliency = random_saliency(5, (9, 13))
    saliency[..., :, :3] += 5.0  # heavy saliency at the left border: replicate pulls inwards
    coarse = saliency_to_grid(saliency, separable=False, anti_crop=False)
    inverse = unzoom_grid(coarse, (30, 40))
    assert not bool(inverse.coverage.all())
    assert bool(inverse.grid.abs().le(1.0 + 1e-6).all())  # clamped inside the zoomed frame
    # covered pixels still round-trip exactly
    zoomed_px = normalized_to_pixel(inverse.grid, (30, 40)).reshape(1, -1, 2)
    back = unwarp_points(zoomed_px, coarse, (30, 40), (30, 40)).reshape(30, 40, 2)
    err = (back - pixel_centers((30, 40))).norm(dim=-1)
    assert err[inverse.coverage[0]].max() <= 1e-3


# --------------------------------------------------------------------------- points and boxes


@pytest.mark.parametrize("separable", [True, False])
def test_points_round_trip(separable):
    coarse = saliency_to_grid(random_saliency(11, (9, 13), batch=2), separable=separable)
    points = torch.rand(2, 50, 2) * torch.tensor([200.0, 120.0])
    zoomed = warp_points(points, coarse, (120, 200), (60, 80))
    assert (zoomed >= 0).all() and (zoomed <= torch.tensor([80.0, 60.0])).all()
    back = unwarp_points(zoomed, coarse, (120, 200), (60, 80))
    assert (back - points).abs().max() < 1e-3


@pytest.mark.parametrize("separable", [True, False])
def test_points_agree_with_grid_sample_of_one_hot(separable):
    """warp_points lands where zoom moves a one-hot pixel; unwarp_points where unzoom does."""
    in_size, out_size = (48, 64), (40, 56)
    coarse = saliency_to_grid(random_saliency(7, (7, 9), sharpness=2.0), separable=separable)
    for row, col in [(10, 12), (30, 50), (24, 31)]:
        one_hot = torch.zeros(1, 1, *in_size)
        one_hot[0, 0, row, col] = 1.0
        zoomed = zoom(one_hot, coarse, out_size)[0, 0]
        peak = divmod(int(zoomed.argmax()), out_size[1])
        predicted = warp_points(torch.tensor([[col + 0.5, row + 0.5]]), coarse, in_size, out_size)
        assert (predicted[0] - torch.tensor([peak[1] + 0.5, peak[0] + 0.5])).abs().max() <= 1.0
    for row, col in [(5, 9), (20, 40), (33, 3)]:
        one_hot = torch.zeros(1, 1, *out_size)
        one_hot[0, 0, row, col] = 1.0
        back = unzoom(one_hot, unzoom_grid(coarse, in_size))[0, 0]
        peak = divmod(int(back.argmax()), in_size[1])
        predicted = unwarp_points(torch.tensor([[col + 0.5, row + 0.5]]), coarse, in_size, out_size)
        assert (predicted[0] - torch.tensor([peak[1] + 0.5, peak[0] + 0.5])).abs().max() <= 1.0


@pytest.mark.parametrize("separable", [True, False])
def test_boxes_agree_with_zoomed_mask(separable):
    in_size, out_size = (60, 80), (48, 64)
    coarse = saliency_to_grid(random_saliency(2, (7, 9)), separable=separable)
    box = torch.tensor([[18.0, 12.0, 47.0, 40.0]])
    mask = torch.zeros(1, 1, *in_size)
    mask[..., 12:40, 18:47] = 1.0
    zoomed = zoom(mask, coarse, out_size, mode="nearest")[0, 0] > 0.5
    rows = torch.nonzero(zoomed.any(1)).flatten()
    cols = torch.nonzero(zoomed.any(0)).flatten()
    observed = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()
    predicted = warp_boxes(box, coarse, in_size, out_size)[0]
    assert (predicted - observed).abs().max() <= 1.0
    back = unwarp_boxes(predicted[None], coarse, in_size, out_size)[0]
    if separable:
        assert (back - box[0]).abs().max() < 1e-3
    else:  # tight box around a curved outline: contains the original box
        assert bool((back[:2] <= box[0, :2] + 1e-3).all() and (back[2:] >= box[0, 2:] - 1e-3).all())


# --------------------------------------------------------------------------- batching, errors


@pytest.mark.parametrize("separable", [True, False])
def test_batch_of_mixed_saliencies(separable):
    saliency = torch.cat(
        [torch.ones(1, 1, 9, 13), random_saliency(1, (9, 13)), random_saliency(2, (9, 13), 1, 8)]
    )
    coarse = saliency_to_grid(saliency, separable=separable)
    image = torch.rand(3, 2, 36, 52)
    features = torch.rand(3, 4, 18, 26)
    inverse = unzoom_grid(coarse, (18, 26))
    zoomed = zoom(image, coarse, (24, 30))
    unzoomed = unzoom(features, inverse)
    for i in range(3):
        # items do not interact: batched grids equal single ones, and each item's resampling
        # depends only on its own grid
        single = saliency_to_grid(saliency[i : i + 1], separable=separable)
        assert torch.allclose(single, coarse[i : i + 1], atol=1e-6)
        assert torch.equal(zoom(image[i : i + 1], coarse[i : i + 1], (24, 30)), zoomed[i : i + 1])
        one = unzoom_grid(coarse[i : i + 1], (18, 26))
        assert torch.allclose(one.grid, inverse.grid[i : i + 1], atol=1e-6)
        assert torch.equal(one.coverage, inverse.coverage[i : i + 1])
        assert torch.allclose(unzoom(features[i : i + 1], one), unzoomed[i : i + 1], atol=1e-5)
    # a batch-1 (cached) grid broadcasts over any batch
    shared = unzoom(features, unzoom_grid(coarse[1:2], (18, 26)))
    assert torch.allclose(shared[2], unzoom(features[2:3], inverse.grid[1:2])[0])
    assert sampling_grid(coarse, (24, 30)).shape == (3, 24, 30, 2)


def test_clear_errors():
    with pytest.raises(ValueError, match=r"\(B, 1, gh, gw\)"):
        saliency_to_grid(torch.ones(1, 9, 13))
    nonseparable = saliency_to_grid(random_saliency(0, (9, 13)), separable=False)
    with pytest.raises(ValueError, match="separable"):
        unzoom_grid(nonseparable, (10, 10), method="separable")
    with pytest.raises(ValueError, match="grid batch"):
        zoom(torch.rand(3, 1, 8, 8), identity_grid((5, 5), 2), (4, 4))
