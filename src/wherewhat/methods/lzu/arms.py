"""The network and task of one benchmark arm, built from :class:`LZUBenchSettings`.

An arm fixes the saliency kind and the input scale (:data:`~wherewhat.methods.lzu.settings.ARMS`);
the settings' ``warp_args`` and ``detection_args`` / ``segmentation_args`` may change any
constructor argument. Each argument goes to the constructor that declares it: the task's
(learning rate, prior threshold, ...), the LZU network's (saliency, sizes, zoom), else the
backbone's (:func:`~wherewhat.methods.lzu.detector.scene_ssd`,
:class:`~wherewhat.methods.lzu.segmentation_net.SegmentationNet`); an unknown one raises
``TypeError`` there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from wherewhat.methods.lzu.detection_task import LZUDetectionTask
from wherewhat.methods.lzu.detector import LZUDetector, scene_ssd
from wherewhat.methods.lzu.segmentation_net import LZUSegmenter, SegmentationNet
from wherewhat.methods.lzu.segmentation_task import LZUSegmentationTask
from wherewhat.methods.lzu.settings import ARMS, Knobs, LZUBenchSettings, TaskName
from wherewhat.methods.lzu.zoomed import ZoomSettings

__all__ = [
    "LZUNetwork",
    "LZUTask",
    "fixed_saliency_path",
    "make_detector",
    "make_segmenter",
    "make_task",
    "output_stride_for",
]

LZUNetwork = LZUDetector | LZUSegmenter
LZUTask = LZUDetectionTask | LZUSegmentationTask


def _take(knobs: Knobs, target: Callable[..., object]) -> Knobs:
    """Remove from ``knobs`` and return the arguments ``target``'s signature declares."""
    declared = inspect.signature(target).parameters
    return {name: knobs.pop(name) for name in list(knobs) if name in declared}


def _arm_knobs(
    task: TaskName, arm: str, settings: LZUBenchSettings, original_size: tuple[int, int]
) -> Knobs:
    kind, scale = ARMS[arm]
    return {
        "saliency": kind,
        "original_size": original_size,
        "input_size": tuple(s * scale for s in settings.input_size),
        **settings.warp_args,
        **settings.arm_args.get(arm, {}),
        **settings.task_args(task),
    }


def output_stride_for(
    logit_cell_px: float, input_size: tuple[int, int], original_size: tuple[int, int]
) -> int:
    """The segmentation net's output stride that gives logit cells of ``logit_cell_px``
    original pixels at ``input_size`` (1 or 2; anything else raises ``ValueError``)."""
    stride = logit_cell_px * input_size[0] / original_size[0]
    if stride not in (1, 2):
        raise ValueError(
            f"logit_cell_px={logit_cell_px} at input {tuple(input_size)} of "
            f"{tuple(original_size)} needs output stride {stride:g}; the net has 1 or 2"
        )
    return int(stride)


def _detection(
    arm: str, settings: LZUBenchSettings, original_size: tuple[int, int]
) -> tuple[LZUDetector, Knobs]:
    """The arm's detector (built now: the backbone's random initialisation comes first, as it
    always did) and its task's arguments."""
    knobs = _arm_knobs("detection", arm, settings, original_size)
    task_args = _take(knobs, LZUDetectionTask)
    network_args = _take(knobs, LZUDetector)
    input_size = knobs.pop("input_size")
    detector = scene_ssd(network_args["original_size"], input_size, **knobs)
    return LZUDetector(detector, **network_args), task_args


def _segmentation(
    arm: str, settings: LZUBenchSettings, original_size: tuple[int, int]
) -> tuple[LZUSegmenter, Knobs]:
    """The arm's segmenter and its task's arguments."""
    knobs = _arm_knobs("segmentation", arm, settings, original_size)
    task_args = _take(knobs, LZUSegmentationTask)
    network_args = _take(knobs, LZUSegmenter)
    cell = knobs.pop("logit_cell_px", None)
    if cell is not None:
        knobs["output_stride"] = output_stride_for(cell, network_args["input_size"], original_size)
    return LZUSegmenter(SegmentationNet(**knobs), **network_args), task_args


def make_detector(
    arm: str, settings: LZUBenchSettings, original_size: tuple[int, int]
) -> LZUDetector:
    """A fresh (untrained) detection network for ``arm``."""
    return _detection(arm, settings, original_size)[0]


def make_segmenter(
    arm: str, settings: LZUBenchSettings, original_size: tuple[int, int]
) -> LZUSegmenter:
    """A fresh (untrained) segmentation network for ``arm``."""
    return _segmentation(arm, settings, original_size)[0]


def make_task(
    task: TaskName, arm: str, settings: LZUBenchSettings, original_size: tuple[int, int]
) -> LZUTask:
    """A fresh (untrained) task of ``task`` for ``arm``."""
    if task == "detection":
        detector, task_args = _detection(arm, settings, original_size)
        return LZUDetectionTask(detector, **task_args)
    segmenter, task_args = _segmentation(arm, settings, original_size)
    return LZUSegmentationTask(segmenter, **task_args)


def fixed_saliency_path(cache_dir: Path, n_train: int, zoom: ZoomSettings) -> Path:
    """Where a network's fixed saliency is saved: next to the scenes it came from, named by the
    training-set size and the KDE settings of that network's ``zoom``."""
    gh, gw = zoom.grid_shape
    amplitude, bandwidth = zoom.amplitude, zoom.bandwidth
    weighted = f"-p{zoom.size_power:g}" if zoom.size_power else ""
    name = f"lzu-fixed-saliency-n{n_train}-g{gh}x{gw}-a{amplitude:g}-b{bandwidth:g}{weighted}.pt"
    return cache_dir / name
