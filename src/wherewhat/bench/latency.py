"""Wall-clock latency (torch and ONNX Runtime) and training throughput on the CPU.

Every result records the thread count it was measured with: on a CPU the same model is
several times faster with more cores, so a number without its thread count means little.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from wherewhat.bench.runtime import (
    as_input_tuple,
    batch_size_of,
    make_ort_session,
    torch_num_threads,
)

__all__ = [
    "LatencyResult",
    "ThroughputResult",
    "measure_latency_torch",
    "measure_latency_onnx",
    "measure_training_throughput",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyResult:
    """Summary of ``repeats`` timed calls (after ``warmup`` untimed ones); times in ms."""

    backend: str  # "torch" or "onnxruntime"
    threads: int
    batch_size: int
    warmup: int
    repeats: int
    median_ms: float
    mean_ms: float
    min_ms: float
    p10_ms: float
    p25_ms: float
    p75_ms: float
    p90_ms: float

    @property
    def items_per_s(self) -> float:
        """Batch elements (e.g. images) per second at the median latency."""
        return self.batch_size / (self.median_ms / 1000.0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "items_per_s": self.items_per_s}

    def summary(self) -> str:
        return (
            f"{self.backend}: batch {self.batch_size}, {self.threads} thread(s): median "
            f"{self.median_ms:.2f} ms (p10 {self.p10_ms:.2f}, p90 {self.p90_ms:.2f}, "
            f"n={self.repeats}), {self.items_per_s:.1f} items/s"
        )

    @classmethod
    def from_times(
        cls,
        times_s: list[float],
        *,
        backend: str,
        threads: int,
        batch_size: int,
        warmup: int,
    ) -> LatencyResult:
        """Build from per-call durations in seconds."""
        if not times_s:
            raise ValueError("need at least one timed call (repeats >= 1)")
        ms = np.asarray(times_s, dtype=np.float64) * 1000.0
        p10, p25, p50, p75, p90 = np.percentile(ms, [10, 25, 50, 75, 90])
        return cls(
            backend=backend,
            threads=threads,
            batch_size=batch_size,
            warmup=warmup,
            repeats=len(times_s),
            median_ms=float(p50),
            mean_ms=float(ms.mean()),
            min_ms=float(ms.min()),
            p10_ms=float(p10),
            p25_ms=float(p25),
            p75_ms=float(p75),
            p90_ms=float(p90),
        )


def _time_calls(call: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def measure_latency_torch(
    model: nn.Module,
    example_inputs: Any,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 30,
) -> LatencyResult:
    """Latency of ``model(*example_inputs)`` in eval mode under ``torch.inference_mode``.

    ``torch.set_num_threads(threads)`` is applied for the measurement and the previous count
    restored afterwards, as is the model's training flag.
    """
    inputs = as_input_tuple(example_inputs)
    was_training = model.training
    model.eval()
    try:
        with torch_num_threads(threads) as used, torch.inference_mode():
            times = _time_calls(lambda: model(*inputs), warmup, repeats)
    finally:
        model.train(was_training)
    result = LatencyResult.from_times(
        times, backend="torch", threads=used, batch_size=batch_size_of(inputs), warmup=warmup
    )
    log.info("%s", result.summary())
    return result


def _ort_feed(session: Any, inputs: Any) -> dict[str, np.ndarray]:
    """Map tensors/arrays (positional) or a ``{name: array}`` dict onto the session's inputs."""
    names = [node.name for node in session.get_inputs()]
    if isinstance(inputs, Mapping):
        missing = set(names) - set(inputs)
        if missing:
            raise ValueError(f"ONNX model inputs {sorted(missing)} not given; it expects {names}")
        items = [(name, inputs[name]) for name in names]
    else:
        values = as_input_tuple(inputs)
        if len(values) != len(names):
            raise ValueError(f"ONNX model expects {len(names)} inputs {names}, got {len(values)}")
        items = list(zip(names, values, strict=True))
    feed = {}
    for name, value in items:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        feed[name] = np.ascontiguousarray(value)
    return feed


def _session_threads(session: Any) -> int:
    return int(session.get_session_options().intra_op_num_threads)


def measure_latency_onnx(
    path_or_session: str | os.PathLike | Any,
    inputs: Any,
    threads: int | None = 1,
    warmup: int = 5,
    repeats: int = 30,
) -> LatencyResult:
    """Latency of one ONNX Runtime ``session.run`` on the CPU.

    ``path_or_session``: an ``.onnx`` file (a session is built with
    :func:`~wherewhat.bench.runtime.make_ort_session`: ``intra_op_num_threads=threads``,
    one inter-op thread, sequential, all graph optimisations) or an existing session, whose
    own intra-op thread count is used and must match ``threads`` when that is given.
    ``inputs``: tensors/arrays in the model's input order, or a ``{input name: array}`` dict.
    Inputs are converted to numpy once, before timing.
    """
    if isinstance(path_or_session, str | os.PathLike):
        session = make_ort_session(path_or_session, threads=threads)
    else:
        session = path_or_session
        session_threads = _session_threads(session)
        if threads is not None and session_threads not in (0, threads):
            raise ValueError(
                f"session was built with intra_op_num_threads={session_threads}, "
                f"but threads={threads} was asked for; pass threads=None or a new session"
            )
    used = _session_threads(session)
    if used == 0:  # 0 means "ONNX Runtime's default": one thread per core.
        used = os.cpu_count() or 1
    feed = _ort_feed(session, inputs)
    times = _time_calls(lambda: session.run(None, feed), warmup, repeats)
    result = LatencyResult.from_times(
        times,
        backend="onnxruntime",
        threads=used,
        batch_size=batch_size_of(list(feed.values())),
        warmup=warmup,
    )
    log.info("%s", result.summary())
    return result


@dataclass(frozen=True)
class ThroughputResult:
    """Training speed: samples per second of forward + backward + optimizer step."""

    samples_per_s: float
    batch_size: int
    steps: int
    warmup: int
    seconds: float
    threads: int
    step_seconds: tuple[float, ...]  # each timed step's wall time

    def __float__(self) -> float:
        return self.samples_per_s

    @property
    def median_step_seconds(self) -> float:
        """The median timed step: unlike the mean, one slow step does not move it."""
        return float(np.median(self.step_seconds))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_training_throughput(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batch: Any,
    steps: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    optimizer_factory: Callable[[Any], torch.optim.Optimizer] | None = None,
) -> ThroughputResult:
    """Samples/s of full training steps: ``loss_fn(model, batch)``, backward, optimizer step.

    ``loss_fn(model, batch) -> scalar loss`` receives the model and the whole ``batch``
    (a tensor or a tuple such as ``(images, targets)``), so any task fits. The batch size is
    dim 0 of the first tensor in ``batch``. Runs on a deep copy of ``model`` in train mode,
    so the caller's weights are untouched. The default optimizer is
    SGD with momentum (lr 1e-3); pass ``optimizer_factory(params)`` for another.
    ``float(result)`` gives samples/s.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    trainee = copy.deepcopy(model).train()
    params = [p for p in trainee.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    make_optimizer = optimizer_factory or (lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9))
    optimizer = make_optimizer(params)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(trainee, batch)
        loss.backward()
        optimizer.step()

    with torch_num_threads(threads) as used:
        times = _time_calls(step, warmup, steps)
    seconds = float(sum(times))
    batch_size = batch_size_of(as_input_tuple(batch))
    result = ThroughputResult(
        samples_per_s=batch_size * steps / seconds,
        batch_size=batch_size,
        steps=steps,
        warmup=warmup,
        seconds=seconds,
        threads=used,
        step_seconds=tuple(times),
    )
    log.info(
        "training: batch %d, %d thread(s): %.1f samples/s",
        batch_size,
        used,
        result.samples_per_s,
    )
    return result
