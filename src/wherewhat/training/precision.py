"""Mixed precision helpers: a loss computed in float32 from outputs made under bf16 autocast."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["autocast_dtype", "float32_loss", "to_float32"]


def to_float32(value: Any) -> Any:
    """``value`` with every floating tensor in float32, through dicts, lists and tuples (other
    values and integer tensors unchanged; a float32 tensor is returned as is, not copied)."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, Mapping):
        return {key: to_float32(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(to_float32(item) for item in value)
    return value


def float32_loss(reference: Tensor) -> torch.autocast:
    """Autocast off on ``reference``'s device: a loss of sums over thousands of pixels or of
    log-probabilities stays in float32 (bfloat16 keeps about 3 significant digits)."""
    return torch.autocast(device_type=reference.device.type, enabled=False)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast is on with for ``device_type`` ("cpu", "cuda"), or None when off."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)
