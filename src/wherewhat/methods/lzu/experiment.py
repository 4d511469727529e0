"""The LZU benchmark pipeline, shared by ``benchmarks/lzu.py`` and the tour section "lzu".

The *street experiment*: 512 x 1024 scattered-MNIST scenes (digits of 8-128 px, the small ones
mostly in a horizon band: :func:`~wherewhat.methods.lzu.street.street_scene_config`), a model
trained at a reduced input (128 x 256 by default) in four *arms*
(:data:`~wherewhat.methods.lzu.settings.ARMS`):

- ``uniform``: bilinear downsampling (LZU with a uniform saliency is exactly that);
- ``lzu_fixed``: one dataset KDE saliency over all training boxes, computed once and saved;
- ``lzu_adaptive``: a KDE per image over ground-truth boxes jittered by U[-j, j] px when
  training, and over the *uniform arm's* detections (detection) or predicted foreground
  components (segmentation) of the same seed at test time: the scenes are stills, so there is
  no previous frame to take detections from;
- ``uniform_2x``: bilinear downsampling to twice the input size (the upper bound).

Two tasks with the same arms: class-agnostic SSD detection (AP50 and AP by object size, sizes
measured in original pixels) and semantic segmentation of digit pixels by class (mIoU at the
label resolution). Plus model-free measurements (:mod:`~wherewhat.methods.lzu.measurements`):
round-trip error and coverage of the exact inverse (separable and non-separable warps), speed
of the 1-D inverse against the tile solver, and per-step CPU latency (saliency, grids, zoom,
backbone, each unzoom level, head) with the overhead of zoom + unzoom relative to the uniform
model.

The data (scene seed 0) is the same for every seed; a seed changes initialisation and batch
order. :func:`run_lzu_bench` runs everything and returns an
:class:`~wherewhat.methods.lzu.records.LZUBenchResult`; the tour section only does the quick,
model-free part (warps, figures, latency).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor

from wherewhat.bench.runtime import torch_num_threads
from wherewhat.data.scatter import collate_scenes
from wherewhat.geometry.warp import saliency_to_grid, zoom
from wherewhat.io import png_bytes
from wherewhat.methods.lzu.arms import LZUNetwork, LZUTask, fixed_saliency_path, make_task
from wherewhat.methods.lzu.detection_task import LZUDetectionTask
from wherewhat.methods.lzu.figures import (
    detections_figure,
    feature_comparison_figure,
    segmentation_figure,
    warp_overview_figure,
)
from wherewhat.methods.lzu.measurements import (
    example_saliencies,
    latency_breakdown,
    level_sizes,
    warp_checks,
)
from wherewhat.methods.lzu.records import ArmStat, BenchSummary, LZUBenchResult, RunRecord
from wherewhat.methods.lzu.scenes import SceneData, load_scenes, scene_loader
from wherewhat.methods.lzu.segmentation_task import LZUSegmentationTask
from wherewhat.methods.lzu.settings import ARMS, TASKS, Knobs, LZUBenchSettings, TaskName
from wherewhat.methods.lzu.zoomed import ZoomSettings
from wherewhat.metrics.summary import mean_std
from wherewhat.training.fit import fit

__all__ = ["SUMMARY_METRICS", "run_arm", "run_lzu_bench", "summarise", "warp_figures"]

# Training runs without validation and logs only the loss.
_EXPECTED_WARNINGS = (r".*`self.log\(\)`.*", r".*no `val_dataloader`.*")
# Metrics averaged over seeds per arm, in table order.
SUMMARY_METRICS: dict[TaskName, tuple[str, ...]] = {
    "detection": ("ap50", "ap50_small", "ap50_medium", "ap50_large", "ap", "ap_small"),
    "segmentation": ("miou", "pixel_accuracy"),
}


# -- training ----------------------------------------------------------------------------------


def run_arm(
    task: TaskName,
    arm: str,
    seed: int,
    settings: LZUBenchSettings,
    data: SceneData,
    prior: LZUNetwork | None = None,
) -> tuple[LZUTask, RunRecord]:
    """Train and evaluate one (task, arm, seed); returns the trained task and its numbers."""
    pl.seed_everything(seed, workers=True, verbose=False)
    module = make_task(task, arm, settings, data.original_size)
    if module.saliency_kind == "fixed":
        path = fixed_saliency_path(data.cache_dir, settings.n_train, module.model.zoom)
        module.hparams.fixed_saliency_path = str(path)
        module.prepare_fixed_saliency(data.train_boxes)
    if module.saliency_kind == "adaptive":
        if prior is None:
            raise ValueError(f"{task} arm {arm} needs the uniform model of seed {seed} as prior")
        module.attach_prior(prior)
    train_set, test_set = data.split(task)
    steps = settings.steps(task)
    if ARMS[arm][1] > 1:
        steps = max(1, int(round(steps * settings.steps_2x_fraction)))
    with torch_num_threads(settings.threads):
        trained = fit(
            module,
            train_loader=scene_loader(train_set, settings.batch_size, True, seed),
            max_steps=steps,
            progress=settings.progress_bar,
            expected_warnings=_EXPECTED_WARNINGS,
        )
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = module.evaluate(scene_loader(test_set, settings.eval_batch_size, False))
        eval_seconds, eval_cpu = time.perf_counter() - wall, time.process_time() - cpu
    record = RunRecord(
        task=task, arm=arm, seed=seed,
        train_seconds=trained.seconds, train_cpu_seconds=trained.cpu_seconds,
        steps=trained.steps, final_loss=trained.final_loss,
        eval_seconds=eval_seconds, eval_cpu_seconds=eval_cpu, metrics=metrics,
        params=sum(p.numel() for p in module.parameters()), torch_threads=torch.get_num_threads(),
    )  # fmt: skip
    return module, record


# -- summary -----------------------------------------------------------------------------------


def summarise(records: Sequence[RunRecord], arms: Sequence[str]) -> BenchSummary:
    """Mean ± std over seeds of :data:`SUMMARY_METRICS` per arm (seeds without a finite value
    left out; a metric no arm has is left out), and mean seconds per task and arm."""
    summary = BenchSummary()
    for task, keys in SUMMARY_METRICS.items():
        for key in keys:
            table: dict[str, ArmStat] = {}
            for arm in arms:
                values = [r.metric(key) for r in records if r.task == task and r.arm == arm]
                mean, std = mean_std(values)
                n = sum(1 for v in values if math.isfinite(v))
                if n:
                    table[arm] = ArmStat(mean, std, n)
            if table:
                summary.metrics[key] = table
    for task in TASKS:
        for arm in arms:
            runs = [r for r in records if r.task == task and r.arm == arm]
            if runs:
                name = f"{task}/{arm}"
                summary.train_seconds[name] = mean_std(r.train_seconds for r in runs)[0]
                summary.run_seconds[name] = mean_std(
                    r.train_seconds + r.eval_seconds for r in runs
                )[0]
    return summary


# -- figures -----------------------------------------------------------------------------------


def warp_figures(
    settings: LZUBenchSettings, data: SceneData, saliency: Tensor, zoom_settings: ZoomSettings
) -> dict[str, bytes]:
    """PNGs ``warp-fixed`` and ``warp-adaptive``: the first two maps of ``saliency`` (see
    :func:`~wherewhat.methods.lzu.measurements.example_saliencies`) on the figure scene."""
    scene = data.detection[1][settings.figure_scene]
    image = scene["image"][None]
    figures = {}
    for name, sal in (("fixed", saliency[:1]), ("adaptive", saliency[1:2])):
        coarse = saliency_to_grid(sal, separable=zoom_settings.separable, fwhm=zoom_settings.fwhm)
        zoomed = zoom(image, coarse, tuple(settings.input_size))
        with torch.no_grad():
            fig = warp_overview_figure(
                scene["image"], scene["boxes"], sal, coarse, zoomed[0],
                title=f"LZU-{name} warp of test scene {settings.figure_scene}",
            )  # fmt: skip
        figures[f"warp-{name}"] = png_bytes(fig)
    return figures


def _model_figures(
    settings: LZUBenchSettings,
    data: SceneData,
    detectors: Mapping[str, LZUDetectionTask],
    segmenters: Mapping[str, LZUSegmentationTask],
) -> dict[str, bytes]:
    """Unzoomed vs uniform features, detections and segmentations per arm (first seed)."""
    figures = {}
    index = settings.figure_scene
    if detectors:
        scene = data.detection[1][index]
        batch = collate_scenes([scene])
        features, detections = {}, {}
        for arm, module in detectors.items():
            module.eval()
            module.clear_grids()
            with torch.no_grad():
                boxes = module.saliency_boxes(batch, training=False)
                features[arm] = module.model.features(batch["image"], boxes)[0][0]
                detections[arm] = module.predict_batch(batch)[0]
        figures["features"] = png_bytes(feature_comparison_figure(scene["image"], features))
        figures["detections"] = png_bytes(
            detections_figure(scene["image"], scene["boxes"], detections)
        )
    if segmenters:
        scene = data.segmentation[1][index]
        batch = collate_scenes([scene])
        predictions = {}
        for arm, module in segmenters.items():
            module.eval()
            module.clear_grids()
            predictions[arm] = module.predict_batch(batch)[0]
        figures["segmentation"] = png_bytes(
            segmentation_figure(scene["image"], scene["mask"], predictions)
        )
    return figures


# -- the whole benchmark -----------------------------------------------------------------------


def _task_defaults(settings: LZUBenchSettings, data: SceneData) -> dict[str, Knobs]:
    """Each task's hyperparameters in the uniform arm (its network as a nested spec)."""
    out = {}
    for task in settings.tasks:
        hp = dict(make_task(task, "uniform", settings, data.original_size).hparams)
        out[task] = {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}
    return out


def run_lzu_bench(
    settings: LZUBenchSettings | None = None, log: Callable[[str], None] = print
) -> LZUBenchResult:
    """Run the whole LZU benchmark (figures as PNG bytes in the result's ``figures``)."""
    settings = settings or LZUBenchSettings.preset("full")
    settings.check()
    start = time.perf_counter()
    data = load_scenes(settings)
    log(f"scenes: {settings.n_train} train / {settings.n_test} test of {data.config.image_size}")

    saliency, zoom_settings = example_saliencies(settings, data)
    checks = warp_checks(
        saliency, zoom_settings.fwhm, level_sizes(settings, data), tuple(settings.inverse_map_size)
    )
    log(f"warps: round trip {checks.roundtrip_max_err_px}, coverage {checks.coverage}, "
        f"1-D inverse {checks.inverse_speedup_1d_vs_tile:.0f}x faster than tiles")  # fmt: skip
    scene = data.detection[1][settings.figure_scene]
    latency = latency_breakdown(settings, scene["image"][None], scene["boxes"], saliency[:1])
    log(f"overhead (zoom + unzoom) / uniform model: {latency.overhead_fraction:.3f}")
    figures = warp_figures(settings, data, saliency, zoom_settings)

    arms = list(settings.arms)
    if "lzu_adaptive" in arms and "uniform" not in arms:
        arms.insert(0, "uniform")  # the adaptive arm's test-time boxes come from it
        log("lzu_adaptive needs the uniform arm as its prior: training it too")
    order = sorted(arms, key=list(ARMS).index)
    records: list[RunRecord] = []
    detectors: dict[str, LZUDetectionTask] = {}
    segmenters: dict[str, LZUSegmentationTask] = {}
    for task in settings.tasks:
        for seed in settings.seeds:
            prior = None
            for arm in order:
                module, record = run_arm(task, arm, seed, settings, data, prior)
                if arm == "uniform":
                    prior = module.model
                records.append(record)
                log(f"{task} {arm} seed {seed}: {record.headline} ({record.train_seconds:.0f} s "
                    f"train, {record.eval_seconds:.0f} s eval)")  # fmt: skip
                if seed == settings.seeds[0]:
                    if isinstance(module, LZUDetectionTask):
                        detectors[arm] = module
                    else:
                        segmenters[arm] = module
    figures.update(_model_figures(settings, data, detectors, segmenters))
    ablations = []
    for task, change in settings.ablations:
        if task not in settings.tasks:
            continue
        key = "detection_args" if task == "detection" else "segmentation_args"
        changed = dataclasses.replace(settings, **{key: {**settings.task_args(task), **change}})
        _, record = run_arm(task, "lzu_fixed", settings.seeds[0], changed, data)
        ablations.append(dataclasses.replace(record, change=change))
        log(f"ablation {task} lzu_fixed {change}: {record.headline}")

    return LZUBenchResult(
        settings=settings,
        scatter_config=data.config,
        arms_run=order,
        task_defaults=_task_defaults(settings, data),
        warp=checks,
        latency=latency,
        summary=summarise(records, order),
        runs=records,
        ablations=ablations,
        seconds=time.perf_counter() - start,
        figures=figures,
    )
