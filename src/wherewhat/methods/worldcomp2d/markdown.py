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
            ("calibrated_seconds_per_step", "s/step"),
            ("steps_per_epoch", "steps/epoch"),
            ("epochs", "epochs"),
            ("steps", "steps"),
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
        }
        for name, m in result.models.items()
    ]
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
    machine = result.machine
    lines += [
        "Training runs (epochs set from the measured step time to fill each budget; "
        "`max_time` caps it). A reused run was trained by an earlier invocation with the same "
        f"settings (fingerprint checked) and loaded from `{result.trained_dir}`; its minutes "
        "are the recorded ones:",
        "",
        training_markdown(result.training),
        f"Machine: {machine.get('cpu')}, load average at the end "
        f"{machine.get('load_average_1_5_15min')}; total {result.seconds / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)
