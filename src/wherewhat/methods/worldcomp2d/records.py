"""Typed records between the landmark benchmark (:mod:`~wherewhat.methods.worldcomp2d.experiment`)
and its reports (markdown, tour page, results file).

:meth:`LandmarkBenchResult.to_dict` is ``benchmarks/results/worldcomp2d.json`` with the keys
(and their order) that file has always had: a record's fields in the order of its old dict keys
(``dataclasses.asdict``), or its own ``to_dict()`` where it flattens or drops fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wherewhat.methods.worldcomp2d.settings import LandmarkBenchSettings

__all__ = [
    "Accuracy",
    "CostsAndSpeed",
    "LandmarkBenchResult",
    "ModelResult",
    "Ratio",
    "SplitSummary",
    "Target",
    "TrainingRecord",
]


@dataclass
class TrainingRecord:
    """One training run (a WorldComp2D stage, a baseline or an ablation run), trained now or
    reused.

    ``calibrated_seconds_per_step`` and ``budget_minutes``: budgeted runs only (None with
    ``max_steps``). ``schedule_epochs``: the run's planned epochs (WorldComp2D's stages: the
    reference schedule from the config; None when the budget sets them), so
    ``epochs / schedule_epochs`` is the share of the schedule that was run. Compute:
    ``seconds_per_step`` (median over the run, data included), ``step_gflop`` (one training
    step, forward + backward, FlopCounterMode's count), ``extra_tflop`` (one-off work such as
    the localizer's code bank), ``train_tflop`` (all of it), ``step_fraction_of_peak`` (the
    step's FLOP rate over ``peak_gflops``, the measured matrix-product peak with the run's
    threads). ``curve``: validation NME during training, ``{"epoch", "minutes", "nme"}`` rows
    (models that predict landmarks). ``reused``: loaded from the trained folder;
    ``trained_at``: when it was trained (ISO 8601, local time with offset).
    """

    steps_per_epoch: int
    minutes: float
    epochs: int
    steps: int
    calibrated_seconds_per_step: float | None = None
    budget_minutes: float | None = None
    schedule_epochs: int | None = None
    seconds_per_step: float | None = None
    step_gflop: float | None = None
    extra_tflop: float = 0.0
    peak_gflops: float | None = None
    curve: list[dict[str, float]] = field(default_factory=list)
    reused: bool = False
    trained_at: str = ""

    @property
    def train_tflop(self) -> float | None:
        """All training FLOPs (steps x step + one-off work), in TFLOP."""
        if self.step_gflop is None:
            return None
        return self.steps * self.step_gflop / 1e3 + self.extra_tflop

    @property
    def step_fraction_of_peak(self) -> float | None:
        if not (self.step_gflop and self.seconds_per_step and self.peak_gflops):
            return None
        return self.step_gflop / self.seconds_per_step / self.peak_gflops

    @property
    def fraction_of_schedule(self) -> float | None:
        return None if not self.schedule_epochs else self.epochs / self.schedule_epochs

    def saved(self) -> dict[str, Any]:
        """What the trained folder's JSON keeps as the run's ``record``."""
        budget = (
            {}
            if self.budget_minutes is None
            else {
                "calibrated_seconds_per_step": self.calibrated_seconds_per_step,
                "budget_minutes": self.budget_minutes,
            }
        )
        return {
            "steps_per_epoch": self.steps_per_epoch,
            **budget,
            "minutes": self.minutes,
            "epochs": self.epochs,
            "steps": self.steps,
            "schedule_epochs": self.schedule_epochs,
            "seconds_per_step": self.seconds_per_step,
            "step_gflop": self.step_gflop,
            "extra_tflop": self.extra_tflop,
            "peak_gflops": self.peak_gflops,
            "curve": self.curve,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.saved(),
            "train_tflop": self.train_tflop,
            "step_fraction_of_peak": self.step_fraction_of_peak,
            "fraction_of_schedule": self.fraction_of_schedule,
            "reused": self.reused,
            "trained_at": self.trained_at,
        }

    @classmethod
    def from_saved(cls, record: Mapping[str, Any], trained_at: str) -> TrainingRecord:
        """A run read back from the trained folder (:meth:`saved`), marked reused."""
        return cls(**record, reused=True, trained_at=trained_at)


@dataclass
class Accuracy:
    """NME (inter-ocular, original pixels; mean over faces), FR@10 and AUC@10 (fractions)."""

    nme: float
    fr10: float
    auc10: float
    num_faces: int


@dataclass
class CostsAndSpeed:
    """Size, work and batch-1 speed (a 256 px face crop to landmarks) of one model.

    ``onnx_max_abs_diff``: ONNX Runtime against torch on the timing crop;
    ``onnx_parity_error``: the mismatch message when that exceeded the tolerance (the graph was
    still timed), else None.
    """

    params: int
    macs: int
    ort_faces_per_s_1thread: float
    ort_faces_per_s_2threads: float
    torch_faces_per_s_1thread: float
    ort_ms_1thread: float
    ort_ms_2threads: float
    torch_ms_1thread: float
    onnx_max_abs_diff: float | None
    onnx_parity_error: str | None
    onnx_exporter: str


@dataclass
class ModelResult:
    """One model's row: accuracy, costs and speed, and its training (summed over its runs).

    ``default_path``: the parts the model runs as shipped (WorldComp2D: its stages; a baseline:
    its own name); ``epochs`` and ``step_fraction_of_peak`` per training run; ``train_tflop``
    summed over the runs (None when a run was not counted).
    """

    accuracy: Accuracy
    costs: CostsAndSpeed
    train_minutes: float
    reused: bool
    trained_at: str
    default_path: list[str] = field(default_factory=list)
    epochs: dict[str, int] = field(default_factory=dict)
    step_fraction_of_peak: dict[str, float | None] = field(default_factory=dict)
    train_tflop: float | None = None

    @classmethod
    def summed(
        cls,
        accuracy: Accuracy,
        costs: CostsAndSpeed,
        runs: Mapping[str, TrainingRecord],
        default_path: list[str],
    ) -> ModelResult:
        """The row of a model trained by ``runs`` (run name -> record)."""
        records = list(runs.values())
        tflops = [r.train_tflop for r in records]
        return cls(
            accuracy=accuracy,
            costs=costs,
            train_minutes=sum(r.minutes for r in records),
            reused=all(r.reused for r in records),
            trained_at=max(r.trained_at for r in records),
            default_path=default_path,
            epochs={name: r.epochs for name, r in runs.items()},
            step_fraction_of_peak={name: r.step_fraction_of_peak for name, r in runs.items()},
            train_tflop=None if None in tflops else float(sum(tflops)),  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.accuracy),
            **dataclasses.asdict(self.costs),
            "train_minutes": self.train_minutes,
            "reused": self.reused,
            "trained_at": self.trained_at,
            "default_path": self.default_path,
            "epochs": self.epochs,
            "step_fraction_of_peak": self.step_fraction_of_peak,
            "train_tflop": self.train_tflop,
        }


@dataclass
class SplitSummary:
    """The photo-disjoint train / validation split every model saw."""

    how: str
    root: str
    val_fraction: float
    split_seed: int
    max_faces: int | None
    train_faces: int
    val_faces: int
    train_photos: int
    val_photos: int
    val_subsets: dict[str, int]


@dataclass
class Ratio:
    """A model against a baseline: > 1 for params / MACs means the model is smaller; < 1 for
    NME means it is more accurate (None when the baseline's NME is 0); speed model / baseline
    in ONNX Runtime, 1 thread."""

    model: str
    baseline: str
    params_baseline_over_model: float
    macs_baseline_over_model: float
    nme_model_over_baseline: float | None
    ort_1thread_speed_model_over_baseline: float


@dataclass
class Target:
    """One of the issue's targets: what was measured, what was needed (``">= 4.0"``), met?"""

    target: str
    value: float
    needed: str
    met: bool


@dataclass
class LandmarkBenchResult:
    """What :func:`~wherewhat.methods.worldcomp2d.experiment.run_landmark_bench` returns.

    After a ``train_only`` run only ``settings``, ``training``, ``trained_dir`` and
    ``seconds`` are filled (``models`` is empty). ``figures``: PNG bytes by figure name (not
    part of :meth:`to_dict`; the benchmark writes them as files). ``floor``: the mean training
    shape in every validation crop; ``valid_models``: the models that clear it by the settings'
    ``floor_margin``. ``refiner``: its NME gain and
    whether it stays on the default path; ``ablations``: variant name -> validation NME (the
    variants' training in ``ablation_details``); ``encoder_curve``: a localizer probe's
    validation NME on encoder snapshots, ``{"encoder_epoch", "nme"}`` rows.
    """

    settings: LandmarkBenchSettings
    training: dict[str, TrainingRecord]
    trained_dir: str | None
    seconds: float
    models: dict[str, ModelResult] = field(default_factory=dict)
    split: SplitSummary | None = None
    ratios: list[Ratio] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    floor: Accuracy | None = None
    valid_models: list[str] = field(default_factory=list)
    refiner: dict[str, Any] = field(default_factory=dict)
    ablations: dict[str, float] = field(default_factory=dict)
    ablation_details: dict[str, dict[str, Any]] = field(default_factory=dict)
    encoder_curve: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The results file's content (without ``figure_files``, which the writer adds)."""
        return {
            "models": {name: model.to_dict() for name, model in self.models.items()},
            "split": None if self.split is None else dataclasses.asdict(self.split),
            "ratios": [dataclasses.asdict(ratio) for ratio in self.ratios],
            "targets": [dataclasses.asdict(target) for target in self.targets],
            "training": {run: record.to_dict() for run, record in self.training.items()},
            "trained_dir": self.trained_dir,
            "settings": self.settings.to_dict(),
            "runs": self.settings.runs,
            "floor_mean_shape": None if self.floor is None else dataclasses.asdict(self.floor),
            "valid_models": self.valid_models,
            "refiner": self.refiner,
            "ablations": self.ablations,
            "ablation_details": self.ablation_details,
            "encoder_curve": self.encoder_curve,
            "machine": self.machine,
            "seconds": self.seconds,
        }
