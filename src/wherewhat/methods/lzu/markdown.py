"""The LZU benchmark's markdown report (``benchmarks/results/lzu.md``) from its typed result."""

from __future__ import annotations

from wherewhat.bench.tables import format_markdown_table
from wherewhat.methods.lzu.experiment import SUMMARY_METRICS
from wherewhat.methods.lzu.records import BenchSummary, LZUBenchResult

__all__ = ["lzu_markdown"]

_ABLATION_KEYS = ("ap50", "ap50_small", "ap50_medium", "ap50_large", "ap")


def _pm(summary: BenchSummary, metric: str, arm: str, scale: float = 100.0) -> str:
    stat = summary.stat(metric, arm)
    if stat is None:
        return "-"
    if stat.n > 1:
        return f"{scale * stat.mean:.1f} ± {scale * stat.std:.1f}"
    return f"{scale * stat.mean:.1f}"


def lzu_markdown(result: LZUBenchResult) -> str:
    """The benchmark's markdown: warps, latency, detection and segmentation per arm."""
    s = result.settings
    scenes = result.scatter_config
    summary = result.summary
    warp = result.warp
    latency = result.latency
    lines = [
        f"# LZU benchmark{' (quick)' if s.quick else ''}",
        "",
        f"Scenes {scenes.image_size[0]} x {scenes.image_size[1]}"
        f" (digits {scenes.min_digit_size}-{scenes.max_digit_size}"
        f" px, horizon band), {s.n_train} train / {s.n_test} test, input "
        f"{s.input_size[0]} x {s.input_size[1]} (uniform_2x: twice that), seeds "
        f"{', '.join(str(x) for x in result.seeds)}; "
        f"{s.detection_steps} detection / {s.segmentation_steps} segmentation steps of "
        f"batch {s.batch_size}. Mean ± std over seeds; total {result.seconds / 60:.1f} min.",
        "",
        "## Warps",
        "",
    ]
    lines.append(format_markdown_table(
        [{"warp": name, "round trip max err (px)": warp.roundtrip_max_err_px[name],
          "coverage": warp.coverage[name]} for name in ("separable", "nonseparable")],
        ["warp", "round trip max err (px)", "coverage"],
    ))  # fmt: skip
    lines.append(
        f"Maps {', '.join('x'.join(str(v) for v in m) for m in warp.map_sizes)} px, fixed "
        "saliency and 4 adaptive ones. Inverse at "
        f"{'x'.join(str(v) for v in warp.inverse_map_size)}: 1-D "
        f"{warp.inverse_ms['separable_1d']:.2f} ms, tile solver {warp.inverse_ms['tiles']:.1f}"
        f" ms: **{warp.inverse_speedup_1d_vs_tile:.0f}x** faster (target >= 20x).\n"
    )
    lines += ["## Latency (detection, batch 1, "
              f"{latency.latency_threads} threads, ms)", ""]  # fmt: skip
    lines.append(format_markdown_table([{"step": k, "ms": v} for k, v in latency.latency_ms.items()],
                                       ["step", "ms"]))  # fmt: skip
    lines.append(
        f"Overhead (zoom + {latency.n_levels} unzooms) / uniform model: "
        f"**{100 * latency.overhead_fraction:.1f} %** (target <= 10 %); adaptive with its "
        f"saliency and grids: {100 * latency.overhead_fraction_adaptive:.1f} %; segmentation "
        f"(zoom + logits unzoom): {100 * latency.overhead_fraction_segmentation:.1f} %.\n"
    )
    arms = result.arms_run
    if "ap50" in summary.metrics:
        lines += ["## Detection (class-agnostic AP, %; sizes: sqrt(area) in original px)", ""]
        rows = []
        for arm in arms:
            row: dict[str, str | float | None] = {"arm": arm}
            for key in SUMMARY_METRICS["detection"]:
                row[key] = _pm(summary, key, arm)
            row["train s"] = summary.train_seconds.get(f"detection/{arm}")
            rows.append(row)
        lines.append(format_markdown_table(rows, ["arm", *SUMMARY_METRICS["detection"], "train s"]))
    if "miou" in summary.metrics:
        lines += ["## Segmentation (mIoU over background + 10 digits, %)", ""]
        rows = []
        for arm in arms:
            rows.append({"arm": arm, "miou": _pm(summary, "miou", arm),
                         "pixel accuracy": _pm(summary, "pixel_accuracy", arm),
                         "train s": summary.train_seconds.get(f"segmentation/{arm}")})  # fmt: skip
        lines.append(format_markdown_table(rows, ["arm", "miou", "pixel accuracy", "train s"]))
    if result.ablations:
        seed = result.seeds[0]
        lines += [f"## Ablations (LZU-fixed, seed {seed}, %)", ""]
        for task, keys in (("detection", _ABLATION_KEYS), ("segmentation", ("miou",))):
            runs = [a for a in result.ablations if a.task == task]
            if not runs:
                continue
            base = [r for r in result.runs if r.task == task and r.arm == "lzu_fixed"
                    and r.seed == seed]  # fmt: skip
            rows = (
                [{"lzu_fixed": "as above", **{k: 100 * base[0].metric(k) for k in keys}}]
                if base
                else []
            )
            rows += [{"lzu_fixed": ", ".join(f"{k}={v}" for k, v in (a.change or {}).items()),
                      **{k: 100 * a.metric(k) for k in keys}} for a in runs]  # fmt: skip
            lines.append(format_markdown_table(rows, [("lzu_fixed", f"{task}: LZU-fixed"), *keys]))
    gains = []
    small_uniform, small_fixed = (summary.stat("ap50_small", a) for a in ("uniform", "lzu_fixed"))
    if small_uniform is not None and small_fixed is not None:
        gain = small_fixed.mean - small_uniform.mean
        gains.append(f"LZU-fixed - uniform, AP50 small: {100 * gain:+.1f} points (target >= +3)")
    miou_uniform, miou_fixed = (summary.stat("miou", a) for a in ("uniform", "lzu_fixed"))
    if miou_uniform is not None and miou_fixed is not None:
        gain = miou_fixed.mean - miou_uniform.mean
        gains.append(f"LZU-fixed - uniform, mIoU: {100 * gain:+.2f} points (target > 0)")
    if gains:
        lines += ["## Against the targets", "", *(f"- {g}" for g in gains), ""]
    return "\n".join(lines) + "\n"
