"""Learning-rate schedules, as the per-step ``lr_scheduler`` config Lightning expects.

Two shapes cover every task here:

- :func:`warmup_cosine`: linear warm-up, then a half cosine to 0 over the remaining planned
  steps (or a flat rate) -- the SSD detector, LZU and the self-supervised bases;
- :func:`step_decay`: multiply the rate by ``decay`` once, after a fraction of the planned steps
  -- WorldComp2D's stages and the landmark baselines, as the WorldComp2D reference does.

``total_steps`` is ``trainer.estimated_stepping_batches``; it is infinite when only
``max_time`` bounds a run, and then the cosine part and the decay point are undefined: the
cosine schedule stays flat after its warm-up and the step decay is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import Optimizer

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

__all__ = ["WarmupCosine", "adamw_warmup_cosine", "step_decay", "warmup_cosine"]


@dataclass(frozen=True)
class WarmupCosine:
    """Learning-rate factor of step ``step`` (a ``LambdaLR`` function).

    Warm-up (``step < warmup_steps``): ``start + (1 - start) * (step + skip) / warmup_steps``,
    ``skip`` = 1 when ``skip_start`` (so that ``start = 0`` still moves the weights on step 0,
    lightly's convention) and 0 otherwise. After it: ``0.5 (1 + cos(pi p))`` with ``p`` the share
    of the remaining ``total_steps - warmup_steps`` steps done (clipped to 1), or 1 without
    ``cosine``.
    """

    warmup_steps: int
    total_steps: int
    cosine: bool = True
    start_factor: float = 0.01
    skip_start: bool = False

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            done = (step + int(self.skip_start)) / self.warmup_steps
            return self.start_factor + (1.0 - self.start_factor) * done
        if not self.cosine:
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _per_step(optimizer: Optimizer, scheduler: Any) -> dict[str, Any]:
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def warmup_cosine(
    optimizer: Optimizer,
    warmup_steps: int,
    total_steps: float,
    *,
    cosine: bool = True,
    start_factor: float = 0.01,
    skip_start: bool = False,
) -> Optimizer | dict[str, Any]:
    """``configure_optimizers`` output: ``optimizer`` under :class:`WarmupCosine`; the bare
    optimizer when there is nothing to schedule (no warm-up, flat)."""
    warmup = max(0, int(warmup_steps))
    cosine = cosine and math.isfinite(total_steps)
    if warmup == 0 and not cosine:
        return optimizer
    total = max(1, int(total_steps)) if math.isfinite(total_steps) else 0
    factor = WarmupCosine(warmup, total, cosine, start_factor, skip_start)
    return _per_step(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor))


def adamw_warmup_cosine(task: LightningModule) -> Optimizer | dict[str, Any]:
    """AdamW over ``task``'s parameters under :func:`warmup_cosine`, from its hyper-parameters
    ``lr``, ``weight_decay``, ``warmup_steps`` and ``schedule`` (``"cosine"`` or
    ``"constant"``): the detector tasks' ``configure_optimizers``."""
    hp = task.hparams
    optimizer = torch.optim.AdamW(task.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    total = task.trainer.estimated_stepping_batches
    return warmup_cosine(optimizer, hp.warmup_steps, total, cosine=hp.schedule == "cosine")


def step_decay(
    optimizer: Optimizer, decay: float, at_fraction: float | None, total_steps: float
) -> Optimizer | dict[str, Any]:
    """``configure_optimizers`` output: the rate times ``decay`` from step
    ``max(1, int(at_fraction * total_steps))`` on; the bare optimizer when ``at_fraction`` is
    None or the run has no step count."""
    if at_fraction is None or not math.isfinite(total_steps):
        return optimizer
    milestone = max(1, int(at_fraction * total_steps))
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=decay)
    return _per_step(optimizer, schedule)
