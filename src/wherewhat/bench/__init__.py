"""Benchmarks: parameters, MACs, latency (torch and ONNX Runtime), throughput, ONNX export.

MACs = FLOPs / 2 as counted by ``torch.utils.flop_counter.FlopCounterMode``; every speed
records its thread count and can be read against this machine's measured matmul peak.
"""

from wherewhat.bench.counting import (
    MACS_CONVENTION,
    count_macs,
    count_parameters,
    training_step_flops,
)
from wherewhat.bench.latency import (
    LatencyResult,
    ThroughputResult,
    measure_latency_onnx,
    measure_latency_torch,
    measure_training_throughput,
)
from wherewhat.bench.machine import machine_info, peak_matmul_gflops
from wherewhat.bench.onnx_export import (
    ExportResult,
    OnnxParityError,
    export_checkpoint_to_onnx,
    export_onnx,
)
from wherewhat.bench.runtime import make_ort_session, torch_num_threads
from wherewhat.bench.suite import (
    benchmark_model,
    benchmark_model_by_name,
    reference_backbone_markdown,
    run_reference_backbone_bench,
)
from wherewhat.bench.tables import format_markdown_table, write_results

__all__ = [
    "MACS_CONVENTION",
    "ExportResult",
    "LatencyResult",
    "OnnxParityError",
    "ThroughputResult",
    "benchmark_model",
    "benchmark_model_by_name",
    "count_macs",
    "count_parameters",
    "training_step_flops",
    "export_checkpoint_to_onnx",
    "export_onnx",
    "format_markdown_table",
    "machine_info",
    "make_ort_session",
    "measure_latency_onnx",
    "measure_latency_torch",
    "measure_training_throughput",
    "peak_matmul_gflops",
    "reference_backbone_markdown",
    "run_reference_backbone_bench",
    "torch_num_threads",
    "write_results",
]
