"""Exact resume (issue 18): a run killed between two checkpoints and resumed, twice, ends with the
weights of the run that was never interrupted, in its own run folder, with one metrics.csv.

The digits task of ``configs/digits/default.yaml`` with its cosine schedule and ``max_epochs``
(not ``max_steps``): the schedule reads ``trainer.estimated_stepping_batches``, which makes
Lightning build the training loader before it restores the checkpoint. That is the case in which
the loader position used to be lost.

108 training digits in batches of 16: 7 batches per epoch, 3 epochs, 21 steps; shuffled, shifted
and with dropout, so a wrong data order, augmentation or RNG state changes the weights.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from wherewhat.data.loader import ResumableDataLoader
from wherewhat.errors import ConfigError
from wherewhat.training.harness import expand_resume_args, run_lightning_cli
from wherewhat.training.run_dir import RUN_DIR_ENV, RunCSVLogger, latest_run_config

REPO = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = REPO / "configs" / "digits" / "default.yaml"
STEPS = 21  # 3 epochs of 7 batches
KILL_AT = "WHEREWHAT_TEST_KILL_AT"
KILL_MODE = "WHEREWHAT_TEST_KILL_MODE"

# A callback that kills its own process (SIGKILL: no clean-up, no flush, like `kill -9` or an
# out-of-memory kill) at the end of step $WHEREWHAT_TEST_KILL_AT, before any checkpoint of that
# step is written; with $WHEREWHAT_TEST_KILL_MODE=raise it raises instead (in-process tests).
# It has no state, so it adds nothing to the checkpoints; every run below carries it.
_KILLER = """
import os
import signal

from lightning.pytorch.callbacks import Callback


class Killed(BaseException):
    pass


class KillAtStep(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        at = os.environ.get("WHEREWHAT_TEST_KILL_AT")
        if at and trainer.global_step == int(at):
            if os.environ.get("WHEREWHAT_TEST_KILL_MODE") == "raise":
                raise Killed(f"killed at step {at}")
            os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    for name in (RUN_DIR_ENV, "PL_GLOBAL_SEED", "PL_SEED_WORKERS", KILL_AT, KILL_MODE):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def killer(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "killer"
    folder.mkdir()
    (folder / "resume_killer.py").write_text(textwrap.dedent(_KILLER))
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _fit_args(root: Path, name: str, every: int) -> list[str]:
    return [
        "--config", str(DIGITS_CONFIG),
        "--run.root", str(root),
        "--run.name", name,
        "--run.progress", "none",
        "--data.train_subset", "120",
        "--data.batch_size", "16",
        "--trainer.max_epochs", "3",
        "--trainer.limit_val_batches", "1",
        "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1",
        "--trainer.callbacks+=resume_killer.KillAtStep",
        "--checkpoint.every_n_train_steps", str(every),
    ]  # fmt: skip


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def _loader_state(checkpoint: dict) -> list[dict]:
    return checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]


def _assert_same_training_state(got: dict, expected: dict) -> None:
    """Bit-identical weights and optimizer moments: every tensor ``torch.equal``."""
    assert got["global_step"] == expected["global_step"]
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"weight {key} differs"
    (got_optimizer,), (expected_optimizer,) = got["optimizer_states"], expected["optimizer_states"]
    for index, moments in expected_optimizer["state"].items():
        for name, value in moments.items():
            assert torch.equal(got_optimizer["state"][index][name], value), f"{index}.{name}"


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


# Averages over a training epoch are kept by Lightning in memory only: in an epoch a resume cut
# in two they cover the batches after the resume. Every other row and value must be identical.
_EPOCH_AVERAGES = {"train/loss_epoch", "train/acc"}


def _assert_same_metrics(got: list[dict], expected: list[dict]) -> None:
    def cells(rows):
        return {(row["step"], key): value for row in rows for key, value in row.items() if value}

    got_cells, expected_cells = cells(got), cells(expected)
    assert got_cells.keys() == expected_cells.keys()  # same rows and columns, no gap, no repeat
    assert len(got) == len(expected)
    for (step, key), value in expected_cells.items():
        if key not in _EPOCH_AVERAGES:
            assert got_cells[step, key] == value, f"{key} at step {step}"


# -- the scenario, with real kills ------------------------------------------------------
def _cli(root: Path, killer: Path, *args: str, kill_at: int | None = None) -> int:
    """``python -m wherewhat fit ...`` in a subprocess; returns its exit code."""
    env = {k: v for k, v in os.environ.items() if k not in (RUN_DIR_ENV, KILL_AT, KILL_MODE)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(killer), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    if kill_at is not None:
        env[KILL_AT] = str(kill_at)
    result = subprocess.run(
        [sys.executable, "-m", "wherewhat", "fit", *args],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if kill_at is None:
        assert result.returncode == 0, result.stderr[-3000:]
    return result.returncode


def test_killed_twice_between_checkpoints_and_resumed_equals_uninterrupted_run(tmp_path, killer):
    every = 4  # checkpoints at steps 4, 8, 12, 16, 20 (and the final step 21)
    _cli(tmp_path, killer, *_fit_args(tmp_path, "full", every))
    (full,) = (tmp_path / "full").iterdir()

    # Kill 1 at step 10: the newest checkpoint is step 8 (epoch 1, 1 batch in).
    code = _cli(tmp_path, killer, *_fit_args(tmp_path, "run", every), kill_at=10)
    assert code == -signal.SIGKILL
    (run,) = (tmp_path / "run").iterdir()
    first = _load(run / "checkpoints" / "last.ckpt")
    assert first["global_step"] == 8
    assert _loader_state(first) == [{"epoch": 1, "batches_yielded": 1}]
    config = (run / "config.yaml").read_bytes()

    # Resume, kill 2 at step 13: the newest checkpoint is step 12, written by the resumed process,
    # in the epoch it resumed: the loader position counts from the epoch's start (5), not from the
    # resume (4).
    code = _cli(tmp_path, killer, "--resume", str(run), kill_at=13)
    assert code == -signal.SIGKILL
    second = _load(run / "checkpoints" / "last.ckpt")
    assert second["global_step"] == 12
    assert _loader_state(second) == [{"epoch": 1, "batches_yielded": 5}]

    # Resume again, to the end.
    _cli(tmp_path, killer, "--resume", str(run))
    assert list((tmp_path / "run").iterdir()) == [run]  # one run folder throughout

    expected, got = (
        _load(full / "checkpoints" / "last.ckpt"),
        _load(run / "checkpoints" / "last.ckpt"),
    )
    # last.ckpt is the final step (21 is not a multiple of 4), in both runs.
    assert expected["global_step"] == got["global_step"] == STEPS
    assert _loader_state(got) == [{"epoch": 2, "batches_yielded": 7}]
    _assert_same_training_state(got, expected)
    # The comparison has teeth: the steps after the second checkpoint moved every weight.
    for key, value in expected["state_dict"].items():
        if value.is_floating_point():
            assert not torch.equal(second["state_dict"][key], value), key

    _assert_same_metrics(_csv_rows(run), _csv_rows(full))
    assert (run / "config.yaml").read_bytes() == config  # the original config is kept
    assert latest_run_config(run).name == "config-2.yaml"  # one per resume, beside it


# -- variants, in-process (a raised exception instead of SIGKILL) -------------------------------
def _fit_in_process(args: list[str], kill_at: int | None, monkeypatch) -> None:
    if kill_at is None:
        monkeypatch.delenv(KILL_AT, raising=False)
        run_lightning_cli(["fit", *args])
        return
    monkeypatch.setenv(KILL_AT, str(kill_at))
    monkeypatch.setenv(KILL_MODE, "raise")
    with pytest.raises(BaseException, match=f"killed at step {kill_at}"):
        run_lightning_cli(["fit", *args])


def test_resume_from_an_epoch_end_checkpoint_with_ckpt_path_is_exact(tmp_path, killer, monkeypatch):
    # Checkpoints at the last batch of each epoch (7, 14, 21): the restored loader position is a
    # finished epoch, and the resumed run must start the next one with that epoch's order.
    every = 7
    _fit_in_process(_fit_args(tmp_path, "full", every), None, monkeypatch)
    _fit_in_process(_fit_args(tmp_path, "run", every), 9, monkeypatch)
    (run,) = (tmp_path / "run").iterdir()
    interrupted = _load(run / "checkpoints" / "last.ckpt")
    assert interrupted["global_step"] == 7
    assert _loader_state(interrupted) == [{"epoch": 0, "batches_yielded": 7}]

    # --ckpt_path (not --resume): trains on from the checkpoint, in a new run folder.
    resume = ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    _fit_in_process(_fit_args(tmp_path, "run", every) + resume, 16, monkeypatch)
    (second,) = [p for p in (tmp_path / "run").iterdir() if p != run]
    assert _load(second / "checkpoints" / "last.ckpt")["global_step"] == 14
    resume = ["--ckpt_path", str(second / "checkpoints" / "last.ckpt")]
    _fit_in_process(_fit_args(tmp_path, "run", every) + resume, None, monkeypatch)
    (third,) = [p for p in (tmp_path / "run").iterdir() if p not in (run, second)]

    (full,) = (tmp_path / "full").iterdir()
    expected, got = (
        _load(full / "checkpoints" / "last.ckpt"),
        _load(third / "checkpoints" / "last.ckpt"),
    )
    _assert_same_training_state(got, expected)
    for key, value in expected["state_dict"].items():
        if value.is_floating_point():
            assert not torch.equal(interrupted["state_dict"][key], value), key


def test_last_batch_checkpoints_without_monitor_resumed_twice_are_exact(
    tmp_path, killer, monkeypatch
):
    # No monitored metric: Lightning saves at the last batch of each epoch (steps 7, 14, 21) in
    # the batch's end hook. Resuming such a checkpoint and then one the resumed run wrote used to
    # train a whole extra epoch (28 steps instead of 21).
    def args(name: str) -> list[str]:
        return [*_fit_args(tmp_path, name, 7), "--checkpoint.monitor", "null"]

    _fit_in_process(args("full"), None, monkeypatch)
    _fit_in_process(args("run"), 9, monkeypatch)
    (run,) = (tmp_path / "run").iterdir()
    assert _load(run / "checkpoints" / "last.ckpt")["global_step"] == 7
    _fit_in_process(["--resume", str(run)], 16, monkeypatch)
    assert _load(run / "checkpoints" / "last.ckpt")["global_step"] == 14
    _fit_in_process(["--resume", str(run)], None, monkeypatch)
    (full,) = (tmp_path / "full").iterdir()
    _assert_same_training_state(
        _load(run / "checkpoints" / "last.ckpt"), _load(full / "checkpoints" / "last.ckpt")
    )


def test_resumed_run_continues_its_metrics_csv_without_the_lost_steps(
    tmp_path, killer, monkeypatch
):
    # An in-process "kill" flushes the logger (Lightning finalizes it on an exception): the row of
    # step 8, logged after the step-8 checkpoint, is on disk and must be replaced, not repeated,
    # by the resumed run's (which logs step 8 again).
    every = 4
    _fit_in_process(_fit_args(tmp_path, "full", every), None, monkeypatch)
    _fit_in_process(_fit_args(tmp_path, "run", every), 10, monkeypatch)
    (run,) = (tmp_path / "run").iterdir()
    assert "8" in {row["step"] for row in _csv_rows(run)}
    _fit_in_process(["--resume", str(run)], None, monkeypatch)
    assert list((tmp_path / "run").iterdir()) == [run]
    (full,) = (tmp_path / "full").iterdir()
    _assert_same_metrics(_csv_rows(run), _csv_rows(full))
    _assert_same_training_state(
        _load(run / "checkpoints" / "last.ckpt"), _load(full / "checkpoints" / "last.ckpt")
    )


def test_last_checkpoint_is_the_final_step_when_no_interval_ends_there(tmp_path, killer):
    # Stopped by max_steps at step 10, mid-epoch, with checkpoints every 4 steps: Lightning's own
    # last.ckpt would be step 8.
    args = [*_fit_args(tmp_path, "run", 4), "--trainer.max_steps", "10"]
    cli = run_lightning_cli(["fit", *args])
    last = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert last == cli.run_dir / "checkpoints" / "last.ckpt"
    checkpoint = _load(last)
    assert checkpoint["global_step"] == 10
    assert _loader_state(checkpoint) == [{"epoch": 1, "batches_yielded": 3}]


# -- pieces --------------------------------------------------------------------------------------
def test_expand_resume_continues_in_the_run_folder_with_its_newest_config(tmp_path):
    run = tmp_path / "digits" / "20250101-000000"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="config.yaml"):
        expand_resume_args(["fit", "--resume", str(run)])
    (run / "config.yaml").write_text("{}\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    expanded = expand_resume_args(["fit", "--resume", str(run), "--trainer.max_steps", "9"])
    assert expanded == [
        "fit", "--config", str(run / "config.yaml"), "--ckpt_path", checkpoint,
        "--run.name", "digits", "--run.dir", str(run), "--trainer.max_steps", "9",
    ]  # fmt: skip
    # A resume saved its config as config-N.yaml: the next resume reads the newest.
    for number in (1, 2, 10):
        (run / f"config-{number}.yaml").write_text("{}\n")
    assert expand_resume_args(["fit", "--resume", str(run)])[2] == str(run / "config-10.yaml")
    # Evaluating a run's checkpoint writes a new folder; a checkpoint file is a --ckpt_path.
    assert expand_resume_args(["test", "--resume", str(run)])[-1] == "null"
    assert expand_resume_args(["fit", f"--resume={checkpoint}"]) == [
        "fit",
        "--ckpt_path",
        checkpoint,
    ]


def test_run_csv_logger_continues_the_file_and_drops_rows_it_logs_again(tmp_path):
    first = RunCSVLogger(tmp_path)
    for step in range(6):
        first.log_metrics({"loss": float(step)}, step)
    first.save()
    # A resume from step 4: it logs steps 4, 5 (and a new column) again.
    second = RunCSVLogger(tmp_path)
    second.log_metrics({"loss": 40.0, "acc": 0.5}, 4)
    second.log_metrics({"loss": 50.0}, 5)
    second.save()
    rows = _csv_rows(tmp_path)
    assert [(row["step"], row["loss"], row["acc"]) for row in rows] == [
        ("0", "0.0", ""), ("1", "1.0", ""), ("2", "2.0", ""), ("3", "3.0", ""),
        ("4", "40.0", "0.5"), ("5", "50.0", ""),
    ]  # fmt: skip


class _Indices(Dataset):
    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> int:
        return index


def test_persistent_worker_loader_skips_after_a_later_resume():
    # A persistent-worker iterator keeps the index sampler it was created with: a resume loaded
    # after the first pass must still reach it.
    def make():
        return ResumableDataLoader(
            _Indices(), batch_size=4, shuffle=True, seed=3, num_workers=1, persistent_workers=True
        )

    reference = make()
    reference.sampler.set_epoch(1)
    expected = [batch.tolist() for batch in reference]
    loader = make()
    assert len(list(loader)) == 6  # the first pass creates the persistent iterator
    loader.load_state_dict({"epoch": 1, "batches_yielded": 2})
    assert [batch.tolist() for batch in loader] == expected[2:]
    assert loader.state_dict() == {"epoch": 1, "batches_yielded": 6}


def test_loader_resume_survives_an_iterator_created_again_and_finished_epochs():
    loader = ResumableDataLoader(_Indices(), batch_size=4, shuffle=True, seed=3)
    reference = ResumableDataLoader(_Indices(), batch_size=4, shuffle=True, seed=3)
    reference.sampler.set_epoch(2)
    expected = [batch.tolist() for batch in reference]

    loader.load_state_dict({"epoch": 2, "batches_yielded": 3})
    iter(loader)  # Lightning may create an iterator and then create it again: same skip
    assert loader.state_dict() == {"epoch": 2, "batches_yielded": 3}
    assert loader.align_epoch(2) is False
    assert [batch.tolist() for batch in loader] == expected[3:]
    assert loader.state_dict() == {"epoch": 2, "batches_yielded": 6}

    # A finished epoch: the loader moves to the next one at once (workers prefetch before
    # Lightning's set_epoch), and skips nothing.
    finished = ResumableDataLoader(_Indices(), batch_size=4, shuffle=True, seed=3)
    finished.load_state_dict({"epoch": 1, "batches_yielded": 6})
    assert finished.sampler_epoch() == 2
    assert [batch.tolist() for batch in finished] == expected
    # The trainer counts an epoch as finished that the loader did not (limit_train_batches):
    # align_epoch drops the position.
    limited = ResumableDataLoader(_Indices(), batch_size=4, shuffle=True, seed=3)
    limited.load_state_dict({"epoch": 1, "batches_yielded": 3})
    assert limited.align_epoch(2) is True
    assert [batch.tolist() for batch in limited] == expected
