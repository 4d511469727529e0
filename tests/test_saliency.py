"""Saliency sources for LZU: box KDE values, jitter, the data-set map on disk, learned gradients."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from wherewhat.errors import DataFormatError
from wherewhat.geometry.saliency import (
    AdaptiveSaliency,
    FixedSaliency,
    LearnedSaliency,
    UniformSaliency,
    boxes_saliency,
    dataset_saliency,
    default_floor,
    jitter_boxes,
    lattice_points,
    load_saliency,
    save_saliency,
)
from wherewhat.geometry.warp import identity_grid, saliency_to_grid, unzoom, unzoom_grid, zoom

GRID = (7, 11)
SIZE = (60, 100)


def test_lattice_points_span_the_image_corner_to_corner():
    points = lattice_points(SIZE, GRID)
    assert torch.allclose(points[0, 0], torch.tensor([0.0, 0.0]))
    assert torch.allclose(points[-1, -1], torch.tensor([100.0, 60.0]))
    assert torch.allclose(points[3, 5], torch.tensor([50.0, 30.0]))


def test_no_boxes_gives_uniform_saliency_and_identity_warp():
    saliency = boxes_saliency([torch.zeros(0, 4)], SIZE, GRID)
    assert torch.allclose(saliency, torch.full((1, 1, *GRID), 1 / 77))
    assert torch.allclose(saliency_to_grid(saliency), identity_grid(GRID), atol=1e-7)


def test_sharp_box_puts_its_mass_on_the_nearest_node():
    """Hand value: a tiny bandwidth sends the box's unit mass to one node, plus the floor."""
    box = torch.tensor([[45.0, 25.0, 55.0, 35.0]])  # centred on node (3, 5)
    saliency = boxes_saliency([box], SIZE, GRID, amplitude=1.0, bandwidth=1e-6)[0, 0]
    floor = default_floor(GRID)  # 1 / 13^2 for p = 6
    assert floor == pytest.approx(1 / 169)
    total = 1.0 + floor * 77
    assert saliency[3, 5] == pytest.approx((1.0 + floor) / total, rel=1e-5)
    assert saliency[0, 0] == pytest.approx(floor / total, rel=1e-5)
    assert float(saliency.sum()) == pytest.approx(1.0, rel=1e-6)


def test_kde_properties():
    box = torch.tensor([[40.0, 20.0, 60.0, 40.0]])  # centred in the image
    narrow = boxes_saliency([box], SIZE, GRID, bandwidth=4.0)[0, 0]
    wide = boxes_saliency([box], SIZE, GRID, bandwidth=64.0)[0, 0]
    assert divmod(int(narrow.argmax()), GRID[1]) == (3, 5)
    assert torch.allclose(narrow, narrow.flip(0), atol=1e-7)  # symmetric about the centre
    assert torch.allclose(narrow, narrow.flip(1), atol=1e-7)
    assert narrow.max() > wide.max()  # a larger bandwidth spreads the same mass
    faint = boxes_saliency([box], SIZE, GRID, amplitude=1e-9)[0, 0]
    assert torch.allclose(faint, torch.full(GRID, 1 / 77), atol=1e-9)  # floor only -> uniform
    # a box far outside every node still gives a finite, normalised map (no underflow NaN)
    far = boxes_saliency([torch.tensor([[1e4, 1e4, 1e4 + 2, 1e4 + 2]])], SIZE, GRID)
    assert torch.isfinite(far).all() and float(far.sum()) == pytest.approx(1.0, rel=1e-5)


def test_jitter_is_unbiased_uniform_and_keeps_sizes():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]]).repeat(20000, 1)
    gen = torch.Generator().manual_seed(0)
    moved = jitter_boxes(boxes, 50.0, generator=gen)
    shift = moved - boxes
    assert torch.allclose(shift[:, :2], shift[:, 2:], atol=1e-4)  # sizes unchanged
    assert shift.abs().max() <= 50.0
    assert shift[:, :2].mean(0).abs().max() < 1.5  # FOVEA's randn formula gives -50 here
    assert shift[:, :2].std(0).sub(50 / 3**0.5).abs().max() < 1.0  # uniform on [-50, 50]
    again = jitter_boxes(boxes, 50.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(moved, again)


def test_dataset_saliency_chunks_files_and_errors(tmp_path):
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(300, 2, generator=gen) * torch.tensor([80.0, 40.0])
    boxes = torch.cat([xy, xy + 5 + 15 * torch.rand(300, 2, generator=gen)], dim=1)
    whole = dataset_saliency(boxes, SIZE, GRID)
    chunked = dataset_saliency([boxes[:100], boxes[100:]], SIZE, GRID, chunk=37)
    assert whole.shape == (1, 1, *GRID)
    assert torch.allclose(whole, chunked, atol=1e-7)
    assert torch.allclose(whole, boxes_saliency([boxes.double()], SIZE, GRID).float(), atol=1e-7)
    path = tmp_path / "sub" / "saliency.pt"
    save_saliency(path, whole, image_size=SIZE, n_boxes=300)
    loaded, meta = load_saliency(path)
    assert torch.equal(loaded, whole) and meta == {"image_size": SIZE, "n_boxes": 300}
    fixed = FixedSaliency.from_file(path)
    out = fixed(torch.zeros(3, 1, *SIZE))
    assert out.shape == (3, 1, *GRID) and torch.equal(out[2:], whole)
    assert fixed.fixed
    with pytest.raises(DataFormatError, match="not found"):
        load_saliency(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a tensor file")
    with pytest.raises(DataFormatError, match="junk.pt"):
        load_saliency(tmp_path / "junk.pt")
    torch.save({"version": 1, "saliency": torch.ones(7, 11)}, tmp_path / "flat.pt")
    with pytest.raises(DataFormatError, match=r"\(1, 1, gh, gw\)"):
        load_saliency(tmp_path / "flat.pt")


def test_adaptive_source_jitters_only_in_training():
    images = torch.zeros(2, 3, *SIZE)
    boxes = [torch.tensor([[10.0, 10.0, 30.0, 30.0]]), torch.zeros(0, 4)]
    source = AdaptiveSaliency(GRID, jitter=10.0, generator=torch.Generator().manual_seed(0))
    source.eval()
    first, second = source(images, boxes), source(images, boxes)
    assert torch.equal(first, second)
    assert torch.allclose(first[1], torch.full((1, *GRID), 1 / 77))  # no boxes -> uniform
    source.train()
    assert not torch.equal(source(images, boxes)[0], first[0])
    assert not source.fixed
    with pytest.raises(ValueError, match="needs boxes"):
        source(images)
    with pytest.raises(ValueError, match="1 box tensors for a batch of 2"):
        source(images, boxes[:1])


def test_uniform_source_is_identity():
    source = UniformSaliency(GRID)
    saliency = source(torch.zeros(4, 3, *SIZE))
    assert saliency.shape == (4, 1, *GRID) and source.fixed
    assert torch.allclose(saliency_to_grid(saliency), identity_grid(GRID, 4), atol=1e-7)


@pytest.mark.parametrize("separable", [True, False])
def test_gradients_reach_learned_saliency_parameters(separable):
    """gradcheck (float64): amplitude/bandwidth -> KDE -> grid -> zoom and unzoom."""
    source = LearnedSaliency((5, 7), bandwidth=16.0).double()
    images = torch.rand(1, 1, 12, 16, dtype=torch.float64)
    features = torch.rand(1, 1, 6, 8, dtype=torch.float64)
    boxes = [torch.tensor([[2.0, 3.0, 7.0, 6.0], [10.0, 6.0, 14.0, 11.0]], dtype=torch.float64)]

    def pipeline(log_amplitude, log_bandwidth):
        params = {"log_amplitude": log_amplitude, "log_bandwidth": log_bandwidth}
        saliency = functional_call(source, params, (images, boxes))
        grid = saliency_to_grid(saliency, separable=separable, fwhm=3.0)
        zoomed = zoom(images, grid, (10, 14))
        unzoomed = unzoom(features, unzoom_grid(grid, (6, 8)))
        return zoomed, unzoomed

    inputs = (
        torch.tensor(0.1, dtype=torch.float64, requires_grad=True),
        torch.tensor(-0.2, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(pipeline, inputs, eps=1e-6, atol=1e-6)
    # and through the module's own parameters in an ordinary backward pass
    zoomed = zoom(images, saliency_to_grid(source(images, boxes), separable=separable), (10, 14))
    zoomed.square().sum().backward()
    assert source.log_amplitude.grad.abs() > 0 and source.log_bandwidth.grad.abs() > 0
