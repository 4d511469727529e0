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

from wherewhat.bench.counting import training_step_flops
from wherewhat.bench.machine import peak_matmul_gflops
from wherewhat.bench.runtime import torch_num_threads
from wherewhat.data.scatter import collate_scenes
from wherewhat.geometry.warp import saliency_to_grid, zoom
from wherewhat.io import png_bytes
from wherewhat.methods.lzu.arms import (
    LZUNetwork,
    LZUTask,
    fixed_saliency_path,
    make_detector,
    make_task,
)
from wherewhat.methods.lzu.detection_task import LZUDetectionTask
from wherewhat.methods.lzu.figures import (
    detections_figure,
    feature_comparison_figure,
    learning_curves_figure,
    segmentation_figure,
    warp_overview_figure,
)
from wherewhat.methods.lzu.magnification import small_object_magnification
from wherewhat.methods.lzu.measurements import (
    example_saliencies,
    latency_breakdown,
    level_sizes,
    warp_checks,
)
from wherewhat.methods.lzu.records import (
    ArmStat,
    BenchSummary,
    LZUBenchResult,
    RunRecord,
    result_parts_from_dict,
    settings_blocking_merge,
)
from wherewhat.methods.lzu.saliency_cache import load_or_compute_fixed_saliency
from wherewhat.methods.lzu.scenes import SceneData, load_scenes, scene_loader
from wherewhat.methods.lzu.segmentation_task import LZUSegmentationTask
from wherewhat.methods.lzu.settings import ARMS, TASKS, Knobs, LZUBenchSettings, TaskName
from wherewhat.methods.lzu.zoomed import ZoomSettings, make_saliency_source
from wherewhat.metrics.summary import mean_std
from wherewhat.training.fit import fit

__all__ = [
    "SUMMARY_METRICS",
    "merge_results",
    "run_arm",
    "run_lzu_bench",
    "summarise",
    "warp_figures",
]

# Training runs without validation and logs only the loss.
_EXPECTED_WARNINGS = (r".*`self.log\(\)`.*", r".*no `val_dataloader`.*")
# Metrics averaged over seeds per arm, in table order.
SUMMARY_METRICS: dict[TaskName, tuple[str, ...]] = {
    "detection": (
        "ap50", "ap50_small", "ap50_small_band", "ap50_small_outside", "ap50_band",
        "ap50_outside", "ap50_medium", "ap50_large", "ap", "ap_small",
    ),
    "segmentation": ("miou", "small_iou", "pixel_accuracy"),
}  # fmt: skip
# Metrics of the learning curves (evaluated at settings.curve_steps and at the end).
CURVE_METRICS: dict[TaskName, tuple[str, ...]] = {
    "detection": ("ap50", "ap50_small_band", "ap50_outside"),
    "segmentation": ("miou", "small_iou"),
}
# Evaluated again with the ground-truth boxes as the adaptive arm's saliency (the oracle).
ORACLE_METRICS = ("ap50", "ap50_small_band", "ap50_outside", "miou", "small_iou")


class _EvaluateAt(pl.Callback):
    """Runs ``evaluate()`` after the optimizer steps in ``steps``; keeps the numbers and the
    seconds spent (so training time can leave them out)."""

    def __init__(self, steps: Sequence[int], evaluate: Callable[[], dict[str, float]]):
        self.steps = set(int(s) for s in steps)
        self.evaluate = evaluate
        self.points: dict[int, dict[str, float]] = {}
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if step in self.steps and step not in self.points:
            wall, cpu = time.perf_counter(), time.process_time()
            self.points[step] = self.evaluate()
            self.seconds += time.perf_counter() - wall
            self.cpu_seconds += time.process_time() - cpu


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
    if task == "detection":
        with_band = {**settings.detection_args, "band_rows": list(data.band_rows)}
        settings = dataclasses.replace(settings, detection_args=with_band)
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

    def evaluate() -> dict[str, float]:
        return module.evaluate(scene_loader(test_set, settings.eval_batch_size, False))

    curve = _EvaluateAt([s for s in settings.curve_steps if s < steps], evaluate)
    train_loader = scene_loader(train_set, settings.batch(task), True, seed)
    if settings.channels_last:
        module.to(memory_format=torch.channels_last)
    with torch_num_threads(settings.threads):
        step_flops = training_step_flops(module, next(iter(train_loader)))
        trained = fit(
            module,
            train_loader=train_loader,
            max_steps=steps,
            progress=settings.progress_bar,
            callbacks=[curve],
            expected_warnings=_EXPECTED_WARNINGS,
        )
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = evaluate()
        eval_seconds, eval_cpu = time.perf_counter() - wall, time.process_time() - cpu
        if module.saliency_kind == "adaptive":
            module.eval_saliency_from = "truth"
            oracle = evaluate()
            module.eval_saliency_from = "prior"
            metrics.update({f"oracle_{k}": oracle[k] for k in ORACLE_METRICS if k in oracle})
        peak = peak_matmul_gflops(torch.get_num_threads())
    train_seconds = trained.seconds - curve.seconds
    step_seconds = train_seconds / max(trained.steps, 1)
    record = RunRecord(
        task=task, arm=arm, seed=seed,
        train_seconds=train_seconds, train_cpu_seconds=trained.cpu_seconds - curve.cpu_seconds,
        steps=trained.steps, final_loss=trained.final_loss,
        eval_seconds=eval_seconds, eval_cpu_seconds=eval_cpu, metrics=metrics,
        params=sum(p.numel() for p in module.parameters()), torch_threads=torch.get_num_threads(),
        step_gflop=step_flops / 1e9, train_tflop=step_flops * trained.steps / 1e12,
        step_fraction_of_peak=step_flops / 1e9 / step_seconds / peak,
        curve=_curve_points(task, curve.points, trained.steps, metrics),
        loss_curve=_windowed(trained.loss_curve, 10),
    )  # fmt: skip
    return module, record


def _windowed(points: Sequence[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    """``(last step, mean loss)`` of every ``window`` consecutive training steps."""
    out = []
    for start in range(0, len(points), window):
        chunk = points[start : start + window]
        out.append((int(chunk[-1][0]), sum(float(v) for _, v in chunk) / len(chunk)))
    return out


def _curve_points(
    task: TaskName, points: Mapping[int, Mapping[str, float]], last: int, final: Mapping
) -> list[dict[str, float]]:
    """``[{"step": s, metric: value, ...}]`` for the curve evaluations and the final one."""
    rows = []
    for step, values in sorted({**points, last: final}.items()):
        rows.append({"step": step, **{k: float(values[k]) for k in CURVE_METRICS[task]}})
    return rows


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
                band_rows=data.band_rows,
            )  # fmt: skip
        figures[f"warp-{name}"] = png_bytes(fig)
    return figures


def curves_by_arm(
    records: Sequence[RunRecord],
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """``"<task>: <metric>"`` -> arm -> ``[(step, mean over seeds)]`` of the runs' curves."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for task, metrics in CURVE_METRICS.items():
        for metric in metrics:
            by_arm: dict[str, list[tuple[float, float]]] = {}
            for arm in dict.fromkeys(r.arm for r in records if r.task == task):
                steps: dict[int, list[float]] = {}
                for run in (r for r in records if r.task == task and r.arm == arm):
                    for point in run.curve:
                        if math.isfinite(point.get(metric, math.nan)):
                            steps.setdefault(int(point["step"]), []).append(point[metric])
                by_arm[arm] = [(s, sum(v) / len(v)) for s, v in sorted(steps.items())]
            if any(by_arm.values()):
                out[f"{task}: {metric}"] = by_arm
    return out


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


# Least margin over the untrained floor for an arm's numbers to be read (AP50 / mIoU points).
FLOOR_MARGIN = {"detection": ("ap50", 0.25), "segmentation": ("miou", 0.20)}


def untrained_floor(task: TaskName, settings: LZUBenchSettings, data: SceneData) -> RunRecord:
    """The floor row: the uniform arm's network as initialised (seed 0), evaluated."""
    pl.seed_everything(0, workers=True, verbose=False)
    if task == "detection":
        with_band = {**settings.detection_args, "band_rows": list(data.band_rows)}
        settings = dataclasses.replace(settings, detection_args=with_band)
    module = make_task(task, "uniform", settings, data.original_size)
    test_set = data.split(task)[1]
    with torch_num_threads(settings.threads):
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = module.evaluate(scene_loader(test_set, settings.eval_batch_size, False))
    return RunRecord(
        task=task, arm="untrained", seed=0, train_seconds=0.0, train_cpu_seconds=0.0, steps=0,
        final_loss=math.nan, eval_seconds=time.perf_counter() - wall,
        eval_cpu_seconds=time.process_time() - cpu, metrics=metrics,
        params=sum(p.numel() for p in module.parameters()), torch_threads=torch.get_num_threads(),
    )  # fmt: skip


def clears_floor(record: RunRecord, floor: RunRecord) -> bool:
    """Whether ``record`` beats the untrained ``floor`` by :data:`FLOOR_MARGIN`."""
    metric, margin = FLOOR_MARGIN[record.task]
    return record.metric(metric) >= floor.metric(metric) + margin


def warn_if_below_floor(record: RunRecord, floor: RunRecord, log: Callable[[str], None]) -> None:
    if not clears_floor(record, floor):
        metric, margin = FLOOR_MARGIN[record.task]
        log(f"!!! {record.task} {record.arm} seed {record.seed}: {metric} "
            f"{record.metric(metric):.3f} is not {margin} above the untrained floor "
            f"{floor.metric(metric):.3f}: this arm has not learned; no difference to it is read")  # fmt: skip


def small_object_magnifications(
    settings: LZUBenchSettings, data: SceneData, scenes: int = 100
) -> dict[str, dict[str, float]]:
    """Measured magnification of the small test digits (in / out of the band) under each
    saliency: the fixed map as the paper has it, the fixed map weighted by inverse box size,
    the adaptive map of the ground truth, and of the jittered / thinned ground truth the
    adaptive arm trains on."""
    size = data.original_size
    fixed_net = make_detector("lzu_fixed", settings, size)
    zoom_settings = fixed_net.zoom
    grid = zoom_settings.grid_shape
    test = data.detection[1]
    boxes = [test[i]["boxes"] for i in range(min(scenes, len(test)))]

    def fixed_map(size_power: float) -> Tensor:
        changed = dataclasses.replace(zoom_settings, size_power=size_power)
        return load_or_compute_fixed_saliency(
            fixed_saliency_path(data.cache_dir, settings.n_train, changed), data.train_boxes,
            size, grid, amplitude=changed.amplitude, bandwidth=changed.bandwidth,
            size_power=size_power,
        )  # fmt: skip

    adaptive = make_saliency_source(
        "adaptive", grid, amplitude=zoom_settings.amplitude, bandwidth=zoom_settings.bandwidth,
        **{k: v for k, v in settings.arm_args.get("lzu_adaptive", {}).items()
           if k in ("jitter", "drop", "drop_max_side")},
    )  # fmt: skip
    adaptive.generator = torch.Generator().manual_seed(0)
    fake = torch.zeros(1, 1, *size)

    def adaptive_map(training: bool) -> Callable[[int, Tensor], Tensor]:
        def compute(index: int, scene_boxes: Tensor) -> Tensor:
            adaptive.train(training)
            return adaptive(fake, [scene_boxes])

        return compute

    sources: dict[str, Callable[[int, Tensor], Tensor]] = {
        "fixed": lambda i, b, m=fixed_map(0.0): m,
        "fixed_inverse_size": lambda i, b, m=fixed_map(1.0): m,
        "adaptive_truth": adaptive_map(False),
        "adaptive_training": adaptive_map(True),
    }
    return {
        name: small_object_magnification(
            source,
            boxes,
            size,
            tuple(settings.input_size),
            data.band_rows,
            fwhm=zoom_settings.fwhm,
            separable=zoom_settings.separable,
        )  # fmt: skip
        for name, source in sources.items()
    }


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
        saliency, zoom_settings.fwhm, level_sizes(settings, data),
        tuple(settings.inverse_map_size), repeats=settings.latency_timing[1],
    )  # fmt: skip
    log(f"warps: round trip {checks.roundtrip_max_err_px}, coverage {checks.coverage}, "
        f"1-D inverse {checks.inverse_speedup_1d_vs_tile:.0f}x faster than tiles")  # fmt: skip
    scene = data.detection[1][settings.figure_scene]
    latency = latency_breakdown(settings, scene["image"][None], scene["boxes"], saliency[:1])
    log(f"overhead (zoom + unzoom) / uniform model: {latency.overhead_fraction:.3f}")
    figures = warp_figures(settings, data, saliency, zoom_settings)

    magnification = small_object_magnifications(settings, data)
    for name, m in magnification.items():
        log(f"magnification of small digits, {name}: {m['band']:.2f}x in the band "
            f"({m['band_y']:.2f} rows, {m['band_x']:.2f} columns), {m['outside']:.2f}x outside")  # fmt: skip

    arms = list(settings.arms)
    if "lzu_adaptive" in arms and "uniform" not in arms:
        arms.insert(0, "uniform")  # the adaptive arm's test-time boxes come from it
        log("lzu_adaptive needs the uniform arm as its prior: training it too")
    order = sorted(arms, key=list(ARMS).index)
    records: list[RunRecord] = []
    floors: list[RunRecord] = []
    detectors: dict[str, LZUDetectionTask] = {}
    segmenters: dict[str, LZUSegmentationTask] = {}
    for task in settings.tasks:
        floor = untrained_floor(task, settings, data)
        floors.append(floor)
        log(f"{task} floor (untrained uniform model): {floor.headline}")
        for seed in settings.seeds:
            prior = None
            for arm in order:
                if not settings.runs_on(arm, seed):
                    continue
                module, record = run_arm(task, arm, seed, settings, data, prior)
                if arm == "uniform":
                    prior = module.model
                records.append(record)
                log(f"{task} {arm} seed {seed}: {record.headline} ({record.train_seconds:.0f} s "
                    f"train, {record.step_fraction_of_peak:.0%} of peak, "
                    f"{record.eval_seconds:.0f} s eval)")  # fmt: skip
                warn_if_below_floor(record, floor, log)
                if seed == settings.seeds[0]:
                    if isinstance(module, LZUDetectionTask):
                        detectors[arm] = module
                    else:
                        segmenters[arm] = module
    figures.update(_model_figures(settings, data, detectors, segmenters))
    if any(r.curve for r in records):
        figures["curves"] = png_bytes(learning_curves_figure(curves_by_arm(records)))
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
        floors=floors,
        magnification=magnification,
        floor_margin=dict(FLOOR_MARGIN),
        seconds=time.perf_counter() - start,
        figures=figures,
    )


def merge_results(previous: dict, new: LZUBenchResult) -> LZUBenchResult:
    """``new`` with the runs, ablations and floors of an earlier results file (``previous``,
    its JSON) that ``new`` did not redo; the measurements (warps, latency, magnification) and
    figures are ``new``'s. Raises ``ValueError`` when the two used settings that change a run."""
    old = result_parts_from_dict(previous)
    differing = settings_blocking_merge(old["settings"], new.settings)
    if differing or old["scatter_config"] != new.scatter_config:
        raise ValueError(f"the earlier run used other settings for {differing or ['data']}")

    def pooled(kept: list[RunRecord], fresh: list[RunRecord]) -> list[RunRecord]:
        redone = {r.key for r in fresh}
        return [r for r in kept if r.key not in redone] + list(fresh)

    runs = pooled(old["runs"], new.runs)
    arms = [a for a in ARMS if any(r.arm == a for r in runs)]
    figures = dict(new.figures)
    if any(r.curve for r in runs):  # the curves of every merged run, not only the new ones
        figures["curves"] = png_bytes(learning_curves_figure(curves_by_arm(runs)))
    seeds = tuple(sorted({r.seed for r in runs}))
    return dataclasses.replace(
        new,
        settings=dataclasses.replace(new.settings, seeds=seeds),
        arms_run=arms,
        runs=runs,
        ablations=pooled(old["ablations"], new.ablations),
        floors=pooled(old["floors"], new.floors),
        summary=summarise(runs, arms),
        seconds=old["seconds"] + new.seconds,
        commands=old["commands"] + new.commands,
        figures=figures,
    )
