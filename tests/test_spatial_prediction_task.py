"""SelfSupervisedTask: optimizer contents, lambda = 0, BYOL's EMA per step, a tiny run learns."""

from __future__ import annotations

import logging
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from wherewhat.data.images import SelfSupervisedDataModule
from wherewhat.errors import ConfigError
from wherewhat.methods.spatial_prediction import (
    SimCLR,
    SpatialPredictionConfig,
    SSLMethod,
    TinyCNN,
    ViewSampler,
    build_ssl_method,
)
from wherewhat.methods.spatial_prediction.task import SelfSupervisedTask

SMALL_HEADS = {
    "simclr": {"projection_hidden_dim": 32, "projection_dim": 16},
    "byol": {"projection_hidden_dim": 32, "projection_dim": 16, "prediction_hidden_dim": 32},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(base: str = "simclr", sp_lambda: float = 0.5, sp_pairs: int = 1) -> SSLMethod:
    sp = SpatialPredictionConfig(
        weight=sp_lambda, num_pairs=sp_pairs, local_size=(8, 8), hidden_dim=16
    )
    return build_ssl_method(base, TinyCNN(8), spatial_prediction=sp, **SMALL_HEADS[base])


def tiny_task(
    base: str = "simclr", sp_lambda: float = 0.5, sp_pairs: int = 1, **kwargs
) -> SelfSupervisedTask:
    args = {"global_size": 16, "knn_train_limit": 64, "knn_test_limit": 32}
    return SelfSupervisedTask(tiny_model(base, sp_lambda, sp_pairs), **{**args, **kwargs})


def blob_images(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``(n, size, size, 3)`` uint8: a coloured disc (one colour per class, 4 classes) at a
    random place on a darker random background; labels ``(n,)``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    colours = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40]])
    ys, xs = np.mgrid[:size, :size] + 0.5
    images = rng.integers(0, 90, (n, 1, 1, 3)) + rng.integers(0, 30, (n, size, size, 3))
    for i in range(n):
        cx, cy, r = rng.uniform(4, size - 4), rng.uniform(4, size - 4), rng.uniform(2.5, 4.5)
        disc = (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2
        images[i][disc] = colours[labels[i]]
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="module")
def blob_npz(tmp_path_factory) -> str:
    x_train, y_train = blob_images(96, 0)
    x_test, y_test = blob_images(48, 1)
    path = tmp_path_factory.mktemp("ssl") / "blobs.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


def sampled_batch(task: SelfSupervisedTask, n: int = 16, seed: int = 0) -> dict:
    images = torch.from_numpy(blob_images(n, seed)[0]).permute(0, 3, 1, 2).float() / 255
    sampler, g = task.view_sampler(), torch.Generator().manual_seed(seed)
    return default_collate([sampler(image, g) for image in images])


def quiet_trainer(**kwargs) -> pl.Trainer:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|LeafSpec).*")
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("base", ["simclr", "byol"])
def test_sp_head_is_in_the_optimizer_and_gets_gradients(base):
    task = tiny_task(base)
    task._planned_steps = lambda: 10  # no trainer here: the schedule length is all it needs
    optimizer = task.configure_optimizers()["optimizer"]
    listed = [p for group in optimizer.param_groups for p in group["params"]]
    assert len({id(p) for p in listed}) == len(listed)  # nothing twice
    assert {id(p) for p in listed} == {id(p) for p in task.model.trainable_parameters()}
    head = list(task.model.spatial_prediction.head.parameters())
    assert head and all(id(p) in {id(q) for q in listed} for p in head)
    if base == "byol":
        target = list(task.model.target_backbone.parameters())
        assert not any(id(p) in {id(q) for q in listed} for p in target)
    losses = task.model.loss(sampled_batch(task))
    assert set(losses) == {"loss", "base_loss", "sp_loss"}
    losses["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    before = [p.detach().clone() for p in head]
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, head, strict=True))


def test_lambda_zero_is_exactly_the_base_method():
    torch.manual_seed(0)
    task = tiny_task(sp_lambda=0.0)
    torch.manual_seed(0)
    plain = SimCLR(TinyCNN(8), **SMALL_HEADS["simclr"])
    assert task.view_sampler_config().num_pairs == 0  # no SP views are even drawn
    batch = sampled_batch(task)
    assert batch["local_views"].shape[1] == 0
    losses = task.model.loss(batch)
    assert "sp_loss" not in losses
    torch.testing.assert_close(losses["loss"], plain.loss(batch)["loss"], rtol=0, atol=0)
    torch.testing.assert_close(losses["loss"], losses["base_loss"], rtol=0, atol=0)


def test_tiny_simclr_sp_run_lowers_the_loss(blob_npz):
    pl.seed_everything(0, verbose=False)
    task = tiny_task(lr=3e-3, warmup_fraction=0.0)
    data = SelfSupervisedDataModule(npz_path=blob_npz, batch_size=32, num_workers=0, seed=0)
    # Three fixed batches of views: one batch's loss moves too much with its draws to judge by.
    fixed = [sampled_batch(task, n=32, seed=seed) for seed in (5, 6, 7)]

    def mean_loss(key: str) -> float:
        with torch.no_grad():
            return sum(float(task.model.loss(batch)[key]) for batch in fixed) / len(fixed)

    before = {key: mean_loss(key) for key in ("base_loss", "loss")}
    quiet_trainer(max_epochs=12).fit(task, datamodule=data)
    assert isinstance(data.train_transform, ViewSampler)  # installed by the task
    # Measured over seeds 0-3: 0.76-0.89 of the start after 12 epochs (0.89 with this seed).
    assert mean_loss("base_loss") < 0.92 * before["base_loss"]
    assert mean_loss("loss") < before["loss"]
    history = task.history
    assert history[-1]["loss"] < history[0]["loss"]
    assert [h["epoch"] for h in history] == list(range(12))
    assert all({"loss", "base_loss", "sp_loss", "seconds", "knn_acc"} <= set(h) for h in history)


def test_byol_target_is_updated_after_every_optimizer_step(blob_npz):
    pl.seed_everything(0, verbose=False)
    task = tiny_task("byol", knn_every_n_epochs=0)
    calls = []
    update = task.model.after_optimizer_step

    def record(step, total):
        calls.append((step, total, [p.detach().clone() for p in task.model.backbone.parameters()]))
        return update(step, total)

    task.model.after_optimizer_step = record
    start = [p.detach().clone() for p in task.model.target_backbone.parameters()]
    data = SelfSupervisedDataModule(npz_path=blob_npz, batch_size=32, num_workers=0, seed=0)
    quiet_trainer(max_steps=4).fit(task, datamodule=data)
    assert [(step, total) for step, total, _ in calls] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    # The online weights seen by the first update are already the stepped ones.
    first_online = calls[0][2]
    assert any(not torch.equal(a, b) for a, b in zip(first_online, start, strict=True))
    target = list(task.model.target_backbone.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(target, start, strict=True))


@pytest.mark.parametrize("base", ["simclr", "byol"])
def test_load_from_checkpoint_rebuilds_the_model_from_its_spec(blob_npz, tmp_path, base):
    """The task takes its model; the checkpoint stores the model's spec (plain data, so it
    loads with weights_only) and ``load_from_checkpoint`` builds the same network from it."""
    pl.seed_everything(0, verbose=False)
    task = tiny_task(base, knn_every_n_epochs=0, lr=1e-3)
    data = SelfSupervisedDataModule(npz_path=blob_npz, batch_size=32, num_workers=0, seed=0)
    trainer = quiet_trainer(max_steps=2)
    trainer.fit(task, datamodule=data)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    loaded = SelfSupervisedTask.load_from_checkpoint(path, weights_only=True)
    assert type(loaded.model) is type(task.model)
    assert loaded.model.spatial_prediction.config == task.model.spatial_prediction.config
    assert loaded.view_sampler_config() == task.view_sampler_config()
    assert loaded.hparams.lr == 1e-3 and "sp_lambda" not in loaded.hparams
    state, restored = task.state_dict(), loaded.state_dict()
    assert state.keys() == restored.keys()
    assert all(torch.equal(state[k], restored[k]) for k in state)


def test_a_foreign_train_transform_is_refused(blob_npz):
    task = tiny_task()
    data = SelfSupervisedDataModule(npz_path=blob_npz, batch_size=32, train_transform=abs)
    with pytest.raises(ConfigError, match="ViewSampler"):
        quiet_trainer(max_steps=1).fit(task, datamodule=data)


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="optimizer"):
        tiny_task(optimizer="adam")
    with pytest.raises(ConfigError, match="num_pairs"):
        tiny_task(sp_pairs=0)


@pytest.mark.parametrize("batch_transform", [True, False], ids=["batched", "per-image"])
def test_train_loader_resumes_mid_epoch_with_the_same_views(blob_npz, batch_transform):
    """Order and views depend on (seed, epoch, index) only: a loader restored from the state of
    an interrupted one yields exactly the rest of the uninterrupted epoch, views included,
    whether views are drawn per batch or per image."""
    data = SelfSupervisedDataModule(
        npz_path=blob_npz, batch_size=16, seed=3, train_transform=tiny_task().view_sampler(),
        batch_transform=batch_transform,
    )  # fmt: skip
    uninterrupted = [batch[0]["local_views"] for batch in data.train_dataloader()]
    interrupted = data.train_dataloader()
    iterator = iter(interrupted)
    next(iterator), next(iterator)
    resumed = data.train_dataloader()
    resumed.load_state_dict(interrupted.state_dict())
    rest = [batch[0]["local_views"] for batch in resumed]
    assert len(uninterrupted) == 96 // 16 and len(rest) == len(uninterrupted) - 2
    assert all(torch.equal(a, b) for a, b in zip(rest, uninterrupted[2:], strict=True))
    # A second pass is a new epoch for Lightning only after set_epoch; same epoch, same views.
    again = [batch[0]["local_views"] for batch in data.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(again, uninterrupted, strict=True))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(next(iter(data.train_dataloader()))[0]["local_views"], uninterrupted[0])
