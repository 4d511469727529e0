"""SSD detector: box coding, anchors, matching, loss, detection, training, export."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

from wherewhat.bench import export_onnx
from wherewhat.data.scatter import ScatterConfig, ScatterMNIST, collate_scenes, load_or_generate
from wherewhat.models.ssd import (
    SSDDetector,
    anchor_sizes,
    hard_negative_mask,
    match_anchors,
    ssd_loss,
)
from wherewhat.models.vgg_lite import pyramid_grid_sizes
from wherewhat.tasks.ssd import SSDTask
from wherewhat.training.fit import fit

TINY = dict(image_size=(64, 64), width_mult=0.125)


def tiny_batch(n: int, seed: int = 3) -> dict:
    config = ScatterConfig(
        image_size=(64, 64),
        grid_sizes=((1, 1), (2, 2)),
        min_digit_size=20,
        max_digit_size=40,
        n_train=n,
        n_test=1,
        seed=seed,
    )
    scenes = ScatterMNIST(load_or_generate(config, "train"))
    return collate_scenes([scenes[i] for i in range(n)])


# -- box coding --------------------------------------------------------------------------------
def test_encode_known_values_and_variances() -> None:
    detector = SSDDetector(**TINY)
    anchor = torch.tensor([0.0, 0.0, 10.0, 10.0])  # centre (5, 5), side 10
    boxes = torch.tensor([[2.0, 3.0, 12.0, 13.0], [0.0, 0.0, 20.0, 5.0]])
    codes = detector.encode_boxes(boxes, anchor)
    log2 = math.log(2.0)
    expected = torch.tensor(
        [[2.0, 3.0, 0.0, 0.0], [5.0, -2.5, log2 / 0.2, -log2 / 0.2]]  # (c - ac) / (0.1 a)
    )
    torch.testing.assert_close(codes, expected)


def test_decode_inverts_encode_on_every_anchor() -> None:
    detector = SSDDetector(**TINY)
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(2, detector.num_anchors, 2, generator=generator) * 64
    sizes = 2 + torch.rand(2, detector.num_anchors, 2, generator=generator) * 50
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)
    codes = detector.encode_boxes(boxes, detector.anchors)
    torch.testing.assert_close(detector.decode_boxes(codes), boxes, atol=1e-4, rtol=1e-5)
    zero = detector.decode_boxes(torch.zeros(1, detector.num_anchors, 4))[0]
    torch.testing.assert_close(zero, detector.anchors)  # zero offsets = the anchors themselves


# -- anchors and pyramid -----------------------------------------------------------------------
def test_paper_layout_at_300_px() -> None:
    detector = SSDDetector(image_size=(300, 300), in_channels=3, num_classes=10)
    assert detector.backbone.first_stride == 16  # chosen from the size
    assert detector.grid_sizes == [(18, 18), (9, 9), (5, 5), (3, 3), (1, 1)]
    assert detector.feature_channels == [512, 512, 512, 256, 256]
    assert detector.num_anchors == 2 * (324 + 81 + 25 + 9 + 1) == 880
    sides = detector.anchors[:, 2] - detector.anchors[:, 0]
    torch.testing.assert_close(sides, detector.anchors[:, 3] - detector.anchors[:, 1])  # square
    assert sides.min().item() == pytest.approx(30.0) and sides.max().item() == pytest.approx(288.0)
    # the 1 x 1 level's anchors are centred on the image
    top = detector.anchors[detector.anchor_level == 4]
    torch.testing.assert_close((top[:, :2] + top[:, 2:]) / 2, torch.full((2, 2), 150.0))
    # the real network produces exactly these grids (thin copy: same layout, cheap)
    thin = SSDDetector(image_size=(300, 300), in_channels=3, width_mult=0.125, first_stride=16)
    with torch.no_grad():
        shapes = [tuple(f.shape[-2:]) for f in thin.features(torch.rand(1, 3, 300, 300))]
    assert shapes == thin.grid_sizes


@pytest.mark.parametrize(
    "size, first_stride, grids",
    [
        ((128, 128), 8, [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]),
        ((128, 128), 16, [(8, 8), (4, 4), (2, 2), (1, 1)]),
        ((96, 160), 8, [(12, 20), (6, 10), (3, 5), (1, 3), (1, 1)]),
    ],
)
def test_grid_sizes_derived_from_input(size, first_stride, grids) -> None:
    assert pyramid_grid_sizes(size, first_stride) == grids
    detector = SSDDetector(image_size=size, width_mult=0.125, first_stride=first_stride)
    with torch.no_grad():
        out = detector(torch.rand(2, 1, *size))
    assert [tuple(f.shape[-2:]) for f in out["features"]] == grids
    assert [f.shape[1] for f in out["features"]] == detector.feature_channels
    assert out["loc"].shape == (2, detector.num_anchors, 4)
    assert out["logits"].shape == (2, detector.num_anchors, 2)


def test_anchor_order_level_cell_bookkeeping() -> None:
    detector = SSDDetector(image_size=(96, 160), width_mult=0.125)
    k = detector.anchors_per_cell
    start = 0
    for level, (h, w) in enumerate(detector.grid_sizes):
        stop = start + h * w * k
        assert (detector.anchor_level[start:stop] == level).all()
        cells = detector.anchor_cell[start:stop]
        torch.testing.assert_close(cells, torch.arange(h * w).repeat_interleave(k))
        centres = (detector.anchors[start:stop, :2] + detector.anchors[start:stop, 2:]) / 2
        rows, cols = cells // w, cells % w
        torch.testing.assert_close(centres[:, 0], (cols + 0.5) * 160 / w)
        torch.testing.assert_close(centres[:, 1], (rows + 0.5) * 96 / h)
        sides = detector.anchors[start:stop, 2] - detector.anchors[start:stop, 0]
        torch.testing.assert_close(
            sides, torch.tensor(detector.anchor_sizes[level]).repeat(h * w), rtol=0, atol=1e-4
        )
        start = stop
    assert start == detector.num_anchors


class _IndexMap(nn.Module):
    """Stand-in head writing (cell, anchor-in-cell, level, 0) as the 4 codes of every anchor."""

    def __init__(self, level: int, k: int):
        super().__init__()
        self.level, self.k = level, k

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        batch, _, h, w = feature.shape
        cell = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w).expand(batch, 1, h, w)
        maps = []
        for a in range(self.k):
            maps += [cell, torch.full_like(cell, a), torch.full_like(cell, self.level), 0 * cell]
        return torch.cat(maps, dim=1)  # (B, k * 4, h, w), anchor-major channels


def test_head_output_order_matches_anchor_buffers() -> None:
    detector = SSDDetector(**TINY)
    detector.loc_heads = nn.ModuleList(
        _IndexMap(level, detector.anchors_per_cell) for level in range(len(detector.grid_sizes))
    )
    with torch.no_grad():
        loc = detector(torch.rand(2, 1, 64, 64))["loc"]
    in_cell = torch.arange(detector.anchors_per_cell).repeat(detector.num_anchors // 2)
    for image in range(2):
        torch.testing.assert_close(loc[image, :, 0].long(), detector.anchor_cell)
        torch.testing.assert_close(loc[image, :, 1].long(), in_cell)
        torch.testing.assert_close(loc[image, :, 2].long(), detector.anchor_level)


def test_anchor_sizes_evenly_spaced() -> None:
    sizes = anchor_sizes(5, 2, 32.0, 288.0)
    flat = [s for level in sizes for s in level]
    assert len(flat) == 10 and flat[0] == 32.0 and flat[-1] == pytest.approx(288.0)
    steps = torch.tensor(flat).diff()
    torch.testing.assert_close(steps, torch.full((9,), 256.0 / 9))


# -- matching, mining, loss --------------------------------------------------------------------
def test_matching_gives_every_ground_truth_an_anchor() -> None:
    detector = SSDDetector(**TINY)
    anchors = detector.anchors
    # two near-identical tiny boxes share their best anchor; a large box; a thin "1"
    gt = torch.tensor(
        [
            [20.0, 20.0, 26.0, 27.0],
            [20.5, 20.0, 26.5, 27.0],
            [5.0, 5.0, 60.0, 58.0],
            [40, 8, 42, 20],
        ]
    )
    matches = match_anchors(gt, anchors, 0.5)
    for index in range(len(gt)):
        assert (matches == index).any(), f"ground truth {index} has no anchor"
    overlaps = box_iou(gt, anchors)
    best = overlaps.max(dim=0)
    confident = best.values >= 0.5
    assert (matches[confident] == best.indices[confident]).all()
    assert match_anchors(gt[:0], anchors).eq(-1).all()


def test_hard_negative_mining_keeps_ratio_of_hardest() -> None:
    generator = torch.Generator().manual_seed(1)
    loss = torch.rand(3, 40, generator=generator)
    positive = torch.zeros(3, 40, dtype=torch.bool)
    positive[0, [3, 17]] = True  # 2 positives -> 6 negatives
    positive[2, :15] = True  # 15 positives, only 25 negatives left -> all 25
    mask = hard_negative_mask(loss, positive, ratio=3.0)
    assert mask.sum(dim=1).tolist() == [6, 0, 25]
    assert not (mask & positive).any()
    negatives = loss[0].masked_fill(positive[0], -1.0)
    assert set(mask[0].nonzero().squeeze(1).tolist()) == set(negatives.topk(6).indices.tolist())


def test_loss_on_hand_built_case() -> None:
    # one image, 6 anchors, class-agnostic: anchor 0 positive, 5 negatives of known difficulty
    margin = torch.tensor([0.0, 0.0, 1.0, -1.0, 2.0, -2.0])  # object logit - background logit
    logits = torch.stack([torch.zeros(6), margin], dim=-1)[None]
    cls_targets = torch.tensor([[1, 0, 0, 0, 0, 0]])
    loc = torch.zeros(1, 6, 4)
    loc[0, 0] = torch.tensor([1.0, 0.5, -3.0, 0.0])
    loc_targets = torch.zeros(1, 6, 4)
    out = ssd_loss(loc, logits, loc_targets, cls_targets, negative_ratio=3.0)
    # smooth-L1 (beta 1): 0.5 * 1 + 0.5 * 0.25 + (3 - 0.5) = 3.125, over 1 positive
    assert out["loc_loss"].item() == pytest.approx(3.125)
    # positive: CE = softplus(-0); the 3 hardest negatives have margins 2, 1, 0
    softplus = F.softplus(torch.tensor([0.0, 2.0, 1.0, 0.0])).sum().item()
    assert out["cls_loss"].item() == pytest.approx(softplus)
    assert out["loss"].item() == pytest.approx(3.125 + softplus)


def test_loss_through_detector_matches_assigned_targets() -> None:
    detector = SSDDetector(**TINY)
    box = torch.tensor([[8.0, 8.0, 24.0, 26.0]])
    targets = [{"boxes": box, "labels": torch.tensor([1])}]
    loc_targets, cls_targets = detector.assign_targets(targets)
    positive = cls_targets[0] > 0
    assert positive.any()
    # decoding the targets of positive anchors gives back the box
    decoded = detector.decode_boxes(loc_targets)[0, positive]
    torch.testing.assert_close(decoded, box.expand_as(decoded), atol=1e-4, rtol=0)
    # a perfect prediction has zero localisation loss
    outputs = {"loc": loc_targets, "logits": torch.zeros(1, detector.num_anchors, 2)}
    assert detector.loss(outputs, targets)["loc_loss"].item() == pytest.approx(0.0, abs=1e-6)


# -- detection ---------------------------------------------------------------------------------
def test_detect_returns_valid_anchor_index() -> None:
    torch.manual_seed(0)
    detector = SSDDetector(num_classes=10, **TINY).eval()
    with torch.no_grad():
        outputs = detector(torch.rand(3, 1, 64, 64))
    # untrained logits all say "background": spread them so that some scores pass 0.3
    outputs["logits"] = 4 * torch.randn(outputs["logits"].shape)
    detections = detector.detect(outputs, score_threshold=0.3, nms_iou=0.45, max_detections=50)
    boxes = detector.decode_boxes(outputs["loc"]).clamp(0, 64)
    scores = outputs["logits"].softmax(-1)
    assert sum(len(d["scores"]) for d in detections) > 0
    for image, found in enumerate(detections):
        index = found["anchor_index"]
        assert index.dtype == torch.long and len(index) <= 50
        assert ((index >= 0) & (index < detector.num_anchors)).all()
        torch.testing.assert_close(found["boxes"], boxes[image, index])
        torch.testing.assert_close(found["scores"], scores[image, index, found["labels"]])
        assert ((found["labels"] >= 1) & (found["labels"] <= 10)).all()
        assert (found["scores"] > 0.3).all() and (found["scores"].diff() <= 0).all()


# -- training ----------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("num_classes", [1, 10])
def test_both_variants_train_and_loss_decreases(num_classes: int) -> None:
    torch.manual_seed(0)
    task = SSDTask(SSDDetector(num_classes=num_classes, **TINY))
    batch = tiny_batch(8)
    optimizer = torch.optim.Adam(task.parameters(), lr=3e-3)
    losses = []
    for step in range(12):
        loss = task.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


def test_tiny_overfit_detects_the_boxes() -> None:
    torch.manual_seed(0)
    task = SSDTask(SSDDetector(**TINY))
    model = task.model
    batch = tiny_batch(4, seed=5)
    images, targets = task.targets_of(batch, 0)

    def ap50() -> float:
        model.eval()
        with torch.no_grad():
            detections = model.detect(model(images), score_threshold=0.05)
        model.train()
        metric = MeanAveragePrecision(iou_type="bbox")
        keys = ("boxes", "scores", "labels")
        metric.update([{k: d[k] for k in keys} for d in detections], targets)
        return metric.compute()["map_50"].item()

    assert ap50() < 0.5
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(50):  # AP50 reaches 1.0 after ~20 steps
        loss = model.loss(model(images), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert ap50() >= 0.9


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_malformed_target_raises_with_batch_index() -> None:
    task = SSDTask(SSDDetector(**TINY))
    batch = tiny_batch(2)
    batch["boxes"][1] = batch["boxes"][1][:, [2, 1, 0, 3]]  # x1 > x2
    with pytest.raises(ValueError, match=r"malformed batch 7: .*image 1.*x2 > x1"):
        task.training_step(batch, 7)
    batch = tiny_batch(2)
    batch["labels"][0] = batch["labels"][0][:-1]
    with pytest.raises(ValueError, match=r"malformed batch 3: .*image 0"):
        task.validation_step(batch, 3)
    per_class = SSDTask(SSDDetector(num_classes=10, **TINY))
    batch = tiny_batch(2)
    batch["labels"][1] = batch["labels"][1] + 10  # not a digit
    with pytest.raises(ValueError, match=r"malformed batch 0: labels of image 1"):
        per_class.training_step(batch, 0)


def test_onnx_export_parity(tmp_path) -> None:
    task = SSDTask(SSDDetector(num_classes=10, **TINY)).eval()
    network = task.export_model()
    images = tiny_batch(2)["image"]
    result = export_onnx(network, images, tmp_path / "ssd.onnx", atol=1e-4)
    assert result.output_names == ["boxes", "scores"]
    assert result.checked_batch_sizes == [2, 3]
    with torch.no_grad():
        out = network(images)
    assert out["boxes"].shape == (2, task.model.num_anchors, 4)
    assert out["scores"].shape == (2, task.model.num_anchors, 10)
    assert task.example_input_array.shape == (1, 1, 64, 64)


# -- the task takes its model ------------------------------------------------------------------
def test_default_detector_is_the_quarter_width_class_agnostic_one() -> None:
    detector = SSDTask().model
    assert detector.init_args == SSDDetector(width_mult=0.25).init_args
    assert detector.image_size == (128, 128) and detector.num_classes == 1


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_checkpoint_rebuilds_the_detector_from_its_spec(tmp_path) -> None:
    torch.manual_seed(0)
    task = SSDTask(SSDDetector(num_classes=10, anchors_per_cell=3, **TINY), lr=1e-3)
    assert task.hparams["model"]["class_path"] == "wherewhat.models.ssd.SSDDetector"
    assert task.hparams["model"]["init_args"]["anchors_per_cell"] == 3
    loader = DataLoader([tiny_batch(2)], batch_size=None)
    record = fit(task, train_loader=loader, max_steps=1, expected_warnings=["You defined a `val"])
    record.trainer.save_checkpoint(tmp_path / "ssd.ckpt")
    loaded = SSDTask.load_from_checkpoint(tmp_path / "ssd.ckpt")
    assert loaded.hparams.lr == 1e-3 and loaded.model.anchors_per_cell == 3
    assert loaded.model.num_classes == 10 and loaded.model.image_size == (64, 64)
    for key, value in task.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_num_levels_keeps_the_finest_levels_of_the_pyramid():
    from wherewhat.models.vgg_lite import VGGLiteBackbone

    full = pyramid_grid_sizes((256, 256), 8)
    assert full == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert pyramid_grid_sizes((256, 256), 8, 4) == full[:4]
    with pytest.raises(ValueError, match="num_levels=7"):
        pyramid_grid_sizes((256, 256), 8, 7)
    images = torch.rand(2, 1, 256, 256)
    for levels in (1, 2, 4):
        backbone = VGGLiteBackbone((256, 256), 1, 0.25, 8, num_levels=levels)
        maps = backbone(images)
        assert [tuple(m.shape[-2:]) for m in maps] == full[:levels]
        assert [m.shape[1] for m in maps] == backbone.feature_channels
    # Without num_levels nothing changes: the same modules, so old checkpoints still load.
    every = VGGLiteBackbone((256, 256), 1, 0.25, 8)
    assert len(every(images)) == 6 and len(every.extras) == 4
    assert set(VGGLiteBackbone((256, 256), 1, 0.25, 8, num_levels=4).state_dict()) < set(
        every.state_dict()
    )


def test_every_level_of_the_regime_config_receives_objects(tmp_path):
    """configs/ssd/regime.yaml: the digits its data generates are matched by anchors of every
    pyramid level, so no head (and no SSDIR what-head) goes untrained."""
    from wherewhat.models.ssd import matched_level_shares
    from wherewhat.training.config_catalog import resolve_config
    from wherewhat.training.config_files import load_layered_config

    config = load_layered_config(resolve_config("ssd/regime"))
    detector = SSDDetector(**config["model"]["init_args"]["model"]["init_args"])
    data = config["data"]["init_args"]
    scenes = ScatterConfig(
        image_size=tuple(data["image_size"]), min_digit_size=data["min_digit_size"],
        max_digit_size=data["max_digit_size"], n_train=100, n_test=10, seed=0,
    )  # fmt: skip
    dataset = ScatterMNIST(load_or_generate(scenes, "train", cache_root=tmp_path))
    boxes = [dataset[i]["boxes"] for i in range(len(dataset))]
    shares = matched_level_shares(
        boxes, detector.anchors, detector.anchor_level, len(detector.grid_sizes)
    )
    assert len(shares) == 4 and bool((shares > 0.02).all()), shares
