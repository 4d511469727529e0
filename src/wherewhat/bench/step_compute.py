"""How near a training step runs to this machine's limit: its FLOPs, its time, and that speed
as a fraction of the measured float32 matrix-product peak at the same thread count."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wherewhat.bench.counting import training_step_flops
from wherewhat.bench.latency import measure_training_throughput
from wherewhat.bench.machine import peak_matmul_gflops

__all__ = ["StepCompute", "measure_training_step"]


@dataclass(frozen=True)
class StepCompute:
    """One training step's work and speed.

    ``step_gflop``: FLOPs of forward, loss and backward (FlopCounterMode's: matmul / linear /
    conv only, so element-wise work is not counted and the fraction is a lower bound);
    ``step_seconds``: median wall time of a whole step (forward, loss, backward, optimizer
    update; no data loading); ``peak_gflops``: the measured matrix-product peak at ``threads``
    threads, in float32, or in bfloat16 for a step under bf16 autocast (``bf16``).
    """

    step_gflop: float
    step_seconds: float
    threads: int
    peak_gflops: float
    bf16: bool = False

    @property
    def fraction_of_peak(self) -> float:
        return self.step_gflop / self.step_seconds / self.peak_gflops

    def to_json(self, prefix: str) -> dict[str, float]:
        """``<prefix>_step_gflop``, ``_step_seconds``, ``_step_fraction_of_peak`` and the
        ``_peak_gflops`` it was measured against."""
        return {
            f"{prefix}_step_gflop": self.step_gflop,
            f"{prefix}_step_seconds": self.step_seconds,
            f"{prefix}_step_fraction_of_peak": self.fraction_of_peak,
            f"{prefix}_peak_gflops": self.peak_gflops,
        }


def measure_training_step(
    module: nn.Module,
    batch: Any,
    threads: int,
    repeats: int = 5,
    step: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    bf16: bool = False,
) -> StepCompute:
    """FLOPs and median time (two warm-up steps, then ``repeats`` timed ones, see
    :func:`~wherewhat.bench.latency.measure_training_throughput`; the median, because one slow
    step skews a mean) of a training step on
    ``batch``, with ``threads`` torch threads. ``step(module, batch)`` gives the loss (default
    the Lightning ``training_step``; its ``self.log`` warnings outside a trainer are
    silenced). ``bf16``: the step under bfloat16 autocast on the CPU, as bf16 mixed-precision
    training runs it, against the bfloat16 peak. Every step runs on a copy (a Lightning
    module's copy leaves its trainer behind), and the random state is restored: weights,
    batch-norm statistics and what a run draws next stay as they were."""
    plain = step or (lambda module, batch: module.training_step(batch, 0))

    def step_in_precision(module: nn.Module, batch: Any) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return plain(module, batch)

    step = step_in_precision
    trainee = copy.deepcopy(module)
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no trainer attached
        flops = training_step_flops(trainee, batch, lambda b: step(trainee, b))
        timed = measure_training_throughput(
            trainee, step, batch, steps=repeats, warmup=2, threads=threads
        )
        peak = peak_matmul_gflops(threads, dtype=torch.bfloat16 if bf16 else torch.float32)
    return StepCompute(flops / 1e9, timed.median_step_seconds, threads, peak, bf16)
