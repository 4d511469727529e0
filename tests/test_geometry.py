"""Coordinate conventions, affine crops and the spatial transformer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from wherewhat.geometry import (
    apply_affine,
    box_coverage,
    box_crop_affine,
    boxes_cxcywh_to_xyxy,
    boxes_normalized_to_pixel,
    boxes_pixel_to_normalized,
    boxes_xyxy_to_cxcywh,
    compose_affine,
    extract,
    hflip_affine,
    invert_affine,
    normalized_to_pixel,
    pixel_centers,
    pixel_to_normalized,
    place,
    similarity_crop_affine,
    warp_affine,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(finite, finite), min_size=1, max_size=20),
    st.integers(1, 2048),
    st.integers(1, 2048),
)
def test_pixel_normalized_round_trip(points, height, width):
    p = torch.tensor(points, dtype=torch.float64)
    back = normalized_to_pixel(pixel_to_normalized(p, (height, width)), (height, width))
    torch.testing.assert_close(back, p, atol=1e-9, rtol=1e-9)


def test_normalized_edges_and_centres_follow_align_corners_false():
    size = (4, 8)
    edges = torch.tensor([[0.0, 0.0], [8.0, 4.0]])
    torch.testing.assert_close(
        pixel_to_normalized(edges, size), torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    )
    # Sampling an image at its own pixel centres returns it unchanged: the convention matches
    # grid_sample(align_corners=False) exactly.
    image = torch.rand(1, 3, *size)
    grid = pixel_to_normalized(pixel_centers(size), size)[None]
    resampled = F.grid_sample(image, grid, align_corners=False)
    torch.testing.assert_close(resampled, image, atol=1e-6, rtol=0)


def test_box_conversions_round_trip():
    boxes = torch.tensor([[1.0, 2.0, 5.0, 10.0], [0.0, 0.0, 64.0, 32.0]])
    torch.testing.assert_close(boxes_cxcywh_to_xyxy(boxes_xyxy_to_cxcywh(boxes)), boxes)
    norm = boxes_pixel_to_normalized(boxes, (32, 64))
    torch.testing.assert_close(norm[1], torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    torch.testing.assert_close(boxes_normalized_to_pixel(norm, (32, 64)), boxes)


@settings(max_examples=40, deadline=None)
@given(
    cx=st.floats(-50, 400),
    cy=st.floats(-50, 400),
    side=st.floats(5, 500),
    angle=st.floats(-180, 180),
    out=st.integers(8, 512),
)
def test_similarity_crop_uncrop_points_within_1e4_px(cx, cy, side, angle, out):
    matrix = similarity_crop_affine(torch.tensor([cx, cy], dtype=torch.float64), side, out, angle)
    points = torch.rand(68, 2, dtype=torch.float64) * 400 - 50
    cropped = apply_affine(points, matrix)
    back = apply_affine(cropped, invert_affine(matrix))
    assert (back - points).abs().max() < 1e-4
    # float32 too, at face-sized coordinates
    m32, p32 = matrix.float(), points.float()
    back32 = apply_affine(apply_affine(p32, m32), invert_affine(m32))
    assert (back32 - p32).abs().max() < 1e-3 * max(1.0, side / out)


def test_similarity_crop_geometry():
    matrix = similarity_crop_affine(torch.tensor([100.0, 50.0]), 40.0, 80, 0.0)
    # The centre lands in the middle of the crop; the square's corners on the crop's corners.
    corners = torch.tensor([[100.0, 50.0], [80.0, 30.0], [120.0, 70.0]])
    torch.testing.assert_close(
        apply_affine(corners, matrix), torch.tensor([[40.0, 40.0], [0.0, 0.0], [80.0, 80.0]])
    )
    # Rotating by 90 degrees turns a point to the right of the centre into one above it on screen.
    rotated = similarity_crop_affine(torch.tensor([100.0, 50.0]), 40.0, 80, 90.0)
    moved = apply_affine(torch.tensor([[110.0, 50.0]]), rotated)
    torch.testing.assert_close(moved, torch.tensor([[40.0, 20.0]]), atol=1e-5, rtol=0)


def test_warp_affine_marked_pixel_lands_where_the_matrix_says():
    image = torch.zeros(1, 1, 100, 120)
    image[0, 0, 30, 70] = 1.0  # centre at (70.5, 30.5)
    matrix = box_crop_affine(torch.tensor([[50.0, 20.0, 90.0, 60.0]]), (40, 40))
    crop = warp_affine(image, matrix, (40, 40))
    row, col = divmod(int(crop.flatten().argmax()), 40)
    expected = apply_affine(torch.tensor([[[70.5, 30.5]]]), matrix)[0, 0]
    assert (col + 0.5, row + 0.5) == pytest.approx((expected[0].item(), expected[1].item()))
    assert crop.max().item() == pytest.approx(1.0, abs=1e-4)


def test_compose_and_flip():
    flip = hflip_affine(10.0)
    torch.testing.assert_close(compose_affine(flip, flip), torch.eye(3))
    shift = torch.eye(3)
    shift[0, 2] = 3.0
    point = torch.tensor([[1.0, 2.0]])
    # compose applies left to right: first shift (x=4), then flip (x=6)
    torch.testing.assert_close(
        apply_affine(point, compose_affine(shift, flip)), torch.tensor([[6.0, 2.0]])
    )


def test_extract_place_identity_for_aligned_same_size_boxes():
    glimpse = torch.rand(3, 2, 8, 8)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [5.0, 9.0, 13.0, 17.0], [24.0, 24.0, 32.0, 32.0]])
    canvas = place(glimpse, boxes, (32, 32))
    assert canvas.shape == (3, 2, 32, 32)
    torch.testing.assert_close(extract(canvas, boxes, (8, 8)), glimpse, atol=1e-5, rtol=0)
    # nothing outside the box
    outside = torch.ones(3, 1, 32, 32, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        outside[i, :, y0:y1, x0:x1] = False
    assert canvas.masked_select(outside.expand_as(canvas)).abs().max() == 0


def _smooth_glimpse(n: int, size: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    freq = torch.arange(1, n + 1, dtype=torch.float32)[:, None, None]
    return (0.5 + 0.4 * torch.sin(2 * freq * xs + 1) * torch.cos(1.5 * ys * freq)).unsqueeze(1)


@pytest.mark.parametrize(
    "box",
    [
        [4.0, 4.0, 20.0, 20.0],
        [10.0, 3.0, 42.0, 35.0],
        [1.0, 2.0, 65.0, 66.0],
        [7.3, 11.6, 40.9, 30.2],
    ],
)
def test_extract_recovers_placed_glimpse_for_several_box_sizes(box):
    """Upscaled placement + extraction is a mild low-pass: a smooth glimpse comes back closely."""
    glimpse = _smooth_glimpse(2, 16)
    boxes = torch.tensor([box, box])
    recovered = extract(place(glimpse, boxes, (72, 72)), boxes, (16, 16))
    # interior: bounded by bilinear interpolation error of a smooth signal
    assert (recovered - glimpse)[..., 1:-1, 1:-1].abs().max() < 0.02
    # edges include partially covered canvas pixels when the box is off the pixel grid
    assert (recovered - glimpse).abs().mean() < 0.02


def test_place_extract_are_differentiable_in_boxes():
    glimpse = torch.rand(2, 1, 8, 8, requires_grad=True)
    boxes = torch.tensor([[3.2, 4.1, 20.7, 19.9], [0.5, 0.5, 10.0, 30.0]], requires_grad=True)
    canvas = place(glimpse, boxes, (32, 32))
    (canvas * torch.rand_like(canvas)).sum().backward()
    assert boxes.grad is not None and boxes.grad.abs().sum() > 0
    assert glimpse.grad.abs().sum() > 0
    image = torch.rand(2, 1, 32, 32)
    boxes.grad = None
    extract(image, boxes, (8, 8)).sum().backward()
    assert boxes.grad.abs().sum() > 0


def test_box_coverage_area_equals_box_area_inside_canvas():
    boxes = torch.tensor([[2.25, 3.5, 10.75, 9.0], [0.0, 0.0, 16.0, 16.0]])
    coverage = box_coverage(boxes, (16, 16))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    torch.testing.assert_close(coverage.sum(dim=(1, 2, 3)), areas)


def test_extract_with_batch_index_and_count_mismatch():
    image = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 3)
    out = extract(image, boxes, (16, 16), batch_index=torch.tensor([1, 0, 1]))
    torch.testing.assert_close(out[0], image[1], atol=1e-3, rtol=0)
    torch.testing.assert_close(out[1], image[0], atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="batch_index"):
        extract(image, boxes, (16, 16))


def test_pixel_centres_are_half_integers():
    centres = pixel_centers((2, 3))
    assert centres.shape == (2, 3, 2)
    torch.testing.assert_close(centres[1, 2], torch.tensor([2.5, 1.5]))
    assert math.isclose(float(centres[0, 0, 0]), 0.5)
