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
    "ABLATIONS",
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
# WorldComp2D variants for ablations: stage -> task-argument changes (data module arguments
# under "data"). The first changed stage and every later stage up to the localizer are trained
# again (earlier ones are shared with the benchmarked model); each is scored without the
# refiner, against ``worldcomp2d_no_refiner``. ``box_noise``: the localizer learns from crops
# placed as imprecisely as a face detector's calibrated boxes place them (the photo benchmark
# measures centre offsets of 7 % of the box side in the median, 16 % at the 90th percentile,
# and sides within +-8 %), for landmarks on photos.
ABLATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "jitter_iid": {"localizer": {"jitter_mode": "iid"}},
    "pairs_4": {"encoder": {"views_per_image": 4}},
    "box_noise": {"localizer": {"data": {"shift_jitter": 0.15, "scale_jitter": 0.1}}},
}
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
    ``benchmarks/worldcomp2d.py`` reads them from the configs; a WorldComp2D stage's may add
    ``"epochs"``, its schedule (the configs' ``trainer.max_epochs``: the reference's 2,000 /
    1,000 / 1,000). ``data_overrides`` apply to every data module (e.g. ``max_faces`` for quick
    runs).

    Time: WorldComp2D's stages run their schedule, each capped at its share
    (``stage_shares``) of ``budget_minutes`` plus what earlier stages left unused; a stage
    whose schedule does not fit runs the epochs that do (the learning-rate decay moves with
    them). The baselines fill ``baseline_minutes`` each, by default (None) WorldComp2D's
    recorded training minutes (equal wall-clock budget; the training TFLOP of every model is
    recorded too). With ``max_steps`` every run takes exactly that many steps instead (no
    budget); ``max_epochs`` replaces the schedule and calibrated epochs.

    During training the validation NME is measured ``curve_points`` times per run (models
    that predict landmarks); the encoder keeps snapshots at the fractions
    ``encoder_snapshots`` of its epochs. ``ablations`` (names of :data:`ABLATIONS`) are
    WorldComp2D variants trained on the same faces and scored without the refiner;
    ``encoder_curve`` fits a short banked localizer probe (``probe_epochs``, bank of
    ``probe_bank`` augmentations) on every encoder snapshot. The refiner stays on the default
    path only if it lowers NME by at least ``refiner_min_gain`` (NME as a fraction; 0.001 =
    0.1 points). The floor row is the mean training shape placed in every crop; a model counts
    only when its NME is at most ``1 - floor_margin`` times the floor's.
    """

    quick: bool = False
    faces_root: str = "../shared/data/faces68"
    models: tuple[str, ...] = ("worldcomp2d", "heatmap_baseline", "pfld_baseline")
    runs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    data_overrides: dict[str, Any] = field(default_factory=dict)
    budget_minutes: float = 68.0
    stage_shares: tuple[float, float, float] = (0.66, 0.12, 0.22)
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
    baseline_minutes: float | None = None
    curve_points: int = 16
    encoder_snapshots: tuple[float, ...] = (0.125, 0.25, 0.5)
    ablations: tuple[str, ...] = ()
    encoder_curve: bool = False
    probe_epochs: int = 100
    probe_bank: int = 8
    refiner_min_gain: float = 0.001
    floor_margin: float = 0.25

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
        unknown = [a for a in self.ablations if a not in ABLATIONS]
        if unknown:
            raise ValueError(f"unknown ablation(s) {unknown}; choose from {sorted(ABLATIONS)}")
        if self.baseline_minutes is not None and not self.baseline_minutes > 0:
            raise ValueError(f"baseline_minutes must be > 0, got {self.baseline_minutes}")
        if not all(0 < f < 1 for f in self.encoder_snapshots):
            raise ValueError(f"encoder_snapshots must be in (0, 1): {self.encoder_snapshots}")

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
    for run in runs_of(model):
        runs[run]["epochs"] = settings.runs.get(run, {}).get("epochs")
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
