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

import torch
from lightning.pytorch import seed_everything
from torch import Tensor
from torch.utils.data import Dataset, Subset

from wherewhat.bench import count_macs, count_parameters, measure_latency_torch
from wherewhat.data.scatter import ScatterMNISTDataModule, collate_scenes
from wherewhat.io import png_bytes
from wherewhat.methods.ssdir.evaluation import SSDIREvaluation, evaluate_ssdir
from wherewhat.methods.ssdir.figures import ssdir_figures
from wherewhat.methods.ssdir.model import SSDIR
from wherewhat.methods.ssdir.records import (
    SpeedAndSize,
    SSDIRArm,
    SSDIRBenchResult,
    assemble_result,
)
from wherewhat.methods.ssdir.settings import VARIANTS, SSDIRBenchSettings
from wherewhat.methods.ssdir.task import SSDIRTask
from wherewhat.models.ssd import SSDDetector
from wherewhat.tasks.ssd import SSDTask, default_detector
from wherewhat.training.fit import FitRecord, fit

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
) -> FitRecord:
    """:func:`fit` with the benchmark's settings: validation (and the best checkpoint by
    ``monitor``) only when ``s.validate``."""
    return fit(
        task,
        data,
        max_epochs=epochs,
        max_steps=max_steps,
        validate=s.validate,
        monitor=monitor if s.validate else None,
        mode=mode,
        patience=patience,
        checkpoint_dir=root,
        progress=s.progress_bar,
        expected_warnings=_EXPECTED_WARNINGS,
    )


def _datamodule(settings: SSDIRBenchSettings) -> ScatterMNISTDataModule:
    data = ScatterMNISTDataModule(
        n_train=settings.n_train, n_test=settings.n_test, batch_size=settings.batch_size,
        val_fraction=settings.val_fraction, **settings.data_args,
    )  # fmt: skip
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    return data


def _train_detector(
    variant: str, seed: int, data: ScatterMNISTDataModule, s: SSDIRBenchSettings, root: Path
) -> tuple[SSDDetector, FitRecord]:
    seed_everything(seed, verbose=False)
    arguments = {
        "image_size": data.config.image_size,
        "in_channels": data.config.channels,
        **s.detector_args,
        "num_classes": VARIANTS[variant],
    }
    network, task_arguments = _split(arguments, _DETECTOR_ARGUMENTS)
    task = SSDTask(default_detector(**network), **task_arguments)
    record = _train_task(
        task, data, s, epochs=s.detector_epochs, max_steps=s.detector_max_steps,
        monitor="val/map_50", mode="max", patience=None, root=root / f"detector-{variant}-{seed}",
    )  # fmt: skip
    return task.model.eval(), record


def _train_ssdir(
    detector: SSDDetector,
    dedup: str,
    seed: int,
    data: ScatterMNISTDataModule,
    s: SSDIRBenchSettings,
    root: Path,
) -> tuple[SSDIR, FitRecord]:
    seed_everything(seed, verbose=False)
    network, task_arguments = _split({**s.ssdir_args, "dedup": dedup}, _SSDIR_ARGUMENTS)
    task = SSDIRTask(SSDIR(detector, **network), **task_arguments)
    record = _train_task(
        task, data, s, epochs=s.ssdir_epochs, max_steps=s.ssdir_max_steps, monitor="val/loss",
        mode="min", patience=s.early_stopping_patience,
        root=root / f"ssdir-{dedup}-{seed}-{id(detector)}",
    )  # fmt: skip
    return task.model.eval(), record


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


def _evaluate(
    model: SSDIR, data: ScatterMNISTDataModule, seed: int, s: SSDIRBenchSettings
) -> SSDIREvaluation:
    train: Dataset = data.train_set
    if s.probe_train_scenes is not None and s.probe_train_scenes < len(train):
        train = Subset(train, range(s.probe_train_scenes))
    return evaluate_ssdir(
        model, train, data.test_set, min_iou=s.min_iou, probe_seeds=(seed,),
        batch_size=s.batch_size, keep_images=s.figure_scenes,
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


def _arm(
    variant: str,
    seed: int,
    detector: SSDDetector,
    detector_fit: FitRecord,
    dedup: str,
    data: ScatterMNISTDataModule,
    s: SSDIRBenchSettings,
    root: Path,
    images: Tensor,
    log: Callable[[str], None],
) -> tuple[SSDIRArm, SSDIR, SSDIREvaluation]:
    model, ssdir_fit = _train_ssdir(detector, dedup, seed, data, s, root)
    log(f"{variant} seed {seed} dedup {dedup}: SSDIR trained in {ssdir_fit.seconds:.0f} s")
    start = time.perf_counter()
    evaluation = _evaluate(model, data, seed, s)
    eval_seconds = time.perf_counter() - start
    speed = _speed_and_size(model, images, s)
    m = evaluation.metrics
    log(
        f"{variant} seed {seed} dedup {dedup}: AP50 {m['ap50']:.3f}, probe "
        f"{m['probe_accuracy']:.3f}, recon MSE {m['recon_mse']:.4f}, "
        f"{speed.scenes_per_s_batch32:.0f} scenes/s at batch {speed.speed_batch_size}"
    )
    arm = SSDIRArm(
        variant=variant,
        seed=seed,
        dedup=dedup,
        metrics=dict(m),
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
) -> SSDIRBenchResult:
    """Run the SSDIR benchmark (module docstring) with ``settings`` (default: the ``quick`` or
    ``full`` preset); checkpoints live in a temporary folder under ``work_dir``.

    The result's ``figures`` hold ``{"<variant>-<name>": PNG bytes}`` for the first seed of
    every variant; ``to_json()`` gives the results file (see
    :class:`~wherewhat.methods.ssdir.records.SSDIRBenchResult`).
    """
    s = settings or SSDIRBenchSettings.preset("quick" if quick else "full")
    s.check()
    start = time.perf_counter()
    arms: list[SSDIRArm] = []
    figures: dict[str, bytes] = {}
    ablation: list[SSDIRArm] = []
    with tempfile.TemporaryDirectory(prefix="ssdir-bench-", dir=work_dir) as tmp:
        root = Path(tmp)
        data = _datamodule(s)
        log(f"data: {len(data.train_set)} train / {len(data.test_set)} test scenes")
        images = _test_batch(data, 32)["image"]
        kept: tuple[SSDDetector, FitRecord, SSDIRArm | None] | None = None
        for variant in s.variants:
            for seed in s.seeds:
                detector, detector_fit = _train_detector(variant, seed, data, s, root)
                log(f"{variant} seed {seed}: detector trained in {detector_fit.seconds:.0f} s")
                arm, model, evaluation = _arm(
                    variant, seed, detector, detector_fit, "nms", data, s, root, images, log
                )
                arms.append(arm)
                if seed == s.seeds[0]:
                    for name, png in _figures(model, evaluation, data, s, seed).items():
                        figures[f"{variant}-{name}"] = png
                    if variant == s.ablation_variant:
                        kept = (detector, detector_fit, arm)
                del model, evaluation
        if s.dedup_ablation:
            if kept is None:  # the ablation variant was not among the arms
                seed = s.seeds[0]
                detector, detector_fit = _train_detector(s.ablation_variant, seed, data, s, root)
                kept = (detector, detector_fit, None)
            detector, detector_fit, nms_arm = kept
            for dedup in s.dedup_ablation:
                if dedup == "nms" and nms_arm is not None:
                    ablation.append(nms_arm)
                    continue
                arm, _, _ = _arm(
                    s.ablation_variant, s.seeds[0], detector, detector_fit, dedup, data, s,
                    root, images, log,
                )  # fmt: skip
                ablation.append(arm)
    result = assemble_result(
        arms,
        ablation,
        s,
        seconds=time.perf_counter() - start,
        threads=torch.get_num_threads(),
    )
    result.figures = figures
    return result
