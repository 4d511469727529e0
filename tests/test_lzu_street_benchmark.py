"""The pieces of the LZU street benchmark: one head grid for every arm, the area unzoom, size
weighting and dropped boxes in the saliency, metrics by band and on small digits, measured
magnification, result merging."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from wherewhat.geometry.saliency import (
    AdaptiveSaliency,
    FixedSaliency,
    UniformSaliency,
    boxes_saliency,
    dataset_saliency,
)
from wherewhat.geometry.separable_unzoom import area_unzoom, area_unzoom_weights
from wherewhat.geometry.warp import identity_grid, saliency_to_grid, unzoom, unzoom_grid
from wherewhat.methods.lzu.arms import make_detector, make_segmenter, output_stride_for
from wherewhat.methods.lzu.magnification import small_object_magnification
from wherewhat.methods.lzu.records import RunRecord
from wherewhat.methods.lzu.region_metrics import BandDetectionAP, SmallObjectIoU, in_band
from wherewhat.methods.lzu.segmentation_net import SegmentationNet
from wherewhat.methods.lzu.settings import LZUBenchSettings
from wherewhat.methods.lzu.wrapper import LZU
from wherewhat.models.vgg_lite import VGGLiteBackbone, pyramid_grid_sizes

ORIGINAL = (512, 1024)


def _band_saliency(grid=(31, 51), rows=slice(12, 16), strength=8.0) -> torch.Tensor:
    """A separable saliency ``(1, 1, gh, gw)`` that favours a band of lattice rows."""
    saliency = torch.ones(1, 1, *grid)
    saliency[..., rows, :] = strength
    return saliency / saliency.sum()


# -- one head grid for every arm ----------------------------------------------------------------


def test_one_x_and_two_x_arms_share_the_head_grid_in_scene_pixels():
    settings = LZUBenchSettings.preset("full")
    grids = {}
    for arm in ("uniform", "lzu_fixed", "lzu_adaptive", "uniform_2x"):
        detector = make_detector(arm, settings, ORIGINAL).detector
        scale = ORIGINAL[0] / detector.image_size[0]
        # cell sides in scene pixels, level by level
        grids[arm] = [(scale * detector.image_size[0] / h, scale * detector.image_size[1] / w)
                      for h, w in detector.grid_sizes]  # fmt: skip
        assert detector.grid_sizes[0] == (32, 64)
    assert grids["uniform"] == grids["uniform_2x"] == grids["lzu_fixed"] == grids["lzu_adaptive"]
    assert grids["uniform"][0] == (16.0, 16.0)
    # and the anchors are the same boxes on the scene
    one = make_detector("uniform", settings, ORIGINAL).detector
    two = make_detector("uniform_2x", settings, ORIGINAL).detector
    assert torch.allclose(one.anchors * 4, two.anchors * 2)


def test_segmentation_arms_share_the_logit_grid():
    settings = LZUBenchSettings.preset("full")
    shapes = {}
    for arm in ("uniform", "uniform_2x"):
        segmenter = make_segmenter(arm, settings, ORIGINAL)
        image = torch.zeros(1, 1, *segmenter.input_size)
        shapes[arm] = tuple(segmenter.net(image).shape[-2:])
    assert shapes["uniform"] == shapes["uniform_2x"] == (128, 256)
    with pytest.raises(ValueError, match="output stride"):
        output_stride_for(3, (128, 256), ORIGINAL)


def test_stride_four_backbone_adds_the_conv3_level_and_keeps_its_weights():
    assert pyramid_grid_sizes((128, 256), 4)[:3] == [(32, 64), (16, 32), (8, 16)]
    torch.manual_seed(0)
    four = VGGLiteBackbone((128, 256), width_mult=0.25, first_stride=4)
    eight = VGGLiteBackbone((128, 256), width_mult=0.25, first_stride=8)
    eight.load_state_dict(four.state_dict(), strict=False)  # same trunk keys
    four.eval(), eight.eval()
    image = torch.rand(1, 1, 128, 256)
    with torch.no_grad():
        a, b = four(image), eight(image)
    assert a[0].shape[-2:] == (32, 64) and four.feature_channels[0] == a[0].shape[1]
    assert torch.allclose(a[1], b[0]) and torch.allclose(a[2], b[1])
    with pytest.raises(ValueError, match="4, 8 or 16"):
        pyramid_grid_sizes((128, 256), 2)


def test_segmentation_net_output_stride_one_gives_input_sized_logits():
    net = SegmentationNet(output_stride=1)
    assert net(torch.rand(2, 1, 32, 48)).shape == (2, 11, 32, 48)
    assert SegmentationNet()(torch.rand(2, 1, 32, 48)).shape == (2, 11, 16, 24)


# -- area unzoom ----------------------------------------------------------------------------------


def test_area_unzoom_is_the_identity_for_a_uniform_warp():
    features = torch.randn(2, 3, 16, 32)
    weights = area_unzoom_weights(identity_grid((31, 51)), (16, 32), (16, 32))
    assert torch.allclose(area_unzoom(features, weights), features, atol=1e-5)


def test_area_unzoom_averages_the_whole_footprint():
    coarse = saliency_to_grid(_band_saliency(), separable=True, fwhm=13.0)
    wy, wx = area_unzoom_weights(coarse, (16, 32), (16, 32))
    assert torch.allclose(wy.sum(-1), torch.ones(1, 16), atol=1e-5)
    assert torch.allclose(wx.sum(-1), torch.ones(1, 32), atol=1e-5)
    constant = torch.full((1, 2, 16, 32), 3.0)
    assert torch.allclose(area_unzoom(constant, (wy, wx)), constant, atol=1e-5)
    # in the magnified band an unwarped row spans several zoomed rows: it reads all of them
    spans = (wy[0] > 1e-6).sum(-1)
    assert int(spans.max()) >= 3
    # the bilinear unzoom reads at most two there, so the two differ on random features
    features = torch.randn(1, 4, 16, 32)
    bilinear = unzoom(features, unzoom_grid(coarse, (16, 32)).grid)
    assert not torch.allclose(bilinear, area_unzoom(features, (wy, wx)), atol=1e-3)


def test_area_unzoom_through_lzu_and_its_errors():
    backbone = torch.nn.Conv2d(1, 2, 3, padding=1)
    uniform = LZU(backbone, UniformSaliency((31, 51)), (16, 32), unzoom_mode="area")
    plain = LZU(backbone, UniformSaliency((31, 51)), (16, 32))
    image = torch.rand(2, 1, 64, 128)
    assert torch.allclose(uniform(image), plain(image), atol=1e-5)
    fixed = LZU(backbone, FixedSaliency(_band_saliency()), (16, 32), unzoom_mode="area")
    assert fixed(image).shape == (2, 2, 16, 32)
    with pytest.raises(ValueError, match="separable"):
        LZU(backbone, UniformSaliency((31, 51)), (16, 32), separable=False, unzoom_mode="area")
    with pytest.raises(ValueError, match="unzoom_mode"):
        LZU(backbone, UniformSaliency((31, 51)), (16, 32), unzoom_mode="nearest")


# -- saliency knobs ---------------------------------------------------------------------------------


def test_inverse_size_weighting_puts_more_mass_on_small_boxes():
    boxes = torch.tensor([[100.0, 100.0, 108.0, 108.0], [600.0, 300.0, 728.0, 428.0]])
    grid = (31, 51)
    equal = boxes_saliency([boxes], ORIGINAL, grid, bandwidth=32.0)[0, 0]
    weighted = boxes_saliency([boxes], ORIGINAL, grid, bandwidth=32.0, size_power=1.0)[0, 0]
    near_small = (slice(5, 8), slice(4, 7))  # lattice nodes around (104, 104) px
    assert weighted[near_small].sum() > 1.5 * equal[near_small].sum()
    # the dataset map is the same KDE accumulated over images
    assert torch.allclose(
        dataset_saliency([boxes], ORIGINAL, grid, bandwidth=32.0, size_power=1.0)[0, 0],
        weighted,
        atol=1e-6,
    )


def test_adaptive_training_drops_only_small_boxes_at_the_rate(monkeypatch):
    import wherewhat.geometry.saliency as saliency_module

    seen: list[torch.Tensor] = []
    original = saliency_module.boxes_saliency

    def spy(boxes, *args, **kwargs):
        seen.extend(boxes)
        return original(boxes, *args, **kwargs)

    monkeypatch.setattr(saliency_module, "boxes_saliency", spy)
    small = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(2000, 1)
    large = torch.tensor([[0.0, 0.0, 60.0, 60.0]]).repeat(500, 1)
    source = AdaptiveSaliency((9, 9), drop=0.3, drop_max_side=24.0,
                              generator=torch.Generator().manual_seed(0))  # fmt: skip
    image = torch.zeros(1, 1, 64, 64)
    source.train()
    source(image, [torch.cat([small, large])])
    sides = seen[-1][:, 2] - seen[-1][:, 0]
    assert int((sides == 60).sum()) == 500
    assert abs(int((sides == 10).sum()) / 2000 - 0.7) < 0.04
    source.eval()
    source(image, [torch.cat([small, large])])
    assert len(seen[-1]) == 2500  # evaluation keeps every box


# -- metrics ------------------------------------------------------------------------------------------


def _det(boxes, scores):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.zeros(len(boxes), dtype=torch.long)
    return {"boxes": boxes, "scores": torch.tensor(scores), "labels": labels}


def test_band_ap_splits_objects_by_their_centre_row():
    band = (100.0, 200.0)
    truth = _det([[10, 140, 20, 150], [50, 300, 60, 310]], [1.0, 1.0])
    # the band object is found, the one outside is missed (its detection is far away)
    preds = _det([[10, 140, 20, 150], [500, 300, 510, 310]], [0.9, 0.8])
    metric = BandDetectionAP(band, area_ranges={"small": (0, 24**2), "medium": (24**2, 64**2),
                                                "large": (64**2, 1e10)}, class_agnostic=True)  # fmt: skip
    metric.update([preds], [{"boxes": truth["boxes"], "labels": truth["labels"]}])
    result = metric.compute()
    assert float(result["ap50_band"]) == pytest.approx(1.0)
    assert float(result["ap50_outside"]) == pytest.approx(0.0)
    assert float(result["ap50_small_band"]) == pytest.approx(1.0)
    assert int(result["n_gt_small_band"]) == 1 and int(result["n_gt_small_outside"]) == 1
    assert 0.0 < float(result["ap50"]) < 1.0
    assert in_band(truth["boxes"], band).tolist() == [True, False]


def test_small_object_iou_counts_only_pixels_of_small_boxes():
    target = torch.zeros(1, 40, 40, dtype=torch.long)
    target[0, 2:6, 2:6] = 3  # a small digit of class 2 (label 3)
    target[0, 10:40, 10:40] = 5  # a large one
    boxes = [torch.tensor([[2.0, 2.0, 6.0, 6.0], [10.0, 10.0, 40.0, 40.0]])]
    preds = target.clone()
    preds[0, 2:4, 2:6] = 0  # half the small digit missed
    preds[0, 10:40, 10:40] = 0  # the large one missed entirely: not counted
    metric = SmallObjectIoU(11, max_side=24.0)
    metric.update(preds, target, boxes)
    result = metric.compute()
    assert result["small_iou"] == pytest.approx(0.5)  # class 3: 8 of 16 pixels
    assert result["small_pixels"] == 16


# -- magnification ------------------------------------------------------------------------------------


def test_magnification_is_one_for_a_uniform_warp_and_above_one_in_a_zoomed_band():
    boxes = [torch.tensor([[500.0, 220.0, 510.0, 232.0], [100.0, 20.0, 110.0, 30.0]])]
    band = (180.0, 280.0)

    def uniform(index, scene_boxes):
        return torch.full((1, 1, 31, 51), 1.0 / (31 * 51))

    flat = small_object_magnification(uniform, boxes, ORIGINAL, (128, 256), band, fwhm=13.0)
    assert flat["band"] == pytest.approx(1.0, abs=1e-4)
    assert flat["outside"] == pytest.approx(1.0, abs=1e-4)
    assert flat["n_band"] == 1 and flat["n_outside"] == 1

    def zoomed(index, scene_boxes):
        return _band_saliency(rows=slice(13, 16))

    magnified = small_object_magnification(zoomed, boxes, ORIGINAL, (128, 256), band, fwhm=13.0)
    assert magnified["band_y"] > 1.3 and magnified["band_x"] == pytest.approx(1.0, abs=1e-3)
    assert magnified["outside_y"] < 1.0


# -- results ------------------------------------------------------------------------------------------


def test_run_records_round_trip_through_json():
    record = RunRecord(
        task="detection", arm="lzu_fixed", seed=1, train_seconds=1.0, train_cpu_seconds=2.0,
        steps=3, final_loss=0.5, eval_seconds=0.1, eval_cpu_seconds=0.2,
        metrics={"ap50": 0.5, "ap50_small_band": 0.25}, params=10, torch_threads=2,
        change={"unzoom": "area"}, step_gflop=1.5, train_tflop=0.01,
        curve=[{"step": 3, "ap50": 0.5}], loss_curve=[(3, 0.5)],
    )  # fmt: skip
    again = RunRecord.from_dict(record.to_dict())
    assert again == record
    assert again.key == ("detection", "lzu_fixed", 1, '{"unzoom": "area"}')
    blank = dataclasses.replace(record, step_fraction_of_peak=math.nan)
    assert math.isnan(RunRecord.from_dict(blank.to_dict()).step_fraction_of_peak)
