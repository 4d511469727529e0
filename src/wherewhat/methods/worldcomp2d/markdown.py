"""The landmark benchmark's results as markdown (``benchmarks/results/worldcomp2d.md``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from wherewhat.bench.tables import format_markdown_table
from wherewhat.methods.worldcomp2d.records import LandmarkBenchResult, TrainingRecord

__all__ = ["landmark_markdown", "training_markdown"]


def training_markdown(training: Mapping[str, TrainingRecord]) -> str:
    """The training runs as a markdown table (trained in this process or reused, and when)."""
    rows = [
        {
            "run": name,
            **record.to_dict(),
            "reused": "reused" if record.reused else "trained now",
        }
        for name, record in training.items()
    ]
    return format_markdown_table(
        rows,
        [
            ("run", "run"),
            ("budget_minutes", "budget min"),
            ("minutes", "minutes"),
            ("seconds_per_step", "s/step"),
            ("steps_per_epoch", "steps/epoch"),
            ("epochs", "epochs"),
            ("schedule_epochs", "schedule"),
            ("fraction_of_schedule", "share of schedule"),
            ("steps", "steps"),
            ("step_gflop", "GFLOP/step"),
            ("train_tflop", "TFLOP"),
            ("step_fraction_of_peak", "fraction of peak"),
            ("trained_at", "trained at"),
            ("reused", "this run"),
        ],
    )  # fmt: skip


def landmark_markdown(result: LandmarkBenchResult, command: str | None = None) -> str:
    """The results as markdown: models, ratios, targets, split, training."""
    rows = [
        {
            "model": name,
            "params": m.costs.params / 1e6,
            "macs": m.costs.macs / 1e6,
            "nme": 100 * m.accuracy.nme,
            "fr10": 100 * m.accuracy.fr10,
            "auc10": m.accuracy.auc10,
            "ort_faces_per_s_1thread": m.costs.ort_faces_per_s_1thread,
            "ort_faces_per_s_2threads": m.costs.ort_faces_per_s_2threads,
            "torch_faces_per_s_1thread": m.costs.torch_faces_per_s_1thread,
            "train_minutes": m.train_minutes,
            "train_tflop": m.train_tflop,
        }
        for name, m in result.models.items()
    ]
    floor = result.floor
    if floor is not None:
        rows.insert(0, {"model": "mean shape (floor)", "nme": 100 * floor.nme,
                        "fr10": 100 * floor.fr10, "auc10": floor.auc10})  # fmt: skip
    mode = "quick" if result.settings.quick else "full"
    lines = [f"# Face landmarks: WorldComp2D and baselines ({mode} run)", ""]
    if command:
        lines += [f"`{command}`", ""]
    split = result.split
    if split is not None:
        lines += [
            f"Validation: {split.val_faces} faces of {split.val_photos} photos; training: "
            f"{split.train_faces} faces of {split.train_photos} photos ({split.how}). "
            "NME is inter-ocular (outer eye corners) in original-image pixels, in %; FR@10 in "
            "%; speeds are batch-1 median faces/s from a 256 px face crop to landmarks.",
            "",
        ]
    lines += [
        format_markdown_table(
            rows,
            [
                ("model", "model"),
                ("params", "params (M)"),
                ("macs", "MMACs"),
                ("nme", "NME %"),
                ("fr10", "FR@10 %"),
                ("auc10", "AUC@10"),
                ("ort_faces_per_s_1thread", "ORT 1 thr faces/s"),
                ("ort_faces_per_s_2threads", "ORT 2 thr faces/s"),
                ("torch_faces_per_s_1thread", "torch 1 thr faces/s"),
                ("train_minutes", "train min"),
                ("train_tflop", "train TFLOP"),
            ],
        ),  # fmt: skip
        "Ratios to each baseline (baseline / model for size and work: > 1 means the model is "
        "smaller; model / baseline for NME: < 1 means more accurate; ORT speed model / baseline):",
        "",
        format_markdown_table(
            [dataclasses.asdict(ratio) for ratio in result.ratios],
            [
                ("model", "model"),
                ("baseline", "baseline"),
                ("params_baseline_over_model", "params x fewer"),
                ("macs_baseline_over_model", "MACs x fewer"),
                ("nme_model_over_baseline", "NME ratio"),
                ("ort_1thread_speed_model_over_baseline", "speed x (ORT 1 thr)"),
            ],
        ),  # fmt: skip
        "The issue's targets:",
        "",
        format_markdown_table(
            [dataclasses.asdict(target) for target in result.targets],
            [("target", "target"), ("value", "measured"), ("needed", "needed"), ("met", "met")],
        ),
    ]
    lines += _floor_lines(result) + _refiner_lines(result) + _ablation_lines(result)
    machine = result.machine
    lines += [
        "Training runs (WorldComp2D's stages run their schedule, or the epochs of it that fit "
        "their cap; the baselines the epochs that fill their budget; both from a measured step "
        "time, and `max_time` stops a run at its budget in any case). A reused run was trained by an earlier invocation with the same "
        f"settings (fingerprint checked) and loaded from `{result.trained_dir}`; its minutes "
        "are the recorded ones:",
        "",
        training_markdown(result.training),
        f"Machine: {machine.get('cpu')}, load average at the end "
        f"{machine.get('load_average_1_5_15min')}; total {result.seconds / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


def _refiner_lines(result: LandmarkBenchResult) -> list[str]:
    decision = result.refiner
    if not decision:
        return []
    verdict = "stays on" if decision["on_default_path"] else "leaves"
    return [
        f"Refiner: NME gain {100 * decision['nme_gain']:+.3f} points (needed "
        f"{100 * decision['min_gain']:.2f}), so it {verdict} the default path; shipped model "
        f"`{decision['default_model']}` (ORT 1 thread: {decision['speed_with_refiner']:.0f} "
        f"faces/s with the refiner, {decision['speed_without_refiner']:.0f} without).",
        "",
    ]


def _ablation_lines(result: LandmarkBenchResult) -> list[str]:
    lines = []
    if result.ablations:
        rows = [{"variant": name, "nme": 100 * value} for name, value in result.ablations.items()]
        lines += [
            "Ablations (validation NME without the refiner; `worldcomp2d_no_refiner` is the "
            "benchmarked model: walk jitter, one pair per face):",
            "",
            format_markdown_table(rows, [("variant", "variant"), ("nme", "NME %")]),
        ]
    if result.encoder_curve:
        rows = [{**row, "nme": 100 * row["nme"]} for row in result.encoder_curve]
        lines += [
            f"Encoder length: a localizer probe ({result.settings.probe_epochs} epochs on a "
            f"bank of {result.settings.probe_bank} augmentations) on encoder snapshots:",
            "",
            format_markdown_table(
                rows,
                [
                    ("encoder_epoch", "encoder epochs"),
                    ("encoder_fraction", "share"),
                    ("nme", "probe NME %"),
                ],
            ),  # fmt: skip
        ]
    return lines


def _floor_lines(result: LandmarkBenchResult) -> list[str]:
    if result.floor is None:
        return []
    margin = result.settings.floor_margin
    bar = 100 * (1 - margin) * result.floor.nme
    below = [name for name in result.models if name not in result.valid_models]
    lines = [
        f"Floor: the mean training shape in every crop, NME {100 * result.floor.nme:.2f} %; a "
        f"model counts when its NME is at least {margin:.0%} lower ({bar:.2f} %).",
        "",
    ]
    if below:
        lines += [
            f"**BELOW THE FLOOR'S BAR: {', '.join(below)}**: no comparison is read from them.",
            "",
        ]
    return lines
