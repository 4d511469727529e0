"""Where the whole run stands: step / total, elapsed, ETA, latest train loss and validation metric.

Lightning's bars count the batches of the current epoch. ``wherewhat fit`` adds the run level:

- :class:`ProgressLines` prints plain lines (no carriage returns, so they read well in a log
  file, under ``nohup`` or SLURM, or in CI) every ``every_seconds`` and at every
  ``every_percent`` of the run, plus one when training ends::

      wherewhat: step 120/1140 (10.5%)  epoch 2/10  elapsed 0:01:05  ETA 0:09:12  loss 0.4312  val/acc 0.9512

- :class:`RunRichProgressBar` / :class:`RunTQDMProgressBar` are Lightning's bars with the run's
  step / total and ETA among their metrics (``run 120/1140  ETA 0:09:12``), for a terminal.

The ETA is the steps still to go at the rate of this process so far (validation included, so
it recurs in the estimate as it recurs in the run), capped by ``--trainer.max_time``. The total
is ``trainer.estimated_stepping_batches`` (``max_steps``, or ``max_epochs`` times the batches of
an epoch); without either only the step is shown.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import IO, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import (
    Callback,
    ModelCheckpoint,
    RichProgressBar,
    Timer,
    TQDMProgressBar,
)
from lightning.pytorch.trainer.states import TrainerFn

__all__ = [
    "ProgressLines",
    "RunClock",
    "RunRichProgressBar",
    "RunTQDMProgressBar",
    "format_duration",
    "total_steps",
]

PREFIX = "wherewhat:"
_TRAIN_LOSS_KEYS = ("train/loss_step", "train/loss", "train_loss_step", "train_loss", "loss")


def format_duration(seconds: float | None) -> str:
    """``3725`` -> ``"1:02:05"``, ``65`` -> ``"0:01:05"``; ``None`` or not finite -> ``"?"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def total_steps(trainer: pl.Trainer) -> int | None:
    """The optimizer steps the run will take when it ends normally, or ``None`` when unbounded
    or unknown (``max_epochs -1`` without ``max_steps``, an iterable dataset without length)."""
    try:
        estimate = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - e.g. accumulate_grad_batches varying by epoch
        estimate = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
    if estimate is None or not math.isfinite(estimate) or estimate <= 0:
        return None
    return int(estimate)


class RunClock:
    """Step rate of this process since training started, and what follows from it."""

    def __init__(self, trainer: pl.Trainer, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self.start_step = trainer.global_step  # not 0 after a resume
        self.total = total_steps(trainer)
        self.timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def fraction(self, step: int) -> float | None:
        return None if not self.total else min(1.0, step / self.total)

    def eta(self, step: int) -> float | None:
        """Seconds left: steps to go over the rate so far (capped by the time limit)."""
        done, elapsed = step - self.start_step, self.elapsed()
        eta = None
        if self.total is not None and done > 0 and elapsed > 0:
            eta = max(0, self.total - step) * elapsed / done
        remaining = self.timer.time_remaining() if self.timer is not None else None
        if remaining is not None:
            eta = max(0.0, remaining) if eta is None else min(eta, max(0.0, remaining))
        return eta

    def step_text(self, step: int) -> str:
        if self.total is None:
            return f"step {step}"
        return f"step {step}/{self.total} ({100.0 * self.fraction(step):.1f}%)"


def _epoch_text(trainer: pl.Trainer) -> str:
    epoch = trainer.current_epoch + 1
    limit = trainer.max_epochs
    return f"epoch {epoch}/{limit}" if limit is not None and limit > 0 else f"epoch {epoch}"


def _as_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.detach().float().item()
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _batch_loss(outputs: Any) -> float | None:
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    return _as_float(outputs) if outputs is not None else None


def _validation_metric(trainer: pl.Trainer) -> tuple[str, float] | None:
    """The checkpoint's monitored metric if logged, else the first validation metric (a loss
    only when nothing else is)."""
    metrics = trainer.callback_metrics
    checkpoint = trainer.checkpoint_callback
    monitor = checkpoint.monitor if isinstance(checkpoint, ModelCheckpoint) else None
    names = [n for n in metrics if n.lower().startswith(("val/", "val_", "valid"))]
    names.sort(key=lambda n: "loss" in n.lower())  # stable: non-loss metrics first
    if monitor and monitor in metrics:
        names.insert(0, monitor)
    for name in names:
        value = _as_float(metrics[name])
        if value is not None:
            return name, value
    return None


class ProgressLines(Callback):
    """Plain progress lines for the whole run (see the module docstring), rank zero only.

    Args:
        every_seconds: at most this long between two lines.
        every_percent: also a line each time the run crosses a multiple of this percentage.
        stream: where to write (default: ``sys.stdout`` at the time of writing).
        clock: seconds, monotonic (tests pass a fake one).

    The loss shown is the mean training loss (``training_step``'s ``loss``) of the batches since
    the previous line; with manual optimization, the logged ``train/loss`` if any.
    """

    def __init__(
        self,
        every_seconds: float = 30.0,
        every_percent: float = 10.0,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not every_seconds > 0 or not every_percent > 0:
            raise ValueError(
                f"every_seconds and every_percent must be positive, got {every_seconds} and "
                f"{every_percent}"
            )
        self.every_seconds = every_seconds
        self.every_percent = every_percent
        self.stream = stream
        self.clock = clock
        self.lines: list[str] = []  # what was printed, for tests and callers
        self._run: RunClock | None = None
        self._last_time = 0.0
        self._last_bucket = 0
        self._last_step = -1
        self._losses: list[float] = []
        self._validation: tuple[str, float] | None = None

    # -- hooks ---------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run = RunClock(trainer, self.clock)
        self._last_time = self._run.started
        self._last_bucket = self._bucket(trainer.global_step)
        self._last_step = -1
        self._losses = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        if self._run is None or not trainer.is_global_zero:
            return
        loss = _batch_loss(outputs)
        if loss is not None and math.isfinite(loss):
            self._losses.append(loss)
        step, now = trainer.global_step, self.clock()
        bucket = self._bucket(step)
        first = self._last_step < 0 and step > self._run.start_step
        if first or bucket > self._last_bucket or now - self._last_time >= self.every_seconds:
            self._emit(trainer, step, now, bucket)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._validation = _validation_metric(trainer) or self._validation

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._run is None or not trainer.is_global_zero:
            return
        self._write(self.format_line(trainer, trainer.global_step, final=True))

    # -- text ----------------------------------------------------------------------------------
    def _bucket(self, step: int) -> int:
        fraction = self._run.fraction(step) if self._run is not None else None
        return 0 if fraction is None else int(100.0 * fraction // self.every_percent)

    def format_line(self, trainer: pl.Trainer, step: int, *, final: bool = False) -> str:
        """The progress line for ``step`` (uses and clears the losses gathered since the last);
        ``final``: the line that closes training (``done``; no epoch, ETA or repeated loss)."""
        assert self._run is not None
        parts = [self._run.step_text(step)]
        if not final:  # after a max_steps stop Lightning has already counted the next epoch
            parts.append(_epoch_text(trainer))
        parts.append(f"elapsed {format_duration(self._run.elapsed())}")
        if not final:
            parts.append(f"ETA {format_duration(self._run.eta(step))}")
        if self._losses:
            parts.append(f"loss {sum(self._losses) / len(self._losses):.4g}")
        elif not final:
            logged = next((k for k in _TRAIN_LOSS_KEYS if k in trainer.callback_metrics), None)
            value = _as_float(trainer.callback_metrics[logged]) if logged else None
            if value is not None:
                parts.append(f"{logged} {value:.4g}")
        if self._validation is not None:
            name, value = self._validation
            parts.append(f"{name} {value:.4g}")
        self._losses = []
        return f"{PREFIX} {'done  ' if final else ''}" + "  ".join(parts)

    def _emit(self, trainer: pl.Trainer, step: int, now: float, bucket: int) -> None:
        self._write(self.format_line(trainer, step))
        self._last_time, self._last_bucket, self._last_step = now, bucket, step

    def _write(self, line: str) -> None:
        self.lines.append(line)
        stream = self.stream if self.stream is not None else sys.stdout
        print(line, file=stream, flush=True)


class _RunFields:
    """Mixin for Lightning's bars: the run's step / total and ETA among the bar's metrics."""

    _run_clock: RunClock | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)  # type: ignore[misc]
        self._run_clock = RunClock(trainer)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        run = self._run_clock
        if run is not None and trainer.state.fn == TrainerFn.FITTING:
            step = trainer.global_step
            items["run"] = f"{step}/{run.total}" if run.total else str(step)
            items["ETA"] = format_duration(run.eta(step))
        return items


class RunRichProgressBar(_RunFields, RichProgressBar):
    """Lightning's rich bar (the current epoch) plus the run's step / total and ETA."""


class RunTQDMProgressBar(_RunFields, TQDMProgressBar):
    """Lightning's tqdm bar (the current epoch) plus the run's step / total and ETA."""
