"""The model-free part of the LZU benchmark (also the tour page's): example warps, how exact and
fast their inverse is, and what zoom + unzoom cost per step."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wherewhat.bench.runtime import torch_num_threads
from wherewhat.geometry.coords import normalized_to_pixel, pixel_centers
from wherewhat.geometry.saliency import boxes_saliency
from wherewhat.geometry.warp import (
    saliency_to_grid,
    sampling_grid,
    unwarp_points,
    unzoom,
    unzoom_grid,
    zoom,
)
from wherewhat.methods.lzu.arms import fixed_saliency_path, make_detector, make_segmenter
from wherewhat.methods.lzu.records import LatencyBreakdown, WarpChecks
from wherewhat.methods.lzu.saliency_cache import load_or_compute_fixed_saliency
from wherewhat.methods.lzu.scenes import SceneData
from wherewhat.methods.lzu.segmentation_net import logits_at_label_pixels
from wherewhat.methods.lzu.settings import LZUBenchSettings
from wherewhat.methods.lzu.zoomed import ZoomSettings

__all__ = ["example_saliencies", "latency_breakdown", "level_sizes", "warp_checks"]


def example_saliencies(
    settings: LZUBenchSettings, data: SceneData, scenes: int = 4
) -> tuple[Tensor, ZoomSettings]:
    """The experiment's warps: the fixed map and the adaptive maps of a few test scenes,
    ``(1 + scenes, 1, gh, gw)``, and the zoom they were made with."""
    probe = make_detector("lzu_adaptive", settings, data.original_size)
    zoom_settings = probe.zoom
    size = data.original_size
    fixed = load_or_compute_fixed_saliency(
        fixed_saliency_path(data.cache_dir, settings.n_train, zoom_settings), data.train_boxes,
        size, zoom_settings.grid_shape, amplitude=zoom_settings.amplitude,
        bandwidth=zoom_settings.bandwidth,
    )  # fmt: skip
    test_set = data.detection[1]
    boxes = [test_set[i]["boxes"] for i in range(min(scenes, len(test_set)))]
    adaptive = boxes_saliency(
        boxes, size, zoom_settings.grid_shape, amplitude=zoom_settings.amplitude,
        bandwidth=zoom_settings.bandwidth,
    )  # fmt: skip
    return torch.cat([fixed, adaptive]), zoom_settings


def level_sizes(settings: LZUBenchSettings, data: SceneData) -> list[tuple[int, int]]:
    """Map sizes to check the inverse on: ``settings.inverse_map_size`` and every pyramid level
    of the uniform detector larger than one cell a side, sorted."""
    probe = make_detector("uniform", settings, data.original_size)
    sizes = {tuple(settings.inverse_map_size)}
    sizes |= {tuple(s) for s in probe.detector.grid_sizes if min(s) > 1}
    return sorted(sizes)


def warp_checks(
    saliency: Tensor, fwhm: float, map_sizes: Sequence[tuple[int, int]],
    speed_size: tuple[int, int], repeats: int = 30,
) -> WarpChecks:  # fmt: skip
    """Round trip ``max |T(T^-1(u)) - u|`` (px, float32) and coverage over the pixel centres of
    maps of ``map_sizes``, for the separable and the non-separable warp of every saliency map
    ``(N, 1, gh, gw)``; and the speed of the separable (1-D) inverse against the tile solver on
    the same separable grid at ``speed_size``."""
    roundtrip, coverage = {}, {}
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
        roundtrip[name] = worst
        coverage[name] = covered / total
    coarse = saliency_to_grid(saliency[:1].float(), separable=True, fwhm=fwhm)
    # Each method is timed over consecutive calls after a warm-up (as timeit does): the 1-D
    # inverse takes well under a millisecond, and interleaving it with the tile solver, which
    # streams megabytes, would mostly time the cold caches the solver leaves behind.
    timings = {}
    for method in ("separable", "tiles"):
        call = partial(unzoom_grid, coarse, speed_size, method=method)
        timings.update(_interleaved_median_ms({method: call}, warmup=3, repeats=repeats))
    return WarpChecks(
        roundtrip_max_err_px=roundtrip,
        coverage=coverage,
        map_sizes=[list(s) for s in map_sizes],
        inverse_ms={"separable_1d": timings["separable"], "tiles": timings["tiles"]},
        inverse_speedup_1d_vs_tile=timings["tiles"] / timings["separable"],
        inverse_map_size=list(speed_size),
    )


def _interleaved_median_ms(
    calls: dict[str, Callable[[], object]], warmup: int, repeats: int
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
    settings: LZUBenchSettings, image: Tensor, boxes: Tensor, fixed_saliency: Tensor
) -> LatencyBreakdown:
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
    warmup, repeats = settings.latency_timing
    size = (int(image.shape[-2]), int(image.shape[-1]))
    det = {arm: make_detector(arm, settings, size).eval()
           for arm in ("uniform", "lzu_fixed", "lzu_adaptive")}  # fmt: skip
    det["lzu_fixed"].saliency.saliency.copy_(fixed_saliency)
    seg = make_segmenter("lzu_fixed", settings, size).eval()
    seg.saliency.saliency.copy_(fixed_saliency)
    model, plain, adaptive = det["lzu_fixed"], det["uniform"].detector, det["lzu_adaptive"]
    grid_shape = model.zoom.grid_shape
    amplitude, bandwidth = float(adaptive.zoom.amplitude), float(adaptive.zoom.bandwidth)
    warp = model.lzu.warp_options
    in_size = model.input_size

    def resize() -> Tensor:
        return F.interpolate(image, in_size, mode="bilinear", align_corners=False)

    with torch_num_threads(settings.threads), torch.inference_mode():
        coarse = saliency_to_grid(fixed_saliency, **warp)
        dense = sampling_grid(coarse, in_size)
        zoomed = zoom(image, None, dense_grid=dense)
        features = model.detector.backbone(zoomed)
        sizes = [tuple(f.shape[-2:]) for f in features]
        unzoomed = [
            unzoom(f, unzoom_grid(coarse, s).grid) for f, s in zip(features, sizes, strict=True)
        ]
        logits = seg.net(zoomed)
        model(image)  # fill the grid caches
        seg(image)
        calls: dict[str, Callable[[], object]] = {
            "saliency": lambda: boxes_saliency(
                [boxes], size, grid_shape, amplitude=amplitude, bandwidth=bandwidth
            ),
            "grid": lambda: sampling_grid(saliency_to_grid(fixed_saliency, **warp), in_size),
            "inverse_grids": lambda: [unzoom_grid(coarse, s) for s in sizes],
            "zoom": lambda: zoom(image, None, dense_grid=dense),
            "backbone": lambda: model.detector.backbone(zoomed),
            **{
                # as the model does it: cached taps of the fixed warp (grids for a batch of
                # warps, see LZU.unzoom_map)
                f"unzoom_l{level}": (lambda f=f: model.lzu.unzoom_map(f, coarse))
                for level, f in enumerate(features)
            },
            "head": lambda: model.detector.head(unzoomed),
            "resize": resize,
            "uniform_model": lambda: plain.head(plain.backbone(resize())),
            "lzu_fixed_model": lambda: model(image),
            "lzu_adaptive_model": lambda: adaptive(image, [boxes]),
            "segmentation_net": lambda: seg.net(zoomed),
            "segmentation_unzoom": lambda: seg.lzu.unzoom_map(logits, coarse),
            "segmentation_upsample": lambda: logits_at_label_pixels(logits, size),
        }
        ms = _interleaved_median_ms(calls, warmup, repeats)
    unzoom_total = sum(v for k, v in ms.items() if k.startswith("unzoom_l"))
    adaptive_extra = ms["saliency"] + ms["grid"] + ms["inverse_grids"]
    seg_plain = ms["resize"] + ms["segmentation_net"] + ms["segmentation_upsample"]
    return LatencyBreakdown(
        latency_ms=ms,
        latency_threads=settings.threads,
        latency_batch=int(image.shape[0]),
        n_levels=len(sizes),
        level_sizes=[list(s) for s in sizes],
        overhead_fraction=(ms["zoom"] + unzoom_total) / ms["uniform_model"],
        overhead_fraction_adaptive=(ms["zoom"] + unzoom_total + adaptive_extra)
        / ms["uniform_model"],
        overhead_fraction_segmentation=(ms["zoom"] + ms["segmentation_unzoom"]) / seg_plain,
    )
