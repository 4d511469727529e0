"""What the LZU detection and segmentation tasks share: the saliency's bookkeeping.

- the **fixed** map is set once (from the data module's training boxes, a file, or a
  checkpoint) and guarded by the ``fixed_saliency_ready`` buffer, saved with the weights;
- the **adaptive** map is fed ground-truth boxes in training and, at evaluation, the boxes of a
  frozen *prior* network (a uniform model of the same task), which is deliberately not a
  submodule;
- grids of a fixed map are cached by the wrapper, so they are dropped whenever a checkpoint may
  have replaced the map;
- one evaluation metric per stage (``val_metric``, ``test_metric``), also usable without a
  trainer (:meth:`LZUTaskBase.compute_metric`);
- AdamW with warm-up and cosine decay.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor
from torchmetrics import Metric

from wherewhat.errors import ConfigError
from wherewhat.geometry.saliency import AdaptiveSaliency
from wherewhat.methods.lzu.saliency_cache import load_or_compute_fixed_saliency, train_boxes_of
from wherewhat.methods.lzu.zoomed import SALIENCIES, SaliencyKind, ZoomedNetwork
from wherewhat.models.spec import module_spec
from wherewhat.training.schedules import adamw_warmup_cosine

__all__ = ["LZUTaskBase", "SceneBatch"]

# A collated batch of scattered-MNIST scenes (wherewhat.data.scatter.collate_scenes): "image"
# (B, C, H, W), "boxes" / "labels" one (n_i, 4) / (n_i,) tensor per image, "mask" (B, H, W).
SceneBatch = dict[str, Tensor | list[Tensor]]


class LZUTaskBase(pl.LightningModule):
    """Saliency bookkeeping shared by the LZU detection and segmentation tasks.

    A subclass saves its hyperparameters but the network (``fixed_saliency_path``,
    ``prior_checkpoint``, ``lr``, ``weight_decay``, ``warmup_steps``, ``schedule``, ...), then
    calls :meth:`adopt` with its network; it implements :meth:`prior_boxes`,
    :meth:`check_prior`, :meth:`new_metric`, :meth:`update_metric` and :meth:`log_metric`.
    """

    SALIENCIES = SALIENCIES
    # Where an adaptive saliency's boxes come from at evaluation: "prior" (a model's
    # detections, the deployable setting) or "truth" (ground truth: the oracle upper bound).
    eval_saliency_from: Literal["prior", "truth"] = "prior"
    model: ZoomedNetwork
    val_metric: Metric
    test_metric: Metric

    def adopt(self, network: ZoomedNetwork) -> None:
        """Make ``network`` this task's ``model``: its spec goes into the hyperparameters (so a
        checkpoint rebuilds it), then the saliency state, the prior of ``prior_checkpoint`` and
        the metrics are set up."""
        self.hparams["model"] = module_spec(network)
        self.init_saliency_state(network.saliency_kind)
        self.model = network
        if self.hparams.prior_checkpoint is not None:
            self.attach_prior(self.frozen_network(self.hparams.prior_checkpoint))
        self.init_metrics()

    @classmethod
    def frozen_network(cls, checkpoint: str | Path) -> ZoomedNetwork:
        """The network of a (non-adaptive) checkpoint of this task, frozen and in eval mode:
        a prior for the adaptive saliency."""
        path = Path(checkpoint)
        if not path.is_file():
            raise ConfigError(f"prior_checkpoint {path}: file not found")
        task = cls.load_from_checkpoint(path, map_location="cpu")
        if task.saliency_kind == "adaptive":
            raise ConfigError(f"prior_checkpoint {path}: an adaptive model cannot be the prior")
        return task.model.requires_grad_(False).eval()

    def init_saliency_state(self, saliency: SaliencyKind) -> None:
        # Whether the fixed map was set (from the data or a checkpoint); saved with the weights.
        self.register_buffer("fixed_saliency_ready", torch.tensor(saliency != "fixed"))
        # The prior is deliberately not a submodule: not trained, not saved with this task's
        # weights (it is rebuilt from prior_checkpoint or attached again), not moved by Lightning.
        self._prior: list[ZoomedNetwork] = []

    @property
    def saliency_kind(self) -> SaliencyKind:
        return self.model.saliency_kind

    def set_fixed_saliency(self, saliency: Tensor) -> None:
        """Install the fixed map ``(1, 1, gh, gw)`` (fixed saliency only), drop cached grids."""
        if self.saliency_kind != "fixed":
            raise ConfigError(
                f"set_fixed_saliency needs saliency='fixed', not {self.saliency_kind}"
            )
        buffer = self.model.saliency.saliency
        if saliency.shape != buffer.shape:
            raise ConfigError(f"fixed saliency must be {tuple(buffer.shape)}, got {saliency.shape}")
        buffer.copy_(saliency.to(buffer))
        self.fixed_saliency_ready.fill_(True)
        self.model.lzu.clear_cache()

    def prepare_fixed_saliency(self, train_boxes: Iterable[Tensor] | None) -> Tensor:
        """Load or compute (and save) the fixed map from per-image training boxes; install it."""
        zoom = self.model.zoom
        saliency = load_or_compute_fixed_saliency(
            self.hparams.fixed_saliency_path,
            train_boxes,
            self.model.original_size,
            zoom.grid_shape,
            amplitude=zoom.amplitude,
            bandwidth=zoom.bandwidth,
            size_power=zoom.size_power,
        )
        self.set_fixed_saliency(saliency)
        return saliency

    def check_prior(self, prior: ZoomedNetwork) -> None:
        """Raise ``ConfigError`` when ``prior`` cannot give this task's saliency boxes."""
        raise NotImplementedError

    def attach_prior(self, prior: ZoomedNetwork) -> None:
        """Use ``prior`` (frozen, eval mode; a uniform network of the same task) for the
        adaptive saliency at evaluation."""
        self.check_prior(prior)
        if isinstance(prior.saliency, AdaptiveSaliency):
            raise ConfigError("the prior must not itself use an adaptive saliency")
        self._prior[:] = [prior.requires_grad_(False).eval()]

    @property
    def prior(self) -> ZoomedNetwork | None:
        return self._prior[0] if self._prior else None

    def prior_boxes(self, images: Tensor) -> list[Tensor]:
        """Boxes (original px, one ``(n, 4)`` per image) from the prior, for evaluation."""
        raise NotImplementedError

    def _prior_or_raise(self, images: Tensor) -> ZoomedNetwork:
        if self.prior is None:
            raise ConfigError(
                "adaptive saliency at evaluation needs a prior model: pass prior_checkpoint "
                f"(a uniform {type(self).__name__} checkpoint) or call attach_prior(model)"
            )
        return self.prior.to(images.device).eval()

    def saliency_boxes(self, batch: SceneBatch, training: bool) -> list[Tensor] | None:
        """Adaptive only: ground truth at training (jittered, some dropped, inside
        ``AdaptiveSaliency``), at evaluation the prior's boxes, or the ground truth itself when
        :attr:`eval_saliency_from` is ``"truth"`` (the oracle upper bound); None for the other
        sources."""
        if self.saliency_kind != "adaptive":
            return None
        if training or self.eval_saliency_from == "truth":
            return list(batch["boxes"])
        return self.prior_boxes(batch["image"])

    def check_ready(self) -> None:
        if not bool(self.fixed_saliency_ready):
            raise ConfigError(
                "saliency='fixed' but its map was never set: train with a data module that has "
                "training boxes (scattered MNIST, COCO, YOLO), give fixed_saliency_path, load a "
                "checkpoint, or call prepare_fixed_saliency()"
            )

    def setup(self, stage: str) -> None:
        if self.saliency_kind != "fixed" or bool(self.fixed_saliency_ready):
            return
        path = self.hparams.fixed_saliency_path
        boxes = None
        if stage == "fit":
            boxes = train_boxes_of(getattr(self._trainer, "datamodule", None))
        if boxes is not None or (path is not None and Path(path).is_file()):
            self.prepare_fixed_saliency(boxes)

    def clear_grids(self) -> None:
        # Grids of a fixed map are cached; a checkpoint may have replaced the map since.
        self.model.lzu.clear_cache()
        if self.prior is not None:
            self.prior.lzu.clear_cache()

    def on_fit_start(self) -> None:
        self.clear_grids()

    def on_validation_start(self) -> None:
        self.clear_grids()

    def on_test_start(self) -> None:
        self.clear_grids()

    def on_predict_start(self) -> None:
        self.clear_grids()

    # -- evaluation ----------------------------------------------------------------------------
    def new_metric(self) -> Metric:
        """A fresh evaluation metric of this task."""
        raise NotImplementedError

    def update_metric(self, batch: SceneBatch, batch_idx: int, metric: Metric) -> None:
        """Predict ``batch`` in the current mode and add it to ``metric``."""
        raise NotImplementedError

    def log_metric(self, stage: str, metric: Metric) -> None:
        """Log ``metric``'s numbers as ``<stage>/<name>`` and reset it."""
        raise NotImplementedError

    def init_metrics(self) -> None:
        self.val_metric = self.new_metric()
        self.test_metric = self.new_metric()

    def validation_step(self, batch: SceneBatch, batch_idx: int) -> None:
        self.update_metric(batch, batch_idx, self.val_metric)

    def on_validation_epoch_end(self) -> None:
        self.log_metric("val", self.val_metric)

    def test_step(self, batch: SceneBatch, batch_idx: int) -> None:
        self.update_metric(batch, batch_idx, self.test_metric)

    def on_test_epoch_end(self) -> None:
        self.log_metric("test", self.test_metric)

    @torch.no_grad()
    def compute_metric(self, batches: Iterable[SceneBatch]) -> Mapping[str, Tensor]:
        """A fresh metric over ``batches`` in eval mode (no Lightning trainer needed); the
        training mode is restored afterwards."""
        was_training = self.training
        self.eval()
        self.clear_grids()
        metric = self.new_metric()
        try:
            for index, batch in enumerate(batches):
                self.update_metric(batch, index, metric)
            return metric.compute()
        finally:
            self.train(was_training)

    def configure_optimizers(self) -> OptimizerLRScheduler:
        return adamw_warmup_cosine(self)
