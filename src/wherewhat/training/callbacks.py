"""Callbacks of the training harness: RNG state in checkpoints and the non-finite loss guard."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

__all__ = [
    "RandomStateCheckpoint",
    "NonFiniteLossGuard",
    "NonFiniteLossError",
    "capture_random_state",
    "restore_random_state",
]


# -- random state ------------------------------------------------------------------------------
def capture_random_state() -> dict[str, Any]:
    """Global torch (CPU and CUDA), numpy and Python RNG states as tensors and plain values.

    Plain types only, so checkpoints stay loadable with ``torch.load(weights_only=True)`` (which
    ``LightningCLI`` uses when ``--ckpt_path`` is given).
    """
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "torch_cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
    }


def restore_random_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_random_state`."""
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("torch_cuda") or []
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["state"]), py_state["gauss"]))


class RandomStateCheckpoint(Callback):
    """Saves the global RNG states in every checkpoint and restores them when training resumes.

    Restoring happens in ``on_train_start``, i.e. after Lightning has rebuilt the dataloaders and
    run the sanity-check validation, right before the first resumed training step: whatever those
    drew from the global generators, the next step sees exactly the state the interrupted run
    had after its last saved step. Together with :class:`~wherewhat.data.loader.ResumableDataLoader`
    this makes dropout masks, shuffling and augmentation of a resumed run equal to those of an
    uninterrupted run.

    Under DDP the checkpoint holds rank 0's state and every rank restores it; with
    ``seed_everything`` all ranks start from the same seed and draw the same amount, so their
    states agree anyway.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": capture_random_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            restore_random_state(self._pending)
            self._pending = None


# -- non-finite loss ---------------------------------------------------------------------------
class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class SkippedBatch:
    global_step: int
    epoch: int
    batch_idx: int
    loss: float


class NonFiniteLossGuard(Callback):
    """Stops training at the first NaN / inf loss, naming the step, epoch, batch index and value.

    Args:
        skip: instead of stopping, drop the optimizer step of every batch whose loss is not finite
            (all gradients are cleared, so neither weights nor optimizer moments change), count
            them, log ``train/skipped_nonfinite`` and report them in a warning at the end of
            training. Never silent.
        max_reported: how many skipped batches to list individually in that report.

    The check runs before ``backward``, so a bad batch never touches the weights. Under DDP the
    decision is shared by all ranks (any rank non-finite -> all stop / all skip), so no rank is
    left waiting in a collective.
    """

    def __init__(self, skip: bool = False, max_reported: int = 10) -> None:
        self.skip = skip
        self.max_reported = max_reported
        self.skipped: list[SkippedBatch] = []
        self.skipped_count = 0
        self._batch_idx = -1
        self._skip_this_step = False

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_count": self.skipped_count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_count = int(state_dict.get("skipped_count", 0))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        value = loss.detach()
        local_bad = not bool(torch.isfinite(value).all())
        if not trainer.strategy.reduce_boolean_decision(local_bad, all=False):
            return
        where = (
            f"global step {trainer.global_step}, epoch {trainer.current_epoch}, "
            f"batch index {self._batch_idx}"
        )
        shown = value.float().mean().item() if value.numel() else float("nan")
        if not self.skip:
            detail = f"loss = {shown}" if local_bad else "loss non-finite on another rank"
            raise NonFiniteLossError(
                f"non-finite training loss at {where}: {detail}. Lower the learning rate, check "
                "the batch, or set --run.skip_nonfinite_loss true to skip such batches."
            )
        self._skip_this_step = True
        self.skipped_count += 1
        if len(self.skipped) < self.max_reported:
            self.skipped.append(
                SkippedBatch(trainer.global_step, trainer.current_epoch, self._batch_idx, shown)
            )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._skip_this_step:
            return
        # Optimizers skip parameters without gradients: no weight or moment update this step.
        optimizer.zero_grad(set_to_none=True)
        self._skip_this_step = False

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.skip and self.skipped_count:
            pl_module.log("train/skipped_nonfinite", float(self.skipped_count), on_step=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.skipped_count:
            return
        listed = ", ".join(
            f"(step {s.global_step}, epoch {s.epoch}, batch {s.batch_idx}, loss {s.loss})"
            for s in self.skipped
        )
        more = self.skipped_count - len(self.skipped)
        rank_zero_warn(
            f"skipped {self.skipped_count} training batch(es) with a non-finite loss: {listed}"
            + (f" and {more} more" if more > 0 else "")
        )
