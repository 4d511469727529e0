"""Model size and work: parameter counts and multiply-accumulates (MACs).

Convention: ``torch.utils.flop_counter.FlopCounterMode`` counts FLOPs, with one multiply-add
= 2 FLOPs for matmul, linear and convolution. We report **MACs = FLOPs / 2**, the unit of
most papers and of torchvision's model tables (ResNet-18 at 224x224: 1.814 GMACs). Only the
operators FlopCounterMode knows are counted (matmul/linear/conv/attention); element-wise work
(batch norm, activations, additions, ``grid_sample``) and bias additions are not.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from wherewhat.bench.runtime import as_input_tuple

__all__ = ["count_parameters", "count_macs", "training_step_flops", "MACS_CONVENTION"]

MACS_CONVENTION = (
    "MACs = FLOPs / 2 as counted by torch.utils.flop_counter.FlopCounterMode "
    "(matmul/linear/conv/attention only; element-wise ops and bias additions not counted)"
)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters; shared tensors are counted once.

    ``trainable_only`` counts only parameters with ``requires_grad``.
    """
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if id(parameter) in seen or (trainable_only and not parameter.requires_grad):
            continue
        seen.add(id(parameter))
        total += parameter.numel()
    return total


def count_macs(model: nn.Module, example_inputs: Any) -> dict[str, Any]:
    """MACs of one forward pass of ``model`` on ``example_inputs`` (tensor or tuple of tensors).

    Runs the model once in eval mode without gradients (its training flag is restored).
    The count scales with the batch size of ``example_inputs``.

    Returns a dict:
      - ``macs``: total multiply-accumulates (= ``flops / 2``),
      - ``flops``: FlopCounterMode's FLOPs (2 per multiply-add),
      - ``by_module``: ``{module name as in named_modules(): MACs}``, "" for the whole model,
        every module that does counted work (parents include their children),
      - ``by_operator``: ``{aten op name: MACs}``,
      - ``convention``: the sentence above, to keep next to any reported number.
    """
    inputs = as_input_tuple(example_inputs)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(*inputs)
    finally:
        model.train(was_training)

    root = type(model).__name__
    by_module: dict[str, int] = {}
    by_operator: dict[str, int] = defaultdict(int)
    for key, per_op in counter.get_flop_counts().items():
        flops = sum(int(v) for v in per_op.values())
        if key == "Global":
            for op, value in per_op.items():
                by_operator[str(op)] += int(value) // 2
            continue
        # FlopCounterMode names modules "<RootClass>.<name in named_modules()>".
        name = "" if key == root else key.removeprefix(root + ".")
        by_module[name] = flops // 2
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    by_module = dict(sorted(by_module.items(), key=lambda item: order.get(item[0], len(order))))
    flops_total = int(counter.get_total_flops())
    return {
        "macs": flops_total // 2,
        "flops": flops_total,
        "by_module": by_module,
        "by_operator": dict(by_operator),
        "convention": MACS_CONVENTION,
    }


def training_step_flops(
    module: nn.Module, batch: Any, step: Callable[[Any], torch.Tensor] | None = None
) -> float:
    """FLOPs (FlopCounterMode's, 2 per multiply-add) of one training step of ``module`` on
    ``batch``: forward and loss (``step(batch)``, default the Lightning ``training_step``; pass
    e.g. the model's loss function when a trainer is attached and ``self.log`` would need its
    loop) and the backward pass. No optimizer step is taken and the gradients are cleared
    afterwards; outside a trainer the step's ``self.log`` warnings are silenced."""
    step = step or (lambda b: module.training_step(b, 0))
    was_training = module.training
    module.train()
    counter = FlopCounterMode(display=False)
    try:
        with counter, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.log.*")  # no trainer attached
            loss = step(batch)
            loss.backward()
    finally:
        module.zero_grad(set_to_none=True)
        module.train(was_training)
    return float(counter.get_total_flops())
