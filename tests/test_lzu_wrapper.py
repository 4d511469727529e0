"""LZU wrapper: uniform identity end to end, output structures, grid caching, gradients."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wherewhat.methods.lzu.wrapper as lzu_module
from wherewhat.geometry.saliency import (
    FixedSaliency,
    LearnedSaliency,
    UniformSaliency,
    boxes_saliency,
)
from wherewhat.methods.lzu.wrapper import LZU


class TwoLevels(nn.Module):
    """A tiny FPN-like backbone returning an ordered dict of two maps (strides 2 and 4)."""

    def __init__(self, as_list: bool = False):
        super().__init__()
        self.as_list = as_list
        self.c1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x):
        p1 = torch.relu(self.c1(x))
        p2 = self.c2(p1)
        return [p1, p2] if self.as_list else OrderedDict(fine=p1, coarse=p2)


@pytest.mark.parametrize("separable", [True, False])
def test_uniform_saliency_reproduces_the_unwarped_model(separable):
    torch.manual_seed(0)
    backbone = TwoLevels().double()
    images = torch.rand(2, 3, 64, 96, dtype=torch.float64)
    model = LZU(backbone, UniformSaliency((9, 13)), (32, 48), separable=separable)
    out = model(images)
    plain = backbone(F.interpolate(images, (32, 48), mode="bilinear", align_corners=False))
    assert isinstance(out, OrderedDict) and list(out) == ["fine", "coarse"]
    for name in out:
        assert out[name].shape == plain[name].shape
        assert (out[name] - plain[name]).abs().max() < 1e-10


def test_structures_tensor_list_and_errors():
    images = torch.rand(1, 3, 32, 32)
    as_list = LZU(TwoLevels(as_list=True), UniformSaliency((5, 5)), (16, 16))(images)
    assert isinstance(as_list, list) and [t.shape[-1] for t in as_list] == [8, 4]
    single = LZU(nn.Conv2d(3, 2, 1), UniformSaliency((5, 5)), (16, 16))(images)
    assert single.shape == (1, 2, 16, 16)
    with pytest.raises(TypeError, match=r"\(B, D, h, w\)"):
        LZU(nn.Flatten(), UniformSaliency((5, 5)), (16, 16))(images)


def test_fixed_saliency_grids_are_cached(monkeypatch):
    boxes = torch.tensor([[10.0, 10.0, 20.0, 18.0], [40.0, 30.0, 60.0, 50.0]])
    saliency = boxes_saliency([boxes], (64, 96), (9, 13), bandwidth=8.0)
    model = LZU(TwoLevels(), FixedSaliency(saliency), (32, 48))
    images = torch.rand(3, 3, 64, 96)
    first = model(images)
    calls = []
    original = lzu_module.unzoom_grid
    monkeypatch.setattr(
        lzu_module, "unzoom_grid", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    second = model(images[:2])  # another batch size reuses the batch-1 grids
    assert calls == []
    assert torch.allclose(second["fine"], first["fine"][:2])
    model.clear_cache()
    model(images[:1])
    assert len(calls) == 2  # one inverse per feature level, recomputed after clearing
    # a non-trivial warp really changes the features
    plain = model.backbone(F.interpolate(images, (32, 48), mode="bilinear", align_corners=False))
    assert (first["fine"] - plain["fine"]).abs().max() > 1e-2


def test_learned_saliency_trains_through_zoom_and_unzoom():
    torch.manual_seed(0)
    source = LearnedSaliency((7, 9), bandwidth=16.0)
    model = LZU(TwoLevels(), source, (24, 32), separable=False)
    images = torch.rand(2, 3, 48, 64)
    boxes = [torch.tensor([[5.0, 5.0, 20.0, 15.0]]), torch.tensor([[30.0, 20.0, 50.0, 40.0]])]
    out = model(images, boxes)
    assert not model._cache  # adaptive saliency: nothing cached
    (out["fine"].square().mean() + out["coarse"].square().mean()).backward()
    assert source.log_amplitude.grad.abs() > 0 and source.log_bandwidth.grad.abs() > 0
    assert model.backbone.c1.weight.grad.abs().sum() > 0
