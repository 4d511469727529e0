"""The LZU benchmark's markdown report (``benchmarks/results/lzu.md``) from its typed result."""

from __future__ import annotations

import math

from wherewhat.bench.tables import format_markdown_table
from wherewhat.methods.lzu.experiment import curves_by_arm
from wherewhat.methods.lzu.records import BenchSummary, LZUBenchResult, RunRecord

__all__ = ["lzu_markdown"]

_DETECTION_KEYS = (
    "ap50", "ap50_small_band", "ap50_small_outside", "ap50_outside", "ap50_large", "ap",
)  # fmt: skip
_ABLATION_KEYS = ("ap50", "ap50_small_band", "ap50_small_outside", "ap50_outside", "ap50_large")
_SEGMENTATION_KEYS = ("miou", "small_iou", "pixel_accuracy")


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
    y0, y1 = (scenes.band_center - scenes.band_width, scenes.band_center + scenes.band_width)
    lines = [
        f"# LZU benchmark{' (quick)' if s.quick else ''}",
        "",
        f"Street scenes {scenes.image_size[0]} x {scenes.image_size[1]} ({scenes.layout} "
        f"layout: digits {scenes.min_digit_size}-{scenes.max_digit_size} px growing with "
        f"the distance from the horizon; band: rows {y0:.2f}-{y1:.2f} H), {s.n_train} train / "
        f"{s.n_test} test, input {s.input_size[0]} x {s.input_size[1]} (uniform_2x: twice "
        f"that; every arm has the same head grid on the scene), seeds "
        f"{', '.join(str(x) for x in result.seeds)} (uniform_2x: "
        f"{', '.join(str(x) for x in s.seeds_2x)}); {s.detection_steps} detection / "
        f"{s.segmentation_steps} segmentation steps of batch {s.batch_size} / "
        f"{s.segmentation_batch_size}. Mean ± std over "
        f"seeds; {result.seconds / 60:.1f} min of benchmark time.",
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
    lines += _magnification_lines(result)
    arms = [a for a in result.arms_run if any(r.arm == a for r in result.runs)]
    valid = set(result.valid_arms())
    for task, title, keys in (
        ("detection", "Detection (class-agnostic AP, %; sizes: sqrt(area) in original px; "
         "band: box centre within the horizon band)", _DETECTION_KEYS),
        ("segmentation", "Segmentation (%; small IoU: digit-class IoU over the pixels of "
         "digits <= 24 px)", _SEGMENTATION_KEYS),
    ):  # fmt: skip
        if not any(r.task == task for r in result.runs):
            continue
        lines += [f"## {title}", ""]
        rows = []
        floor = result.floor(task)
        if floor is not None:
            rows.append({"arm": "untrained (floor)", **{k: _one(floor, k) for k in keys}})
        for arm in arms:
            runs = [r for r in result.runs if r.task == task and r.arm == arm]
            if not runs:
                continue
            row: dict[str, str | float | None] = {
                "arm": arm if f"{task}/{arm}" in valid else f"{arm} (below floor!)",
                **{k: _pm(summary, k, arm) for k in keys},
                "seeds": len(runs),
                "train s": summary.train_seconds.get(f"{task}/{arm}"),
                "% of peak": 100 * sum(r.step_fraction_of_peak for r in runs) / len(runs),
                "TFLOP": sum(r.train_tflop for r in runs) / len(runs),
            }
            rows.append(row)
        lines.append(format_markdown_table(
            rows, ["arm", *keys, "seeds", "train s", "% of peak", "TFLOP"]
        ))  # fmt: skip
        metric, margin = result.floor_margin.get(task, ("", 0.0))
        lines.append(
            f"An arm is read only if every seed's {metric} is >= the untrained floor + "
            f"{100 * margin:.0f} points. % of peak: training step FLOPs / step time against "
            f"the measured matmul peak at {result.runs[0].torch_threads} threads.\n"
        )
        oracle = [r for r in result.runs if r.task == task and r.arm == "lzu_adaptive"]
        okeys = [k for k in keys if f"oracle_{k}" in (oracle[0].metrics if oracle else {})]
        if okeys:
            lines.append(
                "LZU-adaptive with ground-truth boxes as its saliency (the oracle; the row "
                "above uses the uniform model's detections): "
                + ", ".join(f"{k} {_mean_pct(oracle, 'oracle_' + k)}" for k in okeys)
                + ".\n"
            )
    lines += _gain_lines(result)
    lines += _curve_lines(result)
    lines += _ablation_lines(result)
    checks = result.target_checks()
    if checks:
        lines += ["## Against the targets", ""]
        for name, check in checks.items():
            verdict = "met" if check["met"] else "**missed**"
            lines.append(f"- {name}: {check['value']:.4g} (target {check['target']}): {verdict}")
        lines.append("")
    if result.commands:
        lines += ["## Commands merged into this file", "",
                  *(f"    {c}" for c in result.commands), ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def _one(record: RunRecord, key: str) -> str:
    value = record.metrics.get(key)
    return "-" if not isinstance(value, float) or math.isnan(value) else f"{100 * value:.1f}"


def _mean_pct(runs: list[RunRecord], key: str) -> str:
    values = [r.metric(key) for r in runs if math.isfinite(r.metric(key))]
    return f"{100 * sum(values) / len(values):.1f}" if values else "-"


def _magnification_lines(result: LZUBenchResult) -> list[str]:
    if not result.magnification:
        return []
    rows = [{"saliency": name, "in band": m["band"], "rows": m["band_y"],
             "columns": m["band_x"], "outside band": m["outside"],
             "small boxes in / out": f"{m['n_band']:.0f} / {m['n_outside']:.0f}"}
            for name, m in result.magnification.items()]  # fmt: skip
    return [
        "## Magnification of small digits (zoomed size / plainly resized size)",
        "",
        format_markdown_table(
            rows, ["saliency", "in band", "rows", "columns", "outside band", "small boxes in / out"]
        ),
    ]


def _gain_lines(result: LZUBenchResult) -> list[str]:
    gains = result.gains()
    if not gains:
        return []
    seeds = sorted({int(s) for g in gains.values() for s in g["per_seed"]})
    rows = []
    for name, gain in gains.items():
        row: dict[str, str | float | None] = {"LZU-fixed - uniform": name}
        for seed in seeds:
            value = gain["per_seed"].get(str(seed))
            row[f"seed {seed}"] = None if value is None else f"{100 * value:+.1f}"
        row["mean"] = f"{100 * gain['mean']:+.1f}"
        rows.append(row)
    return [
        "## LZU-fixed minus uniform, per seed (points)",
        "",
        format_markdown_table(rows, ["LZU-fixed - uniform", *(f"seed {s}" for s in seeds), "mean"]),
    ]


def _curve_lines(result: LZUBenchResult) -> list[str]:
    curves = curves_by_arm(result.runs)
    if not curves:
        return []
    lines = ["## Learning curves (mean over seeds, %)", ""]
    for metric, by_arm in curves.items():
        steps = sorted({s for points in by_arm.values() for s, _ in points})
        rows = [{"arm": arm, **{f"step {s}": 100 * v for s, v in points}}
                for arm, points in by_arm.items()]  # fmt: skip
        lines += [f"{metric}:", "", format_markdown_table(
            rows, ["arm", *(f"step {s}" for s in steps)])]  # fmt: skip
    return lines


def _ablation_lines(result: LZUBenchResult) -> list[str]:
    if not result.ablations:
        return []
    seed = result.ablations[0].seed
    lines = [f"## Ablations (LZU-fixed, seed {seed}, %)", ""]
    for task, keys in (("detection", _ABLATION_KEYS), ("segmentation", _SEGMENTATION_KEYS[:2])):
        runs = [a for a in result.ablations if a.task == task]
        if not runs:
            continue
        base = [r for r in result.runs if r.task == task and r.arm in ("uniform", "lzu_fixed")
                and r.seed == seed]  # fmt: skip
        rows = [{"run": f"{r.arm} (main grid)", **{k: 100 * r.metric(k) for k in keys}}
                for r in base]  # fmt: skip
        rows += [{"run": "lzu_fixed, " + ", ".join(f"{k}={v}" for k, v in (a.change or {}).items()),
                  **{k: 100 * a.metric(k) for k in keys}} for a in runs]  # fmt: skip
        lines.append(format_markdown_table(rows, [("run", f"{task}"), *keys]))
    return lines
