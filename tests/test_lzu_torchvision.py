"""LZU around torchvision detectors: uniform zoom = plain model on the resized image, the
out_channels pass-through, gradients, RetinaNet / Faster R-CNN, adaptive boxes, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from wherewhat.geometry.saliency import (
    AdaptiveSaliency,
    FixedSaliency,
    UniformSaliency,
    boxes_saliency,
)
from wherewhat.methods.lzu.torchvision_detectors import NoResizeTransform, zoom_detector
from wherewhat.methods.lzu.wrapper import LZU

ORIGINAL = (256, 384)
INPUT = (128, 192)
GRID = (9, 13)
CHANNELS = 64  # a slim FPN keeps the tests fast; the detectors are torchvision's own classes


def fpn_backbone(first_level: int) -> BackboneWithFPN:
    """Random ResNet-18 + FPN of CHANNELS channels: P3-P7 (first_level 3, FCOS / RetinaNet, as
    torchvision's builders) or P2-P6 (first_level 2, Faster R-CNN)."""
    layers = range(first_level - 1, 5)
    return BackboneWithFPN(
        resnet18(weights=None),
        {f"layer{i}": str(k) for k, i in enumerate(layers)},
        [64 * 2 ** (i - 1) for i in layers],
        CHANNELS,
        extra_blocks=LastLevelP6P7(CHANNELS, CHANNELS) if first_level == 3 else None,
    )


def detector(name: str, seed: int = 0) -> nn.Module:
    """A small random-weight torchvision detector (3 classes) in eval mode. The plain model's
    own resize is the identity on an INPUT-size image (min_size / max_size = INPUT)."""
    torch.manual_seed(seed)
    sizes = {"min_size": INPUT[0], "max_size": INPUT[1]}
    if name == "fcos":
        model = FCOS(fpn_backbone(3), 3, score_thresh=0.01, **sizes)
        with torch.no_grad():  # random FCOS regresses zero-size boxes; give them extent
            model.head.regression_head.bbox_reg.bias.fill_(1.0)
    elif name == "retinanet":
        model = RetinaNet(fpn_backbone(3), 3, score_thresh=0.01, **sizes)
    elif name == "fasterrcnn":
        model = FasterRCNN(fpn_backbone(2), 3, box_score_thresh=0.01, **sizes)
    else:
        model = MaskRCNN(fpn_backbone(2), 3, **sizes)
    return model.eval()


def targets(count: int = 2) -> list[dict[str, torch.Tensor]]:
    boxes = torch.tensor([[40.0, 60.0, 120.0, 140.0], [200.0, 100.0, 232.0, 124.0]])
    return [{"boxes": boxes.clone(), "labels": torch.tensor([1, 2])} for _ in range(count)]


def matched(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """For each detection of ``a``, the index of the nearest one of ``b`` with the same label
    (max-abs box distance); score ties may order the two lists differently."""
    distance = (a["boxes"][:, None] - b["boxes"][None]).abs().amax(-1)
    distance[a["labels"][:, None] != b["labels"][None]] = float("inf")
    return distance.argmin(1)


@pytest.mark.parametrize(
    ("name", "original"),
    [("fcos", ORIGINAL), ("fcos", (250, 380)), ("retinanet", (250, 380)), ("fasterrcnn", ORIGINAL)],
)
def test_uniform_zoom_equals_the_plain_detector_on_the_resized_image(name, original):
    model = detector(name)
    plain = copy.deepcopy(model)
    zoomed = zoom_detector(model, UniformSaliency(GRID), INPUT).eval()
    seen = []
    zoomed.lzu.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    image = torch.rand(3, *original, generator=torch.Generator().manual_seed(1))
    resized = F.interpolate(image[None], INPUT, mode="bilinear", align_corners=False)[0]
    with torch.no_grad():
        ours = zoomed([image])[0]
        theirs = plain([resized])[0]
    assert isinstance(zoomed.detector.transform, NoResizeTransform)
    assert seen == [torch.Size([1, 3, *INPUT])]  # the zoom is the only resampling
    back = torch.tensor([original[1] / INPUT[1], original[0] / INPUT[0]]).repeat(2)
    expected = theirs["boxes"] * back
    assert len(ours["boxes"]) == len(expected) > 10
    order = matched(ours, {"boxes": expected, "labels": theirs["labels"]})
    assert order.unique().numel() == len(order)
    assert (ours["boxes"] - expected[order]).abs().max() < 1e-3
    assert torch.equal(ours["labels"], theirs["labels"][order])
    assert torch.allclose(ours["scores"], theirs["scores"][order], atol=1e-5)
    sizes = ours["boxes"][:, 2:] - ours["boxes"][:, :2]
    assert sizes.min() > 0 and sizes.max() > 8  # real boxes, not points


def test_fcos_builds_directly_around_lzu_via_out_channels():
    torch.manual_seed(0)
    backbone = fpn_backbone(3)
    lzu = LZU(backbone, UniformSaliency(GRID), INPUT)
    assert lzu.out_channels == backbone.out_channels == CHANNELS
    assert not hasattr(
        LZU(nn.Sequential(nn.Conv2d(3, 4, 1)), UniformSaliency(GRID), INPUT), "out_channels"
    )
    model = FCOS(lzu, num_classes=3, min_size=ORIGINAL[0], max_size=ORIGINAL[1]).eval()
    with torch.no_grad():
        out = model([torch.rand(3, *ORIGINAL)])[0]
    assert set(out) == {"boxes", "scores", "labels"}


def test_training_loss_reaches_the_first_conv_and_adaptive_saliency_uses_the_targets():
    model = detector("fcos")
    zoomed = zoom_detector(model, AdaptiveSaliency(GRID, bandwidth=32.0, jitter=4.0), INPUT)
    zoomed.train()
    losses = zoomed([torch.rand(3, *ORIGINAL) for _ in range(2)], targets())
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    sum(losses.values()).backward()
    assert zoomed.lzu.backbone.body.conv1.weight.grad.abs().sum() > 0
    assert all(
        torch.equal(b, t["boxes"])
        for b, t in zip(zoomed.last_saliency_boxes, targets(), strict=True)
    )


@pytest.mark.parametrize("name", ["retinanet", "fasterrcnn"])
def test_retinanet_and_faster_rcnn_train_and_detect_in_original_pixels(name):
    model = detector(name)
    fixed = FixedSaliency(boxes_saliency([targets(1)[0]["boxes"]], ORIGINAL, GRID, bandwidth=32.0))
    zoomed = zoom_detector(model, fixed, INPUT).train()
    sizes = [ORIGINAL, (240, 360)]  # a mixed batch: padded to 256 x 384, then zoomed
    images = [torch.rand(3, *size) for size in sizes]
    losses = zoomed(images, targets())
    assert len(losses) >= 2 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert zoomed.lzu.backbone.body.conv1.weight.grad.abs().sum() > 0
    zoomed.eval()
    with torch.no_grad():
        out = zoomed(images)
    for detections, (height, width) in zip(out, sizes, strict=True):
        boxes = detections["boxes"]
        assert len(boxes) > 0 and boxes.min() >= 0
        assert (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all()
        assert boxes[:, 2].max() > INPUT[1]  # in original pixels, beyond the input frame


def test_adaptive_eval_uses_the_previous_detections():
    zoomed = zoom_detector(
        detector("fcos"), AdaptiveSaliency(GRID, bandwidth=32.0), INPUT, prior_score_thresh=0.085
    ).eval()
    given = []
    zoomed.saliency.register_forward_hook(lambda m, args, out: given.append((args[1], out)))
    image = torch.rand(3, *ORIGINAL, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first = zoomed([image])[0]
        # first call: no prior -> no boxes -> the uniform warp
        assert given[0][0][0].shape == (0, 4)
        assert torch.allclose(given[0][1], torch.full_like(given[0][1], 1 / (GRID[0] * GRID[1])))
        kept = first["boxes"][first["scores"] >= 0.085]
        assert 0 < len(kept) < len(first["boxes"])
        assert torch.equal(zoomed.previous_boxes[0], kept)
        second = zoomed([image])[0]
        assert torch.equal(given[1][0][0], kept)  # the previous call's detections drive the zoom
        assert (given[1][1] - given[0][1]).abs().max() > 1e-4
        assert not torch.equal(second["scores"], first["scores"])
        box = torch.tensor([[10.0, 10.0, 60.0, 50.0]])
        zoomed([image], saliency_boxes=[box])  # given boxes win
        assert torch.equal(given[2][0][0], box)
        with pytest.raises(ValueError, match="previous call had 1 images"):
            zoomed([image, image])
        zoomed.reset()
        zoomed([image, image])
        assert [b.shape for b in given[-1][0]] == [(0, 4), (0, 4)]


def test_unsupported_models_and_sizes_are_named():
    with pytest.raises(
        ValueError, match=r"GeneralizedRCNNTransform.*Sequential has no such \.transform"
    ):
        zoom_detector(nn.Sequential(), UniformSaliency(GRID), INPUT)
    with pytest.raises(ValueError, match="MaskRCNN predicts them"):
        zoom_detector(detector("maskrcnn"), UniformSaliency(GRID), INPUT)
    model = detector("retinanet")
    with pytest.raises(ValueError, match=r"multiple of 32.*\(128, 224\)"):
        zoom_detector(model, UniformSaliency(GRID), (120, 200))
    zoom_detector(model, UniformSaliency(GRID), INPUT)
    with pytest.raises(ValueError, match="already zoomed"):
        zoom_detector(model, UniformSaliency(GRID), INPUT)
