"""Typed records between the LZU pipeline and its reports (markdown, tour page, JSON).

Each record's :meth:`to_dict` gives the JSON of ``benchmarks/results/lzu.json`` (key names and
order as the file has always had them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from wherewhat.data.scatter import ScatterConfig
from wherewhat.methods.lzu.settings import TARGETS, Knobs, LZUBenchSettings, TaskName

__all__ = [
    "ArmStat",
    "BenchSummary",
    "LZUBenchResult",
    "LatencyBreakdown",
    "RunRecord",
    "WarpChecks",
]


@dataclass
class WarpChecks:
    """Exactness and speed of the inverse warp.

    Attributes:
        roundtrip_max_err_px, coverage: per warp (``separable``, ``nonseparable``): worst
            ``|T(T^-1(u)) - u|`` in px and the fraction of pixel centres the inverse reaches.
        map_sizes: the original-frame map sizes checked.
        inverse_ms: ``separable_1d`` and ``tiles``: median ms of one inverse at
            ``inverse_map_size``.
        inverse_speedup_1d_vs_tile: ``tiles / separable_1d``.
    """

    roundtrip_max_err_px: dict[str, float]
    coverage: dict[str, float]
    map_sizes: list[list[int]]
    inverse_ms: dict[str, float]
    inverse_speedup_1d_vs_tile: float
    inverse_map_size: list[int]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LatencyBreakdown:
    """Per-step CPU latency (ms) of the detection pipeline and the overheads of the zoom.

    ``overhead_fraction``: (zoom + all unzooms) / uniform model; ``_adaptive`` adds the
    saliency and both grids; ``_segmentation``: (zoom + logits unzoom) / plain segmenter.
    """

    latency_ms: dict[str, float]
    latency_threads: int
    latency_batch: int
    n_levels: int
    level_sizes: list[list[int]]
    overhead_fraction: float
    overhead_fraction_adaptive: float
    overhead_fraction_segmentation: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class RunRecord:
    """One trained and evaluated (task, arm, seed); ``change``: the ablation's argument
    changes (None for a run of the main grid). ``metrics``: the task's ``evaluate`` numbers
    (detection: ``ap50``, ``ap50_small``, ...; segmentation: ``miou``, ``pixel_accuracy``,
    ``iou_per_class``)."""

    task: TaskName
    arm: str
    seed: int
    train_seconds: float
    train_cpu_seconds: float
    steps: int
    final_loss: float
    eval_seconds: float
    eval_cpu_seconds: float
    metrics: dict[str, float | list[float]]
    params: int
    torch_threads: int
    change: Knobs | None = None

    def metric(self, name: str) -> float:
        value = self.metrics[name]
        if isinstance(value, list):
            raise TypeError(f"metric {name!r} is a list, not a number")
        return value

    @property
    def headline(self) -> str:
        if self.task == "detection":
            return f"AP50 {self.metric('ap50'):.3f}, small {self.metric('ap50_small'):.3f}"
        return f"mIoU {self.metric('miou'):.3f}"

    def to_dict(self) -> dict[str, Any]:
        head = {} if self.change is None else {"change": self.change}
        return {
            **head,
            "task": self.task, "arm": self.arm, "seed": self.seed,
            "train_seconds": self.train_seconds, "train_cpu_seconds": self.train_cpu_seconds,
            "steps": self.steps, "final_loss": self.final_loss,
            "eval_seconds": self.eval_seconds, "eval_cpu_seconds": self.eval_cpu_seconds,
            **self.metrics,
            "params": self.params, "torch_threads": self.torch_threads,
        }  # fmt: skip


@dataclass
class ArmStat:
    """Mean and sample std of a metric over an arm's seeds with a finite value (``n`` of them)."""

    mean: float
    std: float
    n: int


@dataclass
class BenchSummary:
    """Per metric, per arm: :class:`ArmStat`; per ``"<task>/<arm>"``: mean training seconds and
    mean training + evaluation seconds."""

    metrics: dict[str, dict[str, ArmStat]] = field(default_factory=dict)
    train_seconds: dict[str, float] = field(default_factory=dict)
    run_seconds: dict[str, float] = field(default_factory=dict)

    def stat(self, metric: str, arm: str) -> ArmStat | None:
        return self.metrics.get(metric, {}).get(arm)

    def table(self, metric: str) -> dict[str, float | int]:
        """The JSON form of one metric: ``{arm: mean, arm_std: std, arm_n: n, ...}``."""
        out: dict[str, float | int] = {}
        for arm, stat in self.metrics.get(metric, {}).items():
            out.update({arm: stat.mean, f"{arm}_std": stat.std, f"{arm}_n": stat.n})
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {metric: self.table(metric) for metric in self.metrics}
        if self.train_seconds:
            out["train_seconds"] = self.train_seconds
        if self.run_seconds:
            out["run_seconds"] = self.run_seconds
        return out


# The summary metrics repeated at the top of the result file.
HEADLINE_METRICS = ("ap50_small", "ap50", "miou")


@dataclass
class LZUBenchResult:
    """Everything one benchmark run measured; :meth:`to_dict` is the result file's JSON
    (``figures``, PNG bytes by name, are written as separate files)."""

    settings: LZUBenchSettings
    scatter_config: ScatterConfig
    arms_run: list[str]
    task_defaults: dict[str, Knobs]
    warp: WarpChecks
    latency: LatencyBreakdown
    summary: BenchSummary
    runs: list[RunRecord]
    ablations: list[RunRecord]
    seconds: float
    figures: dict[str, bytes] = field(default_factory=dict)
    figure_files: list[str] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return list(self.settings.seeds)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "roundtrip_max_err_px": self.warp.roundtrip_max_err_px,
            "coverage": self.warp.coverage,
            **{k: self.summary.table(k) for k in HEADLINE_METRICS if k in self.summary.metrics},
            "inverse_speedup_1d_vs_tile": self.warp.inverse_speedup_1d_vs_tile,
            "overhead_fraction": self.latency.overhead_fraction,
            "seeds": self.seeds,
            "summary": self.summary.to_dict(),
            "warp": self.warp.to_dict(),
            "latency": self.latency.to_dict(),
            "runs": [r.to_dict() for r in self.runs],
            "ablations": [a.to_dict() for a in self.ablations],
            "targets": {k: list(v) for k, v in TARGETS.items()},
            "settings": {
                **dataclasses.asdict(self.settings),
                "scatter_config": self.scatter_config.to_dict(),
                "arms_run": self.arms_run,
                "task_defaults": self.task_defaults,
            },
            "seconds": self.seconds,
        }
        if self.figure_files:
            out["figure_files"] = self.figure_files
        return out
