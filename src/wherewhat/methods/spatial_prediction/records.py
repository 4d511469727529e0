"""Typed results of the Spatial Prediction benchmark, from one arm up to the whole run.

The pipeline (:mod:`~wherewhat.methods.spatial_prediction.experiment`) fills them; the tables
(:mod:`~wherewhat.methods.spatial_prediction.markdown`), figures and the tour page read them.
``to_dict()`` gives each one's form in the results file (``benchmarks/results/
spatial_prediction.json``), whose keys these records keep. Means over seeds follow
:func:`wherewhat.metrics.summary.mean_std`: NaN where no seed produced a value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wherewhat.methods.spatial_prediction.settings import TARGETS, BenchSettings
from wherewhat.metrics.summary import mean_std

__all__ = [
    "SUMMARY_KEYS",
    "ArmResult",
    "ArmSummary",
    "BenchResult",
    "ClassEvaluation",
    "FaceArmResult",
    "overhead",
    "summarise_arms",
]

# Per-arm quantities summarised over seeds (mean and std), in the results file's order.
SUMMARY_KEYS = (
    "linear_probe", "knn", "corruption_accuracy", "reorder_accuracy_2x2", "reorder_accuracy_3x3",
    "sp_error_ratio", "epoch_seconds", "epoch_cpu_seconds", "train_minutes", "eval_minutes",
)  # fmt: skip
# Quantities of an SP arm's own head, summarised by their mean only.
NATIVE_KEYS = ("ratio", "reorder_2x2", "reorder_3x3")


@dataclass
class ClassEvaluation:
    """Probes of one trained CIFAR network (accuracies are fractions).

    ``robustness``: the linear probe per corruption and severity (``clean``, ``mean`` and
    ``<kind>_<severity>``, see :func:`~wherewhat.methods.spatial_prediction.probes.corruption_accuracy`);
    ``where``: ``readout`` (a head fitted on frozen features) and, for SP arms, ``native`` (the
    arm's own head), each :func:`~wherewhat.methods.spatial_prediction.probes.sp_pair_error`
    plus ``reorder_<g>x<g>`` / ``reorder_<g>x<g>_exact``. The last three fields repeat the
    read-out's re-ordering and loss ratio for the tables.
    """

    linear_probe: float
    linear_probe_converged: bool | None
    knn: float
    robustness: dict[str, float]
    corruption_accuracy: float
    where: dict[str, dict[str, float]]
    reorder_accuracy_2x2: float
    reorder_accuracy_3x3: float
    sp_error_ratio: float


@dataclass
class ArmResult:
    """One CIFAR arm (base method, lambda, seed): probes, timing and learning curves.

    ``epoch_seconds`` / ``epoch_cpu_seconds``: median over the epochs after the first (which
    also starts the loader worker); ``*_minutes``: wall / CPU time of pre-training (this
    process, and loader workers) and of the evaluation. ``history``: the task's per-epoch
    records; ``step_losses``: per-step losses averaged over windows (``step`` = window mean).
    """

    arm: str
    base: str
    sp_lambda: float
    seed: int
    linear_probe: float
    linear_probe_converged: bool | None
    knn: float
    corruption_accuracy: float
    reorder_accuracy_2x2: float
    reorder_accuracy_3x3: float
    sp_error_ratio: float
    robustness: dict[str, float]
    where: dict[str, dict[str, float]]
    epoch_seconds: float
    epoch_cpu_seconds: float
    train_minutes: float
    train_cpu_minutes: float
    worker_cpu_minutes: float
    eval_minutes: float
    eval_cpu_minutes: float
    history: list[dict[str, float]]
    step_losses: dict[str, list[float]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FaceArmResult:
    """SimCLR (+SP) pre-trained on face crops, then the landmark probe (NME, a fraction).

    ``landmark_nme`` / ``landmark_nme_map``: ridge regression from pooled features / the
    flattened last feature map; ``*_random_init``: the same on the untrained network of the
    seed; ``landmark_nme_mean_shape``: predicting the training mean shape for every face.
    """

    arm: str
    sp_lambda: float
    seed: int
    landmark_nme: float
    landmark_nme_map: float
    landmark_nme_mean_shape: float
    landmark_nme_random_init: float
    landmark_nme_map_random_init: float
    alpha: float
    n_train_faces: int
    n_test_faces: int
    train_minutes: float
    history: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ArmSummary:
    """One arm name over its seeds: ``means`` / ``stds`` of :data:`SUMMARY_KEYS` (std 0 for
    one seed), ``native_<key>`` means of the arm's own SP head (SP arms only, no std), and
    the mean linear-probe accuracy per corruption (``robustness``)."""

    arm: str
    seeds: list[int]
    means: dict[str, float]
    stds: dict[str, float]
    robustness: dict[str, float]

    def mean(self, key: str) -> float:
        """Mean of ``key`` over the seeds; NaN when there is none."""
        return self.means.get(key, math.nan)

    def std(self, key: str) -> float:
        return self.stds.get(key, math.nan)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"arm": self.arm, "seeds": list(self.seeds)}
        for key, value in self.means.items():
            out[key] = value
            if key in self.stds:
                out[f"{key}_std"] = self.stds[key]
        out["robustness"] = dict(self.robustness)
        return out


def summarise_arms(arms: Sequence[ArmResult]) -> dict[str, ArmSummary]:
    """Per arm name (in order of first appearance): mean and std over its seeds of
    :data:`SUMMARY_KEYS`, means only for the arm's own SP head and the corruptions."""
    out: dict[str, ArmSummary] = {}
    for name in dict.fromkeys(a.arm for a in arms):
        mine = [a for a in arms if a.arm == name]
        means, stds = {}, {}
        for key in SUMMARY_KEYS:
            means[key], stds[key] = mean_std([getattr(a, key) for a in mine])
        native = [a.where["native"] for a in mine if a.where.get("native")]
        for key in NATIVE_KEYS if native else ():
            means[f"native_{key}"], _ = mean_std([n[key] for n in native])
        corruption_keys = [k for k in mine[0].robustness if k != "mean"]
        robustness = {k: mean_std([a.robustness[k] for a in mine])[0] for k in corruption_keys}
        out[name] = ArmSummary(name, [a.seed for a in mine], means, stds, robustness)
    return out


def overhead(summary: Mapping[str, ArmSummary], base: str, key: str) -> float | None:
    """``key`` of ``<base>_sp`` relative to ``<base>``, minus 1 (0.1 = SP costs 10 % more);
    ``None`` when either arm is missing or has no value."""
    plain, with_sp = summary.get(base), summary.get(f"{base}_sp")
    if plain is None or with_sp is None:
        return None
    before, after = plain.mean(key), with_sp.mean(key)
    if not math.isfinite(before) or before == 0 or not math.isfinite(after):
        return None
    return after / before - 1.0


@dataclass
class BenchResult:
    """The whole benchmark run: the issue's headline numbers, then the details.

    ``linear_probe`` / ``knn``: arm name (``simclr``, ``simclr_sp``, ``byol``, ``byol_sp``) ->
    mean over seeds, with ``<arm>_std`` beside it for several seeds (``None``: arm not run);
    ``landmark_probe_nme`` and ``reorder_accuracy_2x2`` likewise for ``simclr`` /
    ``simclr_sp``; ``sp_*_overhead``: see :func:`overhead`; ``lambda_sweep``: one row per
    lambda of SimCLR's first seed; ``*_gain_simclr``: SP's gain where both arms were measured.
    ``figures``: ``{name: PNG bytes}`` (not part of the JSON; ``figure_files`` names them once
    written).
    """

    linear_probe: dict[str, float | None]
    knn: dict[str, float | None]
    landmark_probe_nme: dict[str, float]
    reorder_accuracy_2x2: dict[str, float | None]
    sp_time_overhead: float | None
    sp_time_overhead_byol: float | None
    sp_cpu_overhead: float | None
    lambda_sweep: list[dict[str, float]]
    epochs: int
    seeds: list[int]
    byol_seeds: list[int]
    quick: bool
    summary: dict[str, ArmSummary]
    arms: list[ArmResult]
    face_arms: list[FaceArmResult]
    settings: BenchSettings
    machine: dict[str, Any]
    torch_threads: int
    seconds: float
    linear_probe_gain_simclr: float | None = None
    landmark_nme_gain_simclr: float | None = None
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)
    figure_files: list[str] | None = None

    @property
    def targets(self) -> dict[str, dict[str, str | float]]:
        return {k: {"op": op, "value": v} for k, (op, v) in TARGETS.items()}

    def to_dict(self) -> dict[str, Any]:
        """The results file's JSON (gains and ``figure_files`` only when present)."""
        out: dict[str, Any] = {
            "linear_probe": self.linear_probe,
            "knn": self.knn,
            "landmark_probe_nme": self.landmark_probe_nme,
            "reorder_accuracy_2x2": self.reorder_accuracy_2x2,
            "sp_time_overhead": self.sp_time_overhead,
            "sp_time_overhead_byol": self.sp_time_overhead_byol,
            "sp_cpu_overhead": self.sp_cpu_overhead,
            "lambda_sweep": self.lambda_sweep,
            "epochs": self.epochs,
            "seeds": self.seeds,
            "byol_seeds": self.byol_seeds,
            "quick": self.quick,
            "summary": {name: row.to_dict() for name, row in self.summary.items()},
            "arms": [arm.to_dict() for arm in self.arms],
            "face_arms": [arm.to_dict() for arm in self.face_arms],
            "settings": dataclasses.asdict(self.settings),
            "targets": self.targets,
            "machine": self.machine,
            "torch_threads": self.torch_threads,
            "seconds": self.seconds,
        }
        for key in ("linear_probe_gain_simclr", "landmark_nme_gain_simclr", "figure_files"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out
