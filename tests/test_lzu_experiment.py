"""LZU experiment: detector and segmenter behind the zoom, fixed-saliency file, size buckets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import wherewhat.methods.lzu.saliency_cache as lzu_saliency_cache
from conftest import square_scenes
from wherewhat.errors import ConfigError
from wherewhat.geometry.saliency import boxes_saliency, load_saliency
from wherewhat.geometry.warp import saliency_to_grid, zoom
from wherewhat.methods.lzu.detection_task import LZUDetectionTask, load_prior
from wherewhat.methods.lzu.detector import LZUDetector, plain_detector_outputs, scene_ssd
from wherewhat.methods.lzu.saliency_cache import load_or_compute_fixed_saliency
from wherewhat.methods.lzu.segmentation_net import (
    LZUSegmenter,
    SegmentationNet,
    logits_at_label_pixels,
)
from wherewhat.methods.lzu.segmentation_task import LZUSegmentationTask, boxes_from_label_map
from wherewhat.models.ssd import SSDDetector
from wherewhat.training.fit import fit

ORIGINAL = (128, 256)
INPUT = (64, 128)
GRID = (9, 15)


def _detection_task(
    saliency: str = "uniform", original=ORIGINAL, input_size=INPUT, **task_args
) -> LZUDetectionTask:
    """A small detection task: SSD of width 0.125 behind the zoom, the default anchors."""
    detector = scene_ssd(original, input_size, width_mult=0.125)
    network = LZUDetector(detector, original, saliency=saliency, grid_shape=GRID)
    return LZUDetectionTask(network, **task_args)


def _segmentation_task(saliency: str = "uniform", net=None, **task_args) -> LZUSegmentationTask:
    network = LZUSegmenter(net if net is not None else SegmentationNet(), ORIGINAL, INPUT, saliency=saliency,
                           grid_shape=GRID)  # fmt: skip
    return LZUSegmentationTask(network, **task_args)


def _segmenter(net: nn.Module, saliency: torch.Tensor | None = None, **options) -> LZUSegmenter:
    """``net`` behind a uniform zoom, or a fixed one with the map ``saliency``."""
    if saliency is None:
        return LZUSegmenter(net, ORIGINAL, INPUT, saliency="uniform", grid_shape=GRID, **options)
    segmenter = LZUSegmenter(net, ORIGINAL, INPUT, saliency="fixed",
                             grid_shape=tuple(saliency.shape[-2:]), **options)  # fmt: skip
    segmenter.saliency.saliency.copy_(saliency)
    return segmenter


# Tasks log through Lightning; without a trainer that only warns.
QUIET = pytest.mark.filterwarnings("ignore:.*self.log.*")


def _scene_batch(seed: int = 0, n: int = 4) -> dict:
    """Synthetic scenes: bright squares (digit stand-ins) with boxes, labels and masks."""
    return square_scenes(n, ORIGINAL, (8, 20, 40), seed, min_y=40)


def _nonuniform_saliency(grid_shape=GRID) -> torch.Tensor:
    boxes = torch.tensor([[100.0, 50.0, 120.0, 62.0], [30.0, 60.0, 50.0, 70.0]])
    return boxes_saliency([boxes], ORIGINAL, grid_shape, amplitude=4.0, bandwidth=8.0)


# --------------------------------------------------------------------------- uniform identity


@pytest.mark.parametrize("source", ["uniform", "fixed_uniform_map"])
def test_uniform_lzu_detector_equals_the_plain_detector(source):
    torch.manual_seed(0)
    detector = SSDDetector(INPUT, width_mult=0.125, first_stride=8).eval()
    saliency = "uniform" if source == "uniform" else "fixed"  # a fixed map starts uniform
    model = LZUDetector(detector, ORIGINAL, saliency=saliency, grid_shape=GRID).eval()
    if source == "fixed_uniform_map":
        assert torch.equal(model.saliency.saliency, torch.full((1, 1, *GRID), 1.0 / (9 * 15)))
    images = torch.rand(2, 1, *ORIGINAL)
    with torch.no_grad():
        lzu = model(images)
        plain = plain_detector_outputs(detector, images)
    assert (lzu["loc"] - plain["loc"]).abs().max() < 1e-5
    assert (lzu["logits"] - plain["logits"]).abs().max() < 1e-5
    for a, b in zip(lzu["features"], plain["features"], strict=True):
        assert (a - b).abs().max() < 1e-5


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "task_cls,saliency",
    [(LZUDetectionTask, "fixed"), (LZUDetectionTask, "adaptive"), (LZUSegmentationTask, "fixed"),
     (LZUSegmentationTask, "adaptive")],
)  # fmt: skip
@QUIET
def test_a_few_training_steps_lower_the_loss(task_cls, saliency):
    torch.manual_seed(0)
    if task_cls is LZUDetectionTask:
        task = _detection_task(saliency, warmup_steps=0, lr=3e-3)
    else:
        net = SegmentationNet(widths=(8,) * 5)
        task = _segmentation_task(saliency, net, warmup_steps=0, lr=3e-3)
    batch = _scene_batch()
    if saliency == "fixed":
        task.prepare_fixed_saliency(batch["boxes"])
    optimizer = torch.optim.AdamW(task.parameters(), lr=3e-3)
    task.train()
    losses = []
    for step in range(25):
        loss = task.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0]


# --------------------------------------------------------------------------- fixed saliency


def test_fixed_saliency_is_computed_once_saved_and_loaded(tmp_path, monkeypatch):
    path = tmp_path / "fixed.pt"
    boxes = _scene_batch()["boxes"]
    calls = []
    original = lzu_saliency_cache.dataset_saliency
    monkeypatch.setattr(
        lzu_saliency_cache,
        "dataset_saliency",
        lambda *a, **k: calls.append(1) or original(*a, **k),
    )
    kwargs = {"amplitude": 1.0, "bandwidth": 32.0}  # the task defaults
    first = load_or_compute_fixed_saliency(path, boxes, ORIGINAL, (9, 15), **kwargs)
    assert path.is_file() and len(calls) == 1
    stored, meta = load_saliency(path)
    assert torch.equal(stored, first) and meta["n_boxes"] == 12
    # reused, from the file alone or with the same boxes: no recomputation
    assert torch.equal(
        load_or_compute_fixed_saliency(path, None, ORIGINAL, (9, 15), **kwargs), first
    )
    assert torch.equal(
        load_or_compute_fixed_saliency(path, boxes, ORIGINAL, (9, 15), **kwargs), first
    )
    assert len(calls) == 1
    with pytest.raises(ConfigError, match="computed with"):
        load_or_compute_fixed_saliency(
            path, boxes, ORIGINAL, (9, 15), amplitude=4.0, bandwidth=32.0
        )
    with pytest.raises(ConfigError, match="other training boxes"):
        load_or_compute_fixed_saliency(path, boxes[:2], ORIGINAL, (9, 15), **kwargs)
    with pytest.raises(ConfigError, match="no file"):
        load_or_compute_fixed_saliency(tmp_path / "missing.pt", None, ORIGINAL, (9, 15), **kwargs)

    # a task picks the file up; its weights carry the map to a fresh task
    task = _detection_task("fixed", fixed_saliency_path=str(path))
    with pytest.raises(ConfigError, match="never set"):
        task.predict_batch(_scene_batch(n=1))
    task.setup("test")  # file exists: loaded without any boxes
    assert torch.equal(task.model.saliency.saliency, first)
    fresh = _detection_task("fixed")
    assert not bool(fresh.fixed_saliency_ready)
    fresh.load_state_dict(task.state_dict())
    assert bool(fresh.fixed_saliency_ready)
    assert torch.equal(fresh.model.saliency.saliency, first)


# --------------------------------------------------------------------------- size buckets


def _perfect_outputs(model: LZUDetector, boxes_original: torch.Tensor) -> dict:
    """SSD outputs whose detections are exactly ``boxes_original`` (score ~1)."""
    det = model.detector
    boxes = model.to_detector_frame(boxes_original)
    loc = torch.zeros(1, det.num_anchors, 4)
    logits = torch.zeros(1, det.num_anchors, det.num_classes + 1)
    logits[..., 0] = 10.0
    from torchvision.ops import box_iou

    best = box_iou(boxes, det.anchors).argmax(dim=1)
    loc[0, best] = det.encode_boxes(boxes, det.anchors[best])
    logits[0, best, 0], logits[0, best, 1] = -10.0, 10.0
    return {"loc": loc, "logits": logits, "features": []}


@QUIET
def test_size_buckets_use_original_pixels(monkeypatch):
    # sides 20 / 40 / 80 px on the scene are small / medium / large with sides (24, 64); in the
    # 4x smaller detector frame (5 / 10 / 20 px) they would all be "small"
    task = _detection_task(original=(256, 512), input_size=(64, 128), area_sides_px=(24.0, 64.0))
    gt = torch.tensor([[10.0, 10, 30, 30], [100, 100, 140, 140], [300, 100, 380, 180]])
    batch = {"image": torch.zeros(1, 1, 256, 512), "boxes": [gt], "labels": [torch.zeros(3).long()]}
    detected = gt[:1]  # only the small one is found
    monkeypatch.setattr(
        task.model, "forward", lambda *a, **k: _perfect_outputs(task.model, detected)
    )
    found = task.predict_batch(batch)[0]
    assert torch.allclose(found["boxes"], detected, atol=1e-3)  # mapped back to original px
    result = task.evaluate([batch])
    assert (result["n_gt_small"], result["n_gt_medium"], result["n_gt_large"]) == (1, 1, 1)
    assert result["ap50_small"] == pytest.approx(1.0)
    assert result["ap50_medium"] == 0.0 and result["ap50_large"] == 0.0


# --------------------------------------------------------------------------- segmentation


def test_unzoom_then_upsample_puts_a_one_hot_label_back_in_place():
    saliency = _nonuniform_saliency()
    label = torch.zeros(*ORIGINAL, dtype=torch.long)
    label[48:64, 96:128] = 3  # in the magnified region
    label[80:112, 16:48] = 7
    one_hot = F.one_hot(label, 11).permute(2, 0, 1).float()[None]  # (1, 11, H, W)
    # a "net" whose logits are its (zoomed) input at half resolution, like SegmentationNet
    segmenter = _segmenter(nn.AvgPool2d(2), saliency)
    predicted = segmenter(one_hot).argmax(dim=1)[0]

    def iou(a, b):
        return float((a & b).sum()) / float((a | b).sum())

    for cls in (3, 7):
        assert iou(predicted == cls, label == cls) > 0.8
    # the warp is real: skipping the unzoom misplaces the labels
    coarse = saliency_to_grid(saliency)
    zoomed = F.avg_pool2d(zoom(one_hot, coarse, INPUT), 2)
    no_unzoom = logits_at_label_pixels(zoomed, ORIGINAL).argmax(dim=1)[0]
    assert iou(no_unzoom == 3, label == 3) < 0.5


def test_strided_label_pixels_match_full_resolution_upsampling():
    logits = torch.randn(2, 11, 16, 32)
    full = logits_at_label_pixels(logits, (64, 128))
    strided = logits_at_label_pixels(logits, (64, 128), stride=4)
    assert strided.shape == (2, 11, 16, 32)
    assert torch.allclose(strided, full[..., ::4, ::4], atol=1e-5)


def test_boxes_from_label_map():
    labels = torch.zeros(20, 30, dtype=torch.long)
    labels[2:5, 3:9] = 4
    labels[10:18, 20:22] = 1
    labels[15, 5] = 2  # a single pixel: below min_pixels
    boxes = boxes_from_label_map(labels, min_pixels=2)
    assert boxes.tolist() == [[3.0, 2.0, 9.0, 5.0], [20.0, 10.0, 22.0, 18.0]]
    assert boxes_from_label_map(torch.zeros(5, 5, dtype=torch.long)).shape == (0, 4)


# --------------------------------------------------------------------------- adaptive prior


@QUIET
def test_adaptive_evaluation_uses_the_prior_and_says_when_it_is_missing():
    torch.manual_seed(0)
    task = _detection_task("adaptive")
    batch = _scene_batch(n=2)
    task.eval()
    with pytest.raises(ConfigError, match="prior"):
        task.predict_batch(batch)
    prior = _detection_task("uniform", prior_score_threshold=0.0)
    with pytest.raises(ConfigError, match="LZUDetector"):
        task.attach_prior(nn.Identity())
    task.attach_prior(prior.model)
    detections = task.predict_batch(batch)
    expected = task.prior_boxes(batch["image"])
    for d, e in zip(detections, expected, strict=True):
        assert torch.equal(d["saliency_boxes"], e)
    assert "prior" not in dict(task.named_children())  # not trained, not saved


def test_segmentation_prior_boxes_come_from_its_predicted_components():
    label = torch.zeros(*ORIGINAL, dtype=torch.long)
    label[48:64, 96:128] = 3
    label[80:112, 16:48] = 7
    one_hot = F.one_hot(label, 11).permute(2, 0, 1).float()[None]
    # a uniform "segmenter" whose logits are its input at half resolution: it predicts the truth
    prior = _segmenter(nn.AvgPool2d(2))
    task = _segmentation_task("adaptive", SegmentationNet(in_channels=11))
    with pytest.raises(ConfigError, match="LZUSegmenter"):
        task.attach_prior(nn.Identity())
    task.attach_prior(prior)
    (boxes,) = task.prior_boxes(one_hot)
    expected = torch.tensor([[96.0, 48, 128, 64], [16, 80, 48, 112]])
    assert boxes.shape == (2, 4)
    order = boxes[:, 1].argsort()
    assert (boxes[order] - expected).abs().max() <= 4.0  # one cell of the 32 x 64 logits map


def test_unzoom_to_labels_keeps_the_uniform_pipeline_and_places_labels():
    logits_net = nn.Conv2d(1, 11, 3, stride=2, padding=1)
    images = torch.rand(2, 1, *ORIGINAL)
    by_logits = _segmenter(logits_net)
    by_labels = _segmenter(logits_net, unzoom_to="labels")
    with torch.no_grad():
        for stride in (1, 2):
            a, b = by_logits(images, label_stride=stride), by_labels(images, label_stride=stride)
            assert a.shape == b.shape and (a - b).abs().max() < 1e-5
    label = torch.zeros(*ORIGINAL, dtype=torch.long)
    label[48:64, 96:128] = 3
    one_hot = F.one_hot(label, 11).permute(2, 0, 1).float()[None]
    warped = _segmenter(nn.AvgPool2d(2), _nonuniform_saliency(), unzoom_to="labels")
    predicted = warped(one_hot).argmax(dim=1)[0]
    inter = ((predicted == 3) & (label == 3)).sum()
    union = ((predicted == 3) | (label == 3)).sum()
    assert float(inter) / float(union) > 0.8


# --------------------------------------------------------------------------- checkpoints


@QUIET
def test_checkpoints_rebuild_the_network_and_its_fixed_map(tmp_path):
    """A task stores its network as a spec: loading a checkpoint needs nothing else."""
    torch.manual_seed(0)
    batch = _scene_batch(n=2)
    for index, task in enumerate(
        [_detection_task("uniform"),
         _segmentation_task("fixed", SegmentationNet(widths=(8,) * 5), warmup_steps=0)]
    ):  # fmt: skip
        if task.saliency_kind == "fixed":
            task.prepare_fixed_saliency(batch["boxes"])
        loader = DataLoader([batch], batch_size=None)  # the one batch as it is
        record = fit(task, train_loader=loader, max_steps=1, expected_warnings=(".*",))
        path = tmp_path / f"task{index}.ckpt"
        record.trainer.save_checkpoint(path)
        loaded = type(task).load_from_checkpoint(path, map_location="cpu")
        assert loaded.hparams["model"] == task.hparams["model"]
        assert loaded.model.init_args.keys() == task.model.init_args.keys()
        for key, value in task.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
    assert bool(loaded.fixed_saliency_ready)
    assert not torch.equal(loaded.model.saliency.saliency, torch.full((1, 1, *GRID), 1 / 135))
    prior = load_prior(tmp_path / "task0.ckpt")  # a uniform detection checkpoint
    assert isinstance(prior, LZUDetector) and not prior.training
