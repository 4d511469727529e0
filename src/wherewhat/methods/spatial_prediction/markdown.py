"""The Spatial Prediction benchmark as text: per-arm rows and the results file's markdown."""

from __future__ import annotations

import math
from collections.abc import Mapping

from wherewhat.bench.tables import format_markdown_table, target_rows
from wherewhat.methods.spatial_prediction.records import ArmSummary, BenchResult

__all__ = ["bench_markdown", "summary_rows"]

FACE_COLUMNS = [
    "arm", "seed", "landmark_nme", "landmark_nme_map", "landmark_nme_random_init",
    "landmark_nme_map_random_init", "landmark_nme_mean_shape", "n_train_faces", "n_test_faces",
    "train_minutes",
]  # fmt: skip


def _pm(row: ArmSummary, key: str, scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± std`` over the seeds (the mean alone for one seed), "-" without a value."""
    mean, std = row.mean(key), row.std(key)
    if not math.isfinite(mean):
        return "-"
    if len(row.seeds) > 1 and math.isfinite(std):
        return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"
    return f"{scale * mean:.{digits}f}"


def summary_rows(summary: Mapping[str, ArmSummary]) -> list[dict[str, str | int]]:
    """One row per arm: probes (accuracy in %), "where" read-out, timing."""
    rows: list[dict[str, str | int]] = []
    for name, row in summary.items():
        rows.append({
            "arm": name, "seeds": len(row.seeds),
            "linear probe %": _pm(row, "linear_probe", 100), "k-NN %": _pm(row, "knn", 100),
            "corrupted %": _pm(row, "corruption_accuracy", 100),
            "reorder 2x2 %": _pm(row, "reorder_accuracy_2x2", 100),
            "reorder 3x3 %": _pm(row, "reorder_accuracy_3x3", 100),
            "SP loss / zero": _pm(row, "sp_error_ratio", 1, 3),
            "own head: SP loss / zero": _pm(row, "native_ratio", 1, 3),
            "own head: reorder 2x2 %": _pm(row, "native_reorder_2x2", 100),
            "s / epoch": _pm(row, "epoch_seconds", 1, 0),
        })  # fmt: skip
    return rows


def _robustness_rows(summary: Mapping[str, ArmSummary]) -> list[dict[str, str | float]]:
    rows: list[dict[str, str | float]] = []
    for name, row in summary.items():
        rows.append({"arm": name, **{k: 100 * v for k, v in row.robustness.items()
                                     if math.isfinite(v)}})  # fmt: skip
    return rows


def bench_markdown(result: BenchResult) -> str:
    """The benchmark's markdown: per-arm table, targets, lambda sweep, robustness, faces."""
    s = result.settings
    t = s.task_args
    machine = result.machine
    lines = [
        f"# Spatial Prediction on CIFAR-10 ({'quick' if result.quick else 'full'} run)",
        "",
        f"Pre-training: {t['backbone']} width {t['backbone_width']}, {result.epochs} epochs "
        f"of {s.train_images or 20000:,} training images (batch {s.batch_size}), "
        f"{t['optimizer']} lr {t['lr']:g}, same images, order and epochs for every arm of a seed; "
        f"SP: lambda {s.sp_lambda:g}, {t['sp_pairs']} pair(s) of {t['sp_local_size']} px "
        f"local views per image. SimCLR seeds {result.seeds}, BYOL seeds "
        f"{result.byol_seeds}. Probes on frozen pooled features: logistic regression "
        "(C = 1, standardised) and k-NN (cosine, k = 20, exp weights) on "
        f"{s.test_images or 10000:,} test images; corrupted = the same linear probe on "
        f"{s.corruption_images:,} test images, mean over noise / blur / contrast at 3 "
        "severities; 'where' = an SP head fitted on frozen features of training-image view pairs "
        "(same protocol for every arm), scored on held-out test pairs (loss relative to "
        "predicting zero: 1 = no position information) and by patch re-ordering (chance 25 % / "
        "11 %). Mean ± sample std over seeds.",
        "",
    ]
    rows = summary_rows(result.summary)
    lines.append(format_markdown_table(rows, list(rows[0])))
    lines += ["", format_markdown_table(target_rows(result.targets, result.to_dict()),
                                        ["quantity", "target", "measured", "met"])]  # fmt: skip
    if result.lambda_sweep:
        lines += [
            "",
            f"Lambda sweep (SimCLR, seed {result.seeds[0]}):",
            "",
            format_markdown_table(result.lambda_sweep, list(result.lambda_sweep[0])),
        ]
    robustness = _robustness_rows(result.summary)
    if robustness:
        lines += ["", "Linear-probe accuracy (%) per corruption and severity:", "",
                  format_markdown_table(robustness, list(robustness[0]))]  # fmt: skip
    if result.face_arms:
        lines += [
            "",
            f"Landmark probe: SimCLR (+SP) pre-trained on {s.face_size} px 68-point face "
            f"crops ({s.face_epochs} epochs, no labels), then ridge regression from frozen "
            "features (pooled, or the flattened last feature map) to the landmarks; "
            "inter-ocular NME on faces of held-out photos (split by photo name, seed "
            f"{s.face_split_seed}). Mean over seeds: {result.landmark_probe_nme}.",
            "",
            format_markdown_table([a.to_dict() for a in result.face_arms], FACE_COLUMNS),
        ]
    lines += [
        "",
        f"Machine: {machine.get('cpu', '?')}, load average "
        f"{machine.get('load_average_1_5_15min', '?')}; torch threads {result.torch_threads}, "
        f"{s.num_workers} loader worker(s). Run time {result.seconds / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)
