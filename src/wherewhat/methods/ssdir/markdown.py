"""The SSDIR benchmark as tables: per-variant summary rows (the tour page's table too) and the
results markdown (``benchmarks/results/ssdir.md``)."""

from __future__ import annotations

import math
from typing import Any

from wherewhat.bench.tables import format_markdown_table, target_rows
from wherewhat.methods.ssdir.evaluation import size_bucket_names
from wherewhat.methods.ssdir.records import SSDIRBenchResult, VariantSummary

__all__ = ["FLOOR_MARGIN", "floor_rows", "floor_warnings", "ssdir_markdown", "summary_rows"]

# An arm's probe must beat its untrained encoder's by this much before arms are compared.
FLOOR_MARGIN = 0.05
_SCENES = {
    "default": "128 px, 1-9 digits of 12-64 px",
    "regime": "256 px, 1-9 digits of 28-112 px: at or above MNIST's resolution, as in the paper",
}

_ARM_COLUMNS = [
    ("variant", "arm"), ("seed", "seed"), ("ap50", "AP50"), ("ap", "AP50:95"),
    ("probe_accuracy", "probe acc"), ("probe_f1", "probe F1"),
    ("test_unmatched", "unmatched obj"), ("test_gt_missed", "missed digits"),
    ("recon_mse", "recon MSE"), ("train_minutes", "train min"), ("train_tflop", "TFLOP"),
    ("detector_loop_fraction_of_peak", "det loop / peak"),
    ("ssdir_loop_fraction_of_peak", "SSDIR loop / peak"),
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
            "arm": variant, "seeds": len(summary.seeds), "AP50": pm("ap50"),
            "AP50:95": pm("ap"), "probe accuracy": pm("probe_accuracy"),
            "probe precision": pm("probe_precision"), "probe recall": pm("probe_recall"),
            "probe F1": pm("probe_f1"), "unmatched (test)": pm("test_unmatched_fraction"),
            "recon MSE": pm("recon_mse"), "train min": pm("train_minutes"),
            "train TFLOP": pm("train_tflop"),
            "scenes/s b1": pm("scenes_per_s_batch1"), "scenes/s b32": pm("scenes_per_s_batch32"),
            "params (M)": summary.params / 1e6, "MMACs / scene": summary.macs_per_scene / 1e6,
        })  # fmt: skip
    return rows


def floor_rows(result: SSDIRBenchResult) -> list[dict[str, Any]]:
    """Floor rows of the summary table: the raw-pixel probe and each untrained encoder."""
    floors, rows = result.floors, []
    raw = floors.get("raw_pixels")
    if raw:
        rows.append({"arm": f"floor: raw {raw['side']}x{raw['side']} pixels of the "
                     "ground-truth boxes", "probe accuracy": f"{raw['accuracy']:.4g}"})  # fmt: skip
    for arm, values in (floors.get("untrained_encoder") or {}).items():
        rows.append({"arm": f"floor: {arm}, untrained encoder",
                     "probe accuracy": f"{values['probe_accuracy']:.4g}"})  # fmt: skip
    return rows


def floor_warnings(result: SSDIRBenchResult) -> list[str]:
    """A line per arm whose probe does not clear its untrained encoder's by
    :data:`FLOOR_MARGIN` (such an arm's differences from the others mean nothing)."""
    untrained = result.floors.get("untrained_encoder") or {}
    lines = []
    for arm, summary in result.summary.items():
        floor = (untrained.get(arm) or {}).get("probe_accuracy")
        probe = summary.mean("probe_accuracy")
        if floor is None:
            continue
        if not (math.isfinite(probe) and probe >= floor + FLOOR_MARGIN):
            lines.append(
                f"WARNING: arm {arm} does not clear its floor: probe {probe:.3f} against "
                f"{floor:.3f} untrained (margin {FLOOR_MARGIN}); do not compare it with others."
            )
    return lines


def _breakdown_rows(result: SSDIRBenchResult, kind: str, groups: list[str]) -> list[dict]:
    """Probe accuracy per size bucket (``kind="size"``) or pyramid level of each arm, with the
    per-class detector's own digit accuracy and the raw-pixel floor per bucket."""
    rows = []
    raw = result.floors.get("raw_pixels")
    if kind == "size" and raw:
        row = {"arm": "floor: raw pixels", "detector digit acc": "-",
               "detector digit acc, train digits": "-"}  # fmt: skip
        for g in groups:
            value, n = raw.get(f"accuracy_size_{g}", math.nan), raw.get(f"n_size_{g}", 0)
            row[f"{g} (n)"] = f"{value:.3f} ({n})" if math.isfinite(value) else "-"
        rows.append(row)
    for arm, summary in result.summary.items():
        row = {"arm": arm}
        for key, column in (
            ("detector_label_accuracy", "detector digit acc"),
            ("detector_label_accuracy_train", "detector digit acc, train digits"),
        ):
            accuracy = summary.mean(key)
            row[column] = f"{accuracy:.3f}" if math.isfinite(accuracy) else "-"
        for g in groups:
            value, n = (
                summary.mean(f"probe_accuracy_{kind}_{g}"),
                summary.mean(f"probe_n_{kind}_{g}"),
            )
            row[f"{g} (n)"] = f"{value:.3f} ({n:.0f})" if math.isfinite(value) else "-"
        rows.append(row)
    return rows


def _regime_lines(block: dict[str, Any]) -> list[str]:
    """The faithful arm of the regime run (a default-scene run's ``regime`` block) as a short
    table with its floors."""

    def number(key: str) -> str:
        value, std = block.get(key), block.get(f"{key}_std")
        if value is None:
            return "-"
        several = std is not None and len(block["seeds"]) > 1
        return f"{value:.4g} ± {std:.2g}" if several else f"{value:.4g}"

    rows = [
        {"arm": f"{block['arm']} (seeds {block['seeds']})", "probe accuracy": number(
            "probe_accuracy"), "recon MSE": number("recon_mse"),
         "detector digit acc": number("detector_label_accuracy"),
         "detector digit acc, train digits": number("detector_label_accuracy_train"),
         "AP50": number("ap50")},
        {"arm": "floor: raw pixels of the ground-truth boxes",
         "probe accuracy": number("raw_pixel_floor")},
        {"arm": "floor: untrained encoder", "probe accuracy": number("untrained_encoder_floor")},
    ]  # fmt: skip
    return [
        f"The faithful arm, in the paper's regime ({_SCENES['regime']}; the whole run in "
        f"{block['results_file']}), which the headline's `probe_accuracy_per_class` and "
        "`recon_mse_per_class` report:",
        "",
        format_markdown_table(rows, list(rows[0])),
    ]


def _table(rows: list[dict[str, Any]]) -> str:
    return format_markdown_table(rows, list(rows[0])) if rows else "(no arm)"


def _levels(result: SSDIRBenchResult) -> list[str]:
    found = {k.removeprefix("probe_accuracy_level_") for a in result.arms for k in a.metrics
             if k.startswith("probe_accuracy_level_")}  # fmt: skip
    return sorted(found, key=int)


def ssdir_markdown(result: SSDIRBenchResult) -> str:
    """The benchmark's markdown: summary per variant, targets, every arm, dedup ablation."""
    s = result.settings
    document = result.to_json()
    machine = result.machine
    lines = [
        f"# SSDIR on scattered MNIST ({'quick' if s.quick else 'full'} run, {s.scenes} scenes)",
        "",
        f"{s.n_train:,} train / {s.n_test:,} test scenes ({_SCENES.get(s.scenes, s.scenes)}), "
        f"seeds {result.seeds}. AP is class-agnostic COCO AP of SSDIR's objects; the probe is "
        f"a logistic regression on train-scene z_what, objects labelled by their best "
        f"ground-truth IoU >= {s.min_iou} (unmatched objects left out and counted); "
        "reconstruction MSE per pixel on [0, 1]; speed = SSDIR forward (detector + encoders + "
        f"decoder + merge), torch, {s.threads} threads. Training minutes: detector + SSDIR "
        "(validation included); TFLOP: FLOPs of a training step (forward + backward; matmul "
        "and convolution only) x steps, detector + SSDIR; loop / peak: those FLOPs per second "
        "of the training loop (validation included, so a lower bound) as a fraction of the "
        "measured matrix-product peak at the same thread count (the bfloat16 one under "
        f"bf16 mixed precision; this run: {s.precision}). Mean ± sample std over seeds.",
        "",
    ]
    summary = summary_rows(result)
    lines.append(format_markdown_table([*summary, *floor_rows(result)], list(summary[0])))
    warnings = floor_warnings(result)
    lines += ["", *warnings] if warnings else []
    if result.regime:
        lines += ["", *_regime_lines(result.regime)]
    targets = target_rows(document["targets"], document)
    lines += ["", format_markdown_table(targets, ["quantity", "target", "measured", "met"])]
    sizes = size_bucket_names(s.size_edges)
    lines += [
        "",
        "Probe accuracy per size bucket (longer side of the matched digit's box, px; mean over "
        "seeds, n = test objects), next to the per-class detector's own digit accuracy on the "
        "same objects (a probe cannot be credited above what its detector already knows) and "
        "on the probe's train scenes, whose digits the detector trained on (the gap between "
        "the two is how far the detector generalizes from its digit pool).",
        "",
        _table(_breakdown_rows(result, "size", sizes)),
    ]
    levels = _levels(result)
    if levels:
        lines += [
            "",
            "Probe accuracy per pyramid level of the object's anchor (0 = finest):",
            "",
            _table(_breakdown_rows(result, "level", levels)),
        ]
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
