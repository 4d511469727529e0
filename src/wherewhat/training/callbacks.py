"""Callbacks of the training harness: exact resume (RNG state, loader position), a ``last.ckpt``
that follows the run, and the non-finite loss guard."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from wherewhat.data.loader import ResumableDataLoader

__all__ = [
    "RandomStateCheckpoint",
    "LastCheckpoints",
    "resume_train_loader",
    "start_next_epoch_after_last_batch",
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
    """Exact resume: saves the global RNG states in every checkpoint and, when training resumes,
    puts the training loader and the RNGs where the interrupted run had them.

    Everything happens in ``on_train_start``: after Lightning has restored the checkpoint, rebuilt
    the dataloaders and run the sanity-check validation, right before the first resumed training
    step.

    1. The training loader's position (:class:`~wherewhat.data.loader.ResumableDataLoader`).
       Lightning hands the saved loader state to the loader only if it builds the loader *after*
       restoring the checkpoint; a task whose ``configure_optimizers`` reads
       ``trainer.estimated_stepping_batches`` (every cosine schedule) makes it build the loader
       earlier, and the state was silently dropped: the resumed epoch started again from its
       first batch. Here the state is applied if it is still pending, each resumable loader is
       put in the epoch the trainer continues with, and the loader's iterator is created again.
    2. The RNG states: whatever Lightning drew from the global generators while setting up, the
       next step sees exactly the state the interrupted run had after its last saved step.

    Together these make data order, augmentation and dropout masks of a resumed run equal to
    those of an uninterrupted run.

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
        # Both are no-ops unless a checkpoint was restored.
        start_next_epoch_after_last_batch(trainer)
        resume_train_loader(trainer)
        if self._pending is not None:
            restore_random_state(self._pending)
            self._pending = None


def start_next_epoch_after_last_batch(trainer: pl.Trainer) -> bool:
    """Repair Lightning 2.6's resume from a checkpoint taken at an epoch's last batch.

    Its ``FitLoop.reset`` counts that epoch as finished but then treats the next epoch as the
    interrupted one: it skips ``on_train_epoch_start`` and the epoch's "ready" / "started" counts.
    A checkpoint written later in that epoch then says no epoch is under way, and resuming *it*
    trains a whole extra epoch (3 epochs of 7 steps ended at step 28). Marking the restart as done
    lets the next epoch start as in an uninterrupted run. Returns whether it did.
    """
    fit_loop = trainer.fit_loop
    epoch_loop = fit_loop.epoch_loop
    if not (
        getattr(fit_loop, "restarted_mid_epoch", False)
        and getattr(epoch_loop, "restarted_on_train_batch_end", False)
        and epoch_loop.batch_progress.is_last_batch
        and callable(getattr(fit_loop, "reset_restart_stage", None))
    ):
        return False
    fit_loop.reset_restart_stage()
    return True


def resume_train_loader(trainer: pl.Trainer) -> bool:
    """Apply a checkpoint's training-loader state that Lightning left pending, align resumable
    loaders with the epoch the trainer continues with, and recreate the loader iterator if either
    changed something. Returns whether the iterator was recreated.

    Uses Lightning's fit-loop internals (``_combined_loader``, ``_combined_loader_states_to_load``,
    ``_data_fetcher``), checked with ``getattr`` so that a Lightning without them only loses this
    repair, never the run.
    """
    fit_loop = trainer.fit_loop
    combined = getattr(fit_loop, "_combined_loader", None)
    if combined is None:
        return False
    changed = False
    pending = getattr(fit_loop, "_combined_loader_states_to_load", None)
    if pending and fit_loop.restarting:
        combined._load_state_dicts(pending)
        fit_loop._combined_loader_states_to_load = []
        changed = True
    epoch = fit_loop.epoch_progress.current.processed
    for loader in combined.flattened:
        if isinstance(loader, ResumableDataLoader):
            changed = loader.align_epoch(epoch) or changed
    fetcher = getattr(fit_loop, "_data_fetcher", None)
    if changed and fetcher is not None:
        iter(fetcher)  # a new iterator, which starts at the restored position
        return True
    return False


class LastCheckpoints(Callback):
    """Makes ``last.ckpt`` of every ``ModelCheckpoint(save_last=True)`` follow the run.

    Lightning 2.6's ``ModelCheckpoint`` leaves three gaps, each of which loses training to a kill
    or leaves a stale ``last.ckpt``:

    - with a ``monitor`` and ``every_n_train_steps``, a step whose monitored metric does not exist
      yet (before the first validation) is not saved but deferred to the next validation;
    - a deferred save (also the one at an epoch's last batch, which waits for fresh validation
      metrics) is dropped when validation runs at the end of the epoch, because the callback then
      saves "on train epoch end", where it ignores deferred saves;
    - ``last`` is written only together with a scheduled save, so a run of 114 steps checkpointed
      every 20 steps ended with a ``last.ckpt`` of step 100.

    This callback fills them through the ``ModelCheckpoint`` itself (its file names, its atomic
    writer, its bookkeeping): ``last`` at every interval step, the deferred save at the end of the
    epoch, and ``last`` at the end of training, so ``last.ckpt`` always holds the weights the run
    finished with. It uses the callback's private helpers, checked with ``getattr``: on a
    Lightning without them it does nothing.
    """

    @staticmethod
    def _targets(trainer: pl.Trainer) -> list[ModelCheckpoint]:
        return [
            callback
            for callback in trainer.checkpoint_callbacks
            if isinstance(callback, ModelCheckpoint)
            and all(
                callable(getattr(callback, name, None))
                for name in (
                    "_should_skip_saving_checkpoint",
                    "_monitor_candidates",
                    "_save_last_checkpoint",
                    "_save_topk_checkpoint",
                    "_should_save_on_train_epoch_end",
                )
            )
        ]

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        for callback in self._targets(trainer):
            every = getattr(callback, "_every_n_train_steps", 0)
            if not (callback.save_last and callback.monitor and every >= 1):
                continue
            if trainer.global_step % every or callback._should_skip_saving_checkpoint(trainer):
                continue
            if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
                # Lightning defers it to the end of the epoch (after validation, with fresh
                # metrics), where on_train_epoch_end below saves it.
                continue
            candidates = callback._monitor_candidates(trainer)
            if callback.monitor not in candidates:  # Lightning defers this one: save last now
                callback._save_last_checkpoint(trainer, candidates)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for callback in self._targets(trainer):
            if not getattr(callback, "_defer_save_until_validation", False):
                continue
            if not callback._should_save_on_train_epoch_end(trainer):
                continue  # then Lightning's on_validation_end saves it
            if callback._should_skip_saving_checkpoint(trainer):
                continue
            candidates = callback._monitor_candidates(trainer)
            if callback.monitor is not None and callback.monitor not in candidates:
                continue  # still no metric (no validation this epoch): keep it deferred
            callback._save_topk_checkpoint(trainer, candidates)
            callback._save_last_checkpoint(trainer, candidates)
            callback._defer_save_until_validation = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for callback in self._targets(trainer):
            if callback.save_last and not callback._should_skip_saving_checkpoint(trainer):
                callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


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
