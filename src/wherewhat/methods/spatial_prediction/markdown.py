"""The Spatial Prediction benchmark as text: per-arm rows and the results file's markdown."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from wherewhat.bench.tables import format_markdown_table, target_rows
from wherewhat.methods.spatial_prediction.records import ArmSummary, BenchResult
from wherewhat.methods.spatial_prediction.settings import RANDOM_INIT

__all__ = ["bench_markdown", "summary_rows", "validity_banner"]

# How the untrained network's row is labelled in the tables.
RANDOM_INIT_LABEL = "random init"

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


def summary_rows(
    summary: Mapping[str, ArmSummary], valid: Collection[str] | None = None
) -> list[dict[str, str | int]]:
    """One row per arm: probes (accuracy in %), "where" read-out, timing and compute; the
    random-init row first, labelled "random init". With ``valid`` (the arms that cleared the
    validity bar) a ``valid`` column says "yes" or "**NO**" for every trained arm."""
    rows: list[dict[str, str | int]] = []
    order = sorted(summary, key=lambda name: name != RANDOM_INIT)  # stable: the rest in order
    for name in order:
        row = summary[name]
        label = RANDOM_INIT_LABEL if name == RANDOM_INIT else name
        validity = {}
        if valid is not None:
            validity["valid"] = (
                "-" if name == RANDOM_INIT else ("yes" if name in valid else "**NO**")
            )
        rows.append({
            "arm": label, **validity, "seeds": len(row.seeds),
            "linear probe %": _pm(row, "linear_probe", 100), "k-NN %": _pm(row, "knn", 100),
            "corrupted %": _pm(row, "corruption_accuracy", 100),
            "reorder 2x2 %": _pm(row, "reorder_accuracy_2x2", 100),
            "reorder 3x3 %": _pm(row, "reorder_accuracy_3x3", 100),
            "SP loss / zero": _pm(row, "sp_error_ratio", 1, 3),
            "own head: SP loss / zero": _pm(row, "native_ratio", 1, 3),
            "own head: reorder 2x2 %": _pm(row, "native_reorder_2x2", 100),
            "s / epoch": _pm(row, "epoch_seconds", 1, 0),
            "GFLOP / step": _pm(row, "step_gflop", 1, 1),
            "% of peak": _pm(row, "step_fraction_of_peak", 100, 0),
        })  # fmt: skip
    return rows


def validity_banner(result: BenchResult) -> str:
    """Loud lines naming every arm below the validity bar (linear probe >= random init +
    margin) and by how much, and every face arm that does not beat its untrained backbone;
    empty when every arm cleared its bar."""
    s = result.settings
    floor = result.random_init_linear
    below = [name for name in result.linear_probe_above_random if name not in result.valid_arms]
    faces = [n for n in dict.fromkeys(a.arm for a in result.face_arms)
             if n not in result.valid_face_arms]  # fmt: skip
    if not below and not faces:
        return ""
    bar = "!" * 78
    lines = [bar]
    if below:
        lines.append(
            f"!!! BELOW THE VALIDITY BAR: linear probe >= random init {100 * floor:.1f} % + "
            f"{100 * s.valid_margin:.0f} points = {100 * (floor + s.valid_margin):.1f} %"
        )
        for name in below:
            above = result.linear_probe_above_random[name]
            short = 100 * s.valid_margin - above
            lines.append(f"!!!   {name}: {100 * result.summary[name].mean('linear_probe'):.1f} % "
                         f"({above:+.1f} points over random init, {short:.1f} short)")  # fmt: skip
    if faces:
        lines.append(f"!!! FACE ARMS NOT BEATING THE UNTRAINED BACKBONE (NME at least "
                     f"{s.face_valid_margin:g} lower): {', '.join(faces)}")  # fmt: skip
    lines.append("!!! No gain is read from a base arm below its bar (see gain_notes).")
    lines.append(bar)
    return "\n".join(lines)


def _robustness_rows(summary: Mapping[str, ArmSummary]) -> list[dict[str, str | float]]:
    rows: list[dict[str, str | float]] = []
    for name, row in summary.items():
        label = RANDOM_INIT_LABEL if name == RANDOM_INIT else name
        rows.append({"arm": label, **{k: 100 * v for k, v in row.robustness.items()
                                     if math.isfinite(v)}})  # fmt: skip
    return rows


def _compute_rows(result: BenchResult) -> list[dict[str, float | int | str]]:
    rows: list[dict[str, float | int | str]] = []
    for name, row in result.summary.items():
        if name == RANDOM_INIT:
            continue
        rows.append({
            "arm": name, "epochs": result.epochs,
            "s / epoch": row.mean("epoch_seconds"), "CPU s / epoch": row.mean("epoch_cpu_seconds"),
            "GFLOP / step": row.mean("step_gflop"), "train TFLOP": row.mean("train_tflop"),
            "% of peak": 100 * row.mean("step_fraction_of_peak"),
            "train min": row.mean("train_minutes"), "eval min": row.mean("eval_minutes"),
        })  # fmt: skip
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
        f"{t['optimizer']} lr {t['lr']:g}, precision {s.precision}, same images, order and "
        "epochs for every arm of a seed; "
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
    floor = result.random_init_linear
    lines += [
        f"Validity: an arm counts only when its mean linear probe is >= the random-init row "
        f"({100 * floor:.1f} %: the untrained network of each seed, same architecture and "
        f"probes) + {100 * s.valid_margin:.0f} points; SP's gain over a base method is read "
        f"only when the base arm is valid. Valid arms: "
        f"{', '.join(result.valid_arms) if result.valid_arms else 'none'}.",
        "",
    ]
    banner = validity_banner(result)
    if banner:
        lines += ["```", banner, "```", ""]
    rows = summary_rows(result.summary, result.valid_arms)
    lines.append(format_markdown_table(rows, list(rows[0])))
    lines += ["", format_markdown_table(target_rows(result.targets, result.to_dict()),
                                        ["quantity", "target", "measured", "met"])]  # fmt: skip
    if result.gain_notes:
        lines += [""] + [f"- `{key}`: {note}" for key, note in result.gain_notes.items()]
    compute = _compute_rows(result)
    if compute:
        lines += ["", "Compute per arm (mean over seeds; step = forward + backward of one "
                  "batch, FLOPs counted by torch.utils.flop_counter; peak = this machine's "
                  "measured matmul GFLOP/s at the same threads in the arm's precision: "
                  "bfloat16 for bf16-mixed, which AMX units run about 8x faster than "
                  "float32):", "",
                  format_markdown_table(compute, list(compute[0]))]  # fmt: skip
    for rows, what in ((result.lambda_sweep, "Lambda sweep"),
                       (result.sp_local_size_sweep, "SP local view size")):  # fmt: skip
        if rows:
            lines += [
                "",
                f"{what} (SimCLR, seed {rows[0]['seed']}; delta = linear probe minus SimCLR's, "
                "points, read only when SimCLR is valid):",
                "",
                format_markdown_table(rows, list(rows[0])),
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
            "",
            f"Face arms that beat their untrained backbone's NME by >= {s.face_valid_margin:g}: "
            f"{', '.join(result.valid_face_arms) if result.valid_face_arms else 'none'}.",
        ]
    lines += [
        "",
        f"Machine: {machine.get('cpu', '?')}, load average "
        f"{machine.get('load_average_1_5_15min', '?')}; torch threads {result.torch_threads}, "
        f"{s.num_workers} loader worker(s), {s.parallel} arm(s) at a time. Run time "
        f"{result.seconds / 60:.1f} min"
        + (
            f" (with the merged runs {result.total_seconds / 60:.1f} min; merged from "
            f"{', '.join(result.merged_from)})"
            if result.merged_from
            else ""
        )
        + ".",
        "",
    ]
    return "\n".join(lines)
