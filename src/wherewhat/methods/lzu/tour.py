"""Tour section "lzu": the model-free part of the LZU benchmark
(:mod:`wherewhat.methods.lzu.measurements`): warps, their exactness and speed, per-step
latency."""

from __future__ import annotations

import dataclasses
from typing import Any

from wherewhat.methods.lzu.experiment import run_arm, warp_figures
from wherewhat.methods.lzu.measurements import (
    example_saliencies,
    latency_breakdown,
    level_sizes,
    warp_checks,
)
from wherewhat.methods.lzu.scenes import load_scenes
from wherewhat.methods.lzu.settings import LZUBenchSettings
from wherewhat.report.html import Check, Section, benchmark_targets
from wherewhat.report.tour import TourContext, register_section

# The two arms a short tour run trains: the baseline and the fixed (dataset) zoom.
TOUR_ARMS = ("uniform", "lzu_fixed")

FIGURE_CAPTIONS = {
    "warp-fixed": "The fixed (dataset KDE) warp on a test scene: scene and boxes, saliency, "
    "where the zoomed image's uniform lattice lands (dense lines = magnified), and the zoomed "
    "input.",
    "warp-adaptive": "The adaptive warp of the same scene from its own boxes.",
}


@register_section("lzu", order=50, title="LZU: learning to zoom and unzoom")
def lzu_section(ctx: TourContext) -> Section:
    """Warps (figures, exactness, speed) and per-step latency on a few quick scenes; no
    training (see ``benchmarks/lzu.py`` for the experiment)."""
    section = Section("LZU: learning to zoom and unzoom")
    settings = LZUBenchSettings.preset("quick", latency_timing=(1, 3) if ctx.quick else (2, 10))
    with ctx.step("scenes"):
        data = load_scenes(settings)
    with ctx.step("warps"):
        saliency, zoom = example_saliencies(settings, data)
        sizes = level_sizes(settings, data)
        checks = warp_checks(
            saliency, zoom.fwhm, sizes, settings.inverse_map_size, repeats=5 if ctx.quick else 30
        )
    with ctx.step("latency"):
        scene = data.detection[1][settings.figure_scene]
        latency = latency_breakdown(settings, scene["image"][None], scene["boxes"], saliency[:1])
    with ctx.step("figures"):
        figures = warp_figures(settings, data, saliency, zoom)
    steps = 30 if ctx.quick else 120
    with ctx.step("train uniform + LZU-fixed"):
        short = dataclasses.replace(settings, detection_steps=steps)
        runs = [run_arm("detection", arm, ctx.seed, short, data)[1] for arm in TOUR_ARMS]
    h, w = data.original_size
    section.paragraph(
        f"LZU (Thavamani et al.): zoom a {h} x {w} scene to {settings.input_size[0]} x "
        f"{settings.input_size[1]} by a saliency-driven warp, run the backbone, unzoom its "
        "features exactly so that heads and labels stay in the plain frame. Below: the warps of "
        "this project's street scenes (digits in perspective: the small ones in a horizon "
        "band), how exact the "
        "inverse is, and what it costs. The trained comparison (uniform vs LZU-fixed vs "
        "LZU-adaptive vs 2x input, detection and segmentation) is `benchmarks/lzu.py`."
    )
    section.table(
        [{"warp": name, "round trip max err (px)": checks.roundtrip_max_err_px[name],
          "coverage": checks.coverage[name]} for name in ("separable", "nonseparable")],
        caption=f"Exact inverse on maps {', '.join(f'{a}x{b}' for a, b in sizes)} (float32)",
    )  # fmt: skip
    speed_h, speed_w = settings.inverse_map_size
    section.facts(
        {"1-D inverse (ms)": checks.inverse_ms["separable_1d"],
         "tile solver (ms)": checks.inverse_ms["tiles"],
         "speed-up": checks.inverse_speedup_1d_vs_tile,
         "overhead (zoom + unzoom) / uniform model": latency.overhead_fraction},
        caption=f"Inverse speed at {speed_h} x {speed_w} and LZU overhead",
    )  # fmt: skip
    section.table(
        [{"step": k, "ms": v} for k, v in latency.latency_ms.items()],
        caption=f"Per-step latency, batch 1, {latency.latency_threads} threads",
    )
    section.table(
        [{"arm": run.arm, "steps": run.steps, "final loss": run.final_loss,
          "AP50": run.metric("ap50"), "AP50 small": run.metric("ap50_small"),
          "AP50 small, band": run.metric("ap50_small_band")} for run in runs],
        caption=f"Detection, {steps} steps on {settings.n_train} scenes, {settings.n_test} test "
        "scenes: a short run to show the training, far from the benchmark's",
    )  # fmt: skip
    section.checks(
        warp_and_accuracy_checks(checks.roundtrip_max_err_px, checks.coverage,
                                 checks.inverse_speedup_1d_vs_tile, latency.overhead_fraction,
                                 ctx.benchmark_result("lzu")),
        caption="This run against the benchmark (benchmarks/results/lzu.json) and its targets",
    )  # fmt: skip
    for name, png in figures.items():
        section.figure(png, FIGURE_CAPTIONS.get(name, name), name=f"lzu-{name}")
    section.record(
        roundtrip_max_err_px_separable=checks.roundtrip_max_err_px["separable"],
        roundtrip_max_err_px_nonseparable=checks.roundtrip_max_err_px["nonseparable"],
        coverage_separable=checks.coverage["separable"],
        coverage_nonseparable=checks.coverage["nonseparable"],
        inverse_speedup_1d_vs_tile=checks.inverse_speedup_1d_vs_tile,
        overhead_fraction=latency.overhead_fraction,
    )
    return section


def warp_and_accuracy_checks(
    roundtrip: dict[str, float],
    coverage: dict[str, float],
    speedup: float,
    overhead: float,
    benchmark: dict[str, Any] | None,
) -> list[Check]:
    """The warp targets, judged on this run (they do not depend on training), and the accuracy
    gains, judged on the benchmark (they need its trained arms)."""
    bench = benchmark or {}
    targets = benchmark_targets(bench)

    def target(key: str, default: tuple[str, float]) -> tuple[str, float]:
        return targets.get(key, default)

    checks = [
        Check(f"round trip max err, {kind} (px)", roundtrip[kind],
              bench.get("roundtrip_max_err_px", {}).get(kind),
              target=target("roundtrip_max_err_px", ("<=", 1e-3)))
        for kind in ("separable", "nonseparable")
    ]  # fmt: skip
    checks += [
        Check(f"coverage, {kind}", coverage[kind], bench.get("coverage", {}).get(kind),
              target=target("coverage", (">=", 1.0)))
        for kind in ("separable", "nonseparable")
    ]  # fmt: skip
    checks += [
        Check("1-D inverse speed-up over the tile solver", speedup,
              bench.get("inverse_speedup_1d_vs_tile"),
              target=target("inverse_speedup_1d_vs_tile", (">=", 20.0))),
        Check("zoom + unzoom overhead / uniform model", overhead, bench.get("overhead_fraction"),
              target=target("overhead_fraction", ("<=", 0.10)),
              note="timed on a few calls here; the benchmark times more"),
    ]  # fmt: skip
    gains = bench.get("gains_fixed_vs_uniform") or {}
    for gain, field, target_key, label in (
        ("ap50_small_band", "min", "ap50_small_band_gain_fixed_every_seed",
         "AP50-small gain in the band, LZU-fixed - uniform (worst seed)"),
        ("ap50_outside", "mean", "ap50_outside_gain_fixed",
         "AP50 gain outside the band, LZU-fixed - uniform (mean)"),
        ("ap50_large", "mean", "ap50_large_gain_fixed",
         "AP50-large gain, LZU-fixed - uniform (mean)"),
        ("small_iou", "mean", "small_iou_gain_fixed",
         "small-digit IoU gain, LZU-fixed - uniform (mean)"),
    ):  # fmt: skip
        if gain in gains and target_key in targets:
            checks.append(
                Check(label, None, gains[gain][field], target=targets[target_key],
                      judge_benchmark=True, note="needs trained arms: benchmarks/lzu.py")
            )  # fmt: skip
    return checks
