"""The SSDIR benchmark as tables: per-variant summary rows (the tour page's table too) and the
results markdown (``benchmarks/results/ssdir.md``)."""

from __future__ import annotations

import math
from typing import Any

from wherewhat.bench.tables import format_markdown_table, target_rows
from wherewhat.methods.ssdir.records import SSDIRBenchResult, VariantSummary

__all__ = ["ssdir_markdown", "summary_rows"]

_ARM_COLUMNS = [
    ("variant", "detector"), ("seed", "seed"), ("ap50", "AP50"), ("ap", "AP50:95"),
    ("probe_accuracy", "probe acc"), ("probe_f1", "probe F1"),
    ("test_unmatched", "unmatched obj"), ("test_gt_missed", "missed digits"),
    ("recon_mse", "recon MSE"), ("train_minutes", "train min"),
    ("scenes_per_s_batch1", "scenes/s b1"), ("scenes_per_s_batch32", "scenes/s b32"),
    ("params", "params"), ("macs_per_scene", "MACs/scene"),
]  # fmt: skip


def _plus_minus(summary: VariantSummary, key: str) -> str:
    """ "mean ± std" over seeds ("mean" for one seed, "-" when not measured)."""
    mean, std = summary.mean(key), summary.std(key)
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.4g} ± {std:.2g}" if len(summary.seeds) > 1 else f"{mean:.4g}"


def summary_rows(result: SSDIRBenchResult) -> list[dict[str, Any]]:
    """One table row per detector variant: the headline metrics as "mean ± std" text, sizes."""
    rows = []
    for variant, summary in result.summary.items():

        def pm(key: str, summary: VariantSummary = summary) -> str:
            return _plus_minus(summary, key)

        rows.append({
            "detector": variant, "seeds": len(summary.seeds), "AP50": pm("ap50"),
            "AP50:95": pm("ap"), "probe accuracy": pm("probe_accuracy"),
            "probe precision": pm("probe_precision"), "probe recall": pm("probe_recall"),
            "probe F1": pm("probe_f1"), "unmatched (test)": pm("test_unmatched_fraction"),
            "recon MSE": pm("recon_mse"), "train min": pm("train_minutes"),
            "scenes/s b1": pm("scenes_per_s_batch1"), "scenes/s b32": pm("scenes_per_s_batch32"),
            "params (M)": summary.params / 1e6, "MMACs / scene": summary.macs_per_scene / 1e6,
        })  # fmt: skip
    return rows


def ssdir_markdown(result: SSDIRBenchResult) -> str:
    """The benchmark's markdown: summary per variant, targets, every arm, dedup ablation."""
    s = result.settings
    document = result.to_json()
    machine = result.machine
    lines = [
        f"# SSDIR on scattered MNIST ({'quick' if s.quick else 'full'} run)",
        "",
        f"{s.n_train:,} train / {s.n_test:,} test scenes (128 px, 1-9 digits of 12-64 px), "
        f"seeds {result.seeds}. AP is class-agnostic COCO AP of SSDIR's objects; the probe is "
        f"a logistic regression on train-scene z_what, objects labelled by their best "
        f"ground-truth IoU >= {s.min_iou} (unmatched objects left out and counted); "
        "reconstruction MSE per pixel on [0, 1]; speed = SSDIR forward (detector + encoders + "
        f"decoder + merge), torch, {s.threads} threads. Training minutes: detector + SSDIR "
        "(validation included). Mean ± sample std over seeds.",
        "",
    ]
    summary = summary_rows(result)
    lines.append(format_markdown_table(summary, list(summary[0])))
    targets = target_rows(document["targets"], document)
    lines += ["", format_markdown_table(targets, ["quantity", "target", "measured", "met"])]
    lines += ["", "Every arm:", "", format_markdown_table(document["arms"], _ARM_COLUMNS)]
    if result.dedup_ablation:
        ablation = document["dedup_ablation"]
        lines += [
            "",
            "De-duplication ablation (SSDIR trained and rendered with each mode; probe and AP "
            "always on threshold + NMS objects):",
            "",
            format_markdown_table(ablation, list(ablation[0])),
        ]
    lines += [
        "",
        f"Machine: {machine.get('cpu', '?')}, load average "
        f"{machine.get('load_average_1_5_15min', '?')}. "
        f"Run time {result.seconds / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)
