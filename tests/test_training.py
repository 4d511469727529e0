"""Training harness: atomic checkpoints, exact resume, non-finite loss guard, DDP, a model that learns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from wherewhat.data.digits import DigitsDataModule, DigitsDataset
from wherewhat.data.loader import EpochSeededSampler, ResumableDataLoader
from wherewhat.io import PARTIAL_MARKER
from wherewhat.tasks.digits import DigitClassifierTask
from wherewhat.training.callbacks import (
    NonFiniteLossError,
    NonFiniteLossGuard,
    capture_random_state,
    restore_random_state,
)
from wherewhat.training.checkpoint_io import AtomicCheckpointIO
from wherewhat.training.harness import run_lightning_cli
from wherewhat.training.precision import float32_loss, to_float32
from wherewhat.training.run_dir import RUN_DIR_ENV

REPO = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = REPO / "configs" / "digits" / "default.yaml"


@pytest.fixture(autouse=True)
def _isolated_run_dir_env(monkeypatch):
    # The CLI exports the run dir (for the DDP processes it starts) and seed_everything its seed:
    # undo both after each test so nothing leaks into other tests.
    for name in (RUN_DIR_ENV, "PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _quiet_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**defaults, **kwargs})


# -- atomic checkpoints ------------------------------------------------------------------------
def test_failed_checkpoint_write_keeps_previous_file_and_leaves_no_partial(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.arange(4.0)}, target)

    real_save = torch.save

    def save_half_then_fail(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(handle.tell() // 2)  # a torn write...
        raise OSError("disk full")  # ...interrupted before the rename

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "weights": torch.zeros(1000)}, target)
    monkeypatch.undo()

    restored = io.load_checkpoint(target)
    assert restored["step"] == 1
    assert torch.equal(restored["weights"], torch.arange(4.0))
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_checkpoint_write_replaces_file_and_removes_temporary(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    for step in (1, 2):
        io.save_checkpoint({"step": step}, target)
    assert io.load_checkpoint(target)["step"] == 2
    assert not [p for p in tmp_path.iterdir() if PARTIAL_MARKER in p.name]


# -- resumable data order ----------------------------------------------------------------------
class _CountingDataset(Dataset):
    def __init__(self, size: int):
        self.size = size
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        index, seed = key
        self.loaded.append(index)
        return torch.tensor([index, seed % 1000])


def test_sampler_order_depends_only_on_seed_and_epoch():
    def order(seed, epoch):
        sampler = EpochSeededSampler(50, seed=seed, sample_seeds=True)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, 1) == order(3, 1)
    assert order(3, 1) != order(3, 2) and order(3, 1) != order(4, 1)
    assert sorted(index for index, _ in order(3, 1)) == list(range(50))
    # A sample's augmentation seed belongs to (epoch, index), not to its position.
    first, second = dict(order(3, 1)), dict(order(3, 1))
    assert first == second


def test_loader_resumes_mid_epoch_without_loading_skipped_samples():
    def loader(dataset):
        return ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=7, sample_seeds=True)

    reference = loader(_CountingDataset(30))
    reference.sampler.set_epoch(2)
    full_epoch = [batch.clone() for batch in reference]

    interrupted = loader(_CountingDataset(30))
    interrupted.sampler.set_epoch(2)
    iterator = iter(interrupted)
    for _ in range(3):
        next(iterator)
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches_yielded": 3}

    dataset = _CountingDataset(30)
    resumed = loader(dataset)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full_epoch) - 3
    for got, expected in zip(rest, full_epoch[3:], strict=True):
        assert torch.equal(got, expected)
    assert len(dataset.loaded) == 30 - 12  # the 12 samples of the skipped batches never loaded
    assert resumed.state_dict()["batches_yielded"] == len(full_epoch)
    # The next epoch is a full one again.
    resumed.sampler.set_epoch(3)
    assert len(list(resumed)) == len(full_epoch)
    # A checkpoint whose epoch had in fact ended (Lightning moves on to the next epoch before the
    # first batch, e.g. with limit_train_batches) skips nothing.
    moved_on = loader(_CountingDataset(30))
    moved_on.load_state_dict(state)
    iterator = iter(moved_on)
    moved_on.sampler.set_epoch(3)
    assert len(list(iterator)) == len(full_epoch)
    assert moved_on.state_dict() == {"epoch": 3, "batches_yielded": len(full_epoch)}


def test_random_state_round_trip_covers_torch_numpy_python():
    import random

    import numpy as np

    state = capture_random_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_random_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


# -- exact resume through the CLI --------------------------------------------------------------
def _digits_fit_args(root: Path, name: str, steps: int) -> list[str]:
    # 108 training digits in batches of 16: 7 batches per epoch, shuffled, shifted, with dropout.
    return [
        "fit",
        "--config", str(DIGITS_CONFIG),
        "--run.root", str(root),
        "--run.name", name,
        "--run.progress", "none",
        "--data.train_subset", "120",
        "--data.batch_size", "16",
        "--trainer.max_epochs", "-1",
        "--trainer.max_steps", str(steps),
        "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1",
        "--checkpoint.every_n_train_steps", "1",
    ]  # fmt: skip


def _last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
    total, killed_at = 16, 10  # killed in the middle of the second epoch; resumed into the third

    def fit(name: str, steps: int, *extra: str) -> Path:
        # Constant learning rate: the "kill" below changes max_steps, which a cosine schedule
        # would see (a real kill does not).
        args = _digits_fit_args(tmp_path, name, steps) + ["--model.init_args.schedule", "constant"]
        cli = run_lightning_cli(args + list(extra))
        assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
        return cli.run_dir

    uninterrupted = fit("full", total)
    # "Kill": stop after `killed_at` steps; the checkpoint of that step is all that survives.
    interrupted = fit("killed", killed_at)
    resumed = fit("resumed", total, "--ckpt_path", str(interrupted / "checkpoints" / "last.ckpt"))

    assert len({uninterrupted, interrupted, resumed}) == 3
    expected, partial, got = map(_last_checkpoint, (uninterrupted, interrupted, resumed))
    assert (expected["global_step"], partial["global_step"], got["global_step"]) == (
        total,
        killed_at,
        total,
    )
    assert partial["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches_yielded": 3}
    ]
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, atol=1e-6, rtol=0)
        # The comparison has teeth: the six steps after the kill moved every tensor.
        assert not torch.allclose(partial["state_dict"][key], value, atol=1e-6, rtol=0)


# -- non-finite loss ---------------------------------------------------------------------------
class _LossBecomesNaN(pl.LightningModule):
    def __init__(self, bad_batch: int):
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.bad_batch = bad_batch

    def training_step(self, batch, batch_idx):
        (inputs,) = batch
        loss = self.layer(inputs).pow(2).mean()
        return loss * float("nan") if batch_idx == self.bad_batch else loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.1)


def _constant_loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.ones(12, 2)), batch_size=2)


def test_nonfinite_loss_stops_with_step_batch_and_value():
    module = _LossBecomesNaN(bad_batch=3)
    trainer = _quiet_trainer(max_steps=6, callbacks=[NonFiniteLossGuard()])
    with pytest.raises(NonFiniteLossError) as failure:
        trainer.fit(module, _constant_loader())
    message = str(failure.value)
    assert "global step 3" in message and "batch index 3" in message and "nan" in message
    assert trainer.global_step == 3  # the bad batch never reached the optimizer


def test_nonfinite_loss_skip_counts_and_leaves_weights_untouched():
    class _Recorder(pl.Callback):
        def __init__(self):
            self.weights: dict[int, torch.Tensor] = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.weights[batch_idx] = pl_module.layer.weight.detach().clone()

    guard, recorder = NonFiniteLossGuard(skip=True), _Recorder()
    trainer = _quiet_trainer(max_epochs=1, callbacks=[guard, recorder])
    with pytest.warns(UserWarning, match=r"skipped 1 training batch.*batch 2"):
        trainer.fit(_LossBecomesNaN(bad_batch=2), _constant_loader())
    assert guard.skipped_count == 1
    assert torch.equal(recorder.weights[2], recorder.weights[1])  # skipped: no update at all
    assert not torch.equal(recorder.weights[3], recorder.weights[2])  # training went on
    assert torch.isfinite(recorder.weights[5]).all()


# -- the reference task learns -----------------------------------------------------------------
def test_digit_classifier_learns_well_above_chance():
    pl.seed_everything(0, verbose=False)
    data = DigitsDataModule(batch_size=32, train_subset=1200, max_shift=1)
    task = DigitClassifierTask(lr=3e-3)
    trainer = _quiet_trainer(max_steps=70, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=data)
    data.setup("test")
    data.test_set = DigitsDataset(data.test_set.images[:300], data.test_set.labels[:300])
    (metrics,) = trainer.test(task, datamodule=data, verbose=False)
    assert metrics["test/acc"] > 0.75  # chance is 0.10


# -- DDP on CPU through the real command line --------------------------------------------------
def test_two_process_cpu_ddp_run_writes_a_checkpoint(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if k not in (RUN_DIR_ENV, "LOCAL_RANK", "WORLD_SIZE")
    }
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "wherewhat", "fit",
        "--config", str(DIGITS_CONFIG),
        "--trainer.strategy", "ddp",
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "2",
        "--trainer.max_steps", "3",
        "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_model_summary", "false",
        "--data.train_subset", "100",
        "--data.batch_size", "8",
        "--run.root", str(tmp_path),
        "--run.name", "ddp",
    ]  # fmt: skip
    # Own process group: on a timeout the second rank, which Lightning launched, dies too.
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the 2-process DDP run did not finish in 300 s (both ranks killed)")
    assert process.returncode == 0, stderr[-3000:]
    (run_dir,) = (tmp_path / "ddp").iterdir()  # both processes wrote into one run directory
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3


def test_to_float32_casts_floating_tensors_through_containers_and_float32_loss_stops_autocast():
    half = torch.ones(2, dtype=torch.bfloat16)
    single, index = torch.ones(2), torch.arange(2)
    out = to_float32({"a": half, "b": [half, (single, index)], "c": None, "d": 3})
    assert out["a"].dtype == out["b"][0].dtype == torch.float32
    assert out["b"][1][0] is single and out["b"][1][1] is index  # nothing copied or cast
    assert isinstance(out["b"][1], tuple) and out["c"] is None and out["d"] == 3
    weight = torch.rand(2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (single @ weight).dtype == torch.bfloat16
        with float32_loss(single):
            assert (single @ weight).dtype == torch.float32
