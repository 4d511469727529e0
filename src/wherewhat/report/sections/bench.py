"""Tour section "bench": the reference backbones' size and speed on this machine.

The yardstick for every method's speed numbers: torchvision ResNet-18 and MobileNetV2 with
random weights, in torch and ONNX Runtime, at 1 and 2 threads, plus the machine they ran on.
"""

from __future__ import annotations

from typing import Any

from wherewhat.bench.suite import run_reference_backbone_bench
from wherewhat.report.html import Section
from wherewhat.report.tour import TourContext, register_section


@register_section("bench", order=90, title="Speed on this machine")
def bench_section(ctx: TourContext) -> Section:
    section = Section("Speed on this machine")
    with ctx.step("reference backbones"):
        data = run_reference_backbone_bench(quick=ctx.quick)
    shape = "x".join(str(s) for s in data["input_shape"][1:])
    section.paragraph(
        f"Reference backbones from torchvision with random weights, input {shape}, "
        f"{'quick (few repeats)' if data['quick'] else 'full'} run. Latency is the median over "
        "repeated calls; achieved GFLOP/s = 2 x MACs / median latency, compared with the "
        "machine's measured peak float32 matrix-product speed at the same thread count. "
        f"{data['macs_convention']}."
    )
    section.table(
        [
            {
                "model": m["name"],
                "params (M)": m["params"] / 1e6,
                "GMACs / image": m["macs_per_image"] / 1e9,
                "ONNX max abs diff": (m["onnx_export"] or {}).get("max_abs_diff"),
            }
            for m in data["models"]
        ],
        caption="Size and work",
    )
    section.table(
        [
            {
                "model": m["name"],
                "backend": row["backend"],
                "threads": row["threads"],
                "batch": row["batch_size"],
                "median ms": row["median_ms"],
                "p10-p90 ms": f"{row['p10_ms']:.3g}-{row['p90_ms']:.3g}",
                "images/s": row["images_per_s"],
                "GFLOP/s": row["achieved_gflops"],
                "% of peak": None
                if row["fraction_of_peak"] is None
                else 100.0 * row["fraction_of_peak"],
            }
            for m in data["models"]
            for row in m["speed"]
        ],
        caption="Speed",
    )
    for warning in slower_with_more_threads(data["models"]):
        section.flag(warning)
    section.facts(
        {f"peak GFLOP/s, {t} thread(s)": p for t, p in data["peak_gflops"].items()},
        caption="Peak float32 matrix-product speed (measured)",
    )
    section.facts(data["machine"], caption="Machine")

    numbers = {"bench_seconds": data["seconds"]}
    for m in data["models"]:
        numbers[f"{m['name']}_params"] = m["params"]
        numbers[f"{m['name']}_macs_per_image"] = m["macs_per_image"]
        for row in m["speed"]:
            key = f"{m['name']}_{row['backend']}_t{row['threads']}_b{row['batch_size']}_median_ms"
            numbers[key] = row["median_ms"]
    section.record(**numbers)
    return section


def slower_with_more_threads(models: list[dict[str, Any]], slack: float = 1.1) -> list[str]:
    """One line per (model, backend, batch) whose median latency grows with the thread count
    by more than ``slack``: more threads slower points at a busy machine or a threading
    problem, not at the model."""
    lines = []
    for model in models:
        runs: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for row in model["speed"]:
            runs.setdefault((row["backend"], row["batch_size"]), []).append(
                (row["threads"], row["median_ms"])
            )
        for (backend, batch), timings in runs.items():
            timings.sort()
            for (fewer, fast), (more, slow) in zip(timings, timings[1:], strict=False):
                if slow > slack * fast:
                    lines.append(
                        f"{model['name']} in {backend}, batch {batch}: {more} threads take "
                        f"{slow:.3g} ms, {fewer} thread(s) {fast:.3g} ms; more threads should not "
                        "be slower (another process on the machine, or oversubscribed threads)"
                    )
    return lines
