"""Spatial Prediction (SP): a self-supervised plug-in that regresses where one local view of an
image sits relative to another, on top of SimCLR / BYOL.

The networks, losses and view sampling here are plain PyTorch (no Lightning), small, separately
testable parts in lightly's style::

    sp = SpatialPredictionConfig(weight=0.5, num_pairs=2)
    sampler = ViewSampler(sp.view_sampler_config())
    batch = sampler.batch(images, generators)                  # (B, C, H, W), one per image
    model = build_ssl_method("simclr", cifar_resnet18(width=32), spatial_prediction=sp)
    losses = model.loss(batch)

Above them: :mod:`.task` (the LightningModule, ``SelfSupervisedTask(model, ...)``; configs in
``configs/spatial_prediction/``), :mod:`.probes` (frozen-feature probes), the benchmark
pipeline :mod:`.experiment` (one arm: :mod:`.arms`, :mod:`.face_arms`; how arms run:
:mod:`.arm_processes`; :mod:`.settings`, :mod:`.records`, :mod:`.markdown`, :mod:`.figures`) and
the tour page :mod:`.tour`.
"""

from wherewhat.methods.spatial_prediction.backbones import (
    ResNetBackbone,
    TinyCNN,
    build_backbone,
    cifar_resnet18,
)
from wherewhat.methods.spatial_prediction.bases import BYOL, SimCLR, SSLMethod, build_ssl_method
from wherewhat.methods.spatial_prediction.head import (
    ReorderAccuracy,
    SpatialPrediction,
    SpatialPredictionConfig,
    SpatialPredictionHead,
    patch_reorder_accuracy,
    spatial_prediction_loss,
    spatial_targets,
)
from wherewhat.methods.spatial_prediction.views import (
    CropConfig,
    PhotometricConfig,
    ViewSampler,
    ViewSamplerConfig,
    jitter_views,
    max_width_ratio,
    mirror_boxes,
    sample_crop_boxes,
)

__all__ = [
    "BYOL",
    "CropConfig",
    "PhotometricConfig",
    "ReorderAccuracy",
    "ResNetBackbone",
    "SSLMethod",
    "SimCLR",
    "SpatialPrediction",
    "SpatialPredictionConfig",
    "SpatialPredictionHead",
    "TinyCNN",
    "ViewSampler",
    "ViewSamplerConfig",
    "build_backbone",
    "build_ssl_method",
    "cifar_resnet18",
    "jitter_views",
    "max_width_ratio",
    "mirror_boxes",
    "patch_reorder_accuracy",
    "sample_crop_boxes",
    "spatial_prediction_loss",
    "spatial_targets",
]
