"""The facial-landmark benchmark pipeline, shared by ``benchmarks/worldcomp2d.py`` and the tour's
"worldcomp2d" section.

The benchmark (:func:`run_landmark_bench`) trains, on the same faces, split, crops, augmentation
and data path (:mod:`~wherewhat.methods.worldcomp2d.training_runs`):

- ``worldcomp2d``: the three stages (encoder, localizer, refiner) on the reference's schedule,
  each capped by its share of the model's budget; ``worldcomp2d_no_refiner`` is the same model
  after stage 2 (its training time: stages 1 + 2);
- ``heatmap_baseline`` (PIPNet-style, ResNet-18) and ``pfld_baseline`` (PFLD-style,
  MobileNetV2), from scratch, each for WorldComp2D's training time (equal wall clock; the
  TFLOP of every run are recorded, so equal compute can be read as well).

The last weights are evaluated (no checkpoint picked on the validation faces). Then per model:
parameters, MACs (:func:`~wherewhat.bench.count_macs`), NME / FR@10 / AUC@10 (inter-ocular,
original pixels, every validation face), batch-1 latency from a 256 px face crop to landmarks in
ONNX Runtime (1 and 2 threads, parity-checked export) and PyTorch (1 thread); whether the
refiner earns its place on WorldComp2D's default path (``refiner_min_gain``); ratios to each
baseline; the issue's targets (on the default path); figures (predictions on validation faces,
cumulative error curves, validation NME during training, a 2-D embedding of WorldComp2D's view
codes coloured by the nearest landmark's face part); optionally ablations and the encoder curve
(:mod:`~wherewhat.methods.worldcomp2d.ablations`) and release files of the evaluated models
(:mod:`~wherewhat.models.landmark_release`). The result is a
:class:`~wherewhat.methods.worldcomp2d.records.LandmarkBenchResult`.

``quick`` (``benchmarks/worldcomp2d.py --quick``): a few steps per run on a few dozen faces;
everything else the same.

Trained models persist in ``trained_dir`` (:class:`~wherewhat.methods.worldcomp2d.store.
TrainedStore`), so that models trained in separate processes are evaluated and timed together
in one later run. A run whose saved fingerprint (of
:func:`~wherewhat.methods.worldcomp2d.settings.training_settings`: every run's task, model and
data arguments, schedule, budget, shares, steps, seed, threads) matches is loaded instead of
trained, and its recorded minutes are reported (``reused``, ``trained_at``); a saved run with
other settings is an error naming the file and the differences, unless ``retrain`` replaces it.
WorldComp2D is saved stage by stage: an interrupted model resumes at its first missing stage (a
stage trained again makes every later stage train again, as each starts from the previous one).
``train_only`` trains and saves without evaluating. The fingerprint does not cover the code:
after changing a model or task, retrain.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
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
from wherewhat.data.face_datamodule import FaceLandmarkDataModule
from wherewhat.io import png_bytes
from wherewhat.methods.worldcomp2d.ablations import encoder_curve, run_ablations
from wherewhat.methods.worldcomp2d.figures import (
    ced_figure,
    latent_codes_by_nearest_landmark,
    latent_embedding_figure,
    nme_curve_figure,
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
    ABLATIONS,
    BASELINES,
    MODEL_NAMES,
    STAGES,
    LandmarkBenchSettings,
)
from wherewhat.methods.worldcomp2d.store import TrainedStore
from wherewhat.methods.worldcomp2d.training_runs import (
    EXPECTED_WARNINGS,
    TrainedModel,
    ValidationFaces,
    split_summary,
    train_baseline,
    train_worldcomp2d,
)
from wherewhat.metrics.landmarks import auc, failure_rate
from wherewhat.models.landmark_release import write_release
from wherewhat.training.quiet import quiet_lightning

__all__ = ["FIGURE_CAPTIONS", "run_landmark_bench"]

Log = Callable[[str], None]

FIGURE_CAPTIONS = {
    "predictions": "Validation faces (rows) and each model's landmarks (red crosses) next to "
    "the annotation (green dots), in the 256 px crops; panel titles give the face's NME.",
    "ced": "Cumulative error distribution on the validation faces: the fraction of faces whose "
    "NME (inter-ocular, %) is at most x; AUC@10 in the legend.",
    "embedding": "WorldComp2D's codes of views centred at random points on validation faces, "
    "embedded in 2-D (PCA, t-SNE), coloured by the face part of the landmark nearest to each "
    "view's centre. The encoder never sees a coordinate: any order here comes from PWConLoss.",
    "curves": "Validation NME while training, against epochs (left) and training minutes "
    "(right): WorldComp2D's localizer and refiner stages (the encoder stage has no landmarks) "
    "and the baselines.",
}


# --------------------------------------------------------------------------------------------
# Training


def _train_all(
    settings: LandmarkBenchSettings, store: TrainedStore, log: Log
) -> tuple[list[TrainedModel], dict[str, TrainingRecord], WorldComp2D | None]:
    """Train or load every model of ``settings``: (the models to evaluate, records per run,
    the WorldComp2D model or None). WorldComp2D comes first: the baselines' budget is its
    training time."""
    trained: list[TrainedModel] = []
    training: dict[str, TrainingRecord] = {}
    wc_model = None
    for name in sorted(settings.models, key=lambda m: m != "worldcomp2d"):
        if name == "worldcomp2d":
            task, data, records = train_worldcomp2d(settings, store, log)
            wc_model = task.export_model()
            coarse = copy.deepcopy(wc_model)
            coarse.use_refiner = False
            two = {s: records[s] for s in STAGES[:2]}
            trained.append(TrainedModel(name, wc_model, data, records, list(STAGES)))
            trained.append(TrainedModel(f"{name}_no_refiner", coarse, data, two, list(STAGES[:2])))
            training.update(records)
        else:
            model = train_baseline(name, settings, store, log)
            trained.append(model)
            training.update(model.records)
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


def _evaluate(model: nn.Module, faces: ValidationFaces) -> _Evaluation:
    """Per-face NME (original pixels) on every validation face, plus crops and predictions."""
    predicted, errors = faces.predict(model)
    return _Evaluation(nmes=errors, crops=faces.crops, crop_points=predicted, truth=faces.points)


def _mean_shape_floor(data: FaceLandmarkDataModule, faces: ValidationFaces) -> Accuracy:
    """The floor row: the mean training shape (crop pixels) as every validation face's
    landmarks."""
    mean = data.train_crop_points().mean(0)
    return _accuracy(faces.errors(mean.expand(len(faces.crops), -1, -1)))


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
    with quiet_lightning(EXPECTED_WARNINGS):
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


def _targets(models: Mapping[str, ModelResult], shipped: str | None) -> list[Target]:
    """The issue's targets with the measured value and whether it is met; WorldComp2D's are
    read on its default path (``shipped``: the row of the model as shipped)."""
    rows: list[tuple[str, float, str, float]] = []
    wc = models.get(shipped) if shipped else None
    heat = models.get("heatmap_baseline")
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
        rows.append((f"WorldComp2D ({shipped}) ORT faces/s, 1 thread", speed, ">=", 200))
    out = []
    for target, value, op, bound in rows:
        met = value >= bound if op == ">=" else value <= bound
        out.append(Target(target=target, value=value, needed=f"{op} {bound}", met=met))
    return out


def _refiner_decision(
    models: dict[str, ModelResult], min_gain: float
) -> tuple[dict[str, Any], str | None]:
    """Whether the refiner stays on WorldComp2D's default path (it must lower NME by at least
    ``min_gain``); sets both WorldComp2D rows' ``default_path``; returns (the decision, the
    row of the shipped model)."""
    full, coarse = models.get("worldcomp2d"), models.get("worldcomp2d_no_refiner")
    if full is None or coarse is None:
        return {}, None
    gain = coarse.accuracy.nme - full.accuracy.nme
    keep = gain >= min_gain
    path = list(STAGES) if keep else list(STAGES[:2])
    full.default_path = coarse.default_path = path
    decision = {
        "nme_gain": gain,
        "min_gain": min_gain,
        "on_default_path": keep,
        "default_model": "worldcomp2d" if keep else "worldcomp2d_no_refiner",
        "speed_with_refiner": full.costs.ort_faces_per_s_1thread,
        "speed_without_refiner": coarse.costs.ort_faces_per_s_1thread,
    }
    return decision, decision["default_model"]


# --------------------------------------------------------------------------------------------
# Figures


def _figures(
    evaluations: Mapping[str, _Evaluation],
    wc_model: WorldComp2D | None,
    training: Mapping[str, TrainingRecord],
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
    curves = {run: record.curve for run, record in training.items() if record.curve}
    if curves:
        figures["curves"] = png_bytes(nme_curve_figure(curves))
    return figures


def _write_releases(
    folder: Path,
    trained: list[TrainedModel],
    models: Mapping[str, ModelResult],
    shipped: str | None,
    store: TrainedStore,
    command: str | None,
) -> list[str]:
    """Release files of the shipped WorldComp2D (as ``worldcomp2d``) and of the baselines."""
    written = []
    for entry in trained:
        if entry.name not in models or (
            entry.name.startswith("worldcomp2d") and entry.name != shipped
        ):
            continue
        name = "worldcomp2d" if entry.name == shipped else entry.name
        row = models[entry.name]
        fingerprints = {run: _fingerprint(store, run) for run in entry.records}
        info = {
            "model": entry.name,
            "default_path": row.default_path,
            "run_fingerprints": fingerprints,
            "trained_at": row.trained_at,
            "train_minutes": row.train_minutes,
            "train_tflop": row.train_tflop,
            "epochs": row.epochs,
            "validation": dataclasses.asdict(row.accuracy),
            "params": row.costs.params,
            "macs": row.costs.macs,
            "ort_faces_per_s_1thread": row.costs.ort_faces_per_s_1thread,
            "command": command,
        }
        weights, _ = write_release(folder, name, entry.model, info)
        written.append(str(weights))
    return written


def _fingerprint(store: TrainedStore, run: str) -> str | None:
    meta = store.paths(run)[1]
    return json.loads(meta.read_text())["fingerprint"] if meta.is_file() else None


def _write_ablation_releases(
    folder: Path,
    networks: Mapping[str, nn.Module],
    details: Mapping[str, dict[str, Any]],
    nmes: Mapping[str, float],
    store: TrainedStore,
    command: str | None,
) -> list[str]:
    """Release files ``worldcomp2d_<ablation>`` of the ablation variants (without refiner)."""
    written = []
    for name, network in networks.items():
        training = details[name]["training"]
        info = {
            "model": f"worldcomp2d_{name}",
            "ablation": ABLATIONS[name],
            "default_path": ["encoder", "localizer"],
            "run_fingerprints": {
                stage: _fingerprint(store, f"ablation-{name}-{stage}") for stage in training
            },  # fmt: skip
            "epochs": {stage: run.get("epochs") for stage, run in training.items()},
            "validation": {"nme": nmes[name]},
            "command": command,
        }
        weights, _ = write_release(folder, f"worldcomp2d_{name}", network, info)
        written.append(str(weights))
    return written


# --------------------------------------------------------------------------------------------
# The pipeline


def run_landmark_bench(
    settings: LandmarkBenchSettings | None = None,
    log: Log = print,
    *,
    trained_dir: str | Path | None = None,
    retrain: bool = False,
    train_only: bool = False,
    release_dir: str | Path | None = None,
    command: str | None = None,
) -> LandmarkBenchResult:
    """Train (or load from ``trained_dir``), evaluate and time every model of ``settings``.

    ``trained_dir``: where trained runs are saved and found (see the module docstring);
    ``None``: a temporary folder (nothing reused or kept). ``retrain``: train the models of
    ``settings`` (and its ablations) again, replacing their saved runs. ``train_only``: stop
    after training and saving (needs ``trained_dir``); the result then has only the training
    records (and the ablations' NME). ``release_dir``: write release files of the shipped
    WorldComp2D and the baselines there (``command`` is recorded in them).
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
    ablations: dict[str, float] = {}
    ablation_details: dict[str, dict[str, Any]] = {}
    ablation_models: dict[str, nn.Module] = {}
    curve: list[dict[str, float]] = []
    refiner: dict[str, Any] = {}
    shipped: str | None = None
    floor: Accuracy | None = None
    valid: list[str] = []
    # The first task's initial weights come from the global RNG, whose start is random in a
    # fresh process: seed it. Later tasks are built after seeded training runs, and the tour
    # seeds every section with the same seed, so their numbers are as they were.
    pl.seed_everything(settings.seed, verbose=False)
    with torch_num_threads(settings.threads):
        with tempfile.TemporaryDirectory(prefix="worldcomp2d-bench-") as tmp:
            workdir = Path(tmp)
            store = TrainedStore(Path(trained_dir) if trained_dir else workdir / "trained")
            if retrain:
                for name in (*settings.models, *(f"worldcomp2d_{a}" for a in settings.ablations)):
                    store.forget(name)
            trained, training, wc_model = _train_all(settings, store, log)
            if settings.ablations:
                ablations, ablation_details, ablation_models = run_ablations(settings, store, log)
            for entry in [] if train_only else trained:
                log(f"evaluating {entry.name}")
                split = split or split_summary(entry.data)
                evaluation = _evaluate(entry.model, ValidationFaces.of(entry.data))
                crop = evaluation.crops[:1].clone()
                models[entry.name] = ModelResult.summed(
                    accuracy=_accuracy(evaluation.nmes),
                    costs=_costs_and_speed(entry.name, entry.model, crop, workdir, settings),
                    runs=entry.records,
                    default_path=entry.default_path,
                )
                evaluations[entry.name] = evaluation
            if not train_only:
                floor = _mean_shape_floor(trained[0].data, ValidationFaces.of(trained[0].data))
                bar = (1 - settings.floor_margin) * floor.nme
                valid = [name for name, m in models.items() if m.accuracy.nme <= bar]
                for name in (n for n in models if n not in valid):
                    log(f"!!! {name}: NME {100 * models[name].accuracy.nme:.2f} % does not clear "
                        f"the mean-shape floor {100 * floor.nme:.2f} % by "
                        f"{settings.floor_margin:.0%} (bar {100 * bar:.2f} %)")  # fmt: skip
                refiner, shipped = _refiner_decision(models, settings.refiner_min_gain)
                if "worldcomp2d_no_refiner" in models and ablations:
                    ablations = {"worldcomp2d_no_refiner": models["worldcomp2d_no_refiner"]
                                 .accuracy.nme, **ablations}  # fmt: skip
                if settings.encoder_curve and wc_model is not None:
                    faces = ValidationFaces.of(trained[0].data)
                    curve = encoder_curve(settings, store, faces, log)
                figures = _figures(evaluations, wc_model, training, settings)
                if release_dir is not None:
                    written = _write_releases(
                        Path(release_dir), trained, models, shipped, store, command
                    )
                    written += _write_ablation_releases(
                        Path(release_dir),
                        ablation_models,
                        ablation_details,
                        ablations,
                        store,
                        command,
                    )
                    log(f"release files: {', '.join(written)}")
    saved_in = str(Path(trained_dir).resolve()) if trained_dir else None
    if train_only:
        return LandmarkBenchResult(
            settings, training, saved_in, time.perf_counter() - start,
            ablations=ablations, ablation_details=ablation_details,
        )  # fmt: skip
    ordered = {n: models[n] for n in MODEL_NAMES if n in models}
    return LandmarkBenchResult(
        settings=settings,
        training=training,
        trained_dir=saved_in,
        models=ordered,
        split=split,
        ratios=_ratios(ordered),
        targets=_targets(ordered, shipped),
        machine=machine_info(),
        figures=figures,
        floor=floor,
        valid_models=[n for n in ordered if n in valid],
        refiner=refiner,
        ablations=ablations,
        ablation_details=ablation_details,
        encoder_curve=curve,
        seconds=time.perf_counter() - start,  # last: the time of all of the above
    )
