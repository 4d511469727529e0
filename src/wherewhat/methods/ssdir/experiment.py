"""The SSDIR benchmark pipeline, shared by ``benchmarks/ssdir.py`` and the tour's "ssdir" section.

One *arm* = a detector variant (class-agnostic "object" or one class per digit) and a seed:
train the SSD detector, train SSDIR on it (detector frozen), evaluate every number of the
issue (:func:`~wherewhat.methods.ssdir.evaluation.evaluate_ssdir`: class-agnostic AP50 / AP50:95,
reconstruction MSE, the Table-2 probe at IoU >= 0.5 with unmatched counts), time the training,
and measure inference speed (SSDIR forward = detector + encoders + decoder + merge, eval mode,
torch, 2 threads, batch 1 and 32), parameters and MACs. Plus the de-duplication ablation
(SSDIR trained with ``nms`` / ``soft`` / ``none`` on the first seed's class-agnostic detector).

:func:`run_ssdir_bench` runs it and returns a typed
:class:`~wherewhat.methods.ssdir.records.SSDIRBenchResult`: ``quick=True`` is the tour's
few-minute version (tiny scene counts, a few hundred steps, one seed, the class-agnostic
variant, no ablation); the default full settings follow ``configs/ssd/default.yaml`` (and
``per_class.yaml``) and ``configs/ssdir/default.yaml`` (keep
:class:`~wherewhat.methods.ssdir.settings.SSDIRBenchSettings` in step with them). Training uses
:func:`wherewhat.training.fit.fit` (no run directories); the full mode validates every epoch,
keeps the best checkpoint (detector: val AP50; SSDIR: val loss, with early stopping) and
evaluates that.
"""

from __future__ import annotations

import inspect
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback, seed_everything
from torch import Tensor
from torch.utils.data import Dataset, Subset

from wherewhat.bench import count_macs, count_parameters, measure_latency_torch
from wherewhat.bench.step_compute import StepCompute, measure_training_step
from wherewhat.data.scatter import ScatterMNISTDataModule, collate_scenes
from wherewhat.io import png_bytes
from wherewhat.methods.ssdir.evaluation import SSDIREvaluation, evaluate_ssdir
from wherewhat.methods.ssdir.figures import ssdir_figures
from wherewhat.methods.ssdir.floors import raw_pixel_probe
from wherewhat.methods.ssdir.model import SSDIR
from wherewhat.methods.ssdir.model_store import ModelStore, TrainingRecord
from wherewhat.methods.ssdir.records import (
    SpeedAndSize,
    SSDIRArm,
    SSDIRBenchResult,
    assemble_result,
)
from wherewhat.methods.ssdir.settings import DETECTORS, SSDIRBenchSettings
from wherewhat.methods.ssdir.task import SSDIRTask
from wherewhat.models.ssd import SSDDetector
from wherewhat.tasks.ssd import SSDTask, default_detector
from wherewhat.training.fit import fit

__all__ = ["run_ssdir_bench"]

# SSDIR's frozen detector is in eval mode on purpose; Lightning warns about such modules.
_EXPECTED_WARNINGS = (r"Found \d+ module\(s\) in eval mode",)
# Which of the settings' flat argument mappings go to the network, the rest to its task.
_DETECTOR_ARGUMENTS = frozenset(inspect.signature(SSDDetector).parameters)
_SSDIR_ARGUMENTS = frozenset(inspect.signature(SSDIR).parameters)


def _split(
    arguments: Mapping[str, Any], network: frozenset[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``arguments`` -> (the network's, the task's)."""
    mine = {k: v for k, v in arguments.items() if k in network}
    return mine, {k: v for k, v in arguments.items() if k not in network}


# -- training ---------------------------------------------------------------------------------


class _MonitoredCurve(Callback):
    """The monitored validation value after every validation epoch (sanity check excluded).

    Read at ``on_validation_end``: callbacks' ``on_validation_epoch_end`` runs before the
    task's, where the detector computes its AP, so a value read there is the previous epoch's.
    """

    def __init__(self, monitor: str):
        self.monitor, self.values = monitor, []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if not trainer.sanity_checking and value is not None:
            self.values.append(float(value))


class _ProbeCurve(Callback):
    """The probe's accuracy after every training epoch, fitted on ``train`` scenes and scored on
    ``test`` scenes (subsets: a curve, not the final number)."""

    def __init__(self, train: Dataset, test: Dataset, seed: int, batch_size: int):
        self.train, self.test, self.seed, self.batch_size = train, test, seed, batch_size
        self.values: list[tuple[int, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = evaluate_ssdir(
            pl_module.model, self.train, self.test, probe_seeds=(self.seed,),
            batch_size=self.batch_size,
        ).metrics  # fmt: skip
        self.values.append((trainer.global_step, float(metrics["probe_accuracy"])))


def _train_task(
    task: SSDTask | SSDIRTask,
    data: ScatterMNISTDataModule,
    s: SSDIRBenchSettings,
    *,
    epochs: int,
    max_steps: int,
    monitor: str,
    mode: Literal["min", "max"],
    patience: int | None,
    root: Path,
    probe_curve: _ProbeCurve | None = None,
) -> TrainingRecord:
    """:func:`fit` with the benchmark's settings: validation (and the best checkpoint by
    ``monitor``, whose value per epoch the record keeps) only when ``s.validate``; with
    ``probe_curve``, the probe after every epoch too."""
    curve = _MonitoredCurve(monitor)
    fitted = fit(
        task,
        data,
        max_epochs=epochs,
        max_steps=max_steps,
        validate=s.validate,
        monitor=monitor if s.validate else None,
        mode=mode,
        patience=patience,
        checkpoint_dir=root,
        precision=s.precision,
        progress=s.progress_bar,
        expected_warnings=_EXPECTED_WARNINGS,
        callbacks=[c for c in (curve if s.validate else None, probe_curve) if c is not None],
    )
    return TrainingRecord.of(fitted, curve.values, probe_curve.values if probe_curve else ())


def _datamodule(settings: SSDIRBenchSettings) -> ScatterMNISTDataModule:
    data = ScatterMNISTDataModule(
        n_train=settings.n_train, n_test=settings.n_test, batch_size=settings.batch_size,
        val_fraction=settings.val_fraction, **settings.data_args,
    )  # fmt: skip
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    return data


def _train_batch(data: ScatterMNISTDataModule, s: SSDIRBenchSettings) -> dict[str, Any]:
    """The first training batch in file order (no sampling: measuring it draws no random
    number)."""
    count = min(s.batch_size, len(data.train_set))
    return collate_scenes([data.train_set[i] for i in range(count)])


def _train_detector(
    variant: str,
    seed: int,
    data: ScatterMNISTDataModule,
    s: SSDIRBenchSettings,
    root: Path,
    store: ModelStore,
) -> tuple[SSDDetector, TrainingRecord, StepCompute]:
    """The seed's detector of ``variant``: from the store when it holds one, else trained (and
    stored); with its training step's FLOPs and time (measured before SSDIR freezes it)."""
    seed_everything(seed, verbose=False)
    arguments = {
        "image_size": data.config.image_size,
        "in_channels": data.config.channels,
        **s.detector_args,
        "num_classes": DETECTORS[variant],
    }
    network, task_arguments = _split(arguments, _DETECTOR_ARGUMENTS)
    task = SSDTask(default_detector(**network), **task_arguments)
    identity = store.detector_identity(s, variant)
    record = store.load("detector", variant, seed, identity, task.model)
    if record is None:
        record = _train_task(
            task, data, s, epochs=s.detector_epochs, max_steps=s.detector_max_steps,
            monitor="val/map_50", mode="max", patience=None,
            root=root / f"detector-{variant}-{seed}",
        )  # fmt: skip
        store.save("detector", variant, seed, identity, task.model, record)
    compute = measure_training_step(
        task, _train_batch(data, s), s.threads, bf16=s.precision == "bf16-mixed"
    )
    return task.model.eval(), record, compute


def _ssdir(detector: SSDDetector, arm: str, dedup: str, s: SSDIRBenchSettings) -> SSDIRTask:
    network, task_arguments = _split({**s.arm_ssdir_args(arm), "dedup": dedup}, _SSDIR_ARGUMENTS)
    return SSDIRTask(SSDIR(detector, **network), **task_arguments)


def _train_ssdir(
    detector: SSDDetector,
    arm: str,
    dedup: str,
    seed: int,
    data: ScatterMNISTDataModule,
    s: SSDIRBenchSettings,
    root: Path,
    store: ModelStore,
) -> tuple[SSDIR, TrainingRecord, StepCompute]:
    """SSDIR of ``arm`` on the frozen ``detector``: from the store, else trained (and stored);
    with its training step's FLOPs and time."""
    seed_everything(seed, verbose=False)
    task = _ssdir(detector, arm, dedup, s)
    identity = store.ssdir_identity(s, arm, dedup)
    record = store.load("ssdir", f"{arm}-{dedup}", seed, identity, task.model)
    if record is None:
        probe_curve = None
        if s.probe_curve_scenes is not None:
            n_train, n_test = s.probe_curve_scenes
            probe_curve = _ProbeCurve(
                Subset(data.train_set, range(min(n_train, len(data.train_set)))),
                Subset(data.test_set, range(min(n_test, len(data.test_set)))),
                seed, s.batch_size,
            )  # fmt: skip
        record = _train_task(
            task, data, s, epochs=s.ssdir_epochs, max_steps=s.ssdir_max_steps, monitor="val/loss",
            mode="min", patience=s.early_stopping_patience,
            root=root / f"ssdir-{arm}-{dedup}-{seed}", probe_curve=probe_curve,
        )  # fmt: skip
        store.save("ssdir", f"{arm}-{dedup}", seed, identity, task.model, record)
    compute = measure_training_step(
        task, _train_batch(data, s), s.threads, bf16=s.precision == "bf16-mixed"
    )
    return task.model.eval(), record, compute


def _compute_metrics(prefix: str, compute: StepCompute, fit: TrainingRecord) -> dict[str, float]:
    """A training's step FLOPs (on the first training batch), that step's measured time and
    fraction of peak, its total TFLOP (step FLOPs x steps), and the loop's wall seconds per
    step with its fraction of peak (validation and probe curves included in the loop's time,
    so that fraction is a lower bound)."""
    loop_seconds = fit.seconds / max(fit.steps, 1)
    return {
        **compute.to_json(prefix),
        f"{prefix}_train_tflop": compute.step_gflop * fit.steps / 1e3,
        f"{prefix}_loop_seconds_per_step": loop_seconds,
        f"{prefix}_loop_fraction_of_peak": compute.step_gflop / loop_seconds / compute.peak_gflops,
    }


# -- measuring --------------------------------------------------------------------------------


def _test_batch(data: ScatterMNISTDataModule, count: int) -> dict[str, Any]:
    """The first ``count`` test scenes as one :func:`collate_scenes` batch."""
    count = min(count, len(data.test_set))
    return collate_scenes([data.test_set[i] for i in range(count)])


def _speed_and_size(model: SSDIR, images: Tensor, s: SSDIRBenchSettings) -> SpeedAndSize:
    """Scenes/s at batch 1 and 32 (eval forward, torch, ``s.threads`` threads), parameters,
    MACs per scene on these scenes ``(B, C, H, W)``, and objects rendered per scene."""
    batch1 = measure_latency_torch(model, images[:1], s.threads, *s.latency_timing)
    batch32 = measure_latency_torch(model, images, s.threads, *s.throughput_timing)
    with torch.no_grad():
        rendered = len(model(images)["image_index"]) / len(images)
    # MACs depend on the number of rendered objects: count them on a few real scenes.
    few = images[: min(8, len(images))]
    macs = count_macs(model, few)["macs"] / len(few)
    detector_macs = count_macs(model.detector, images[:1])["macs"]
    return SpeedAndSize(
        threads=s.threads,
        speed_batch_size=len(images),
        scenes_per_s_batch1=batch1.items_per_s,
        scenes_per_s_batch32=batch32.items_per_s,
        latency_ms_batch1=batch1.median_ms,
        latency_ms_batch32=batch32.median_ms,
        params=count_parameters(model),
        params_trainable=sum(p.numel() for p in model.trainable_parameters()),
        params_detector=count_parameters(model.detector),
        macs_per_scene=macs,
        macs_detector_per_scene=detector_macs,
        rendered_per_scene=rendered,
    )


def _probe_train_scenes(data: ScatterMNISTDataModule, s: SSDIRBenchSettings) -> Dataset:
    """The train scenes whose objects fit the probe (the first ``probe_train_scenes``)."""
    train: Dataset = data.train_set
    if s.probe_train_scenes is not None and s.probe_train_scenes < len(train):
        train = Subset(train, range(s.probe_train_scenes))
    return train


def _evaluate(
    model: SSDIR, data: ScatterMNISTDataModule, seed: int, s: SSDIRBenchSettings
) -> SSDIREvaluation:
    return evaluate_ssdir(
        model, _probe_train_scenes(data, s), data.test_set, min_iou=s.min_iou, probe_seeds=(seed,),
        batch_size=s.batch_size, keep_images=s.figure_scenes, size_edges=s.size_edges,
    )  # fmt: skip


def _figures(
    model: SSDIR,
    evaluation: SSDIREvaluation,
    data: ScatterMNISTDataModule,
    s: SSDIRBenchSettings,
    seed: int,
) -> dict[str, bytes]:
    count = min(s.figure_scenes, len(data.test_set))
    batch = _test_batch(data, count)
    figures = ssdir_figures(
        model, batch["image"], batch["boxes"], batch["labels"],
        z_what=evaluation.test_objects.flat_z_what(), labels=evaluation.test_matches.labels,
        glimpse_count=s.glimpses_shown, seed=seed, tsne_points=s.tsne_points,
    )  # fmt: skip
    return {name: png_bytes(fig) for name, fig in figures.items()}


def _untrained_floor(
    detector: SSDDetector,
    arm: str,
    seed: int,
    data: ScatterMNISTDataModule,
    s: SSDIRBenchSettings,
) -> dict[str, Any]:
    """The probe on ``arm``'s SSDIR before training (same detector and objects): the floor its
    trained z_what must clear."""
    seed_everything(seed, verbose=False)
    model = _ssdir(detector, arm, "nms", s).model.eval()
    metrics = _evaluate(model, data, seed, s).metrics
    return {k: v for k, v in metrics.items() if k.startswith("probe_")}


def _arm(
    arm_name: str,
    seed: int,
    detector: SSDDetector,
    detector_fit: TrainingRecord,
    detector_compute: StepCompute,
    dedup: str,
    data: ScatterMNISTDataModule,
    s: SSDIRBenchSettings,
    root: Path,
    images: Tensor,
    log: Callable[[str], None],
    store: ModelStore,
) -> tuple[SSDIRArm, SSDIR, SSDIREvaluation]:
    model, ssdir_fit, ssdir_compute = _train_ssdir(
        detector, arm_name, dedup, seed, data, s, root, store
    )
    log(f"{arm_name} seed {seed} dedup {dedup}: SSDIR trained in {ssdir_fit.seconds:.0f} s")
    start = time.perf_counter()
    evaluation = _evaluate(model, data, seed, s)
    eval_seconds = time.perf_counter() - start
    speed = _speed_and_size(model, images, s)
    m = evaluation.metrics
    log(
        f"{arm_name} seed {seed} dedup {dedup}: AP50 {m['ap50']:.3f}, probe "
        f"{m['probe_accuracy']:.3f}, recon MSE {m['recon_mse']:.4f}, "
        f"{speed.scenes_per_s_batch32:.0f} scenes/s at batch {speed.speed_batch_size}"
    )
    detector_compute_metrics = _compute_metrics("detector", detector_compute, detector_fit)
    ssdir_compute_metrics = _compute_metrics("ssdir", ssdir_compute, ssdir_fit)
    arm = SSDIRArm(
        variant=arm_name,
        seed=seed,
        dedup=dedup,
        metrics={
            **m,  # and the validation curves, one value per epoch
            "detector_val_map50_curve": list(detector_fit.val_curve),
            "ssdir_val_loss_curve": list(ssdir_fit.val_curve),
            "ssdir_probe_curve": [list(point) for point in ssdir_fit.probe_curve],
            **detector_compute_metrics,
            **ssdir_compute_metrics,
            "train_tflop": detector_compute_metrics["detector_train_tflop"]
            + ssdir_compute_metrics["ssdir_train_tflop"],
        },
        speed=speed,
        detector_minutes=detector_fit.seconds / 60,
        ssdir_minutes=ssdir_fit.seconds / 60,
        train_minutes=(detector_fit.seconds + ssdir_fit.seconds) / 60,
        train_cpu_minutes=(detector_fit.cpu_seconds + ssdir_fit.cpu_seconds) / 60,
        eval_seconds=eval_seconds,
        detector_steps=detector_fit.steps,
        detector_best_val_map50=detector_fit.best,
        ssdir_steps=ssdir_fit.steps,
        ssdir_best_val_loss=ssdir_fit.best,
    )
    return arm, model, evaluation


# -- the run ----------------------------------------------------------------------------------


def run_ssdir_bench(
    quick: bool = False,
    settings: SSDIRBenchSettings | None = None,
    log: Callable[[str], None] = print,
    work_dir: str | Path | None = None,
    models_dir: str | Path | None = None,
    floors: bool = True,
) -> SSDIRBenchResult:
    """Run the SSDIR benchmark (module docstring) with ``settings`` (default: the ``quick`` or
    ``full`` preset); checkpoints live in a temporary folder under ``work_dir``.

    Every seed trains each detector variant its arms need once (arms of the same variant share
    it). With ``models_dir`` the trained detectors and SSDIRs are kept there and reused by any
    later run of the same settings (:class:`~wherewhat.methods.ssdir.model_store.ModelStore`).
    With ``floors`` the run measures the floor rows: the raw-pixel probe (once) and each arm's
    untrained-encoder probe (first seed).

    The result's ``figures`` hold ``{"<arm>-<name>": PNG bytes}`` for the first seed of every
    arm; ``to_json()`` gives the results file (see
    :class:`~wherewhat.methods.ssdir.records.SSDIRBenchResult`).
    """
    s = settings or SSDIRBenchSettings.preset("quick" if quick else "full")
    s.check()
    store = ModelStore(models_dir)
    start = time.perf_counter()
    arms: list[SSDIRArm] = []
    figures: dict[str, bytes] = {}
    ablation: list[SSDIRArm] = []
    floor_rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ssdir-bench-", dir=work_dir) as tmp:
        root = Path(tmp)
        data = _datamodule(s)
        log(f"data: {len(data.train_set)} train / {len(data.test_set)} test scenes")
        images = _test_batch(data, 32)["image"]
        if floors:
            floor_rows["raw_pixels"] = raw_pixel_probe(
                _probe_train_scenes(data, s), data.test_set, seeds=(s.seeds[0],),
                size_edges=s.size_edges,
            )  # fmt: skip
            log(f"floor: raw-pixel probe {floor_rows['raw_pixels']['accuracy']:.3f}")
            floor_rows["untrained_encoder"] = {}
        detectors: dict[tuple[str, int], tuple[SSDDetector, TrainingRecord, StepCompute]] = {}

        def detector_of(variant: str, seed: int) -> tuple[SSDDetector, TrainingRecord, StepCompute]:
            if (variant, seed) not in detectors:
                detectors[variant, seed] = _train_detector(variant, seed, data, s, root, store)
                log(f"{variant} seed {seed}: detector ready "
                    f"(trained in {detectors[variant, seed][1].seconds:.0f} s)")  # fmt: skip
            return detectors[variant, seed]

        for seed in s.seeds:
            for arm_name in s.variants:
                detector, detector_fit, detector_compute = detector_of(
                    s.arm_detector(arm_name), seed
                )
                if floors and seed == s.seeds[0]:
                    untrained = _untrained_floor(detector, arm_name, seed, data, s)
                    floor_rows["untrained_encoder"][arm_name] = untrained
                    log(f"floor: {arm_name} untrained probe {untrained['probe_accuracy']:.3f}")
                arm, model, evaluation = _arm(
                    arm_name, seed, detector, detector_fit, detector_compute, "nms", data, s,
                    root, images, log, store,
                )  # fmt: skip
                arms.append(arm)
                if seed == s.seeds[0]:
                    for name, png in _figures(model, evaluation, data, s, seed).items():
                        figures[f"{arm_name}-{name}"] = png
                del model, evaluation
            # later seeds need none of this seed's detectors, except the ablation's
            ablation_key = (s.arm_detector(s.ablation_variant), s.seeds[0])
            for key in [k for k in detectors if k[1] == seed]:
                if not (s.dedup_ablation and key == ablation_key):
                    del detectors[key]
        if s.dedup_ablation:
            seed = s.seeds[0]
            detector, detector_fit, detector_compute = detector_of(
                s.arm_detector(s.ablation_variant), seed
            )
            nms_arm = next(
                (a for a in arms if a.variant == s.ablation_variant and a.seed == seed), None
            )
            for dedup in s.dedup_ablation:
                if dedup == "nms" and nms_arm is not None:
                    ablation.append(nms_arm)
                    continue
                arm, _, _ = _arm(
                    s.ablation_variant, seed, detector, detector_fit, detector_compute, dedup,
                    data, s, root, images, log, store,
                )  # fmt: skip
                ablation.append(arm)
    result = assemble_result(
        arms,
        ablation,
        s,
        seconds=time.perf_counter() - start,
        threads=torch.get_num_threads(),
    )
    result.floors = floor_rows
    result.figures = figures
    return result
