"""Landmark baselines (PFLD-style, PIPNet-style), WorldComp2D's refiner subset, DDP sampling.

Small crops (64 px) and narrow backbones keep every check to a second or two on a shared CPU.
"""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch

from wherewhat.bench import export_onnx
from wherewhat.data.face_crops import uncrop_points
from wherewhat.data.face_datamodule import FaceLandmarkDataModule
from wherewhat.data.loader import EpochSeededSampler, ResumableDataLoader
from wherewhat.errors import ConfigError
from wherewhat.methods.worldcomp2d.model import LandmarkRefiner, WorldComp2D, sample_landmark_subset
from wherewhat.methods.worldcomp2d.task import WorldComp2DTask
from wherewhat.metrics.landmarks import nme
from wherewhat.models.landmark_baselines import (
    PFLDRegressor,
    PIPHeatmapNet,
    decode_grid,
    encode_grid_targets,
    nearest_neighbors,
    neighbor_merge_matrix,
)
from wherewhat.tasks.landmark_baselines import PFLDTask, PIPHeatmapTask


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Many tiny ops: on an oversubscribed CPU one thread is much faster than two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _shapes(batch: int, num: int = 68, size: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, num, 2, generator=generator) * (size - 16) + 8


# --------------------------------------------------------------------------------------------
# Shapes


def test_pfld_output_shapes_and_mean_shape_start():
    model = PFLDRegressor(width_mult=0.25, crop_size=64).eval()
    shapes = _shapes(6)
    model.set_mean_shape(shapes)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 68, 2)
    # The output layer starts near zero: an untrained model predicts about the mean shape.
    torch.testing.assert_close(out, shapes.mean(0).expand(2, -1, -1), atol=0.5, rtol=0)
    with pytest.raises(ValueError, match=r"expected face crops \(B, 3, 64, 64\)"):
        model(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize(
    "backbone, stride, neighbors", [("mobilenet_v2", 32, 4), ("resnet18", 8, 0)]
)
def test_pip_output_shapes(backbone, stride, neighbors):
    model = PIPHeatmapNet(
        num_landmarks=68, backbone=backbone, stride=stride, num_neighbors=neighbors,
        width_mult=0.25, upsample_channels=16, crop_size=64,
    ).eval()  # fmt: skip
    grid = 64 // stride
    with torch.no_grad():
        score, offset, neighbor = model.head_outputs(torch.rand(2, 3, 64, 64))
        points = model(torch.rand(2, 3, 64, 64))
    assert score.shape == (2, 68, grid, grid)
    assert offset.shape == (2, 68, 2, grid, grid)
    assert neighbor.shape == (2, 68, neighbors, 2, grid, grid)
    assert points.shape == (2, 68, 2)


# --------------------------------------------------------------------------------------------
# PIPNet grid coding


def _maps_from_targets(targets: dict, grid: int) -> tuple[torch.Tensor, ...]:
    """Perfect head outputs: the target scores, and the target offsets written at each
    landmark's own cell (zero elsewhere)."""
    batch, num = targets["cell"].shape
    count = targets["neighbor_offset"].shape[2]
    offset = torch.zeros(batch, num, 2, grid * grid)
    offset.scatter_(3, targets["cell"][:, :, None, None].expand(-1, -1, 2, 1),
                    targets["offset"][..., None])  # fmt: skip
    neighbor = torch.zeros(batch, num, count, 2, grid * grid)
    neighbor.scatter_(4, targets["cell"][:, :, None, None, None].expand(-1, -1, count, 2, 1),
                      targets["neighbor_offset"][..., None])  # fmt: skip
    return (
        targets["score"],
        offset.view(batch, num, 2, grid, grid),
        neighbor.view(batch, num, count, 2, grid, grid),
    )


@pytest.mark.parametrize("stride, count", [(32, 3), (8, 0)])
def test_grid_encode_decode_round_trip(stride, count):
    size = 256
    grid = size // stride
    points = torch.tensor(
        [[[0.2, 0.3], [31.99, 32.0], [128.5, 64.25], [255.7, 255.9], [100.0, 200.0]]]
    )
    neighbors = nearest_neighbors(points[0], count)
    targets = encode_grid_targets(points, neighbors, grid, stride)
    # Cells and in-cell offsets by hand for the second point (31.99, 32.0) at stride 32.
    if stride == 32:
        assert targets["cell"][0, 1] == 1 * grid + 0
        torch.testing.assert_close(targets["offset"][0, 1], torch.tensor([31.99 / 32, 0.0]))
    assert ((targets["offset"] >= 0) & (targets["offset"] < 1)).all()
    assert targets["score"].sum(dim=(-1, -2)).eq(1).all()
    decoded = decode_grid(*_maps_from_targets(targets, grid), neighbor_merge_matrix(neighbors),
                          stride)  # fmt: skip
    assert (decoded - points).abs().max() < 0.5
    torch.testing.assert_close(decoded, points, atol=1e-4, rtol=0)


def test_neighbor_merge_matrix_by_hand():
    neighbors = torch.tensor([[1], [0], [1]])  # 0 -> 1, 1 -> 0, 2 -> 1
    merge = neighbor_merge_matrix(neighbors)
    # Columns: own 0, 1, 2; then the vote of landmark 0 (for 1), of 1 (for 0), of 2 (for 1).
    expected = torch.tensor(
        [
            [1 / 2, 0, 0, 0, 1 / 2, 0],
            [0, 1 / 3, 0, 1 / 3, 0, 1 / 3],
            [0, 0, 1, 0, 0, 0],
        ]
    )
    torch.testing.assert_close(merge, expected)


def test_nearest_neighbors_of_a_known_shape():
    shape = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    torch.testing.assert_close(
        nearest_neighbors(shape, 2), torch.tensor([[1, 2], [0, 2], [1, 0], [2, 1]])
    )
    with pytest.raises(ValueError):
        nearest_neighbors(shape, 4)


# --------------------------------------------------------------------------------------------
# Training: a few steps lower the loss; the harness scores every face in original pixels


def _steps_lower_loss(task, crops, points, steps: int, lr: float) -> tuple[float, float]:
    task.model.set_mean_shape(points)
    optimizer = torch.optim.Adam(task.model.parameters(), lr=lr)
    task.train()
    losses = []
    for _ in range(steps):
        loss = task.losses(crops, points)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses[0], losses[-1]


def test_a_few_pfld_steps_lower_the_loss():
    torch.manual_seed(0)
    crops = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    task = PFLDTask(PFLDRegressor(width_mult=0.25, crop_size=64))
    first, last = _steps_lower_loss(task, crops, _shapes(8), steps=15, lr=1e-3)
    assert last < 0.5 * first, (first, last)


def test_a_few_pip_steps_lower_the_loss():
    torch.manual_seed(0)
    crops = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    network = PIPHeatmapNet(backbone="mobilenet_v2", width_mult=0.25, num_neighbors=4, crop_size=64)
    task = PIPHeatmapTask(network)
    first, last = _steps_lower_loss(task, crops, _shapes(8), steps=15, lr=3e-3)
    assert last < 0.5 * first, (first, last)


def test_baseline_tasks_check_their_options():
    with pytest.raises(ConfigError, match="loss"):
        PFLDTask(loss="l3")
    with pytest.raises(ConfigError, match="lr_decay_at"):
        PIPHeatmapTask(lr_decay_at=1.5)


@pytest.fixture(scope="module")
def small_faces(shared_data) -> FaceLandmarkDataModule:
    root = shared_data / "faces68"
    if not root.is_dir():
        pytest.skip(f"no faces at {root}")
    data = FaceLandmarkDataModule(
        str(root), val_fraction=0.3, max_faces=10, crop_size=64, batch_size=2, eval_batch_size=2
    )
    data.setup("fit")
    return data


def test_harness_sets_the_prior_and_scores_every_face_in_original_pixels(small_faces):
    task = PFLDTask(PFLDRegressor(width_mult=0.25, crop_size=64), lr_decay_at=None)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, max_steps=1,
        num_sanity_val_steps=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*num_workers.*")
        trainer.fit(task, small_faces)
        metrics = trainer.validate(task, small_faces, verbose=False)[0]
    # setup("fit") set the mean shape of the training split (normalised crop coordinates).
    expected = small_faces.train_crop_points().mean(0) / 32 - 1
    torch.testing.assert_close(task.model.mean_shape, expected, atol=1e-5, rtol=0)
    val = small_faces.val_set
    assert metrics["val/num_faces"] == len(val)
    items = [val[i] for i in range(len(val))]
    crops = torch.stack([item["image"] for item in items])
    with torch.no_grad():
        predicted = uncrop_points(task.eval()(crops), torch.stack([i["affine"] for i in items]))
    truth = torch.stack([record.points for record in val.records])
    assert metrics["val/nme"] == pytest.approx(nme(predicted, truth).mean().item(), rel=1e-4)


# --------------------------------------------------------------------------------------------
# ONNX


def test_pfld_onnx_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = PFLDRegressor(width_mult=0.25, crop_size=64)
    model.set_mean_shape(_shapes(4))
    torch.nn.init.normal_(model.output.weight, std=0.05)  # outputs that depend on the image
    crops = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    result = export_onnx(model, crops, tmp_path / "pfld.onnx", atol=1e-4)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert result.checked_batch_sizes == [1, 2]


def test_pip_onnx_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = PIPHeatmapNet(backbone="resnet18", num_neighbors=4, crop_size=64)
    model.set_mean_shape(_shapes(4))
    # Decisive scores: the argmax cell must not hinge on float rounding between runtimes.
    torch.nn.init.normal_(model.score_head.weight, std=1.0)
    torch.nn.init.normal_(model.offset_head.weight, std=0.05)
    crops = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    result = export_onnx(model, crops, tmp_path / "pip.onnx", atol=1e-4)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4


def test_worldcomp2d_task_export_is_the_whole_path_and_matches_torch(tmp_path):
    # What `wherewhat export onnx` and the benchmark export after stage refiner: crop ->
    # fixations -> encoder -> localizer -> refiner (tiny widths; full size: test_worldcomp2d).
    torch.manual_seed(0)
    network = WorldComp2D(
        encoder_channels=(8, 8, 16, 16, 16, 32), encoder_hidden=32, latent=16,
        localizer_hidden=(32,), refiner_width=6, refiner_groups=2, refiner_blocks=1,
    )  # fmt: skip
    task = WorldComp2DTask(network, stage="refiner")
    model = task.export_model()
    model.localizer.set_mean_shape(_shapes(4, size=256))
    torch.nn.init.normal_(model.refiner.head.weight, std=0.5)  # the refiner moves points
    crops = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        coarse = model.localize(model.normalize(crops))
        refined = model(crops)
    assert model.use_refiner and (refined - coarse).abs().max() > 0.5
    result = export_onnx(model, crops, tmp_path / "worldcomp2d.onnx", atol=1e-4)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4


# --------------------------------------------------------------------------------------------
# WorldComp2D: the refiner's landmark subset


def test_landmark_subset_is_distinct_and_seeded():
    first = sample_landmark_subset(4, 68, 16, torch.Generator().manual_seed(3))
    again = sample_landmark_subset(4, 68, 16, torch.Generator().manual_seed(3))
    assert first.shape == (4, 16) and torch.equal(first, again)
    assert all(len(set(row.tolist())) == 16 for row in first)
    with pytest.raises(ValueError):
        sample_landmark_subset(4, 68, 69)


def test_refiner_subset_loss_equals_full_loss_when_it_takes_every_landmark():
    torch.manual_seed(0)
    refiner = LandmarkRefiner(num_landmarks=7, image_channels=1, width=6, groups=2, num_blocks=1)
    torch.nn.init.normal_(refiner.head.weight, std=0.5)  # heatmaps that differ per landmark
    image = torch.rand(3, 1, 64, 64)
    truth = torch.rand(3, 7, 2) * 40 + 12
    centres = truth + torch.randint(-4, 5, truth.shape).float()
    full = refiner.loss(image, centres, truth)
    # Every landmark, in a random order per image: the same terms, the same mean.
    shuffled = refiner.loss(image, centres, truth, landmarks_per_image=7)
    torch.testing.assert_close(shuffled, full, rtol=1e-5, atol=1e-7)
    # A subset is the mean of the full loss's terms on those landmarks (identity channel kept).
    pick = sample_landmark_subset(3, 7, 3, torch.Generator().manual_seed(5))
    subset = refiner.loss(image, centres, truth, 3, torch.Generator().manual_seed(5))
    heatmaps = refiner.heatmaps(image, centres)
    from wherewhat.methods.worldcomp2d.model import heatmap_targets

    targets, valid = heatmap_targets(truth, centres, refiner.view_size, refiner.sigma)
    per_landmark = (heatmaps - targets).pow(2).mean(dim=(-1, -2))
    chosen, chosen_valid = per_landmark.gather(1, pick), valid.gather(1, pick).float()
    expected = (chosen * chosen_valid).sum() / chosen_valid.sum()
    torch.testing.assert_close(subset, expected, rtol=1e-5, atol=1e-7)


def test_refiner_stage_option_is_checked():
    with pytest.raises(ConfigError, match="refiner_landmarks_per_step"):
        WorldComp2DTask(stage="refiner", refiner_landmarks_per_step=0)


# --------------------------------------------------------------------------------------------
# DDP: Lightning's sampler wrapper must pass set_epoch on to our sampler


def test_ddp_sampler_wrapper_forwards_set_epoch_to_the_epoch_seeded_sampler():
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    dataset = list(range(10))
    loader = ResumableDataLoader(dataset, batch_size=1, shuffle=True, seed=4)
    reference = EpochSeededSampler(10, seed=4, shuffle=True)
    reference.set_epoch(3)
    epoch3 = list(reference)
    assert epoch3 != list(EpochSeededSampler(10, seed=4, shuffle=True))  # epochs differ
    shards = []
    for rank in range(2):
        wrapper = _get_distributed_sampler(
            loader, shuffle=True, overfit_batches=0, mode=RunningStage.TRAINING,
            num_replicas=2, rank=rank, seed=0,
        )  # fmt: skip
        sharded = _update_dataloader(loader, wrapper, mode=RunningStage.TRAINING)
        _set_sampler_epoch(sharded, 3)  # what the fit loop does at every epoch start
        inner = sharded.sampler.dataset._sampler
        assert isinstance(inner, EpochSeededSampler) and inner.epoch == 3
        shard = [int(batch) for batch in sharded]
        # DistributedSampler permutes positions with (seed + epoch) and takes every 2nd one;
        # the wrapper reads those positions of our sampler's epoch-3 order.
        positions = torch.randperm(10, generator=torch.Generator().manual_seed(0 + 3)).tolist()
        assert shard == [epoch3[p] for p in positions[rank::2]]
        shards.append(shard)
    assert sorted(shards[0] + shards[1]) == list(range(10))
