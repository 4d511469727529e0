"""Typed records between the LZU pipeline and its reports (markdown, tour page, JSON).

Each record's :meth:`to_dict` gives the JSON of ``benchmarks/results/lzu.json`` (key names and
order as the file has always had them).
"""

from __future__ import annotations

import dataclasses
import json
import math
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
    step_gflop: float = math.nan
    train_tflop: float = math.nan
    step_fraction_of_peak: float = math.nan
    curve: list[dict[str, float]] = field(default_factory=list)
    loss_curve: list[tuple[int, float]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunRecord:
        """Inverse of :meth:`to_dict` (an earlier results file's run, for merging)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"metrics"}
        known = {k: v for k, v in values.items() if k in names}
        metrics = {k: v for k, v in values.items() if k not in names}
        known["loss_curve"] = [tuple(p) for p in known.get("loss_curve", [])]
        return cls(**known, metrics=metrics)

    @property
    def key(self) -> tuple[str, str, int, str]:
        """What makes a run unique: task, arm, seed and its ablation change."""
        change = "" if self.change is None else json.dumps(self.change, sort_keys=True)
        return (self.task, self.arm, self.seed, change)

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
            "step_gflop": self.step_gflop, "train_tflop": self.train_tflop,
            "step_fraction_of_peak": self.step_fraction_of_peak,
            "curve": self.curve, "loss_curve": [list(p) for p in self.loss_curve],
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
HEADLINE_METRICS = (
    "ap50_small", "ap50", "miou", "ap50_small_band", "ap50_small_outside", "ap50_outside",
    "ap50_large", "small_iou",
)  # fmt: skip
# Settings that may differ between commands whose runs are merged (they do not change a run).
MERGEABLE_SETTINGS = {
    "seeds", "seeds_2x", "tasks", "arms", "ablations", "progress_bar", "latency_timing",
}  # fmt: skip


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
    floors: list[RunRecord] = field(default_factory=list)
    magnification: dict[str, dict[str, float]] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    figure_files: list[str] = field(default_factory=list)
    floor_margin: dict[str, tuple[str, float]] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs}) or list(self.settings.seeds)

    def floor(self, task: str) -> RunRecord | None:
        return next((f for f in self.floors if f.task == task), None)

    def valid_arms(self) -> list[str]:
        """``"<task>/<arm>"`` of the arms whose every run clears the untrained floor by the
        margin of :attr:`floor_margin` (the only arms whose differences are read)."""
        out = []
        for task, (metric, margin) in self.floor_margin.items():
            floor = self.floor(task)
            if floor is None:
                continue
            for arm in dict.fromkeys(r.arm for r in self.runs if r.task == task):
                runs = [r for r in self.runs if r.task == task and r.arm == arm]
                if all(r.metric(metric) >= floor.metric(metric) + margin for r in runs):
                    out.append(f"{task}/{arm}")
        return out

    def gains(self) -> dict[str, Any]:
        """LZU-fixed minus uniform, paired by seed, for the issue's targets."""

        def paired(task: str, metric: str) -> dict[int, float]:
            by_arm = {
                arm: {r.seed: r.metric(metric) for r in self.runs
                      if r.task == task and r.arm == arm and metric in r.metrics}
                for arm in ("uniform", "lzu_fixed")
            }  # fmt: skip
            common = sorted(set(by_arm["uniform"]) & set(by_arm["lzu_fixed"]))
            return {s: by_arm["lzu_fixed"][s] - by_arm["uniform"][s] for s in common}

        out: dict[str, Any] = {}
        for name, task, metric in (
            ("ap50_small_band", "detection", "ap50_small_band"),
            ("ap50_small_outside", "detection", "ap50_small_outside"),
            ("ap50_outside", "detection", "ap50_outside"),
            ("ap50_large", "detection", "ap50_large"),
            ("ap50_small", "detection", "ap50_small"),
            ("small_iou", "segmentation", "small_iou"),
            ("miou", "segmentation", "miou"),
        ):
            per_seed = {s: v for s, v in paired(task, metric).items() if math.isfinite(v)}
            if per_seed:
                values = list(per_seed.values())
                out[name] = {"per_seed": {str(s): v for s, v in per_seed.items()},
                             "mean": sum(values) / len(values), "min": min(values)}  # fmt: skip
        return out

    def target_checks(self) -> dict[str, dict[str, Any]]:
        """Each target of :data:`TARGETS` with the measured value and whether it holds."""
        gains = self.gains()
        measured: dict[str, float] = {
            "roundtrip_max_err_px": max(self.warp.roundtrip_max_err_px.values()),
            "coverage": min(self.warp.coverage.values()),
            "inverse_speedup_1d_vs_tile": self.warp.inverse_speedup_1d_vs_tile,
            "overhead_fraction": self.latency.overhead_fraction,
        }
        for target, (gain, field_name) in {
            "ap50_small_band_gain_fixed_every_seed": ("ap50_small_band", "min"),
            "ap50_outside_gain_fixed": ("ap50_outside", "mean"),
            "ap50_large_gain_fixed": ("ap50_large", "mean"),
            "small_iou_gain_fixed": ("small_iou", "mean"),
        }.items():
            if gain in gains:
                measured[target] = gains[gain][field_name]
        out = {}
        for name, (op, bound) in TARGETS.items():
            if name not in measured:
                continue
            value = measured[name]
            holds = {"<=": value <= bound, ">=": value >= bound, ">": value > bound}[op]
            out[name] = {"value": value, "target": f"{op} {bound:g}", "met": bool(holds)}
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "roundtrip_max_err_px": self.warp.roundtrip_max_err_px,
            "coverage": self.warp.coverage,
            **{k: self.summary.table(k) for k in HEADLINE_METRICS if k in self.summary.metrics},
            "inverse_speedup_1d_vs_tile": self.warp.inverse_speedup_1d_vs_tile,
            "overhead_fraction": self.latency.overhead_fraction,
            "seeds": self.seeds,
            "steps": {
                "detection": self.settings.detection_steps,
                "segmentation": self.settings.segmentation_steps,
                "curve_points": list(self.settings.curve_steps),
            },
            "magnification_small_band": {k: v["band"] for k, v in self.magnification.items()},
            "magnification_small_outside": {k: v["outside"] for k, v in self.magnification.items()},
            "magnification": self.magnification,
            "floors": [f.to_dict() for f in self.floors],
            "floor_margin": {k: list(v) for k, v in self.floor_margin.items()},
            "valid_arms": self.valid_arms(),
            "gains_fixed_vs_uniform": self.gains(),
            "target_checks": self.target_checks(),
            "step_fraction_of_peak": _per_arm(self.runs, "step_fraction_of_peak"),
            "train_tflop": _per_arm(self.runs, "train_tflop"),
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
        if self.commands:
            out["commands"] = self.commands
        return out


def result_parts_from_dict(values: dict[str, Any]) -> dict[str, Any]:
    """The pieces of an earlier results file that a merge keeps, typed: ``settings``,
    ``scatter_config``, ``runs``, ``ablations``, ``floors``, ``commands``, ``seconds``."""
    stored = dict(values["settings"])
    scatter = ScatterConfig.from_dict(stored.pop("scatter_config"))
    for extra in ("arms_run", "task_defaults"):
        stored.pop(extra, None)
    fields = {f.name: f for f in dataclasses.fields(LZUBenchSettings)}
    settings = LZUBenchSettings(**{k: _as_field(v) for k, v in stored.items() if k in fields})
    return {
        "settings": settings,
        "scatter_config": scatter,
        "runs": [RunRecord.from_dict(r) for r in values.get("runs", [])],
        "ablations": [RunRecord.from_dict(r) for r in values.get("ablations", [])],
        "floors": [RunRecord.from_dict(r) for r in values.get("floors", [])],
        "commands": list(values.get("commands", [])),
        "seconds": float(values.get("seconds", 0.0)),
    }


def _as_field(value: Any) -> Any:
    """JSON lists back to the tuples the settings hold (nested ones too)."""
    if isinstance(value, list):
        return tuple(_as_field(v) for v in value)
    return value


def settings_blocking_merge(old: LZUBenchSettings, new: LZUBenchSettings) -> list[str]:
    """Names of the settings that differ between two runs and change what a run measures."""
    old_d, new_d = dataclasses.asdict(old), dataclasses.asdict(new)
    return sorted(
        k for k in new_d
        if k not in MERGEABLE_SETTINGS and json.dumps(old_d.get(k), sort_keys=True, default=list)
        != json.dumps(new_d[k], sort_keys=True, default=list)
    )  # fmt: skip


def _per_arm(runs: list[RunRecord], name: str) -> dict[str, float]:
    """``"<task>/<arm>"`` -> mean of a run attribute over that arm's runs."""
    groups: dict[str, list[float]] = {}
    for run in runs:
        groups.setdefault(f"{run.task}/{run.arm}", []).append(float(getattr(run, name)))
    return {k: sum(v) / len(v) for k, v in groups.items()}
