"""LZU, learning to zoom and unzoom (Thavamani et al.): a saliency-driven zoom in front of a
backbone, its features unzoomed exactly, so heads and labels stay in the plain frame.

One concern a module:

- :mod:`~wherewhat.methods.lzu.wrapper`: :class:`LZU`, zoom -> any backbone -> unzoom;
- :mod:`~wherewhat.methods.lzu.zoomed`: saliency kinds and what every LZU network shares;
- :mod:`~wherewhat.methods.lzu.detector`: :class:`LZUDetector` (SSD behind the zoom);
- :mod:`~wherewhat.methods.lzu.segmentation_net`: :class:`SegmentationNet`,
  :class:`LZUSegmenter`;
- :mod:`~wherewhat.methods.lzu.saliency_cache`: the fixed (dataset) saliency's file;
- :mod:`~wherewhat.methods.lzu.task_base`, :mod:`~wherewhat.methods.lzu.detection_task`,
  :mod:`~wherewhat.methods.lzu.segmentation_task`: the LightningModules;
- :mod:`~wherewhat.methods.lzu.street`: the street-scene data preset;
- the benchmark pipeline: :mod:`~wherewhat.methods.lzu.settings` (arms, presets),
  :mod:`~wherewhat.methods.lzu.scenes` (its data), :mod:`~wherewhat.methods.lzu.arms` (an arm's
  network and task), :mod:`~wherewhat.methods.lzu.measurements` (model-free warps and latency),
  :mod:`~wherewhat.methods.lzu.experiment` (training, summary, the whole run),
  :mod:`~wherewhat.methods.lzu.records` (typed results), :mod:`~wherewhat.methods.lzu.markdown`;
  :mod:`~wherewhat.methods.lzu.figures`, :mod:`~wherewhat.methods.lzu.tour`: its figures and
  tour page.

The networks work without Lightning; configs are ``configs/lzu/``.
"""

from wherewhat.methods.lzu.detection_task import LZUDetectionTask, load_prior
from wherewhat.methods.lzu.detector import LZUDetector, plain_detector_outputs, scene_ssd
from wherewhat.methods.lzu.saliency_cache import load_or_compute_fixed_saliency
from wherewhat.methods.lzu.segmentation_net import LZUSegmenter, SegmentationNet
from wherewhat.methods.lzu.segmentation_task import LZUSegmentationTask, load_segmentation_prior
from wherewhat.methods.lzu.street import street_scene_config
from wherewhat.methods.lzu.task_base import LZUTaskBase
from wherewhat.methods.lzu.torchvision_detectors import ZoomedTorchvisionDetector, zoom_detector
from wherewhat.methods.lzu.wrapper import LZU
from wherewhat.methods.lzu.zoomed import SALIENCIES, SaliencyKind, ZoomSettings

__all__ = [
    "LZU",
    "SALIENCIES",
    "LZUDetectionTask",
    "LZUDetector",
    "LZUSegmentationTask",
    "LZUSegmenter",
    "LZUTaskBase",
    "SaliencyKind",
    "SegmentationNet",
    "ZoomSettings",
    "ZoomedTorchvisionDetector",
    "load_or_compute_fixed_saliency",
    "load_prior",
    "load_segmentation_prior",
    "plain_detector_outputs",
    "scene_ssd",
    "street_scene_config",
    "zoom_detector",
]
