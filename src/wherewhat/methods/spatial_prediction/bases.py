"""Base self-supervised methods (SimCLR, BYOL) with an optional Spatial Prediction plug-in.

Each method is a plain ``nn.Module`` with

* ``encode(images) -> (B, D)``: the backbone features that probes and SP use;
* ``base_loss(view_a, view_b) -> ()``: the base method's loss on two batches of views;
* ``loss(batch) -> dict``: base loss on ``batch["global_views"]`` plus ``weight * SP`` on the
  local pairs (``ViewSampler`` output, collated); keys ``loss``, ``base_loss`` and, with SP,
  ``sp_loss``.

SimCLR and BYOL record their constructor arguments (:func:`~wherewhat.models.spec.configurable`),
so a task takes one already built and stores its spec. SP runs on the online backbone only
(BYOL's EMA target never sees local views), and its head is a submodule, so ``parameters()``
hands it to the optimizer. Heads, losses and the momentum update come from lightly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, SimCLRProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from wherewhat.methods.spatial_prediction.head import SpatialPrediction, SpatialPredictionConfig
from wherewhat.models.spec import configurable
from wherewhat.training.precision import float32_loss

__all__ = ["SSLMethod", "SimCLR", "BYOL", "build_ssl_method"]


def _feature_dim(backbone: nn.Module, feature_dim: int | None) -> int:
    if feature_dim is not None:
        return feature_dim
    if not hasattr(backbone, "feature_dim"):
        raise ValueError("backbone has no `feature_dim` attribute; pass feature_dim explicitly")
    return int(backbone.feature_dim)


class SSLMethod(nn.Module):
    """Shared plumbing: backbone, optional SP plug-in, the combined loss."""

    def __init__(self, backbone: nn.Module, feature_dim: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = _feature_dim(backbone, feature_dim)
        self.spatial_prediction: SpatialPrediction | None = None

    def attach_spatial_prediction(
        self, config: SpatialPredictionConfig | Mapping[str, Any] | None
    ) -> None:
        """Plug SP in (``None``: leave it out; a mapping: the config's fields, as a stored model
        spec holds them). Subclasses call this last in ``__init__`` so the base method's own
        layers are initialised identically with and without SP."""
        config = SpatialPredictionConfig.coerce(config)
        self.spatial_prediction = (
            SpatialPrediction(self.feature_dim, config) if config is not None else None
        )

    def encode(self, images: Tensor) -> Tensor:
        """Backbone features ``(B, D)`` of images ``(B, C, H, W)``."""
        return self.backbone(images)

    def base_loss(self, view_a: Tensor, view_b: Tensor) -> Tensor:
        raise NotImplementedError

    def loss(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Base loss on the two global views plus the weighted SP loss on the local pairs.

        ``batch``: collated ``ViewSampler`` output (``global_views`` ``(B, 2, C, h, w)``;
        with SP also ``local_views``, ``local_boxes``, ``image_size``, ``flipped``).
        """
        views = batch["global_views"]
        if views.ndim != 5 or views.shape[1] != 2:
            raise ValueError(f"global_views must be (B, 2, C, h, w), got {tuple(views.shape)}")
        base = self.base_loss(views[:, 0], views[:, 1])
        out = {"base_loss": base, "loss": base}
        sp = self.spatial_prediction
        if sp is not None and sp.enabled:
            local = batch.get("local_views")
            if local is None or local.ndim != 6 or local.shape[1] == 0:
                raise ValueError(
                    "SP is on (weight > 0) but the batch has no local view pairs; build the "
                    "sampler with SpatialPredictionConfig.view_sampler_config()"
                )
            result = sp.forward_views(
                self.encode, local, batch["local_boxes"], batch["image_size"], batch.get("flipped")
            )
            out["sp_loss"] = result["loss"]
            out["loss"] = base + result["weighted"]
        return out

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimizer should update (excludes frozen EMA targets)."""
        return (p for p in self.parameters() if p.requires_grad)

    def after_optimizer_step(self, step: int, max_steps: int) -> dict[str, float]:
        """Hook for per-step updates (BYOL's EMA); returns values to log."""
        return {}


@configurable
class SimCLR(SSLMethod):
    """SimCLR: backbone -> projection MLP -> NT-Xent between the two views of each image.

    Args:
        backbone: ``(B, C, H, W) -> (B, D)`` with a ``feature_dim`` attribute (or pass it).
        projection_hidden_dim / projection_dim: lightly ``SimCLRProjectionHead`` sizes.
        temperature: NT-Xent temperature (0.2 in solo-learn's CIFAR recipe).
        spatial_prediction: SP plug-in config (or its fields as a mapping), or ``None`` for
            plain SimCLR. It is the one source of the SP settings: the training task derives
            its view sampler (local crops, pairs per image) from ``spatial_prediction.config``.
        projection_head: replaces the default head (e.g. ``nn.Identity()`` in tests).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None = None,
        projection_hidden_dim: int = 512,
        projection_dim: int = 128,
        temperature: float = 0.2,
        spatial_prediction: SpatialPredictionConfig | Mapping[str, Any] | None = None,
        projection_head: nn.Module | None = None,
    ):
        super().__init__(backbone, feature_dim)
        self.projector = projection_head or SimCLRProjectionHead(
            self.feature_dim, projection_hidden_dim, projection_dim
        )
        self.criterion = NTXentLoss(temperature=temperature)
        self.attach_spatial_prediction(spatial_prediction)

    def base_loss(self, view_a: Tensor, view_b: Tensor) -> Tensor:
        # One backbone pass over both views so BatchNorm normalises them with shared statistics.
        z = self.projector(self.backbone(torch.cat([view_a, view_b])))
        z_a, z_b = z.chunk(2)
        with float32_loss(z):  # cosine similarities over a temperature, hundredths apart
            return self.criterion(z_a.float(), z_b.float())


@configurable
class BYOL(SSLMethod):
    """BYOL: online (backbone, projector, predictor) regresses an EMA target's projection.

    Loss per direction is ``2 - 2 cos(p_online, z_target)``, averaged over the two directions.
    The target's momentum follows a cosine schedule from ``momentum_base`` to ``momentum_end``
    over training; call ``after_optimizer_step(step, max_steps)`` after each optimizer step.

    Args: as :class:`SimCLR`, plus prediction-head size and the momentum schedule; heads
    default to lightly's ``BYOLProjectionHead`` / ``BYOLPredictionHead``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None = None,
        projection_hidden_dim: int = 1024,
        projection_dim: int = 128,
        prediction_hidden_dim: int = 1024,
        momentum_base: float = 0.99,
        momentum_end: float = 1.0,
        spatial_prediction: SpatialPredictionConfig | Mapping[str, Any] | None = None,
        projection_head: nn.Module | None = None,
        prediction_head: nn.Module | None = None,
    ):
        super().__init__(backbone, feature_dim)
        if not 0 <= momentum_base <= momentum_end <= 1:
            raise ValueError(
                f"need 0 <= momentum_base <= momentum_end <= 1, got {momentum_base}, {momentum_end}"
            )
        self.projector = projection_head or BYOLProjectionHead(
            self.feature_dim, projection_hidden_dim, projection_dim
        )
        self.predictor = prediction_head or BYOLPredictionHead(
            projection_dim, prediction_hidden_dim, projection_dim
        )
        self.target_backbone = copy.deepcopy(self.backbone)
        self.target_projector = copy.deepcopy(self.projector)
        deactivate_requires_grad(self.target_backbone)
        deactivate_requires_grad(self.target_projector)
        self.momentum_base, self.momentum_end = momentum_base, momentum_end
        self.criterion = NegativeCosineSimilarity()
        self.attach_spatial_prediction(spatial_prediction)

    def base_loss(self, view_a: Tensor, view_b: Tensor) -> Tensor:
        both = torch.cat([view_a, view_b])
        p_a, p_b = self.predictor(self.projector(self.backbone(both))).chunk(2)
        with torch.no_grad():
            z_a, z_b = self.target_projector(self.target_backbone(both)).chunk(2)
        # criterion = -mean cos, so 2 + criterion(a) + criterion(b) = mean of the two 2 - 2 cos.
        with float32_loss(p_a):
            p_a, p_b, z_a, z_b = p_a.float(), p_b.float(), z_a.float(), z_b.float()
            return 2 + self.criterion(p_a, z_b) + self.criterion(p_b, z_a)

    def momentum(self, step: int, max_steps: int) -> float:
        """EMA momentum at ``step`` of ``max_steps`` (cosine from base to end)."""
        return cosine_schedule(step, max_steps, self.momentum_base, self.momentum_end)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, max_steps: int) -> dict[str, float]:
        """target <- m * target + (1 - m) * online, for backbone and projector."""
        m = self.momentum(step, max_steps)
        for online, target in (
            (self.backbone, self.target_backbone),
            (self.projector, self.target_projector),
        ):
            if any(True for _ in online.parameters()):  # lightly's update needs >= 1 tensor
                update_momentum(online, target, m)
        return {"momentum": m}


_METHODS = {"simclr": SimCLR, "byol": BYOL}


def build_ssl_method(
    method: str,
    backbone: nn.Module,
    spatial_prediction: SpatialPredictionConfig | None = None,
    **kwargs,
) -> SSLMethod:
    """``simclr`` or ``byol`` around ``backbone``, with SP when a config is given."""
    if method not in _METHODS:
        raise ValueError(f"unknown SSL method {method!r}; choose one of {sorted(_METHODS)}")
    return _METHODS[method](backbone, spatial_prediction=spatial_prediction, **kwargs)
