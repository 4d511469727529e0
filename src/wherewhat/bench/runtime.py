"""Execution settings shared by every measurement: thread counts for torch and ONNX Runtime.

Speeds are only comparable when the number of threads is fixed and recorded, so every timing
function in :mod:`wherewhat.bench` goes through these two helpers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

__all__ = ["torch_num_threads", "make_ort_session", "as_input_tuple", "batch_size_of"]


@contextmanager
def torch_num_threads(threads: int | None) -> Iterator[int]:
    """Run a block with ``torch.set_num_threads(threads)``; restore the previous count after.

    ``threads=None`` keeps the current setting. Yields the thread count in effect.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def make_ort_session(model: str | os.PathLike | bytes, threads: int | None = 1) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU with a fixed, known thread count.

    ``intra_op_num_threads=threads`` (``None``: ONNX Runtime's default, one per core),
    ``inter_op_num_threads=1`` and sequential execution, so the model uses exactly ``threads``
    cores; all graph optimisations are on (what a deployed model would use).
    """
    options = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(Path(model))
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def as_input_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """A single tensor becomes a 1-tuple; tuples and lists become tuples."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def batch_size_of(inputs: Sequence[Any]) -> int:
    """Size of dim 0 of the first array-like input (1 when there is none)."""
    for item in inputs:
        shape = getattr(item, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
    return 1
