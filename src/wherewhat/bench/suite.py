"""One call that measures a model completely: size, work, torch and ONNX Runtime speed, and how
much of this machine's peak that speed is. Also the reference-backbone benchmark that the
tour and ``benchmarks/reference_backbone.py`` run.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from wherewhat.bench.counting import MACS_CONVENTION, count_macs, count_parameters
from wherewhat.bench.latency import LatencyResult, measure_latency_onnx, measure_latency_torch
from wherewhat.bench.machine import machine_info, peak_matmul_gflops
from wherewhat.bench.onnx_export import export_onnx
from wherewhat.bench.runtime import make_ort_session
from wherewhat.bench.tables import format_markdown_table, format_value, write_results

__all__ = [
    "REFERENCE_BACKBONES",
    "build_reference_backbone",
    "benchmark_model",
    "benchmark_model_by_name",
    "run_reference_backbone_bench",
    "reference_backbone_markdown",
]

# torchvision builders, always with random weights (weights=None): nothing is downloaded.
REFERENCE_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
    "vgg11_bn": torchvision.models.vgg11_bn,
}

# (warmup, repeats) for small-batch latency and for large-batch throughput calls.
_TIMING = {
    False: {"latency": (5, 30), "throughput": (2, 10)},
    True: {"latency": (2, 10), "throughput": (1, 3)},
}
_LARGE_BATCH = 8  # from this batch size on, a call is long: use the throughput timing
REFERENCE_THROUGHPUT_BATCH = 32


def build_reference_backbone(name: str, num_classes: int = 1000) -> nn.Module:
    """A torchvision classifier by name (see ``REFERENCE_BACKBONES``), randomly initialised,
    seeded so that two builds are identical."""
    if name not in REFERENCE_BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(REFERENCE_BACKBONES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return REFERENCE_BACKBONES[name](weights=None, num_classes=num_classes).eval()


def _speed_row(
    result: LatencyResult, macs_per_image: int, peaks: dict[int, float]
) -> dict[str, Any]:
    achieved = 2.0 * macs_per_image * result.batch_size / (result.median_ms / 1000.0) / 1e9
    peak = peaks.get(result.threads)
    return {
        **result.to_dict(),
        "images_per_s": result.items_per_s,
        "achieved_gflops": achieved,
        "peak_gflops": peak,
        "fraction_of_peak": achieved / peak if peak else None,
    }


def benchmark_model(
    model: nn.Module,
    input_shape: Sequence[int],
    threads: Sequence[int] = (1, 2),
    onnx: bool = True,
    quick: bool = False,
    throughput_batch: int | None = None,
    name: str | None = None,
    include_machine: bool = True,
) -> dict[str, Any]:
    """Parameters, MACs and CPU speed of ``model`` on uniform random inputs of ``input_shape``.

    For each thread count: torch latency (eval, inference mode) and, with ``onnx``, ONNX
    Runtime latency of the exported model (dynamic batch, parity-checked), at the batch of
    ``input_shape`` and, if ``throughput_batch`` is given, at that batch too. Every speed row
    has median/p10/p90 ms, images/s, achieved GFLOP/s (= 2 x MACs / median latency) and its
    fraction of :func:`~wherewhat.bench.machine.peak_matmul_gflops` at that thread count.
    ``quick`` takes fewer repeats (for the tour). MACs follow ``MACS_CONVENTION``.
    """
    input_shape = tuple(int(s) for s in input_shape)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(*input_shape, generator=generator)
    batches = [input_shape[0]]
    if throughput_batch is not None and throughput_batch != input_shape[0]:
        batches.append(int(throughput_batch))
    was_training = model.training
    model.eval()

    macs = count_macs(model, example)
    macs_per_image = macs["macs"] // input_shape[0]
    peaks = {t: peak_matmul_gflops(t) for t in threads}
    result: dict[str, Any] = {
        "name": name or type(model).__name__,
        "input_shape": list(input_shape),
        "params": count_parameters(model),
        "trainable_params": count_parameters(model, trainable_only=True),
        "macs": macs["macs"],
        "macs_per_image": macs_per_image,
        "macs_convention": MACS_CONVENTION,
        "peak_gflops": {str(t): p for t, p in peaks.items()},
        "quick": quick,
        "onnx_export": None,
        "speed": [],
    }
    inputs_by_batch = {b: torch.rand(b, *input_shape[1:], generator=generator) for b in batches}

    def timing(batch: int) -> tuple[int, int]:
        return _TIMING[quick]["throughput" if batch >= _LARGE_BATCH else "latency"]

    with tempfile.TemporaryDirectory(prefix="wherewhat-bench-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        if onnx:
            exported = export_onnx(model, example, onnx_path, dynamic_batch=True)
            result["onnx_export"] = {**exported.to_dict(), "path": None}
        for t in threads:
            session = make_ort_session(onnx_path, threads=t) if onnx else None
            for b in batches:
                warmup, repeats = timing(b)
                x = inputs_by_batch[b]
                measured = [measure_latency_torch(model, x, t, warmup, repeats)]
                if session is not None:
                    measured.append(measure_latency_onnx(session, x, t, warmup, repeats))
                for m in measured:
                    result["speed"].append(_speed_row(m, macs_per_image, peaks))
    model.train(was_training)
    if include_machine:
        result["machine"] = machine_info()
    return result


def benchmark_model_by_name(
    name: str, input_shape: Sequence[int], num_classes: int = 1000, **kwargs: Any
) -> dict[str, Any]:
    """:func:`benchmark_model` on a randomly initialised torchvision reference backbone
    (``resnet18``, ``mobilenet_v2``, ``vgg11_bn``); nothing is downloaded."""
    model = build_reference_backbone(name, num_classes=num_classes)
    return benchmark_model(model, input_shape, name=name, **kwargs)


def run_reference_backbone_bench(
    quick: bool = True,
    results_dir: str | os.PathLike | None = None,
    names: Sequence[str] = ("resnet18", "mobilenet_v2"),
    input_shape: Sequence[int] = (1, 3, 128, 128),
    throughput_batch: int | None = None,
    threads: Sequence[int] = (1, 2),
) -> dict[str, Any]:
    """Benchmark torchvision reference backbones: the yardstick for our own models' speed.

    ResNet-18 and MobileNetV2 at 1x3x128x128 with 1 and 2 threads, in torch and ONNX Runtime,
    plus ``throughput_batch`` images per call (``None``: 32 in a full run, skipped in a quick
    one; 0: skipped). ``quick`` (the tour) takes ~20 s on two idle cores, the full run a few
    minutes. With ``results_dir``, writes ``reference_backbone.json`` and ``.md`` there.
    Returns the data (format it with :func:`reference_backbone_markdown`).
    """
    start = time.perf_counter()
    if throughput_batch is None:
        throughput_batch = 0 if quick else REFERENCE_THROUGHPUT_BATCH
    throughput_batch = throughput_batch or None
    models = [
        benchmark_model_by_name(
            name,
            input_shape,
            threads=threads,
            quick=quick,
            throughput_batch=throughput_batch,
            include_machine=False,
        )
        for name in names
    ]
    data = {
        "benchmark": "reference_backbone",
        "quick": quick,
        "input_shape": list(input_shape),
        "throughput_batch": throughput_batch,
        "threads": list(threads),
        "peak_gflops": {str(t): peak_matmul_gflops(t) for t in threads},
        "macs_convention": MACS_CONVENTION,
        "machine": machine_info(),
        "models": models,
        "seconds": time.perf_counter() - start,
    }
    if results_dir is not None:
        write_results("reference_backbone", data, reference_backbone_markdown(data), results_dir)
    return data


def reference_backbone_markdown(data: dict[str, Any]) -> str:
    """The markdown report of :func:`run_reference_backbone_bench`'s data."""
    machine = data["machine"]
    peaks = ", ".join(f"{t} thread(s): {p:.0f}" for t, p in data["peak_gflops"].items())
    size_rows = [
        {
            "model": m["name"],
            "params_m": m["params"] / 1e6,
            "gmacs": m["macs_per_image"] / 1e9,
            "onnx_diff": (m["onnx_export"] or {}).get("max_abs_diff"),
        }
        for m in data["models"]
    ]
    speed_rows = [
        {
            "model": m["name"],
            **row,
            "spread": f"{format_value(row['p10_ms'])} / {format_value(row['p90_ms'])}",
            "percent_of_peak": None
            if row["fraction_of_peak"] is None
            else 100.0 * row["fraction_of_peak"],
        }
        for m in data["models"]
        for row in m["speed"]
    ]
    shape = "x".join(str(s) for s in data["input_shape"][1:])
    load = machine.get("load_average_1_5_15min")
    busy = ""
    if load and machine.get("usable_cores") and load[0] > 0.75 * machine["usable_cores"]:
        busy = (
            f" The machine was busy (1-min load {load[0]} on {machine['usable_cores']} cores): "
            "rows with more threads than idle cores are pessimistic."
        )
    lines = [
        "# Reference backbones on this CPU",
        "",
        f"torchvision models with random weights, input {shape}, "
        f"{'quick' if data['quick'] else 'full'} run. "
        f"CPU: {machine['cpu']} ({machine['usable_cores']} usable cores, load average "
        f"{machine['load_average_1_5_15min']}), torch {machine['torch']}, "
        f"onnxruntime {machine['onnxruntime']}.",
        "",
        f"Measured peak float32 matmul GFLOP/s: {peaks}. {data['macs_convention']}; "
        f"achieved GFLOP/s = 2 x MACs / median latency.{busy}",
        "",
        format_markdown_table(
            size_rows,
            [
                ("model", "model"),
                ("params_m", "params (M)"),
                ("gmacs", "GMACs / image"),
                ("onnx_diff", "ONNX max abs diff"),
            ],
        ),
        format_markdown_table(
            speed_rows,
            [
                ("model", "model"),
                ("backend", "backend"),
                ("threads", "threads"),
                ("batch_size", "batch"),
                ("median_ms", "median ms"),
                ("spread", "p10 / p90 ms"),
                ("images_per_s", "images/s"),
                ("achieved_gflops", "GFLOP/s"),
                ("percent_of_peak", "% of peak"),
            ],
        ),
    ]
    return "\n".join(lines)
