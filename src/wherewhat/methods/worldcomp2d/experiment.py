"""The facial-landmark benchmark pipeline, shared by ``benchmarks/worldcomp2d.py`` and the tour's
"worldcomp2d" section.

The benchmark (:func:`run_landmark_bench`) trains, on the same faces, split, crops and
augmentation, under the same time budget per model:

- ``worldcomp2d``: the three stages (encoder, localizer, refiner), each from the previous
  stage's checkpoint, sharing the model's budget (``stage_shares``, default 25 / 20 / 15 of 60
  minutes, as the stage configs say); ``worldcomp2d_no_refiner`` is the same model after stage
  2 (its training time: stages 1 + 2);
- ``heatmap_baseline`` (PIPNet-style, ResNet-18) and ``pfld_baseline`` (PFLD-style,
  MobileNetV2), from scratch.

Every run is :func:`wherewhat.training.fit.fit` on the task and data module of its config (no
run directories, no validation during training). With a budget, a few calibration steps measure
the time per step (data loading included) and set ``max_epochs`` so the run fills its budget
(``max_time`` stops it at the budget in any case); the epochs used are recorded, so
``wherewhat fit --config ... --trainer.max_epochs E`` repeats the run. The last weights are
evaluated (no checkpoint picked on the validation faces). Then per model: parameters, MACs
(:func:`~wherewhat.bench.count_macs`), NME / FR@10 / AUC@10 (inter-ocular, original pixels,
every validation face), batch-1 latency from a 256 px face crop to landmarks in ONNX Runtime
(1 and 2 threads, parity-checked export) and PyTorch (1 thread); ratios to each baseline; the
issue's targets; figures (predictions on validation faces, cumulative error curves, a 2-D
embedding of WorldComp2D's view codes coloured by the nearest landmark's face part). The
result is a :class:`~wherewhat.methods.worldcomp2d.records.LandmarkBenchResult`.

``quick`` (``benchmarks/worldcomp2d.py --quick``): a few steps per run on a few dozen faces;
everything else the same.

Trained models persist in ``trained_dir`` (:class:`~wherewhat.methods.worldcomp2d.store.
TrainedStore`), so that models trained in separate processes are evaluated and timed together
in one later run. A run whose saved fingerprint (of
:func:`~wherewhat.methods.worldcomp2d.settings.training_settings`: every run's task, model and
data arguments, budget, shares, steps, seed, threads) matches is loaded instead of trained, and
its recorded minutes are reported (``reused``, ``trained_at``); a saved run with other settings
is an error naming the file and the differences, unless ``retrain`` replaces it. WorldComp2D is
saved stage by stage: an interrupted model resumes at its first missing stage (a stage trained
again makes every later stage train again, as each starts from the previous one).
``train_only`` trains and saves without evaluating. The fingerprint does not cover the code:
after changing a model or task, retrain.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile
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

from wherewhat.bench import (
    OnnxParityError,
    count_macs,
    count_parameters,
    export_onnx,
    machine_info,
    measure_latency_onnx,
    measure_latency_torch,
)
from wherewhat.bench.runtime import torch_num_threads
from wherewhat.data.face_crops import uncrop_points
from wherewhat.data.face_datamodule import FaceLandmarkDataModule
from wherewhat.errors import ConfigError
from wherewhat.io import json_fingerprint, png_bytes, write_atomic
from wherewhat.methods.worldcomp2d.figures import (
    ced_figure,
    latent_codes_by_nearest_landmark,
    latent_embedding_figure,
    prediction_panels,
)
from wherewhat.methods.worldcomp2d.model import WorldComp2D
from wherewhat.methods.worldcomp2d.records import (
    Accuracy,
    CostsAndSpeed,
    LandmarkBenchResult,
    ModelResult,
    Ratio,
    SplitSummary,
    Target,
    TrainingRecord,
)
from wherewhat.methods.worldcomp2d.settings import (
    BASELINES,
    MODEL_NAMES,
    RUNS,
    STAGES,
    LandmarkBenchSettings,
    run_args,
    training_settings,
)
from wherewhat.methods.worldcomp2d.store import TrainedStore
from wherewhat.methods.worldcomp2d.task import WorldComp2DTask
from wherewhat.metrics.landmarks import auc, failure_rate, nme
from wherewhat.tasks.landmark_baselines import LandmarkBaselineTask
from wherewhat.training.fit import fit
from wherewhat.training.quiet import quiet_lightning

__all__ = ["FIGURE_CAPTIONS", "run_landmark_bench"]

Log = Callable[[str], None]
LandmarkTask = WorldComp2DTask | LandmarkBaselineTask

FIGURE_CAPTIONS = {
    "predictions": "Validation faces (rows) and each model's landmarks (red crosses) next to "
    "the annotation (green dots), in the 256 px crops; panel titles give the face's NME.",
    "ced": "Cumulative error distribution on the validation faces: the fraction of faces whose "
    "NME (inter-ocular, %) is at most x; AUC@10 in the legend.",
    "embedding": "WorldComp2D's codes of views centred at random points on validation faces, "
    "embedded in 2-D (PCA, t-SNE), coloured by the face part of the landmark nearest to each "
    "view's centre. The encoder never sees a coordinate: any order here comes from PWConLoss.",
}

# Stage 2 warns on purpose when its encoder checkpoint is missing (quick runs); later stages
# keep the frozen encoder in eval mode; loaders run with few workers.
_EXPECTED_WARNINGS = (
    r".*num_workers.*",
    r".*frozen encoder is untrained.*",
    r"Found \d+ module\(s\) in eval mode",
)


# --------------------------------------------------------------------------------------------
# Training


class _StepClock(Callback):
    """Notes the wall-clock time at the end of every training batch (in ``times``)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter())


def _seconds_per_step(
    task: LandmarkTask, data: FaceLandmarkDataModule, settings: LandmarkBenchSettings
) -> float:
    """Median step time (data loading included) of a few steps on a throwaway copy."""
    clock = _StepClock()
    pl.seed_everything(settings.seed, verbose=False)
    fit(
        copy.deepcopy(task), data, max_steps=settings.calibration_steps + 1, callbacks=[clock],
        progress=settings.progress_bar, expected_warnings=_EXPECTED_WARNINGS,
    )  # fmt: skip
    gaps = np.diff(clock.times)  # the first step (warm-up, worker start) is left out
    if len(gaps) == 0:
        raise RuntimeError("calibration ran fewer than two steps")
    return float(np.median(gaps))


def _train(
    task: LandmarkTask,
    data: FaceLandmarkDataModule,
    budget_s: float,
    settings: LandmarkBenchSettings,
    log: Log,
) -> tuple[TrainingRecord, pl.Trainer]:
    """Train ``task``: ``settings.max_steps`` steps, or epochs that fill ``budget_s``; returns
    the run's record and the trainer (to save the weights)."""
    data.setup("fit")
    steps_per_epoch = len(data.train_set) // data.batch_size
    seconds: float | None = None  # calibrated time per step (budgeted runs)
    epochs: int | None = None
    if settings.max_steps is None:
        seconds = _seconds_per_step(task, data, settings)
        epochs = settings.max_epochs or max(1, math.floor(budget_s / (seconds * steps_per_epoch)))
        log(f"  {seconds:.2f} s/step x {steps_per_epoch} steps/epoch -> {epochs} epochs")
    pl.seed_everything(settings.seed, verbose=False)
    record = fit(
        task, data, max_steps=settings.max_steps, max_epochs=epochs,
        max_time=None if seconds is None else timedelta(seconds=budget_s),
        progress=settings.progress_bar, expected_warnings=_EXPECTED_WARNINGS,
    )  # fmt: skip
    training = TrainingRecord(
        steps_per_epoch=steps_per_epoch,
        minutes=record.seconds / 60,
        epochs=record.epochs,
        steps=record.steps,
        calibrated_seconds_per_step=seconds,
        budget_minutes=None if seconds is None else budget_s / 60,
    )
    return training, record.trainer


def _split_summary(data: FaceLandmarkDataModule) -> SplitSummary:
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


def _trained_run(
    run: str,
    chosen: dict[str, Any],
    budget_s: float,
    settings: LandmarkBenchSettings,
    store: TrainedStore,
    log: Log,
    init_from: str | None = None,
    reuse: bool = True,
) -> tuple[LandmarkTask, FaceLandmarkDataModule, TrainingRecord]:
    """Train ``run`` and save it, or (``reuse`` and saved with ``chosen``) load it; returns
    (task, data module set up for fit, its record)."""
    model_args, data_args = run_args(settings, run)
    if run in STAGES:
        model_args["init_from"] = init_from
    task = RUNS[run](**model_args)
    data = FaceLandmarkDataModule(**data_args)
    checkpoint, meta = store.paths(run)
    entry = store.saved(run, chosen) if reuse else None
    if entry is not None:
        data.setup("fit")
        split = _split_summary(data)
        if not _same_split(entry["split"], split):
            raise ConfigError(
                f"{meta}: trained on another split ({entry['split']}), now "
                f"{dataclasses.asdict(split)}: the faces on disk changed; pass --retrain"
            )
        # Our own file (a Lightning checkpoint is a pickle): only trusted folders.
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        task.load_state_dict(state)
        log(f"{run}: reusing {checkpoint} (trained {entry['trained_at']})")
        return task, data, TrainingRecord.from_saved(entry["record"], entry["trained_at"])
    log(f"{run}: training")
    record, trainer = _train(task, data, budget_s, settings, log)
    trainer.save_checkpoint(checkpoint, weights_only=True)
    record.trained_at = datetime.now().astimezone().isoformat(timespec="seconds")
    entry = {
        "model": chosen["model"],
        "run": run,
        "trained_at": record.trained_at,
        "fingerprint": json_fingerprint(chosen),
        "checkpoint": checkpoint.name,
        "record": record.saved(),
        "split": dataclasses.asdict(_split_summary(data)),
        "settings": chosen,
    }
    write_atomic(meta, json.dumps(entry, indent=2) + "\n")
    log(f"{run}: saved {checkpoint}")
    return task, data, record


def _train_worldcomp2d(
    settings: LandmarkBenchSettings, store: TrainedStore, log: Log
) -> tuple[WorldComp2D, FaceLandmarkDataModule, dict[str, TrainingRecord]]:
    """The three stages, chained through checkpoints; returns (model, data, records)."""
    chosen = training_settings(settings, "worldcomp2d")
    budget = settings.budget_minutes * 60
    previous: str | None = None
    reuse = True
    records: dict[str, TrainingRecord] = {}
    task = data = None
    for stage, share in zip(STAGES, settings.stage_shares, strict=True):
        log(f"WorldComp2D stage {stage}")
        task, data, record = _trained_run(
            stage, chosen, budget * share, settings, store, log, previous, reuse
        )
        reuse = record.reused  # a stage trained now makes the saved later stages stale
        previous = str(store.paths(stage)[0])
        records[stage] = record
    assert isinstance(task, WorldComp2DTask) and data is not None
    return task.export_model(), data, records


def _train_baseline(
    name: str, settings: LandmarkBenchSettings, store: TrainedStore, log: Log
) -> tuple[nn.Module, FaceLandmarkDataModule, dict[str, TrainingRecord]]:
    chosen = training_settings(settings, name)
    task, data, record = _trained_run(
        name, chosen, settings.budget_minutes * 60, settings, store, log
    )
    return task.export_model(), data, {name: record}


@dataclass
class _TrainedModel:
    """A model to evaluate: its network, its data (for the validation faces), its runs."""

    name: str
    model: nn.Module
    data: FaceLandmarkDataModule
    records: list[TrainingRecord]


def _train_all(
    settings: LandmarkBenchSettings, store: TrainedStore, log: Log
) -> tuple[list[_TrainedModel], dict[str, TrainingRecord], WorldComp2D | None]:
    """Train or load every model of ``settings``: (the models to evaluate, records per run,
    the WorldComp2D model or None)."""
    trained: list[_TrainedModel] = []
    training: dict[str, TrainingRecord] = {}
    wc_model = None
    for name in settings.models:
        if name == "worldcomp2d":
            wc_model, data, records = _train_worldcomp2d(settings, store, log)
            coarse = copy.deepcopy(wc_model)
            coarse.use_refiner = False
            stages = [records[s] for s in STAGES]
            trained.append(_TrainedModel(name, wc_model, data, stages))
            trained.append(_TrainedModel("worldcomp2d_no_refiner", coarse, data, stages[:2]))
        else:
            model, data, records = _train_baseline(name, settings, store, log)
            trained.append(_TrainedModel(name, model, data, [records[name]]))
        training.update(records)
    return trained, training, wc_model


# --------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class _Evaluation:
    """One model on every validation face: per-face NME ``(N,)`` (original pixels), the crops
    ``(N, C, S, S)``, its landmarks and the annotation in crop pixels ``(N, K, 2)``."""

    nmes: Tensor
    crops: Tensor
    crop_points: Tensor
    truth: Tensor


def _evaluate(model: nn.Module, data: FaceLandmarkDataModule) -> _Evaluation:
    """Per-face NME (original pixels) on every validation face, plus crops and predictions."""
    model.eval()
    nmes, crops, predicted, truth_crop = [], [], [], []
    with torch.no_grad():
        for batch in data.val_dataloader():
            crop_points = model(batch["image"])
            original = uncrop_points(crop_points, batch["affine"])
            nmes.append(nme(original, batch["original_points"]))
            crops.append(batch["image"])
            predicted.append(crop_points)
            truth_crop.append(batch["points"])
    return _Evaluation(
        nmes=torch.cat(nmes),
        crops=torch.cat(crops),
        crop_points=torch.cat(predicted),
        truth=torch.cat(truth_crop),
    )


def _accuracy(nmes: Tensor) -> Accuracy:
    return Accuracy(
        nme=float(nmes.double().mean()),
        fr10=float(failure_rate(nmes, 0.10)),
        auc10=float(auc(nmes, 0.10)),
        num_faces=len(nmes),
    )


def _costs_and_speed(
    name: str, model: nn.Module, crop: Tensor, workdir: Path, settings: LandmarkBenchSettings
) -> CostsAndSpeed:
    warmup, repeats = settings.latency_timing
    params = count_parameters(model)
    refiner = model.refiner if isinstance(model, WorldComp2D) else None
    if name == "worldcomp2d_no_refiner" and refiner is not None:
        params -= count_parameters(refiner)  # built but switched off
    path = workdir / f"{name}.onnx"
    parity_error = None
    with quiet_lightning(_EXPECTED_WARNINGS):
        try:
            exported = export_onnx(model, crop, path, atol=1e-4)
        except OnnxParityError as error:
            # E.g. an undertrained heatmap model whose best cell is a near-tie that rounding
            # decides differently: still time the graph, and report the mismatch.
            parity_error = str(error)
            exported = export_onnx(model, crop, path, check_parity=False)
    ort = {
        t: measure_latency_onnx(exported.path, crop, threads=t, warmup=warmup, repeats=repeats)
        for t in (1, 2)
    }
    torch1 = measure_latency_torch(model, crop, threads=1, warmup=warmup, repeats=repeats)
    return CostsAndSpeed(
        params=params,
        macs=int(count_macs(model, crop)["macs"]),
        ort_faces_per_s_1thread=ort[1].items_per_s,
        ort_faces_per_s_2threads=ort[2].items_per_s,
        torch_faces_per_s_1thread=torch1.items_per_s,
        ort_ms_1thread=ort[1].median_ms,
        ort_ms_2threads=ort[2].median_ms,
        torch_ms_1thread=torch1.median_ms,
        onnx_max_abs_diff=exported.max_abs_diff,
        onnx_parity_error=parity_error,
        onnx_exporter=exported.exporter,
    )


def _ratios(models: Mapping[str, ModelResult]) -> list[Ratio]:
    """Each model against each baseline: how many times fewer params / MACs, NME relative,
    how many times faster (ONNX Runtime, 1 thread)."""
    rows = []
    for baseline in BASELINES:
        if baseline not in models:
            continue
        b = models[baseline]
        for name, m in models.items():
            if name == baseline:
                continue
            b_nme = b.accuracy.nme
            rows.append(
                Ratio(
                    model=name,
                    baseline=baseline,
                    params_baseline_over_model=b.costs.params / m.costs.params,
                    macs_baseline_over_model=b.costs.macs / m.costs.macs,
                    nme_model_over_baseline=m.accuracy.nme / b_nme if b_nme > 0 else None,
                    ort_1thread_speed_model_over_baseline=(
                        m.costs.ort_faces_per_s_1thread / b.costs.ort_faces_per_s_1thread
                    ),
                )
            )
    return rows


def _targets(models: Mapping[str, ModelResult]) -> list[Target]:
    """The issue's targets with the measured value and whether it is met."""
    rows: list[tuple[str, float, str, float]] = []
    wc, heat = models.get("worldcomp2d"), models.get("heatmap_baseline")
    if wc and heat:
        rows += [
            ("params: heatmap / WorldComp2D", heat.costs.params / wc.costs.params, ">=", 4.0),
            ("MACs: heatmap / WorldComp2D", heat.costs.macs / wc.costs.macs, ">=", 2.2),
            ("NME: WorldComp2D / heatmap", wc.accuracy.nme / heat.accuracy.nme, "<=", 1.10),
        ]
    if models:
        best = min(models, key=lambda n: models[n].accuracy.nme)
        rows.append((f"best NME (%) ({best})", 100 * models[best].accuracy.nme, "<=", 5.0))
    if wc:
        speed = wc.costs.ort_faces_per_s_1thread
        rows.append(("WorldComp2D ORT faces/s, 1 thread", speed, ">=", 200))
    out = []
    for target, value, op, bound in rows:
        met = value >= bound if op == ">=" else value <= bound
        out.append(Target(target=target, value=value, needed=f"{op} {bound}", met=met))
    return out


# --------------------------------------------------------------------------------------------
# Figures


def _figures(
    evaluations: Mapping[str, _Evaluation],
    wc_model: WorldComp2D | None,
    settings: LandmarkBenchSettings,
) -> dict[str, bytes]:
    first = next(iter(evaluations.values()))
    count = len(first.nmes)
    shown = np.linspace(0, count - 1, min(settings.figure_faces, count)).round().astype(int)
    figures = {
        "predictions": png_bytes(
            prediction_panels(
                first.crops[shown],
                first.truth[shown],
                {name: e.crop_points[shown] for name, e in evaluations.items()},
                {name: e.nmes[shown] for name, e in evaluations.items()},
            )
        ),
        "ced": png_bytes(ced_figure({name: e.nmes for name, e in evaluations.items()})),
    }
    if wc_model is not None:
        faces = min(settings.embedding_faces, count)
        codes, nearest, _ = latent_codes_by_nearest_landmark(
            wc_model, first.crops[:faces], first.truth[:faces], settings.views_per_face,
            seed=settings.seed,
        )  # fmt: skip
        figures["embedding"] = png_bytes(
            latent_embedding_figure(codes, nearest, tsne=settings.tsne, seed=settings.seed)
        )
    return figures


# --------------------------------------------------------------------------------------------
# The pipeline


def run_landmark_bench(
    settings: LandmarkBenchSettings | None = None,
    log: Log = print,
    *,
    trained_dir: str | Path | None = None,
    retrain: bool = False,
    train_only: bool = False,
) -> LandmarkBenchResult:
    """Train (or load from ``trained_dir``), evaluate and time every model of ``settings``.

    ``trained_dir``: where trained runs are saved and found (see the module docstring);
    ``None``: a temporary folder (nothing reused or kept). ``retrain``: train the models of
    ``settings`` again, replacing their saved runs. ``train_only``: stop after training and
    saving (needs ``trained_dir``); the result then has only the training records.
    """
    settings = settings or LandmarkBenchSettings.preset("full")
    settings.check()
    if train_only and trained_dir is None:
        raise ValueError("train_only needs a trained_dir (else the trained models are lost)")
    start = time.perf_counter()
    models: dict[str, ModelResult] = {}
    evaluations: dict[str, _Evaluation] = {}
    split: SplitSummary | None = None
    figures: dict[str, bytes] = {}
    # The first task's initial weights come from the global RNG, whose start is random in a
    # fresh process: seed it. Later tasks are built after seeded training runs, and the tour
    # seeds every section with the same seed, so their numbers are as they were.
    pl.seed_everything(settings.seed, verbose=False)
    with torch_num_threads(settings.threads):
        with tempfile.TemporaryDirectory(prefix="worldcomp2d-bench-") as tmp:
            workdir = Path(tmp)
            store = TrainedStore(Path(trained_dir) if trained_dir else workdir / "trained")
            if retrain:
                for name in settings.models:
                    store.forget(name)
            trained, training, wc_model = _train_all(settings, store, log)
            for entry in [] if train_only else trained:
                log(f"evaluating {entry.name}")
                split = split or _split_summary(entry.data)
                evaluation = _evaluate(entry.model, entry.data)
                crop = evaluation.crops[:1].clone()
                models[entry.name] = ModelResult(
                    accuracy=_accuracy(evaluation.nmes),
                    costs=_costs_and_speed(entry.name, entry.model, crop, workdir, settings),
                    train_minutes=sum(r.minutes for r in entry.records),
                    reused=all(r.reused for r in entry.records),
                    trained_at=max(r.trained_at for r in entry.records),
                )
                evaluations[entry.name] = evaluation
            if not train_only:
                figures = _figures(evaluations, wc_model, settings)
    saved_in = str(Path(trained_dir).resolve()) if trained_dir else None
    if train_only:
        return LandmarkBenchResult(settings, training, saved_in, time.perf_counter() - start)
    ordered = {n: models[n] for n in MODEL_NAMES if n in models}
    return LandmarkBenchResult(
        settings=settings,
        training=training,
        trained_dir=saved_in,
        models=ordered,
        split=split,
        ratios=_ratios(ordered),
        targets=_targets(ordered),
        machine=machine_info(),
        figures=figures,
        seconds=time.perf_counter() - start,  # last: the time of all of the above
    )
