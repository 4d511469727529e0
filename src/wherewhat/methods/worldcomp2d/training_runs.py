"""Training runs of the landmark benchmark: each model trained (or loaded from the trained
folder) under its time budget, with its step time, FLOPs and validation curve recorded.

- WorldComp2D (:func:`train_worldcomp2d`): its stages chained through checkpoints, each
  running its schedule (``epochs`` of its run, the reference's) capped by its share of the
  budget plus what earlier stages left; the encoder keeps snapshots along the way. Ablation
  variants (:data:`~wherewhat.methods.worldcomp2d.settings.ABLATIONS`) go through the same
  function with their changes and their own file names.
- The baselines (:func:`train_baseline`): the epochs that fill their budget.

Every run is :func:`wherewhat.training.fit.fit` on the task and data module of its config.
With a budget, a few calibration steps measure the time per step (data loading included) and
set the epochs (``max_time`` stops the run at the budget in any case). Afterwards the run's
record gets the median step time of the run itself, the FLOPs of one training step
(forward + backward, FlopCounterMode) and of one-off work (the localizer's code bank), and the
measured matrix-product peak, so that each run's share of the machine can be read.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from wherewhat.bench.counting import training_step_flops
from wherewhat.bench.machine import peak_matmul_gflops
from wherewhat.data.face_crops import uncrop_points
from wherewhat.data.face_datamodule import FaceLandmarkDataModule
from wherewhat.errors import ConfigError
from wherewhat.io import atomic_torch_save, json_fingerprint, write_atomic
from wherewhat.methods.worldcomp2d.model import WorldComp2D
from wherewhat.methods.worldcomp2d.records import SplitSummary, TrainingRecord
from wherewhat.methods.worldcomp2d.settings import (
    ABLATIONS,
    RUNS,
    STAGES,
    LandmarkBenchSettings,
    run_args,
    training_settings,
)
from wherewhat.methods.worldcomp2d.store import TrainedStore
from wherewhat.methods.worldcomp2d.task import WorldComp2DTask
from wherewhat.metrics.landmarks import nme
from wherewhat.tasks.landmark_baselines import LandmarkBaselineTask
from wherewhat.training.fit import fit

__all__ = [
    "EXPECTED_WARNINGS",
    "NmeCurve",
    "StepClock",
    "TrainedModel",
    "ValidationFaces",
    "baseline_budget_minutes",
    "split_summary",
    "train_baseline",
    "train_worldcomp2d",
    "training_step_gflop",
]

Log = Callable[[str], None]
LandmarkTask = WorldComp2DTask | LandmarkBaselineTask

# Stage 2 warns on purpose when its encoder checkpoint is missing (quick runs); later stages
# keep the frozen encoder in eval mode; loaders run with few workers.
EXPECTED_WARNINGS = (
    r".*num_workers.*",
    r".*frozen encoder is untrained.*",
    r"Found \d+ module\(s\) in eval mode",
)
# Calibrated epochs aim this far below the budget: epoch boundaries and the validation curve
# cost a little on top of the median step.
_BUDGET_MARGIN = 0.97


@dataclass
class TrainedModel:
    """A model to evaluate: its network, its data (for the validation faces), its runs."""

    name: str
    model: nn.Module
    data: FaceLandmarkDataModule
    records: dict[str, TrainingRecord]
    default_path: list[str]


# --------------------------------------------------------------------------------------------
# Callbacks


class StepClock(Callback):
    """Notes the wall-clock time at the end of every training batch (in ``times``)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter())

    def median_step(self) -> float | None:
        gaps = np.diff(self.times)  # the first step (warm-up, worker start) is left out
        return float(np.median(gaps)) if len(gaps) else None


@dataclass
class ValidationFaces:
    """The validation faces as tensors, decoded once: crops ``(N, C, S, S)``, crop -> original
    affines ``(N, 3, 3)``, landmarks in crop pixels ``(N, K, 2)`` and in original pixels."""

    crops: Tensor
    affines: Tensor
    points: Tensor
    original_points: Tensor

    @classmethod
    def of(cls, data: FaceLandmarkDataModule) -> ValidationFaces:
        batches = list(data.val_dataloader())
        return cls(
            crops=torch.cat([b["image"] for b in batches]),
            affines=torch.cat([b["affine"] for b in batches]),
            points=torch.cat([b["points"] for b in batches]),
            original_points=torch.cat([b["original_points"] for b in batches]),
        )

    def errors(self, crop_points: Tensor) -> Tensor:
        """Per-face NME ``(N,)`` (original pixels) of landmarks ``(N, K, 2)`` in crop pixels."""
        return nme(uncrop_points(crop_points, self.affines), self.original_points)

    @torch.no_grad()
    def predict(self, model: nn.Module, batch_size: int = 64) -> tuple[Tensor, Tensor]:
        """``model``'s landmarks in crop pixels ``(N, K, 2)`` (eval mode) and their per-face
        NME ``(N,)``."""
        was_training = model.training
        model.eval()
        predicted = torch.cat(
            [model(self.crops[start : start + batch_size])
             for start in range(0, len(self.crops), batch_size)]
        )  # fmt: skip
        model.train(was_training)
        return predicted, self.errors(predicted)

    def nme(self, model: nn.Module) -> float:
        """Mean NME (original pixels) of ``model`` (crops -> crop-px landmarks)."""
        return float(self.predict(model)[1].double().mean())


class NmeCurve(Callback):
    """Validation NME every ``every_n_epochs`` epochs (and after the last planned one):
    ``rows`` of ``{"epoch", "minutes", "nme"}``, minutes since training started."""

    def __init__(self, faces: ValidationFaces, every_n_epochs: int):
        self.faces = faces
        self.every = max(1, every_n_epochs)
        self.rows: list[dict[str, float]] = []
        self._start = 0.0

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every and epoch != trainer.max_epochs:
            return
        minutes = (time.perf_counter() - self._start) / 60
        value = self.faces.nme(module.model)  # type: ignore[arg-type]
        module.train()  # the task's own train() keeps frozen parts in eval mode
        self.rows.append({"epoch": epoch, "minutes": minutes, "nme": value})


class _EncoderSnapshots(Callback):
    """Saves the encoder's weights after the epochs of ``paths`` (epoch -> file)."""

    def __init__(self, paths: Mapping[int, Path]):
        self.paths = dict(paths)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        path = self.paths.get(trainer.current_epoch + 1)
        if path is not None:
            state = {k: v.detach().clone() for k, v in module.model.encoder.state_dict().items()}
            atomic_torch_save({"encoder": state, "epoch": trainer.current_epoch + 1}, path)


# --------------------------------------------------------------------------------------------
# Compute


def encoder_forward_gflop(model: WorldComp2D) -> float:
    """GFLOP of encoding one face's F fixations (forward only)."""
    crop = torch.zeros(1, model.image_channels, model.crop_size, model.crop_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.encode(model.observe(crop, model.fixations[None]))
    return counter.get_total_flops() / 1e9


def training_step_gflop(task: LandmarkTask, data: FaceLandmarkDataModule) -> float:
    """GFLOP of one training step of ``task`` on a training batch of ``data``."""
    batch = next(iter(data.train_dataloader()))
    return training_step_flops(task, batch, step=lambda b: task.training_loss(b, 0)) / 1e9


def _extra_tflop(task: LandmarkTask) -> float:
    """One-off work of a run: the localizer's code bank (an encoder pass per face, view set and
    augmentation)."""
    if isinstance(task, WorldComp2DTask) and task.bank is not None:
        faces, augmentations = task.bank.codes.shape[:2]
        return encoder_forward_gflop(task.model) * faces * augmentations / 1e3
    return 0.0


# --------------------------------------------------------------------------------------------
# One run


def _calibrate(
    task: LandmarkTask, data: FaceLandmarkDataModule, settings: LandmarkBenchSettings
) -> tuple[float, LandmarkTask]:
    """Median step time (data loading included) of a few steps on a throwaway copy; returns it
    and the copy (whose code bank, if any, the real run can take over)."""
    clock = StepClock()
    trial = copy.deepcopy(task)
    pl.seed_everything(settings.seed, verbose=False)
    fit(
        trial, data, max_steps=settings.calibration_steps + 1, callbacks=[clock],
        progress=settings.progress_bar, expected_warnings=EXPECTED_WARNINGS,
    )  # fmt: skip
    seconds = clock.median_step()
    if seconds is None:
        raise RuntimeError("calibration ran fewer than two steps")
    return seconds, trial


def _planned_epochs(
    settings: LandmarkBenchSettings,
    schedule: int | None,
    seconds: float,
    steps_per_epoch: int,
    budget_s: float,
) -> int:
    """``max_epochs`` if set, else the schedule if it fits the budget, else what fits."""
    if settings.max_epochs:
        return settings.max_epochs
    fits = max(1, math.floor(_BUDGET_MARGIN * budget_s / (seconds * steps_per_epoch)))
    return min(schedule, fits) if schedule else fits


def _train(
    task: LandmarkTask,
    data: FaceLandmarkDataModule,
    budget_s: float,
    schedule: int | None,
    settings: LandmarkBenchSettings,
    log: Log,
    snapshots: Mapping[float, Path] | None = None,
) -> tuple[TrainingRecord, pl.Trainer]:
    """Train ``task``: ``settings.max_steps`` steps, or its schedule within ``budget_s``, or
    epochs that fill ``budget_s``; returns the run's record and the trainer (to save the
    weights). ``snapshots``: fraction of the epochs -> file for the encoder's weights."""
    data.setup("fit")
    steps_per_epoch = len(data.train_set) // data.batch_size
    seconds: float | None = None  # calibrated time per step (budgeted runs)
    epochs: int | None = None
    if settings.max_steps is None:
        seconds, trial = _calibrate(task, data, settings)
        if isinstance(task, WorldComp2DTask) and isinstance(trial, WorldComp2DTask):
            task.bank = trial.bank  # the same codes: built from the same frozen encoder
        epochs = _planned_epochs(settings, schedule, seconds, steps_per_epoch, budget_s)
        of = f" of its {schedule}" if schedule else ""
        log(f"  {seconds:.3f} s/step x {steps_per_epoch} steps/epoch -> {epochs} epochs{of}")
    clock = StepClock()
    callbacks: list[Callback] = [clock]
    curve = None
    has_landmarks = not (isinstance(task, WorldComp2DTask) and task.stage == "encoder")
    if has_landmarks and settings.curve_points > 0:
        every = max(1, (epochs or 1) // settings.curve_points)
        curve = NmeCurve(ValidationFaces.of(data), every)
        callbacks.append(curve)
    if snapshots and epochs:
        at = {max(1, round(f * epochs)): path for f, path in snapshots.items()}
        callbacks.append(_EncoderSnapshots({e: p for e, p in at.items() if e < epochs}))
    pl.seed_everything(settings.seed, verbose=False)
    record = fit(
        task, data, max_steps=settings.max_steps, max_epochs=epochs,
        max_time=None if seconds is None else timedelta(seconds=budget_s),
        progress=settings.progress_bar, expected_warnings=EXPECTED_WARNINGS, callbacks=callbacks,
    )  # fmt: skip
    training = TrainingRecord(
        steps_per_epoch=steps_per_epoch,
        minutes=record.seconds / 60,
        epochs=record.epochs,
        steps=record.steps,
        calibrated_seconds_per_step=seconds,
        budget_minutes=None if seconds is None else budget_s / 60,
        schedule_epochs=schedule,
        seconds_per_step=clock.median_step(),
        step_gflop=training_step_gflop(task, data),
        extra_tflop=_extra_tflop(task),
        peak_gflops=peak_matmul_gflops(torch.get_num_threads()),
        curve=curve.rows if curve else [],
    )
    return training, record.trainer


def split_summary(data: FaceLandmarkDataModule) -> SplitSummary:
    train, val = data.train_records, data.val_records
    return SplitSummary(
        how=(
            "photo-disjoint split by file name (faces of one photo stay together): the sorted "
            f"photo names shuffled with split_seed={data.split_seed}, {data.val_fraction:.0%} of "
            "the photos form the validation split (wherewhat.data.faces.split_by_name)"
        ),
        root=str(Path(data.root).resolve()),
        val_fraction=data.val_fraction,
        split_seed=data.split_seed,
        max_faces=data.max_faces,
        train_faces=len(train),
        val_faces=len(val),
        train_photos=len({r.group for r in train}),
        val_photos=len({r.group for r in val}),
        val_subsets={s: sum(r.subset == s for r in val) for s in sorted({r.subset for r in val})},
    )


def _same_split(saved: Mapping[str, Any], now: SplitSummary) -> bool:
    """The saved split (JSON) is ``now`` (the wording of ``how`` aside)."""
    current = {k: v for k, v in dataclasses.asdict(now).items() if k != "how"}
    return current == {k: v for k, v in saved.items() if k != "how"}


@dataclass
class _RunPlan:
    """What to train: ``run`` names the store's files, ``kind`` the settings entry (a stage or
    a baseline), ``changes`` task arguments over the settings' (ablations; under ``"data"``:
    data module arguments)."""

    run: str
    kind: str
    budget_s: float
    changes: dict[str, Any] = dataclasses.field(default_factory=dict)
    init_from: str | None = None
    snapshots: dict[float, Path] | None = None


def _trained_run(
    plan: _RunPlan,
    chosen: dict[str, Any],
    settings: LandmarkBenchSettings,
    store: TrainedStore,
    log: Log,
    reuse: bool = True,
) -> tuple[LandmarkTask, FaceLandmarkDataModule, TrainingRecord]:
    """Train ``plan.run`` and save it, or (``reuse`` and saved with ``chosen``) load it; returns
    (task, data module set up for fit, its record)."""
    model_args, data_args = run_args(settings, plan.kind)
    changes = dict(plan.changes)
    data_args.update(changes.pop("data", {}))
    model_args.update(changes)
    if plan.kind in STAGES:
        model_args["init_from"] = plan.init_from
    task = RUNS[plan.kind](**model_args)
    data = FaceLandmarkDataModule(**data_args)
    checkpoint, meta = store.paths(plan.run)
    entry = store.saved(plan.run, chosen) if reuse else None
    if entry is not None:
        data.setup("fit")
        split = split_summary(data)
        if not _same_split(entry["split"], split):
            raise ConfigError(
                f"{meta}: trained on another split ({entry['split']}), now "
                f"{dataclasses.asdict(split)}: the faces on disk changed; pass --retrain"
            )
        # Our own file (a Lightning checkpoint is a pickle): only trusted folders.
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        task.load_state_dict(state)
        log(f"{plan.run}: reusing {checkpoint} (trained {entry['trained_at']})")
        return task, data, TrainingRecord.from_saved(entry["record"], entry["trained_at"])
    budget = "" if settings.max_steps is not None else f" (budget {plan.budget_s / 60:.1f} min)"
    log(f"{plan.run}: training{budget}")
    schedule = settings.runs.get(plan.kind, {}).get("epochs")
    record, trainer = _train(
        task, data, plan.budget_s, schedule, settings, log, snapshots=plan.snapshots
    )
    trainer.save_checkpoint(checkpoint, weights_only=True)
    record.trained_at = datetime.now().astimezone().isoformat(timespec="seconds")
    entry = {
        "model": chosen["model"],
        "run": plan.run,
        "trained_at": record.trained_at,
        "fingerprint": json_fingerprint(chosen),
        "checkpoint": checkpoint.name,
        "record": record.saved(),
        "split": dataclasses.asdict(split_summary(data)),
        "settings": chosen,
    }
    write_atomic(meta, json.dumps(entry, indent=2) + "\n")
    log(
        f"{plan.run}: saved {checkpoint} ({record.epochs} epochs, {record.minutes:.1f} min"
        + (f", {record.train_tflop:.1f} TFLOP)" if record.train_tflop is not None else ")")
    )
    return task, data, record


# --------------------------------------------------------------------------------------------
# Models


def worldcomp2d_settings(settings: LandmarkBenchSettings, ablation: str | None = None):
    """The fingerprinted settings of WorldComp2D, or of one of its ablation variants."""
    chosen = training_settings(settings, "worldcomp2d")
    if ablation is not None:
        chosen = {**chosen, "model": f"worldcomp2d_{ablation}", "ablation": ABLATIONS[ablation]}
    return json.loads(json.dumps(chosen))


def train_worldcomp2d(
    settings: LandmarkBenchSettings,
    store: TrainedStore,
    log: Log,
    ablation: str | None = None,
) -> tuple[WorldComp2DTask, FaceLandmarkDataModule, dict[str, TrainingRecord]]:
    """WorldComp2D's stages chained through checkpoints; returns (last stage's task, data,
    records by stage). With ``ablation`` (a name of ``ABLATIONS``) the variant: the stages
    from its first changed one to the localizer are trained under their own file names, the
    earlier ones are the benchmarked model's (which must be saved already)."""
    chosen = worldcomp2d_settings(settings, ablation)
    budget = settings.budget_minutes * 60
    stages: tuple[str, ...] = STAGES
    previous: str | None = None
    if ablation is not None:
        first = min(STAGES.index(stage) for stage in ABLATIONS[ablation])
        stages = STAGES[first : STAGES.index("localizer") + 1]
        if first > 0:
            shared = STAGES[first - 1]
            previous = str(store.paths(shared)[0])
            if store.saved(shared, worldcomp2d_settings(settings)) is None:
                raise ConfigError(
                    f"ablation {ablation!r} starts from the benchmarked WorldComp2D's {shared} "
                    f"({previous}), which is not trained yet: train --models worldcomp2d first"
                )
    reuse = True
    left = 0.0  # budget the earlier stages did not use
    records: dict[str, TrainingRecord] = {}
    task = data = None
    for stage in stages:
        share = settings.stage_shares[STAGES.index(stage)]
        run = stage if ablation is None else f"ablation-{ablation}-{stage}"
        snapshots = None
        if stage == "encoder" and ablation is None and settings.encoder_snapshots:
            snapshots = {f: store.encoder_snapshot(f) for f in settings.encoder_snapshots}
        plan = _RunPlan(
            run=run,
            kind=stage,
            budget_s=budget * share + left,
            changes=(ABLATIONS[ablation].get(stage, {}) if ablation else {}),
            init_from=previous,
            snapshots=snapshots,
        )
        log(f"WorldComp2D{f' ({ablation})' if ablation else ''} stage {stage}")
        task, data, record = _trained_run(plan, chosen, settings, store, log, reuse)
        reuse = record.reused  # a stage trained now makes the saved later stages stale
        left = max(0.0, plan.budget_s - record.minutes * 60)
        previous = str(store.paths(run)[0])
        records[stage] = record
    assert isinstance(task, WorldComp2DTask) and data is not None
    return task, data, records


def baseline_budget_minutes(settings: LandmarkBenchSettings, store: TrainedStore) -> float:
    """A baseline's budget: ``baseline_minutes``, else WorldComp2D's recorded training minutes
    (every stage; it must be trained and saved first)."""
    if settings.baseline_minutes is not None:
        return settings.baseline_minutes
    if settings.max_steps is not None:  # no budget: every run takes max_steps
        return settings.budget_minutes
    chosen = worldcomp2d_settings(settings)
    total = 0.0
    for stage in STAGES:
        entry = store.saved(stage, chosen)
        if entry is None:
            raise ConfigError(
                f"the baselines' budget is WorldComp2D's training time, but its {stage} stage "
                f"is not in {store.folder}: train --models worldcomp2d first, or give "
                "--baseline-minutes"
            )
        total += float(entry["record"]["minutes"])
    return total


def train_baseline(
    name: str, settings: LandmarkBenchSettings, store: TrainedStore, log: Log
) -> TrainedModel:
    """A baseline trained (or loaded) within its budget (:func:`baseline_budget_minutes`)."""
    minutes = baseline_budget_minutes(settings, store)
    budgeted = dataclasses.replace(settings, budget_minutes=minutes)
    chosen = training_settings(budgeted, name)
    plan = _RunPlan(run=name, kind=name, budget_s=minutes * 60)
    task, data, record = _trained_run(plan, chosen, budgeted, store, log)
    return TrainedModel(name, task.export_model(), data, {name: record}, [name])
