"""What one run of the landmark benchmark does (:class:`LandmarkBenchSettings`), and what of it
decides each model's training (:func:`training_settings`, the input of a saved run's
fingerprint).

The benchmark trains five runs (:data:`RUNS`): WorldComp2D's three stages and the two
baselines; together they give the four models of :data:`MODEL_NAMES` (WorldComp2D is also
scored after stage 2, without its refiner).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from wherewhat.methods.worldcomp2d.task import STAGES, WorldComp2DTask
from wherewhat.tasks.landmark_baselines import LandmarkBaselineTask, PFLDTask, PIPHeatmapTask

__all__ = [
    "BASELINES",
    "MODEL_NAMES",
    "RUNS",
    "STAGES",
    "LandmarkBenchSettings",
    "run_args",
    "runs_of",
    "training_settings",
]

MODEL_NAMES = ("worldcomp2d", "worldcomp2d_no_refiner", "heatmap_baseline", "pfld_baseline")
BASELINES = ("heatmap_baseline", "pfld_baseline")
# Training runs (settings key -> task class) in the order they run.
RUNS: dict[str, type[WorldComp2DTask] | type[LandmarkBaselineTask]] = {
    "encoder": WorldComp2DTask,
    "localizer": WorldComp2DTask,
    "refiner": WorldComp2DTask,
    "heatmap_baseline": PIPHeatmapTask,
    "pfld_baseline": PFLDTask,
}


@dataclass
class LandmarkBenchSettings:
    """What one benchmark run does (:meth:`preset`: ``full``, ``quick``, ``tour``).

    ``runs``: per training run (keys of :data:`RUNS`) the task's and the data module's init
    arguments, ``{"model": {...}, "data": {...}}``; the task's hold its network as a spec
    (``"model": {"class_path": ..., "init_args": {...}}``, see :mod:`wherewhat.models.spec`);
    ``benchmarks/worldcomp2d.py`` reads them from the configs. ``data_overrides`` apply to every
    data module (e.g. ``max_faces`` for quick runs). ``budget_minutes`` per model
    (WorldComp2D's split by ``stage_shares``); with ``max_steps`` every run takes exactly that
    many steps instead (no budget); ``max_epochs`` replaces the calibrated epochs.
    """

    quick: bool = False
    faces_root: str = "../shared/data/faces68"
    models: tuple[str, ...] = ("worldcomp2d", "heatmap_baseline", "pfld_baseline")
    runs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    data_overrides: dict[str, Any] = field(default_factory=dict)
    budget_minutes: float = 60.0
    stage_shares: tuple[float, float, float] = (25 / 60, 20 / 60, 15 / 60)
    max_steps: int | None = None
    max_epochs: int | None = None
    calibration_steps: int = 6
    seed: int = 0
    threads: int = 2  # torch threads for training
    latency_timing: tuple[int, int] = (10, 100)  # (warmup, repeats) per latency
    figure_faces: int = 4
    embedding_faces: int = 48
    views_per_face: int = 24
    tsne: bool = True
    progress_bar: bool = False

    @classmethod
    def preset(cls, name: str, **changes: Any) -> LandmarkBenchSettings:
        """``full`` (the benchmark), ``quick`` (all models, a few steps each on 40 faces) or
        ``tour`` (WorldComp2D only, tiny; the tour's section)."""
        small = dict(max_faces=40, batch_size=8, eval_batch_size=16, num_workers=0)
        if name == "full":
            settings = cls()
        elif name == "quick":
            settings = cls(
                quick=True, max_steps=4, data_overrides=small, latency_timing=(2, 10),
                embedding_faces=8, views_per_face=16, tsne=False,
            )  # fmt: skip
        elif name == "tour":
            settings = cls(
                quick=True, models=("worldcomp2d",), max_steps=3,
                data_overrides={**small, "max_faces": 24}, latency_timing=(1, 5),
                embedding_faces=8, views_per_face=16, tsne=False,
            )  # fmt: skip
        else:
            raise ValueError(f"unknown preset {name!r}: expected 'full', 'quick' or 'tour'")
        return dataclasses.replace(settings, **changes)

    def check(self) -> None:
        unknown = [m for m in self.models if m not in ("worldcomp2d", *BASELINES)]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; choose from worldcomp2d, {BASELINES}")
        if self.max_steps is None and not self.budget_minutes > 0:
            raise ValueError(f"budget_minutes must be > 0, got {self.budget_minutes}")
        if abs(sum(self.stage_shares) - 1.0) > 1e-6 or min(self.stage_shares) <= 0:
            raise ValueError(f"stage_shares must be positive and sum to 1: {self.stage_shares}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as stored in the results file (``runs`` are stored on their own)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "runs"}


def run_args(settings: LandmarkBenchSettings, run: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(task init arguments, data module init arguments) of training run ``run``: the
    settings' plus the stage (WorldComp2D), the data overrides and the faces root."""
    args = settings.runs.get(run, {})
    model = dict(args.get("model") or {})
    if run in STAGES:
        model["stage"] = run
    data = {**(args.get("data") or {}), **settings.data_overrides, "root": settings.faces_root}
    return model, data


def runs_of(model: str) -> tuple[str, ...]:
    """The training runs of ``model`` (``worldcomp2d``: its stages; a baseline: itself)."""
    return STAGES if model == "worldcomp2d" else (model,)


def training_settings(settings: LandmarkBenchSettings, model: str) -> dict[str, Any]:
    """Everything that decides how ``model`` (``worldcomp2d`` or a baseline) trains, as plain
    JSON values: the input of its fingerprint. Budget, shares and calibration count only for
    budgeted runs (without ``max_steps``)."""
    budgeted = settings.max_steps is None
    shares = list(settings.stage_shares) if budgeted and model == "worldcomp2d" else None
    runs = {run: dict(zip(("model", "data"), run_args(settings, run), strict=True))
            for run in runs_of(model)}  # fmt: skip
    chosen = {
        "model": model,
        "runs": runs,
        "max_steps": settings.max_steps,
        "budget_minutes": settings.budget_minutes if budgeted else None,
        "stage_shares": shares,
        "max_epochs": settings.max_epochs if budgeted else None,
        "calibration_steps": settings.calibration_steps if budgeted else None,
        "seed": settings.seed,
        "threads": settings.threads,
    }
    return json.loads(json.dumps(chosen, default=str))  # tuples -> lists, as read back
