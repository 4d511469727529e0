"""The facial-landmark benchmark pipeline, shared by ``benchmarks/landmarks.py`` and the tour's
"worldcomp2d" section.

The benchmark (:func:`run_landmark_bench`) trains, on the same faces, split, crops and
augmentation, under the same time budget per model:

- ``worldcomp2d``: the three stages (encoder, localizer, refiner), each from the previous
  stage's checkpoint, sharing the model's budget (``stage_shares``, default 25 / 20 / 15 of 60
  minutes, as the stage configs say); ``worldcomp2d_no_refiner`` is the same model after stage
  2 (its training time: stages 1 + 2);
- ``heatmap_baseline`` (PIPNet-style, ResNet-18) and ``pfld_baseline`` (PFLD-style,
  MobileNetV2), from scratch.

Every run is ``lightning.Trainer.fit`` on the task and data module of its config (no run
directories, no validation during training). With a budget, a few calibration steps measure
the time per step (data loading included) and set ``max_epochs`` so the run fills its budget
(``trainer.max_time`` stops it at the budget in any case); the epochs used are recorded, so
``wherewhat fit --config ... --trainer.max_epochs E`` repeats the run. The last weights are
evaluated (no checkpoint picked on the validation faces). Then per model: parameters, MACs
(:func:`~wherewhat.bench.count_macs`), NME / FR@10 / AUC@10 (inter-ocular, original pixels,
every validation face), batch-1 latency from a 256 px face crop to landmarks in ONNX Runtime
(1 and 2 threads, parity-checked export) and PyTorch (1 thread); ratios to each baseline; the
issue's targets; figures (predictions on validation faces, cumulative error curves, a 2-D
embedding of WorldComp2D's view codes coloured by the nearest landmark's face part).

``quick`` (``benchmarks/landmarks.py --quick``): a few steps per run on a few dozen faces;
everything else the same.

Trained models persist in ``trained_dir`` (one weights-only Lightning checkpoint and one JSON
per training run: ``worldcomp2d-{encoder,localizer,refiner}``, ``heatmap_baseline``,
``pfld_baseline``), so that models trained in separate processes are evaluated and timed
together in one later run. The JSON holds the settings that decide the training
(:func:`training_settings`: every run's model and data arguments, budget, shares, steps, seed,
threads), their fingerprint, when it was trained and the run's record (minutes, epochs, steps).
A run whose saved fingerprint matches is loaded instead of trained, and its recorded minutes
are reported (``reused``, ``trained_at``); a saved run with other settings is an error naming
the file and the differences, unless ``retrain`` replaces it. WorldComp2D is saved stage by
stage: an interrupted model resumes at its first missing stage (a stage trained again makes
every later stage train again, as each starts from the previous one). ``train_only`` trains
and saves without evaluating. The fingerprint does not cover the code: after changing a model
or task, retrain.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from wherewhat.io import json_fingerprint
from wherewhat.training.quiet import quiet_lightning

__all__ = [
    "MODEL_NAMES",
    "BASELINES",
    "RUNS",
    "LandmarkBenchSettings",
    "run_landmark_bench",
    "training_settings",
    "landmark_markdown",
    "training_markdown",
    "FIGURE_CAPTIONS",
]

STAGES = ("encoder", "localizer", "refiner")
MODEL_NAMES = ("worldcomp2d", "worldcomp2d_no_refiner", "heatmap_baseline", "pfld_baseline")
BASELINES = ("heatmap_baseline", "pfld_baseline")
# Training runs (config key -> task class) in the order they run.
RUNS: dict[str, str] = {
    "encoder": "wherewhat.methods.worldcomp2d.task.WorldComp2DTask",
    "localizer": "wherewhat.methods.worldcomp2d.task.WorldComp2DTask",
    "refiner": "wherewhat.methods.worldcomp2d.task.WorldComp2DTask",
    "heatmap_baseline": "wherewhat.tasks.landmark_baselines.PIPHeatmapTask",
    "pfld_baseline": "wherewhat.tasks.landmark_baselines.PFLDTask",
}
DATA_CLASS = "wherewhat.data.face_datamodule.FaceLandmarkDataModule"
RESULT_KEYS = (
    "params", "macs", "nme", "fr10", "auc10", "ort_faces_per_s_1thread",
    "ort_faces_per_s_2threads", "torch_faces_per_s_1thread", "train_minutes",
)  # fmt: skip
FIGURE_CAPTIONS = {
    "predictions": "Validation faces (rows) and each model's landmarks (red crosses) next to "
    "the annotation (green dots), in the 256 px crops; panel titles give the face's NME.",
    "ced": "Cumulative error distribution on the validation faces: the fraction of faces whose "
    "NME (inter-ocular, %) is at most x; AUC@10 in the legend.",
    "embedding": "WorldComp2D's codes of views centred at random points on validation faces, "
    "embedded in 2-D (PCA, t-SNE), coloured by the face part of the landmark nearest to each "
    "view's centre. The encoder never sees a coordinate: any order here comes from PWConLoss.",
}


@dataclass
class LandmarkBenchSettings:
    """What one benchmark run does (:meth:`preset`: ``full``, ``quick``, ``tour``).

    ``runs``: per training run (keys of :data:`RUNS`) the task's and the data module's init
    arguments, ``{"model": {...}, "data": {...}}`` (``benchmarks/landmarks.py`` reads them from
    the configs); ``data_overrides`` apply to every data module (e.g. ``max_faces`` for quick
    runs). ``budget_minutes`` per model (WorldComp2D's split by ``stage_shares``); with
    ``max_steps`` every run takes exactly that many steps instead (no budget); ``max_epochs``
    replaces the calibrated epochs.
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


# --------------------------------------------------------------------------------------------
# Building and training


def _import(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _run_args(settings: LandmarkBenchSettings, run: str) -> tuple[dict, dict]:
    args = settings.runs.get(run, {})
    model = dict(args.get("model") or {})
    if run in ("encoder", "localizer", "refiner"):
        model["stage"] = run
    data = {**(args.get("data") or {}), **settings.data_overrides, "root": settings.faces_root}
    return model, data


# Stage 2 warns on purpose when its encoder checkpoint is missing (quick runs); later stages
# keep the frozen encoder in eval mode; loaders run with few workers.
_EXPECTED_WARNINGS = (
    r".*num_workers.*",
    r".*frozen encoder is untrained.*",
    r"Found \d+ module\(s\) in eval mode",
)


def _trainer(settings: LandmarkBenchSettings, callbacks=(), **kwargs: Any) -> Any:
    import lightning.pytorch as pl

    from wherewhat.training.checkpoint_io import AtomicCheckpointIO

    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=settings.progress_bar,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks),
        plugins=[AtomicCheckpointIO()], **kwargs,
    )  # fmt: skip


def _step_clock() -> Any:
    """A Lightning callback that notes the wall-clock time at the end of every training batch
    (in its ``times``); built here so that importing this module does not import Lightning."""
    from lightning.pytorch.callbacks import Callback

    class StepClock(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_end(self, *args: Any) -> None:
            self.times.append(time.perf_counter())

    return StepClock()


def _seconds_per_step(task: Any, data: Any, settings: LandmarkBenchSettings) -> float:
    """Median step time (data loading included) of a few steps on a throwaway copy."""
    import lightning.pytorch as pl

    clock = _step_clock()
    pl.seed_everything(settings.seed, verbose=False)
    with quiet_lightning(_EXPECTED_WARNINGS):
        trainer = _trainer(settings, [clock], max_steps=settings.calibration_steps + 1)
        trainer.fit(copy.deepcopy(task), datamodule=data)
    gaps = np.diff(clock.times)  # the first step (warm-up, worker start) is left out
    if len(gaps) == 0:
        raise RuntimeError("calibration ran fewer than two steps")
    return float(np.median(gaps))


def _fit(
    task: Any, data: Any, budget_s: float | None, settings: LandmarkBenchSettings, log: Callable
) -> dict[str, Any]:
    """Train ``task``: ``settings.max_steps`` steps, or epochs that fill ``budget_s``."""
    import lightning.pytorch as pl

    data.setup("fit")
    steps_per_epoch = len(data.train_set) // data.batch_size
    record: dict[str, Any] = {"steps_per_epoch": steps_per_epoch}
    if settings.max_steps is not None:
        limits: dict[str, Any] = {"max_steps": settings.max_steps, "max_epochs": -1}
    else:
        seconds = _seconds_per_step(task, data, settings)
        epochs = settings.max_epochs or max(1, math.floor(budget_s / (seconds * steps_per_epoch)))
        record.update(calibrated_seconds_per_step=seconds, budget_minutes=budget_s / 60)
        limits = {"max_epochs": epochs, "max_time": timedelta(seconds=budget_s)}
        log(f"  {seconds:.2f} s/step x {steps_per_epoch} steps/epoch -> {epochs} epochs")
    pl.seed_everything(settings.seed, verbose=False)
    start = time.perf_counter()
    with quiet_lightning(_EXPECTED_WARNINGS):
        trainer = _trainer(settings, **limits)
        trainer.fit(task, datamodule=data)
    minutes = (time.perf_counter() - start) / 60
    record.update(minutes=minutes, epochs=trainer.current_epoch, steps=trainer.global_step)
    record["trainer"] = trainer
    return record


# --------------------------------------------------------------------------------------------
# Saved training runs


def _runs_of(model: str) -> tuple[str, ...]:
    return STAGES if model == "worldcomp2d" else (model,)


def training_settings(settings: LandmarkBenchSettings, model: str) -> dict[str, Any]:
    """Everything that decides how ``model`` (``worldcomp2d`` or a baseline) trains, as plain
    JSON values: the input of its fingerprint. Budget, shares and calibration count only for
    budgeted runs (without ``max_steps``)."""
    budgeted = settings.max_steps is None
    shares = list(settings.stage_shares) if budgeted and model == "worldcomp2d" else None
    runs = {run: dict(zip(("model", "data"), _run_args(settings, run), strict=True))
            for run in _runs_of(model)}  # fmt: skip
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


def _fingerprint(chosen: Mapping[str, Any]) -> str:
    return json_fingerprint(chosen)


def _differences(saved: Any, now: Any, key: str = "") -> list[str]:
    """``"key: saved (saved) vs now (now)"`` for every leaf that differs."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [
            line
            for k in sorted(set(saved) | set(now))
            for line in _differences(
                saved.get(k, "(absent)"), now.get(k, "(absent)"), f"{key}.{k}" if key else k
            )
        ]
    return [] if saved == now else [f"{key}: {saved!r} (saved) vs {now!r} (now)"]


@dataclass
class _TrainedStore:
    """The folder of trained runs: ``<stem>.ckpt`` (weights-only Lightning checkpoint) and
    ``<stem>.json`` (settings, fingerprint, record), the JSON written last, both atomically."""

    folder: Path

    def paths(self, run: str) -> tuple[Path, Path]:
        stem = f"worldcomp2d-{run}" if run in STAGES else run
        return self.folder / f"{stem}.ckpt", self.folder / f"{stem}.json"

    def saved(self, run: str, chosen: dict[str, Any]) -> dict[str, Any] | None:
        """The saved entry of ``run`` trained with ``chosen`` settings, ``None`` if there is
        none; ``ConfigError`` naming the file and the differences if it had other settings."""
        from wherewhat.errors import ConfigError

        checkpoint, meta = self.paths(run)
        if not meta.is_file():
            return None
        entry = json.loads(meta.read_text())
        if entry.get("fingerprint") != _fingerprint(chosen):
            differences = _differences(entry.get("settings"), chosen) or ["(fingerprint only)"]
            raise ConfigError(
                f"{meta}: saved {run!r} was trained with other settings: "
                + "; ".join(differences)
                + ". Pass --retrain (retrain=True) to train it again and replace it, or use "
                "another --trained-dir; models trained with different settings are never mixed"
            )
        if not checkpoint.is_file():
            raise ConfigError(f"{meta}: its weights {checkpoint} are missing; pass --retrain")
        return entry

    def forget(self, model: str) -> None:
        """Drop ``model``'s saved runs (their JSON, which marks a run as done)."""
        for run in _runs_of(model):
            self.paths(run)[1].unlink(missing_ok=True)


def _trained_run(
    run: str,
    chosen: dict[str, Any],
    budget_s: float,
    settings: LandmarkBenchSettings,
    store: _TrainedStore,
    log: Callable,
    init_from: str | None = None,
    reuse: bool = True,
) -> tuple[Any, Any, dict[str, Any]]:
    """Train ``run`` and save it, or (``reuse`` and saved with ``chosen``) load it; returns
    (task, data module set up for fit, record with ``reused`` and ``trained_at``)."""
    import torch

    from wherewhat.errors import ConfigError

    model_args, data_args = _run_args(settings, run)
    if run in STAGES:
        model_args["init_from"] = init_from
    task = _import(RUNS[run])(**model_args)
    data = _import(DATA_CLASS)(**data_args)
    checkpoint, meta = store.paths(run)
    entry = store.saved(run, chosen) if reuse else None
    if entry is not None:
        data.setup("fit")
        split = {k: v for k, v in _split_summary(data).items() if k != "how"}
        if split != {k: v for k, v in entry["split"].items() if k != "how"}:
            raise ConfigError(
                f"{meta}: trained on another split ({entry['split']}), now {split}: the faces "
                "on disk changed; pass --retrain"
            )
        # Our own file (a Lightning checkpoint is a pickle): only trusted folders.
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        task.load_state_dict(state)
        log(f"{run}: reusing {checkpoint} (trained {entry['trained_at']})")
        return task, data, {**entry["record"], "reused": True, "trained_at": entry["trained_at"]}
    log(f"{run}: training")
    record = _fit(task, data, budget_s, settings, log)
    trainer = record.pop("trainer")
    trainer.save_checkpoint(checkpoint, weights_only=True)
    entry = {
        "model": chosen["model"],
        "run": run,
        "trained_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "fingerprint": _fingerprint(chosen),
        "checkpoint": checkpoint.name,
        "record": record,
        "split": _split_summary(data),
        "settings": chosen,
    }
    from wherewhat.io import write_atomic

    write_atomic(meta, json.dumps(entry, indent=2) + "\n")
    log(f"{run}: saved {checkpoint}")
    return task, data, {**record, "reused": False, "trained_at": entry["trained_at"]}


def _train_worldcomp2d(
    settings: LandmarkBenchSettings, store: _TrainedStore, log: Callable
) -> tuple[Any, Any, dict[str, Any]]:
    """The three stages, chained through checkpoints; returns (model, data, records)."""
    chosen = training_settings(settings, "worldcomp2d")
    budget = settings.budget_minutes * 60
    previous: str | None = None
    reuse = True
    records, task, data = {}, None, None
    for stage, share in zip(STAGES, settings.stage_shares, strict=True):
        log(f"WorldComp2D stage {stage}")
        task, data, record = _trained_run(
            stage, chosen, budget * share, settings, store, log, previous, reuse
        )
        reuse = record["reused"]  # a stage trained now makes the saved later stages stale
        previous = str(store.paths(stage)[0])
        records[stage] = record
    assert task is not None
    return task.export_model(), data, records


def _train_baseline(
    name: str, settings: LandmarkBenchSettings, store: _TrainedStore, log: Callable
) -> tuple[Any, Any, dict[str, Any]]:
    chosen = training_settings(settings, name)
    task, data, record = _trained_run(
        name, chosen, settings.budget_minutes * 60, settings, store, log
    )
    return task.export_model(), data, {name: record}


# --------------------------------------------------------------------------------------------
# Evaluation


def _evaluate(model: Any, data: Any) -> dict[str, Any]:
    """Per-face NME (original pixels) on every validation face, plus crops and predictions."""
    import torch

    from wherewhat.data.face_crops import uncrop_points
    from wherewhat.metrics.landmarks import nme

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
    return {
        "nmes": torch.cat(nmes),
        "crops": torch.cat(crops),
        "crop_points": torch.cat(predicted),
        "truth": torch.cat(truth_crop),
    }


def _accuracy(nmes: Any) -> dict[str, float]:
    from wherewhat.metrics.landmarks import auc, failure_rate

    return {
        "nme": float(nmes.double().mean()),
        "fr10": float(failure_rate(nmes, 0.10)),
        "auc10": float(auc(nmes, 0.10)),
        "num_faces": len(nmes),
    }


def _costs_and_speed(
    name: str, model: Any, crop: Any, workdir: Path, settings: LandmarkBenchSettings
) -> dict[str, Any]:
    from wherewhat.bench import (
        OnnxParityError,
        count_macs,
        count_parameters,
        export_onnx,
        measure_latency_onnx,
        measure_latency_torch,
    )

    warmup, repeats = settings.latency_timing
    params = count_parameters(model)
    if name == "worldcomp2d_no_refiner" and model.refiner is not None:
        params -= count_parameters(model.refiner)  # built but switched off
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
    return {
        "params": params,
        "macs": int(count_macs(model, crop)["macs"]),
        "ort_faces_per_s_1thread": ort[1].items_per_s,
        "ort_faces_per_s_2threads": ort[2].items_per_s,
        "torch_faces_per_s_1thread": torch1.items_per_s,
        "ort_ms_1thread": ort[1].median_ms,
        "ort_ms_2threads": ort[2].median_ms,
        "torch_ms_1thread": torch1.median_ms,
        "onnx_max_abs_diff": exported.max_abs_diff,
        "onnx_parity_error": parity_error,
        "onnx_exporter": exported.exporter,
    }


def _split_summary(data: Any) -> dict[str, Any]:
    train, val = data.train_records, data.val_records
    return {
        "how": (
            "photo-disjoint split by file name (faces of one photo stay together): the sorted "
            f"photo names shuffled with split_seed={data.split_seed}, {data.val_fraction:.0%} of "
            "the photos form the validation split (wherewhat.data.faces.split_by_name)"
        ),
        "root": str(Path(data.root).resolve()),
        "val_fraction": data.val_fraction,
        "split_seed": data.split_seed,
        "max_faces": data.max_faces,
        "train_faces": len(train),
        "val_faces": len(val),
        "train_photos": len({r.group for r in train}),
        "val_photos": len({r.group for r in val}),
        "val_subsets": {
            s: sum(r.subset == s for r in val) for s in sorted({r.subset for r in val})
        },
    }


def _ratios(models: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
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
            rows.append({
                "model": name,
                "baseline": baseline,
                "params_baseline_over_model": b["params"] / m["params"],
                "macs_baseline_over_model": b["macs"] / m["macs"],
                "nme_model_over_baseline": m["nme"] / b["nme"] if b["nme"] > 0 else None,
                "ort_1thread_speed_model_over_baseline": (
                    m["ort_faces_per_s_1thread"] / b["ort_faces_per_s_1thread"]
                ),
            })  # fmt: skip
    return rows


def _targets(models: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets with the measured value and whether it is met."""
    rows = []
    wc, heat = models.get("worldcomp2d"), models.get("heatmap_baseline")
    if wc and heat:
        rows += [
            ("params: heatmap / WorldComp2D", heat["params"] / wc["params"], ">=", 4.0),
            ("MACs: heatmap / WorldComp2D", heat["macs"] / wc["macs"], ">=", 2.2),
            ("NME: WorldComp2D / heatmap", wc["nme"] / heat["nme"], "<=", 1.10),
        ]
    if models:
        best = min(models, key=lambda n: models[n]["nme"])
        rows.append((f"best NME (%) ({best})", 100 * models[best]["nme"], "<=", 5.0))
    if wc:
        rows.append(("WorldComp2D ORT faces/s, 1 thread", wc["ort_faces_per_s_1thread"], ">=", 200))
    out = []
    for target, value, op, bound in rows:
        met = value >= bound if op == ">=" else value <= bound
        out.append({"target": target, "value": value, "needed": f"{op} {bound}", "met": met})
    return out


# --------------------------------------------------------------------------------------------
# Figures


def _figures(
    evaluations: Mapping[str, Mapping[str, Any]],
    wc_model: Any | None,
    settings: LandmarkBenchSettings,
) -> dict[str, bytes]:
    from wherewhat.io import png_bytes
    from wherewhat.methods.worldcomp2d.figures import (
        ced_figure,
        latent_codes_by_nearest_landmark,
        latent_embedding_figure,
        prediction_panels,
    )

    first = next(iter(evaluations.values()))
    count = len(first["nmes"])
    shown = np.linspace(0, count - 1, min(settings.figure_faces, count)).round().astype(int)
    figures = {
        "predictions": png_bytes(
            prediction_panels(
                first["crops"][shown],
                first["truth"][shown],
                {name: e["crop_points"][shown] for name, e in evaluations.items()},
                {name: e["nmes"][shown] for name, e in evaluations.items()},
            )
        ),
        "ced": png_bytes(ced_figure({name: e["nmes"] for name, e in evaluations.items()})),
    }
    if wc_model is not None:
        faces = min(settings.embedding_faces, count)
        codes, nearest, _ = latent_codes_by_nearest_landmark(
            wc_model, first["crops"][:faces], first["truth"][:faces], settings.views_per_face,
            seed=settings.seed,
        )  # fmt: skip
        figures["embedding"] = png_bytes(
            latent_embedding_figure(codes, nearest, tsne=settings.tsne, seed=settings.seed)
        )
    return figures


# --------------------------------------------------------------------------------------------
# The pipeline


def _train_all(
    settings: LandmarkBenchSettings, store: _TrainedStore, log: Callable
) -> tuple[list[tuple[str, Any, Any, list[dict[str, Any]]]], dict[str, Any], Any]:
    """Train or load every model of ``settings``: ([(name, model, data, its run records)],
    records per run, the WorldComp2D model or None)."""
    trained, training, wc_model = [], {}, None
    for name in settings.models:
        if name == "worldcomp2d":
            model, data, records = _train_worldcomp2d(settings, store, log)
            wc_model = model
            coarse = copy.deepcopy(model)
            coarse.use_refiner = False
            stages = [records[s] for s in STAGES]
            trained.append((name, model, data, stages))
            trained.append(("worldcomp2d_no_refiner", coarse, data, stages[:2]))
        else:
            model, data, records = _train_baseline(name, settings, store, log)
            trained.append((name, model, data, [records[name]]))
        training.update(records)
    return trained, training, wc_model


def run_landmark_bench(
    settings: LandmarkBenchSettings | None = None,
    log: Callable[[str], None] = print,
    *,
    trained_dir: str | Path | None = None,
    retrain: bool = False,
    train_only: bool = False,
) -> dict[str, Any]:
    """Train (or load from ``trained_dir``), evaluate and time every model of ``settings``;
    returns the results dict (``models``, ``split``, ``ratios``, ``targets``, ``training``,
    ``trained_dir``, ``settings``, ``machine``, ``seconds``, ``figures`` as PNG bytes).

    ``trained_dir``: where trained runs are saved and found (see the module docstring);
    ``None``: a temporary folder (nothing reused or kept). ``retrain``: train the models of
    ``settings`` again, replacing their saved runs. ``train_only``: stop after training and
    saving (needs ``trained_dir``); the dict then has only ``training``, ``trained_dir``,
    ``settings``, ``seconds``.
    """
    from wherewhat.bench import machine_info
    from wherewhat.bench.runtime import torch_num_threads

    settings = settings or LandmarkBenchSettings.preset("full")
    settings.check()
    if train_only and trained_dir is None:
        raise ValueError("train_only needs a trained_dir (else the trained models are lost)")
    start = time.perf_counter()
    models: dict[str, dict[str, Any]] = {}
    evaluations: dict[str, dict[str, Any]] = {}
    split: dict[str, Any] | None = None
    with torch_num_threads(settings.threads):
        with tempfile.TemporaryDirectory(prefix="landmark-bench-") as tmp:
            workdir = Path(tmp)
            store = _TrainedStore(Path(trained_dir) if trained_dir else workdir / "trained")
            if retrain:
                for name in settings.models:
                    store.forget(name)
            trained, training, wc_model = _train_all(settings, store, log)
            figures = None
            for name, model, data, records in [] if train_only else trained:
                log(f"evaluating {name}")
                split = split or _split_summary(data)
                evaluation = _evaluate(model, data)
                crop = evaluation["crops"][:1].clone()
                models[name] = {
                    **_accuracy(evaluation["nmes"]),
                    **_costs_and_speed(name, model, crop, workdir, settings),
                    "train_minutes": sum(r["minutes"] for r in records),
                    "reused": all(r["reused"] for r in records),
                    "trained_at": max(r["trained_at"] for r in records),
                }
                evaluations[name] = evaluation
            if not train_only:
                figures = _figures(evaluations, wc_model, settings)
    common = {
        "training": training,
        "trained_dir": str(Path(trained_dir).resolve()) if trained_dir else None,
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("runs",)},
    }
    if train_only:
        return {**common, "seconds": time.perf_counter() - start}
    ordered = {n: models[n] for n in MODEL_NAMES if n in models}
    return {
        "models": ordered,
        "split": split,
        "ratios": _ratios(ordered),
        "targets": _targets(ordered),
        **common,
        "runs": settings.runs,
        "machine": machine_info(),
        "seconds": time.perf_counter() - start,
        "figures": figures,
    }


def training_markdown(training: Mapping[str, Mapping[str, Any]]) -> str:
    """The training runs as a markdown table (trained in this process or reused, and when)."""
    from wherewhat.bench.tables import format_markdown_table

    rows = [
        {
            "run": name,
            **{k: v for k, v in r.items() if not isinstance(v, dict)},
            "reused": "reused" if r.get("reused") else "trained now",
        }
        for name, r in training.items()
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


def landmark_markdown(result: Mapping[str, Any], command: str | None = None) -> str:
    """The results as markdown: models, ratios, targets, split, training."""
    from wherewhat.bench.tables import format_markdown_table

    models = result["models"]
    rows = [
        {
            "model": name,
            **m,
            "nme": 100 * m["nme"],
            "fr10": 100 * m["fr10"],
            "auc10": m["auc10"],
            "macs": m["macs"] / 1e6,
            "params": m["params"] / 1e6,
        }
        for name, m in models.items()
    ]
    settings = result["settings"]
    mode = "quick" if settings["quick"] else "full"
    lines = [f"# Face landmarks: WorldComp2D and baselines ({mode} run)", ""]
    if command:
        lines += [f"`{command}`", ""]
    split = result["split"]
    lines += [
        f"Validation: {split['val_faces']} faces of {split['val_photos']} photos; training: "
        f"{split['train_faces']} faces of {split['train_photos']} photos ({split['how']}). "
        "NME is inter-ocular (outer eye corners) in original-image pixels, in %; FR@10 in %; "
        "speeds are batch-1 median faces/s from a 256 px face crop to landmarks.",
        "",
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
            result["ratios"],
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
            result["targets"],
            [("target", "target"), ("value", "measured"), ("needed", "needed"), ("met", "met")],
        ),
    ]
    saved = result.get("trained_dir")
    lines += [
        "Training runs (epochs set from the measured step time to fill each budget; "
        "`max_time` caps it). A reused run was trained by an earlier invocation with the same "
        f"settings (fingerprint checked) and loaded from `{saved}`; its minutes are the "
        "recorded ones:",
        "",
        training_markdown(result["training"]),
        f"Machine: {result['machine']['cpu']}, load average at the end "
        f"{result['machine']['load_average_1_5_15min']}; total {result['seconds'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)
