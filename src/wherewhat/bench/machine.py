"""What machine a number was measured on, and how fast that machine can go at best.

``peak_matmul_gflops`` times large float32 matrix products, the best case for a CPU; any
model's achieved GFLOP/s divided by it says how much of the machine the model actually uses.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch
import torchvision

from wherewhat.bench.runtime import torch_num_threads

__all__ = ["peak_matmul_gflops", "machine_info", "cpu_model_name"]


def peak_matmul_gflops(
    threads: int | None = None,
    sizes: tuple[int, ...] = (256, 512, 1024),
    time_budget_s: float = 1.5,
    min_repeats: int = 3,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Measured peak GFLOP/s of this machine with ``threads`` torch threads, for matrix products
    in ``dtype`` (float32; ``torch.bfloat16`` for what bf16 mixed precision can reach: on CPUs
    with AMX or AVX-512 BF16 several times the float32 peak).

    The best over many timed square products ``n x n @ n x n`` (2 n^3 FLOPs each), each size
    in ``sizes`` sampled for an equal share of ``time_budget_s`` (at least ``min_repeats``
    calls, after one warm-up). Taking the best of many short calls finds the machine's
    limit even when other processes share the cores. Cached per process for each argument
    combination: the first call measures (about ``time_budget_s``), later calls are free.
    ``threads=None`` uses the current ``torch.get_num_threads()``.
    """
    used = torch.get_num_threads() if threads is None else threads
    return _peak_matmul_gflops_cached(used, tuple(sizes), time_budget_s, min_repeats, dtype)


@cache
def _peak_matmul_gflops_cached(
    threads: int,
    sizes: tuple[int, ...],
    time_budget_s: float,
    min_repeats: int,
    dtype: torch.dtype = torch.float32,
) -> float:
    if not sizes or min_repeats < 1:
        raise ValueError(f"need at least one size and min_repeats >= 1, got {sizes}")
    generator = torch.Generator().manual_seed(0)
    share = time_budget_s / len(sizes)
    best = 0.0
    with torch_num_threads(threads), torch.inference_mode():
        for n in sizes:
            a = torch.rand(n, n, generator=generator).to(dtype)
            b = torch.rand(n, n, generator=generator).to(dtype)
            out = torch.empty(n, n, dtype=dtype)
            torch.mm(a, b, out=out)  # warm-up: page in memory, pick kernels
            start, calls = time.perf_counter(), 0
            while calls < min_repeats or time.perf_counter() - start < share:
                tic = time.perf_counter()
                torch.mm(a, b, out=out)
                best = max(best, 2.0 * n**3 / (time.perf_counter() - tic) / 1e9)
                calls += 1
    return best


def cpu_model_name() -> str:
    """CPU model from /proc/cpuinfo (Linux), else what ``platform`` reports."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None when not available."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return None
    cores, physical_id = set(), "0"
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "physical id":
            physical_id = value.strip()
        elif key == "core id":
            cores.add((physical_id, value.strip()))
    return len(cores) or None


def machine_info() -> dict[str, Any]:
    """CPU, core counts, load, library versions and thread settings, to store with results."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu_model_name(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "usable_cores": usable,
        "load_average_1_5_15min": load,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
    }
