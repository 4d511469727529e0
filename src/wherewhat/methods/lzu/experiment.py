"""The LZU benchmark pipeline, shared by ``benchmarks/lzu.py`` and the tour section "lzu".

The *street experiment*: 512 x 1024 scattered-MNIST scenes (digits of 8-128 px, the small ones
mostly in a horizon band: :func:`~wherewhat.methods.lzu.street.street_scene_config`), a model trained
at a reduced input (128 x 256 by default) in four *arms*:

- ``uniform``: bilinear downsampling (LZU with a uniform saliency is exactly that);
- ``lzu_fixed``: one dataset KDE saliency over all training boxes, computed once and saved;
- ``lzu_adaptive``: a KDE per image over ground-truth boxes jittered by U[-j, j] px when
  training, and over the *uniform arm's* detections (detection) or predicted foreground
  components (segmentation) of the same seed at test time: the scenes are stills, so there is
  no previous frame to take detections from;
- ``uniform_2x``: bilinear downsampling to twice the input size (the upper bound).

Two tasks with the same arms: class-agnostic SSD detection (AP50 and AP by object size, sizes
measured in original pixels) and semantic segmentation of digit pixels by class (mIoU at the
label resolution). Plus model-free measurements: round-trip error and coverage of the exact
inverse (separable and non-separable warps), speed of the 1-D inverse against the tile solver,
and per-step CPU latency (saliency, grids, zoom, backbone, each unzoom level, head) with the
overhead of zoom + unzoom relative to the uniform model.

The data (scene seed 0) is the same for every seed; a seed changes initialisation and batch
order. :func:`run_lzu_bench` runs everything; the tour section only does the quick,
model-free part (warps, figures, latency).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from wherewhat.io import png_bytes
from wherewhat.training.quiet import quiet_lightning

__all__ = [
    "ARMS",
    "TASKS",
    "LZUBenchSettings",
    "example_saliencies",
    "latency_breakdown",
    "load_scenes",
    "lzu_markdown",
    "make_task",
    "run_lzu_bench",
    "warp_checks",
    "warp_figures",
]

# arm -> (saliency source, input scale relative to settings.input_size)
ARMS: dict[str, tuple[str, int]] = {
    "uniform": ("uniform", 1),
    "lzu_fixed": ("fixed", 1),
    "lzu_adaptive": ("adaptive", 1),
    "uniform_2x": ("uniform", 2),
}
TASKS = ("detection", "segmentation")
# The targets, shown next to the results.
TARGETS = {
    "roundtrip_max_err_px": ("<=", 1e-3),
    "coverage": (">=", 1.0),
    "ap50_small_gain_fixed": (">=", 0.03),
    "miou_gain_fixed": (">", 0.0),
    "inverse_speedup_1d_vs_tile": (">=", 20.0),
    "overhead_fraction": ("<=", 0.10),
}


@dataclass
class LZUBenchSettings:
    """Everything one benchmark run does; :meth:`preset` gives ``full`` and ``quick``.

    ``data`` overrides :func:`~wherewhat.methods.lzu.street.street_scene_config` (``n_train`` /
    ``n_test`` there are the cached split sizes; ``n_train`` / ``n_test`` here take the first
    scenes of them). ``detection_args`` / ``segmentation_args`` override the task constructors
    (:class:`~wherewhat.methods.lzu.detection_task.LZUDetectionTask`,
    :class:`~wherewhat.methods.lzu.segmentation_task.LZUSegmentationTask`); ``warp_args`` apply to
    both (grid, FWHM, KDE amplitude / bandwidth, jitter).
    """

    quick: bool = False
    tasks: tuple[str, ...] = TASKS
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: tuple[int, ...] = (0, 1, 2)
    data: dict[str, Any] = field(
        default_factory=lambda: {
            "min_digit_size": 8, "max_digit_size": 128, "with_masks": True,
            "n_train": 1000, "n_test": 250,
        }
    )  # fmt: skip
    n_train: int = 1000
    n_test: int = 250
    input_size: tuple[int, int] = (128, 256)
    batch_size: int = 16
    eval_batch_size: int = 8
    detection_steps: int = 240
    segmentation_steps: int = 160
    steps_2x_fraction: float = 1.0  # uniform_2x trains this fraction of the steps (same data)
    warp_args: dict[str, Any] = field(default_factory=dict)
    # LZU-fixed re-run on the first seed with these (task, task-argument changes): the note's
    # ablations. Detection: a stronger zoom (amplitude 4), the non-separable warp;
    # segmentation: logits unzoomed straight to the label pixels.
    ablations: tuple[tuple[str, dict[str, Any]], ...] = (
        ("detection", {"amplitude": 4.0}),
        ("detection", {"separable": False}),
        ("segmentation", {"unzoom_to": "labels"}),
    )
    detection_args: dict[str, Any] = field(default_factory=dict)
    segmentation_args: dict[str, Any] = field(default_factory=dict)
    threads: int = 2
    latency_timing: tuple[int, int] = (3, 20)  # (warm-up, repeats) per measured step
    inverse_map_size: tuple[int, int] = (152, 240)
    figure_scene: int = 0
    progress_bar: bool = False
    cache_root: str | None = None

    @classmethod
    def preset(cls, name: str, **changes: Any) -> LZUBenchSettings:
        """``full`` (the benchmark) or ``quick`` (< 3 minutes on 2 quiet cores)."""
        if name == "full":
            settings = cls()
        elif name == "quick":
            settings = cls(
                quick=True, seeds=(0,),
                data={"min_digit_size": 8, "max_digit_size": 128, "with_masks": True,
                      "n_train": 96, "n_test": 24},
                n_train=96, n_test=24, batch_size=8, eval_batch_size=8,
                detection_steps=12, segmentation_steps=8, steps_2x_fraction=0.5,
                detection_args={"warmup_steps": 4}, segmentation_args={"warmup_steps": 4},
                latency_timing=(1, 5), ablations=(),
            )  # fmt: skip
        else:
            raise ValueError(f"unknown preset {name!r}: expected 'full' or 'quick'")
        return dataclasses.replace(settings, **changes)

    def check(self) -> None:
        bad = [a for a in self.arms if a not in ARMS]
        if bad:
            raise ValueError(f"unknown arm(s) {bad}; choose from {list(ARMS)}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; choose from {list(TASKS)}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if self.n_train > self.data.get("n_train", 0) or self.n_test > self.data.get("n_test", 0):
            raise ValueError(
                f"n_train / n_test ({self.n_train}, {self.n_test}) exceed the generated splits "
                f"({self.data.get('n_train')}, {self.data.get('n_test')})"
            )
        if self.n_train < self.batch_size:
            raise ValueError(f"n_train={self.n_train} < batch_size={self.batch_size}")


# -- data and models ---------------------------------------------------------------------------


def _scatter_config(settings: LZUBenchSettings):
    from wherewhat.methods.lzu.street import street_scene_config

    return street_scene_config(**settings.data)


def load_scenes(settings: LZUBenchSettings) -> dict[str, Any]:
    """Cached scenes (generated on the first call) and the datasets of both splits."""
    from wherewhat.data.scatter import ScatterMNIST, load_or_generate, scatter_cache_dir

    config = _scatter_config(settings)
    train = load_or_generate(config, "train", settings.cache_root)
    test = load_or_generate(config, "test", settings.cache_root)
    no_masks = {"masks": None}
    return {
        "config": config,
        "cache_dir": scatter_cache_dir(config, settings.cache_root),
        "train_boxes": [_tensor(train.boxes[i]) for i in range(settings.n_train)],
        "detection": (
            ScatterMNIST(dataclasses.replace(train, **no_masks), range(settings.n_train)),
            ScatterMNIST(dataclasses.replace(test, **no_masks), range(settings.n_test)),
        ),
        "segmentation": (
            ScatterMNIST(train, range(settings.n_train)),
            ScatterMNIST(test, range(settings.n_test)),
        ),
    }


def _tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(np.array(array))


def _task_kwargs(task: str, arm: str, settings: LZUBenchSettings, size: tuple[int, int]) -> dict:
    kind, scale = ARMS[arm]
    extra = settings.detection_args if task == "detection" else settings.segmentation_args
    return {
        "saliency": kind,
        "original_size": size,
        "input_size": tuple(s * scale for s in settings.input_size),
        **settings.warp_args,
        **extra,
    }


def make_task(task: str, arm: str, settings: LZUBenchSettings, original_size: tuple[int, int]):
    """A fresh (untrained) task of ``task`` for ``arm``."""
    from wherewhat.methods.lzu.detection_task import LZUDetectionTask
    from wherewhat.methods.lzu.segmentation_task import LZUSegmentationTask

    cls = LZUDetectionTask if task == "detection" else LZUSegmentationTask
    return cls(**_task_kwargs(task, arm, settings, original_size))


def fixed_saliency_path(cache_dir: Path, n_train: int, hparams: Any) -> Path:
    """Where a task's fixed saliency is saved: next to the scenes it came from, named by the
    training-set size and the KDE settings of that task (``hparams``)."""
    gh, gw = hparams.grid_shape
    amplitude, bandwidth = hparams.amplitude, hparams.bandwidth
    return cache_dir / f"lzu-fixed-saliency-n{n_train}-g{gh}x{gw}-a{amplitude:g}-b{bandwidth:g}.pt"


# -- training ----------------------------------------------------------------------------------


# Training runs without validation and logs only the loss.
_EXPECTED_WARNINGS = (r".*`self.log\(\)`.*", r".*no `val_dataloader`.*")


def _loader(dataset, batch_size: int, shuffle: bool, seed: int = 0):
    import torch
    from torch.utils.data import DataLoader

    from wherewhat.data.scatter import collate_scenes

    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle,
        collate_fn=collate_scenes,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )


def _fit(task_module, loader, steps: int, progress: bool) -> dict[str, float]:
    import lightning.pytorch as pl

    from wherewhat.training.callbacks import NonFiniteLossGuard

    with quiet_lightning(_EXPECTED_WARNINGS):
        trainer = pl.Trainer(
            max_epochs=-1, max_steps=steps, accelerator="cpu", devices=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
            limit_val_batches=0, num_sanity_val_steps=0, callbacks=[NonFiniteLossGuard()],
        )  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.fit(task_module, train_dataloaders=loader)
    return {
        "train_seconds": time.perf_counter() - wall,
        "train_cpu_seconds": time.process_time() - cpu,
        "steps": int(trainer.global_step),
        "final_loss": float(trainer.callback_metrics.get("train/loss", math.nan)),
    }


def run_arm(
    task: str,
    arm: str,
    seed: int,
    settings: LZUBenchSettings,
    data: dict[str, Any],
    prior: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """Train and evaluate one (task, arm, seed); returns the trained task and its numbers."""
    import lightning.pytorch as pl
    import torch

    pl.seed_everything(seed, workers=True, verbose=False)
    size = tuple(data["config"].image_size)
    module = make_task(task, arm, settings, size)
    if module.saliency_kind == "fixed":
        path = fixed_saliency_path(data["cache_dir"], settings.n_train, module.hparams)
        module.hparams.fixed_saliency_path = str(path)
        module.prepare_fixed_saliency(data["train_boxes"])
    if module.saliency_kind == "adaptive":
        if prior is None:
            raise ValueError(f"{task} arm {arm} needs the uniform model of seed {seed} as prior")
        module.attach_prior(prior)
    train_set, test_set = data[task]
    steps = settings.detection_steps if task == "detection" else settings.segmentation_steps
    if ARMS[arm][1] > 1:
        steps = max(1, int(round(steps * settings.steps_2x_fraction)))
    from wherewhat.bench.runtime import torch_num_threads

    with torch_num_threads(settings.threads):
        fit = _fit(module, _loader(train_set, settings.batch_size, True, seed), steps,
                   settings.progress_bar)  # fmt: skip
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = module.evaluate(_loader(test_set, settings.eval_batch_size, False))
        evaluation = {
            "eval_seconds": time.perf_counter() - wall,
            "eval_cpu_seconds": time.process_time() - cpu,
        }
    params = sum(p.numel() for p in module.parameters())
    record = {"task": task, "arm": arm, "seed": seed, **fit, **evaluation, **metrics,
              "params": params, "torch_threads": torch.get_num_threads()}  # fmt: skip
    return module, record


# -- model-free measurements -------------------------------------------------------------------


def example_saliencies(settings: LZUBenchSettings, data: dict[str, Any], scenes: int = 4):
    """The experiment's warps: the fixed map and the adaptive maps of a few test scenes."""
    import torch

    from wherewhat.geometry.saliency import boxes_saliency
    from wherewhat.methods.lzu.detection_task import load_or_compute_fixed_saliency

    probe = make_task("detection", "lzu_adaptive", settings, tuple(data["config"].image_size))
    hp = probe.hparams
    size = tuple(data["config"].image_size)
    fixed = load_or_compute_fixed_saliency(
        fixed_saliency_path(data["cache_dir"], settings.n_train, hp), data["train_boxes"], size,
        tuple(hp.grid_shape), amplitude=hp.amplitude, bandwidth=hp.bandwidth,
    )  # fmt: skip
    test_set = data["detection"][1]
    boxes = [test_set[i]["boxes"] for i in range(min(scenes, len(test_set)))]
    adaptive = boxes_saliency(
        boxes, size, tuple(hp.grid_shape), amplitude=hp.amplitude, bandwidth=hp.bandwidth
    )
    return torch.cat([fixed, adaptive]), hp


def warp_checks(
    saliency, fwhm: float, map_sizes: Sequence[tuple[int, int]], speed_size: tuple[int, int],
    repeats: int = 30,
) -> dict[str, Any]:  # fmt: skip
    """Round trip ``max |T(T^-1(u)) - u|`` (px, float32) and coverage over the pixel centres of
    maps of ``map_sizes``, for the separable and the non-separable warp of every saliency map
    ``(N, 1, gh, gw)``; and the speed of the separable (1-D) inverse against the tile solver on
    the same separable grid at ``speed_size``."""

    from wherewhat.geometry.coords import normalized_to_pixel, pixel_centers
    from wherewhat.geometry.warp import saliency_to_grid, unwarp_points, unzoom_grid

    out: dict[str, Any] = {"roundtrip_max_err_px": {}, "coverage": {}, "map_sizes": []}
    for name, separable in (("separable", True), ("nonseparable", False)):
        coarse = saliency_to_grid(saliency.float(), separable=separable, fwhm=fwhm)
        worst, covered, total = 0.0, 0, 0
        for size in map_sizes:
            inverse = unzoom_grid(coarse, size)
            batch = coarse.shape[0]
            zoomed_px = normalized_to_pixel(inverse.grid, size).reshape(batch, -1, 2)
            back = unwarp_points(zoomed_px, coarse, size, size).reshape(batch, *size, 2)
            worst = max(worst, float((back - pixel_centers(size)).abs().max()))
            covered += int(inverse.coverage.sum())
            total += inverse.coverage.numel()
        out["roundtrip_max_err_px"][name] = worst
        out["coverage"][name] = covered / total
    out["map_sizes"] = [list(s) for s in map_sizes]
    coarse = saliency_to_grid(saliency[:1].float(), separable=True, fwhm=fwhm)
    # Each method is timed over consecutive calls after a warm-up (as timeit does): the 1-D
    # inverse takes well under a millisecond, and interleaving it with the tile solver, which
    # streams megabytes, would mostly time the cold caches the solver leaves behind.
    timings = {}
    for method in ("separable", "tiles"):
        call = partial(unzoom_grid, coarse, speed_size, method=method)
        timings.update(_interleaved_median_ms({method: call}, warmup=3, repeats=repeats))
    out["inverse_ms"] = {"separable_1d": timings["separable"], "tiles": timings["tiles"]}
    out["inverse_speedup_1d_vs_tile"] = timings["tiles"] / timings["separable"]
    out["inverse_map_size"] = list(speed_size)
    return out


def _interleaved_median_ms(
    calls: dict[str, Callable[[], Any]], warmup: int, repeats: int
) -> dict[str, float]:
    """Median ms of each call, timed round-robin (one call of each per round), so that a change
    of machine load during the measurement affects every step alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            runs[name].append(time.perf_counter() - start)
    return {name: float(np.median(r)) * 1000.0 for name, r in runs.items()}


def latency_breakdown(
    settings: LZUBenchSettings, image, boxes, fixed_saliency
) -> dict[str, Any]:  # fmt: skip
    """Per-step CPU latency (ms, batch 1, ``settings.threads`` threads, inference mode) of the
    detection pipeline at the benchmark setting, and the overhead fractions.

    ``image`` ``(1, C, H, W)``; ``boxes`` ``(n, 4)`` (the adaptive saliency's input);
    ``fixed_saliency`` ``(1, 1, gh, gw)``. Steps: ``saliency`` (adaptive KDE), ``grid``
    (saliency -> coarse -> dense zoom grid), ``inverse_grids`` (every level's unzoom grid),
    ``zoom``, ``backbone``, ``unzoom_l<k>`` per level, ``head``; models: ``uniform_model``
    (resize + backbone + head), ``lzu_fixed_model`` (cached grids), ``lzu_adaptive_model``;
    segmentation: ``segmentation_net``, ``segmentation_unzoom`` (logits), ``segmentation_upsample``
    (to the labels). ``overhead_fraction`` = (zoom + all unzooms) / uniform model; the adaptive
    one adds the saliency and both grids.
    """
    import torch
    import torch.nn.functional as F

    from wherewhat.bench.runtime import torch_num_threads
    from wherewhat.geometry.saliency import boxes_saliency
    from wherewhat.geometry.warp import saliency_to_grid, sampling_grid, unzoom, unzoom_grid, zoom
    from wherewhat.methods.lzu.segmentation_net import logits_at_label_pixels

    warmup, repeats = settings.latency_timing
    size = tuple(image.shape[-2:])
    det = {arm: make_task("detection", arm, settings, size).model.eval()
           for arm in ("uniform", "lzu_fixed", "lzu_adaptive")}  # fmt: skip
    det["lzu_fixed"].saliency.saliency.copy_(fixed_saliency)
    seg = make_task("segmentation", "lzu_fixed", settings, size).model.eval()
    seg.saliency.saliency.copy_(fixed_saliency)
    model, plain, adaptive = det["lzu_fixed"], det["uniform"].detector, det["lzu_adaptive"]
    grid_shape = tuple(model.saliency.grid_shape)
    amplitude, bandwidth = adaptive.saliency.amplitude_init, adaptive.saliency.bandwidth_init
    warp = model.lzu.warp_options
    in_size = model.input_size

    def resize():
        return F.interpolate(image, in_size, mode="bilinear", align_corners=False)

    with torch_num_threads(settings.threads), torch.inference_mode():
        coarse = saliency_to_grid(fixed_saliency, **warp)
        dense = sampling_grid(coarse, in_size)
        zoomed = zoom(image, None, dense_grid=dense)
        features = model.detector.backbone(zoomed)
        sizes = [tuple(f.shape[-2:]) for f in features]
        inverse = [unzoom_grid(coarse, s).grid for s in sizes]
        unzoomed = [unzoom(f, g) for f, g in zip(features, inverse, strict=True)]
        logits = seg.net(zoomed)
        seg_inverse = unzoom_grid(coarse, tuple(logits.shape[-2:])).grid
        model(image)  # fill the grid caches
        seg(image)
        calls: dict[str, Callable[[], Any]] = {
            "saliency": lambda: boxes_saliency(
                [boxes], size, grid_shape, amplitude=amplitude, bandwidth=bandwidth
            ),
            "grid": lambda: sampling_grid(saliency_to_grid(fixed_saliency, **warp), in_size),
            "inverse_grids": lambda: [unzoom_grid(coarse, s) for s in sizes],
            "zoom": lambda: zoom(image, None, dense_grid=dense),
            "backbone": lambda: model.detector.backbone(zoomed),
            **{
                f"unzoom_l{level}": (lambda f=f, g=g: unzoom(f, g))
                for level, (f, g) in enumerate(zip(features, inverse, strict=True))
            },
            "head": lambda: model.detector.head(unzoomed),
            "resize": resize,
            "uniform_model": lambda: plain.head(plain.backbone(resize())),
            "lzu_fixed_model": lambda: model(image),
            "lzu_adaptive_model": lambda: adaptive(image, [boxes]),
            "segmentation_net": lambda: seg.net(zoomed),
            "segmentation_unzoom": lambda: unzoom(logits, seg_inverse),
            "segmentation_upsample": lambda: logits_at_label_pixels(logits, size),
        }
        ms = _interleaved_median_ms(calls, warmup, repeats)
    unzoom_total = sum(v for k, v in ms.items() if k.startswith("unzoom_l"))
    adaptive_extra = ms["saliency"] + ms["grid"] + ms["inverse_grids"]
    seg_plain = ms["resize"] + ms["segmentation_net"] + ms["segmentation_upsample"]
    return {
        "latency_ms": ms,
        "latency_threads": settings.threads,
        "latency_batch": int(image.shape[0]),
        "n_levels": len(sizes),
        "level_sizes": [list(s) for s in sizes],
        "overhead_fraction": (ms["zoom"] + unzoom_total) / ms["uniform_model"],
        "overhead_fraction_adaptive": (ms["zoom"] + unzoom_total + adaptive_extra)
        / ms["uniform_model"],
        "overhead_fraction_segmentation": (ms["zoom"] + ms["segmentation_unzoom"]) / seg_plain,
    }


# -- figures -----------------------------------------------------------------------------------


def warp_figures(settings, data, saliency, hp) -> dict[str, bytes]:
    import torch

    from wherewhat.geometry.warp import saliency_to_grid, zoom
    from wherewhat.methods.lzu.figures import warp_overview_figure

    scene = data["detection"][1][settings.figure_scene]
    image = scene["image"][None]
    figures = {}
    for name, sal in (("fixed", saliency[:1]), ("adaptive", saliency[1:2])):
        coarse = saliency_to_grid(sal, separable=hp.separable, fwhm=hp.fwhm)
        zoomed = zoom(image, coarse, tuple(settings.input_size))
        with torch.no_grad():
            fig = warp_overview_figure(
                scene["image"], scene["boxes"], sal, coarse, zoomed[0],
                title=f"LZU-{name} warp of test scene {settings.figure_scene}",
            )  # fmt: skip
        figures[f"warp-{name}"] = png_bytes(fig)
    return figures


def _model_figures(settings, data, models: dict[tuple[str, str], Any]) -> dict[str, bytes]:
    """Unzoomed vs uniform features, detections and segmentations per arm (first seed)."""
    import torch

    from wherewhat.data.scatter import collate_scenes
    from wherewhat.methods.lzu.figures import (
        detections_figure,
        feature_comparison_figure,
        segmentation_figure,
    )

    figures = {}
    index = settings.figure_scene
    det_models = {arm: m for (task, arm), m in models.items() if task == "detection"}
    if det_models:
        scene = data["detection"][1][index]
        batch = collate_scenes([scene])
        features, detections = {}, {}
        for arm, module in det_models.items():
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
    seg_models = {arm: m for (task, arm), m in models.items() if task == "segmentation"}
    if seg_models:
        scene = data["segmentation"][1][index]
        batch = collate_scenes([scene])
        predictions = {}
        for arm, module in seg_models.items():
            module.eval()
            module.clear_grids()
            predictions[arm] = module.predict_batch(batch)[0]
        figures["segmentation"] = png_bytes(
            segmentation_figure(scene["image"], scene["mask"], predictions)
        )
    return figures


# -- the whole benchmark -----------------------------------------------------------------------

_SUMMARY = {
    "detection": ("ap50", "ap50_small", "ap50_medium", "ap50_large", "ap", "ap_small"),
    "segmentation": ("miou", "pixel_accuracy"),
}


def _summarise(records: list[dict[str, Any]], arms: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for task, keys in _SUMMARY.items():
        for key in keys:
            table: dict[str, Any] = {}
            for arm in arms:
                values = [r[key] for r in records if r["task"] == task and r["arm"] == arm]
                values = [v for v in values if v is not None and not math.isnan(v)]
                if not values:
                    continue
                table[arm] = float(np.mean(values))
                table[f"{arm}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                table[f"{arm}_n"] = len(values)
            if table:
                out[key] = table
    for task in TASKS:
        for arm in arms:
            runs = [r for r in records if r["task"] == task and r["arm"] == arm]
            if runs:
                out.setdefault("train_seconds", {})[f"{task}/{arm}"] = float(
                    np.mean([r["train_seconds"] for r in runs])
                )
                out.setdefault("run_seconds", {})[f"{task}/{arm}"] = float(
                    np.mean([r["train_seconds"] + r["eval_seconds"] for r in runs])
                )
    return out


def run_lzu_bench(
    settings: LZUBenchSettings | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the whole LZU benchmark; returns the JSON-ready result plus ``figures`` (PNG bytes)."""

    settings = settings or LZUBenchSettings.preset("full")
    settings.check()
    start = time.perf_counter()
    data = load_scenes(settings)
    log(f"scenes: {settings.n_train} train / {settings.n_test} test of {data['config'].image_size}")

    saliency, hp = example_saliencies(settings, data)
    sizes = {tuple(settings.inverse_map_size)}
    probe = make_task("detection", "uniform", settings, tuple(data["config"].image_size))
    sizes |= {tuple(s) for s in probe.model.detector.grid_sizes if min(s) > 1}
    checks = warp_checks(saliency, hp.fwhm, sorted(sizes), tuple(settings.inverse_map_size))
    log(f"warps: round trip {checks['roundtrip_max_err_px']}, coverage {checks['coverage']}, "
        f"1-D inverse {checks['inverse_speedup_1d_vs_tile']:.0f}x faster than tiles")  # fmt: skip
    scene = data["detection"][1][settings.figure_scene]
    latency = latency_breakdown(settings, scene["image"][None], scene["boxes"], saliency[:1])
    log(f"overhead (zoom + unzoom) / uniform model: {latency['overhead_fraction']:.3f}")
    figures = warp_figures(settings, data, saliency, hp)

    arms = list(settings.arms)
    if "lzu_adaptive" in arms and "uniform" not in arms:
        arms.insert(0, "uniform")  # the adaptive arm's test-time boxes come from it
        log("lzu_adaptive needs the uniform arm as its prior: training it too")
    order = sorted(arms, key=list(ARMS).index)
    records, kept = [], {}
    for task in settings.tasks:
        for seed in settings.seeds:
            prior = None
            for arm in order:
                module, record = run_arm(task, arm, seed, settings, data, prior)
                if arm == "uniform":
                    prior = module.model
                records.append(record)
                headline = (f"AP50 {record['ap50']:.3f}, small {record['ap50_small']:.3f}"
                            if task == "detection" else f"mIoU {record['miou']:.3f}")  # fmt: skip
                log(f"{task} {arm} seed {seed}: {headline} ({record['train_seconds']:.0f} s "
                    f"train, {record['eval_seconds']:.0f} s eval)")  # fmt: skip
                if seed == settings.seeds[0]:
                    kept[(task, arm)] = module
    figures.update(_model_figures(settings, data, kept))
    ablations = []
    for task, change in settings.ablations:
        if task not in settings.tasks:
            continue
        key = "detection_args" if task == "detection" else "segmentation_args"
        changed = dataclasses.replace(settings, **{key: {**getattr(settings, key), **change}})
        _, record = run_arm(task, "lzu_fixed", settings.seeds[0], changed, data)
        ablations.append({"change": change, **record})
        headline = (f"AP50 {record['ap50']:.3f}, small {record['ap50_small']:.3f}"
                    if task == "detection" else f"mIoU {record['miou']:.3f}")  # fmt: skip
        log(f"ablation {task} lzu_fixed {change}: {headline}")

    summary = _summarise(records, order)
    result: dict[str, Any] = {
        "roundtrip_max_err_px": checks["roundtrip_max_err_px"],
        "coverage": checks["coverage"],
        **{k: summary[k] for k in ("ap50_small", "ap50", "miou") if k in summary},
        "inverse_speedup_1d_vs_tile": checks["inverse_speedup_1d_vs_tile"],
        "overhead_fraction": latency["overhead_fraction"],
        "seeds": list(settings.seeds),
        "summary": summary,
        "warp": checks,
        "latency": latency,
        "runs": records,
        "ablations": ablations,
        "targets": {k: list(v) for k, v in TARGETS.items()},
        "settings": {**dataclasses.asdict(settings), "scatter_config": data["config"].to_dict(),
                     "arms_run": order, "task_defaults": _task_defaults(settings, data)},
        "seconds": time.perf_counter() - start,
        "figures": figures,
    }  # fmt: skip
    return result


def _task_defaults(settings, data) -> dict[str, Any]:
    size = tuple(data["config"].image_size)
    out = {}
    for task in settings.tasks:
        hp = dict(make_task(task, "uniform", settings, size).hparams)
        out[task] = {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}
    return out


# -- markdown ----------------------------------------------------------------------------------


_ABLATION_KEYS = ("ap50", "ap50_small", "ap50_medium", "ap50_large", "ap")


def _pm(table: dict[str, Any], arm: str, scale: float = 100.0) -> str:
    if arm not in table:
        return "-"
    mean, std, n = table[arm], table.get(f"{arm}_std", 0.0), table.get(f"{arm}_n", 1)
    return f"{scale * mean:.1f} ± {scale * std:.1f}" if n > 1 else f"{scale * mean:.1f}"


def lzu_markdown(result: dict[str, Any]) -> str:
    """The benchmark's markdown: warps, latency, detection and segmentation per arm."""
    from wherewhat.bench.tables import format_markdown_table

    s = result["settings"]
    summary = result["summary"]
    warp = result["warp"]
    latency = result["latency"]
    lines = [
        f"# LZU benchmark{' (quick)' if s['quick'] else ''}",
        "",
        f"Scenes {s['scatter_config']['image_size'][0]} x {s['scatter_config']['image_size'][1]}"
        f" (digits {s['scatter_config']['min_digit_size']}-{s['scatter_config']['max_digit_size']}"
        f" px, horizon band), {s['n_train']} train / {s['n_test']} test, input "
        f"{s['input_size'][0]} x {s['input_size'][1]} (uniform_2x: twice that), seeds "
        f"{', '.join(str(x) for x in result['seeds'])}; "
        f"{s['detection_steps']} detection / {s['segmentation_steps']} segmentation steps of "
        f"batch {s['batch_size']}. Mean ± std over seeds; total {result['seconds'] / 60:.1f} min.",
        "",
        "## Warps",
        "",
    ]
    lines.append(format_markdown_table(
        [{"warp": name, "round trip max err (px)": warp["roundtrip_max_err_px"][name],
          "coverage": warp["coverage"][name]} for name in ("separable", "nonseparable")],
        ["warp", "round trip max err (px)", "coverage"],
    ))  # fmt: skip
    lines.append(
        f"Maps {', '.join('x'.join(str(v) for v in m) for m in warp['map_sizes'])} px, fixed "
        "saliency and 4 adaptive ones. Inverse at "
        f"{'x'.join(str(v) for v in warp['inverse_map_size'])}: 1-D "
        f"{warp['inverse_ms']['separable_1d']:.2f} ms, tile solver {warp['inverse_ms']['tiles']:.1f}"
        f" ms: **{warp['inverse_speedup_1d_vs_tile']:.0f}x** faster (target >= 20x).\n"
    )
    lines += ["## Latency (detection, batch 1, "
              f"{latency['latency_threads']} threads, ms)", ""]  # fmt: skip
    ms = latency["latency_ms"]
    lines.append(format_markdown_table([{"step": k, "ms": v} for k, v in ms.items()],
                                       ["step", "ms"]))  # fmt: skip
    lines.append(
        f"Overhead (zoom + {latency['n_levels']} unzooms) / uniform model: "
        f"**{100 * latency['overhead_fraction']:.1f} %** (target <= 10 %); adaptive with its "
        f"saliency and grids: {100 * latency['overhead_fraction_adaptive']:.1f} %; segmentation "
        f"(zoom + logits unzoom): {100 * latency['overhead_fraction_segmentation']:.1f} %.\n"
    )
    arms = s["arms_run"]
    if "ap50" in summary:
        lines += ["## Detection (class-agnostic AP, %; sizes: sqrt(area) in original px)", ""]
        rows = []
        for arm in arms:
            row = {"arm": arm}
            for key in _SUMMARY["detection"]:
                row[key] = _pm(summary.get(key, {}), arm)
            row["train s"] = summary.get("train_seconds", {}).get(f"detection/{arm}")
            rows.append(row)
        lines.append(format_markdown_table(rows, ["arm", *_SUMMARY["detection"], "train s"]))
    if "miou" in summary:
        lines += ["## Segmentation (mIoU over background + 10 digits, %)", ""]
        rows = []
        for arm in arms:
            rows.append({"arm": arm, "miou": _pm(summary["miou"], arm),
                         "pixel accuracy": _pm(summary.get("pixel_accuracy", {}), arm),
                         "train s": summary.get("train_seconds", {}).get(f"segmentation/{arm}")})  # fmt: skip
        lines.append(format_markdown_table(rows, ["arm", "miou", "pixel accuracy", "train s"]))
    if result.get("ablations"):
        seed = result["seeds"][0]
        lines += [f"## Ablations (LZU-fixed, seed {seed}, %)", ""]
        for task, keys in (("detection", _ABLATION_KEYS), ("segmentation", ("miou",))):
            runs = [a for a in result["ablations"] if a["task"] == task]
            if not runs:
                continue
            base = [r for r in result["runs"] if r["task"] == task and r["arm"] == "lzu_fixed"
                    and r["seed"] == seed]  # fmt: skip
            rows = (
                [{"lzu_fixed": "as above", **{k: 100 * base[0][k] for k in keys}}] if base else []
            )
            rows += [{"lzu_fixed": ", ".join(f"{k}={v}" for k, v in a["change"].items()),
                      **{k: 100 * a[k] for k in keys}} for a in runs]  # fmt: skip
            lines.append(format_markdown_table(rows, [("lzu_fixed", f"{task}: LZU-fixed"), *keys]))
    gains = []
    if "uniform" in summary.get("ap50_small", {}) and "lzu_fixed" in summary["ap50_small"]:
        gain = summary["ap50_small"]["lzu_fixed"] - summary["ap50_small"]["uniform"]
        gains.append(f"LZU-fixed - uniform, AP50 small: {100 * gain:+.1f} points (target >= +3)")
    if "uniform" in summary.get("miou", {}) and "lzu_fixed" in summary["miou"]:
        gain = summary["miou"]["lzu_fixed"] - summary["miou"]["uniform"]
        gains.append(f"LZU-fixed - uniform, mIoU: {100 * gain:+.2f} points (target > 0)")
    if gains:
        lines += ["## Against the targets", "", *(f"- {g}" for g in gains), ""]
    return "\n".join(lines) + "\n"
