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
    """One training run (a WorldComp2D stage or a baseline), trained now or reused.

    ``calibrated_seconds_per_step`` and ``budget_minutes``: budgeted runs only (None with
    ``max_steps``). ``reused``: loaded from the trained folder; ``trained_at``: when it was
    trained (ISO 8601, local time with offset).
    """

    steps_per_epoch: int
    minutes: float
    epochs: int
    steps: int
    calibrated_seconds_per_step: float | None = None
    budget_minutes: float | None = None
    reused: bool = False
    trained_at: str = ""

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
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.saved(), "reused": self.reused, "trained_at": self.trained_at}

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
    """One model's row: accuracy, costs and speed, and its training (summed over its runs)."""

    accuracy: Accuracy
    costs: CostsAndSpeed
    train_minutes: float
    reused: bool
    trained_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.accuracy),
            **dataclasses.asdict(self.costs),
            "train_minutes": self.train_minutes,
            "reused": self.reused,
            "trained_at": self.trained_at,
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
    part of :meth:`to_dict`; the benchmark writes them as files).
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
            "machine": self.machine,
            "seconds": self.seconds,
        }
