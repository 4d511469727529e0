"""One way for a pipeline (a benchmark, the tour) to train a task: :func:`fit`.

It builds the Trainer every pipeline wants (one process on the accelerator Lightning picks,
``"auto"``: a GPU when there is one, else the CPU; no logger,
no model summary, a non-finite loss stops the run, atomic checkpoints, Lightning's expected
chatter silenced), trains, and returns a :class:`FitRecord` with the times and counts the
results tables need. The command line has its own harness
(:mod:`wherewhat.training.harness`); this is the in-process counterpart.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from wherewhat.training.callbacks import NonFiniteLossGuard
from wherewhat.training.checkpoint_io import AtomicCheckpointIO
from wherewhat.training.quiet import quiet_lightning

__all__ = ["FitRecord", "fit", "recording_fits"]


@dataclass
class FitRecord:
    """What one :func:`fit` call measured.

    Attributes:
        seconds: wall time of ``trainer.fit`` (validation included).
        cpu_seconds: CPU time of this process, all threads (a busy machine inflates wall time,
            not this).
        worker_cpu_seconds: CPU time of loader worker processes that exited during the fit.
        steps: optimizer steps taken (``trainer.global_step``).
        epochs: epochs finished (``trainer.current_epoch``).
        best: the monitored value of the best checkpoint (``monitor`` given), else None.
        final_loss: ``train/loss`` as last logged, NaN when never logged.
        trainer: the Trainer, for what a pipeline reads beyond these.
        task: the task's class name.
        loss_curve: ``(global step, training loss)`` of every step (the loss
            ``training_step`` returned).
    """

    seconds: float
    cpu_seconds: float
    worker_cpu_seconds: float
    steps: int
    epochs: int
    best: float | None
    final_loss: float
    trainer: pl.Trainer
    task: str = ""
    loss_curve: list[tuple[int, float]] = field(default_factory=list)


# The records of the fit() calls made inside recording_fits(), innermost block only.
_RECORDING: ContextVar[list[FitRecord] | None] = ContextVar("wherewhat_fits", default=None)


@contextmanager
def recording_fits() -> Iterator[list[FitRecord]]:
    """Collect the :class:`FitRecord` of every :func:`fit` called inside the block (the tour
    draws each section's training curves from them, whatever pipeline the section runs)."""
    records: list[FitRecord] = []
    token = _RECORDING.set(records)
    try:
        yield records
    finally:
        _RECORDING.reset(token)


class _LossCurve(Callback):
    """``(global step, training loss)`` after every optimizer step."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.points.append((int(trainer.global_step), float(loss.detach())))


def _children_cpu_seconds() -> float:
    times = os.times()
    return times.children_user + times.children_system


def _describe(task: pl.LightningModule) -> str:
    """The task's class, and its stage or saliency kind when it has one (to tell runs apart)."""
    details = [
        str(getattr(task, name)) for name in ("stage", "saliency_kind") if hasattr(task, name)
    ]
    return " ".join([type(task).__name__, *details])


def fit(
    task: pl.LightningModule,
    data: pl.LightningDataModule | None = None,
    *,
    train_loader: DataLoader | None = None,
    max_epochs: int | None = None,
    max_steps: int | None = None,
    max_time: timedelta | None = None,
    monitor: str | None = None,
    mode: Literal["min", "max"] = "min",
    patience: int | None = None,
    checkpoint_dir: str | Path | None = None,
    validate: bool = False,
    progress: bool = False,
    callbacks: Sequence[Callback] = (),
    expected_warnings: Sequence[str] = (),
    **trainer_options: Any,
) -> FitRecord:
    """Train ``task`` on ``data`` (a data module) or ``train_loader``.

    Stops at ``max_steps`` (when > 0), else after ``max_epochs``, and at ``max_time``.
    ``validate``: run the validation loop (otherwise it is skipped). ``monitor`` (needs
    ``validate``): keep the best checkpoint by that metric in ``checkpoint_dir`` (a temporary
    folder if None), load its weights into ``task`` at the end, and with ``patience`` stop
    early. ``expected_warnings``: regexes of Lightning warnings the pipeline expects (e.g.
    frozen modules in eval mode). ``trainer_options`` go to ``pl.Trainer`` and win over the
    defaults here (e.g. ``accelerator``).
    """
    if (data is None) == (train_loader is None):
        raise ValueError("fit: give exactly one of data (a LightningDataModule) or train_loader")
    if monitor is not None and not validate:
        raise ValueError(f"fit: monitor={monitor!r} needs validate=True")
    steps = max_steps if max_steps is not None and max_steps > 0 else -1
    curve = _LossCurve()
    all_callbacks: list[Callback] = [NonFiniteLossGuard(), curve, *callbacks]
    with tempfile.TemporaryDirectory(prefix="wherewhat-fit-") as scratch:
        root = Path(checkpoint_dir) if checkpoint_dir is not None else Path(scratch)
        best_checkpoint = None
        if monitor is not None:
            best_checkpoint = ModelCheckpoint(
                dirpath=root, monitor=monitor, mode=mode, save_top_k=1, filename="best"
            )
            all_callbacks.append(best_checkpoint)
            if patience:
                all_callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=patience))
        options: dict[str, Any] = {
            "accelerator": "auto",
            "devices": 1,
            "max_epochs": -1 if steps > 0 else max_epochs,
            "max_steps": steps,
            "max_time": max_time,
            "logger": False,
            "enable_checkpointing": best_checkpoint is not None,
            "enable_progress_bar": progress,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 1.0 if validate else 0,
            "callbacks": all_callbacks,
            "plugins": [AtomicCheckpointIO()],
            "default_root_dir": root,
            **trainer_options,
        }
        with quiet_lightning(tuple(expected_warnings)):
            trainer = pl.Trainer(**options)
            start, cpu = time.perf_counter(), time.process_time()
            children = _children_cpu_seconds()
            if data is not None:
                trainer.fit(task, datamodule=data)
            else:
                trainer.fit(task, train_dataloaders=train_loader)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            workers = _children_cpu_seconds() - children
        best = None
        if best_checkpoint is not None and best_checkpoint.best_model_path:
            state = torch.load(
                best_checkpoint.best_model_path, map_location="cpu", weights_only=False
            )
            task.load_state_dict(state["state_dict"])
            score = best_checkpoint.best_model_score
            best = None if score is None else float(score)
    loss = trainer.callback_metrics.get("train/loss")
    record = FitRecord(
        seconds=seconds,
        cpu_seconds=cpu,
        worker_cpu_seconds=workers,
        steps=int(trainer.global_step),
        epochs=int(trainer.current_epoch),
        best=best,
        final_loss=math.nan if loss is None else float(loss),
        trainer=trainer,
        task=_describe(task),
        loss_curve=curve.points,
    )
    recording = _RECORDING.get()
    if recording is not None:
        recording.append(record)
    return record
