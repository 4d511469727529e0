"""Self-supervised pre-training (SimCLR or BYOL, optionally with Spatial Prediction).

:class:`SelfSupervisedTask` holds only the training logic; it takes its network, a
:class:`~wherewhat.methods.spatial_prediction.bases.SimCLR` or
:class:`~wherewhat.methods.spatial_prediction.bases.BYOL` with its backbone and SP plug-in
(:mod:`wherewhat.methods.spatial_prediction`), already built. It

* installs a :class:`~wherewhat.methods.spatial_prediction.views.ViewSampler` as the data
  module's ``train_transform`` at ``setup`` (unless the user set a sampler of their own); the
  data module draws each batch's views in one batched call (in its loader workers if it has
  any, else in this process), the same views per-image drawing gives for the same seeds. The local
  views come from the model's SP configuration (``model.spatial_prediction.config``, the one
  source of the SP settings); the two global views from this task's ``global_scale``,
  ``global_size`` and ``flip_p``;
* optimises ``model.trainable_parameters()`` (backbone, heads and the SP head; never BYOL's
  EMA target) with AdamW, SGD or LARS, linear warm-up then cosine decay per step;
* updates BYOL's EMA target after every optimizer step (:meth:`optimizer_step`);
* logs ``train/loss``, ``train/base_loss``, ``train/sp_loss`` (with SP), ``train/momentum``
  (BYOL), ``train/lr``, ``train/epoch_seconds`` (wall time of the epoch's training batches,
  data loading included, probes excluded) and, every ``knn_every_n_epochs``, a k-NN probe
  ``probe/knn_acc`` (a learning-curve monitor; no checkpoint is chosen by it);
* on ``test`` (``wherewhat test --ckpt_path ...``): linear probe and k-NN accuracy on the data
  module's test split, fitted on its probe-training split (``test/linear_acc``,
  ``test/knn_acc``).

Batches are ``(views, labels)`` from :class:`~wherewhat.data.images.ImageArrayDataset` with the
view sampler as transform (``views``: the collated sampler dict); labels are never used in
training. ``history`` keeps one dict per epoch (mean losses, wall ``seconds`` and this
process's ``cpu_seconds`` of the training batches, ``knn_acc``) and ``step_losses`` one per
step, for learning curves without a logger.

    wherewhat fit --config configs/spatial_prediction/default.yaml
    wherewhat test --config configs/spatial_prediction/default.yaml --ckpt_path runs/.../last.ckpt
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightly.utils.lars import LARS
from torch import Tensor, nn
from torch.optim import Optimizer

from wherewhat.data.images import ImageArrayDataset
from wherewhat.errors import ConfigError
from wherewhat.methods.spatial_prediction.backbones import cifar_resnet18
from wherewhat.methods.spatial_prediction.bases import SimCLR, SSLMethod
from wherewhat.methods.spatial_prediction.head import SpatialPredictionConfig
from wherewhat.methods.spatial_prediction.probes import LinearProbe, encode_images
from wherewhat.methods.spatial_prediction.views import CropConfig, ViewSampler, ViewSamplerConfig
from wherewhat.metrics.probe import knn_probe
from wherewhat.models.spec import build_module, module_spec
from wherewhat.training.schedules import warmup_cosine

__all__ = ["SelfSupervisedTask"]

# A training batch: the collated ViewSampler dict, with the (unused) labels beside it.
ViewBatch = Sequence[Mapping[str, Tensor] | Tensor] | Mapping[str, Tensor]
# Probe images (N, C, H, W) uint8 and labels (N,).
LabelledImages = tuple[Tensor, Tensor]


def _default_model() -> SimCLR:
    """SimCLR on ``cifar_resnet18(width=16)`` with SP attached at weight 0 (off)."""
    return SimCLR(cifar_resnet18(width=16), spatial_prediction=SpatialPredictionConfig(weight=0.0))


class SelfSupervisedTask(pl.LightningModule):
    """SimCLR / BYOL pre-training with an optional Spatial Prediction term.

    Args:
        model: the method network (or its spec, see :mod:`wherewhat.models.spec`): ``SimCLR`` or
            ``BYOL`` with its backbone and ``spatial_prediction`` config (weight 0: the base
            method exactly, no SP views, no SP term; ``None``: no SP module at all). Default:
            SimCLR on ``cifar_resnet18(width=16)`` with SP at weight 0.
        global_scale, global_size: the base method's two crops (area fraction range, side).
        flip_p: probability of mirroring the whole image (all views together).
        optimizer: ``adamw``, ``sgd`` (momentum, Nesterov) or ``lars`` (lightly's; biases and
            norm parameters are excluded from weight decay in every case).
        lr, weight_decay, momentum: optimizer settings.
        warmup_fraction: share of the planned steps with a linear warm-up from 0.
        schedule: ``cosine`` (to 0 at the last planned step) or ``constant`` after warm-up.
        knn_every_n_epochs: k-NN probe every N epochs (0: never) on ``knn_train_limit``
            probe-training and ``knn_test_limit`` test images (seeded subsets), ``k = knn_k``.
        channels_last: store the network's 4-D weights channels-last (backbones that follow
            their weights' layout then run every convolution that way: faster on CPU).
    """

    def __init__(
        self,
        model: SSLMethod | None = None,
        global_scale: tuple[float, float] = (0.08, 1.0),
        global_size: int = 32,
        flip_p: float = 0.5,
        optimizer: Literal["adamw", "sgd", "lars"] = "adamw",
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        warmup_fraction: float = 0.05,
        schedule: Literal["cosine", "constant"] = "cosine",
        knn_every_n_epochs: int = 1,
        knn_k: int = 20,
        knn_train_limit: int | None = 5000,
        knn_test_limit: int | None = 2000,
        channels_last: bool = True,
    ):
        super().__init__()
        if optimizer not in ("adamw", "sgd", "lars"):
            raise ConfigError(f"model.optimizer must be adamw, sgd or lars, got {optimizer!r}")
        if schedule not in ("cosine", "constant"):
            raise ConfigError(f"model.schedule must be cosine or constant, got {schedule!r}")
        if not 0 <= warmup_fraction < 1:
            raise ConfigError(f"model.warmup_fraction must be in [0, 1), got {warmup_fraction}")
        self.model = build_module(model if model is not None else _default_model(), SSLMethod)
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = module_spec(self.model)
        self.history: list[dict[str, float]] = []
        self.step_losses: list[dict[str, float]] = []
        self._epoch_sums: dict[str, float] = defaultdict(float)
        self._epoch_steps = 0
        self._epoch_start: tuple[float, float] | None = None
        self._test_features: list[Tensor] = []
        self._test_labels: list[Tensor] = []

    # -- views ---------------------------------------------------------------------------------
    def view_sampler_config(self) -> ViewSamplerConfig:
        """The sampler this task trains on: two global views (+ the model's SP pairs when its
        weight is > 0)."""
        hp = self.hparams
        size = (hp.global_size, hp.global_size)
        base = ViewSamplerConfig(
            global_crop=CropConfig(scale=tuple(hp.global_scale), size=size), flip_p=hp.flip_p
        )
        sp = self.model.spatial_prediction
        return replace(base, num_pairs=0) if sp is None else sp.config.view_sampler_config(base)

    def view_sampler(self) -> ViewSampler:
        return ViewSampler(self.view_sampler_config())

    def setup(self, stage: str) -> None:
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if stage == "fit" and datamodule is not None and hasattr(datamodule, "train_transform"):
            current = datamodule.train_transform
            # Replace a sampler an earlier task installed (a reused data module); keep one the
            # user configured on purpose.
            if current is None or getattr(current, "installed_by_task", False):
                sampler = self.view_sampler()
                sampler.installed_by_task = True
                datamodule.train_transform = sampler
            elif not isinstance(current, ViewSampler):
                raise ConfigError(
                    "data.train_transform must be unset (the task installs its ViewSampler) or "
                    f"a ViewSampler, got {type(current).__name__}"
                )

    # -- training ------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Backbone features ``(B, D)`` of images ``(B, C, H, W)`` in [0, 1]."""
        return self.model.encode(images)

    def training_step(self, batch: ViewBatch, batch_idx: int) -> Tensor:
        views = batch[0] if isinstance(batch, list | tuple) else batch
        if not isinstance(views, Mapping) or "global_views" not in views:
            raise ValueError(
                "SelfSupervisedTask expects batches of ViewSampler output (a dict with "
                "'global_views'); is data.train_transform a ViewSampler?"
            )
        losses = self.model.loss(views)
        batch_size = len(views["global_views"])
        values = {name: float(value.detach()) for name, value in losses.items()}
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch_size)
            self._epoch_sums[name] += values[name]
        self.step_losses.append({"step": float(self.global_step), **values})
        self._epoch_steps += 1
        return losses["loss"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # After the update: BYOL's target follows the new online weights (global_step counts
        # the steps taken before this one).
        total = self._planned_steps()
        logged = self.model.after_optimizer_step(self.global_step, total)
        for name, value in logged.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)

    def on_train_epoch_start(self) -> None:
        self._epoch_sums.clear()
        self._epoch_steps = 0
        self._epoch_start = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self) -> None:
        wall, cpu = self._epoch_start or (time.perf_counter(), time.process_time())
        seconds = time.perf_counter() - wall
        record = {
            "epoch": float(self.current_epoch),
            "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu,
        }
        steps = max(1, self._epoch_steps)
        record.update({name: total / steps for name, total in self._epoch_sums.items()})
        self.log("train/epoch_seconds", seconds, on_step=False, on_epoch=True)
        every = self.hparams.knn_every_n_epochs
        if every and (self.current_epoch + 1) % every == 0:
            accuracy = self._knn_monitor()
            if accuracy is not None:
                record["knn_acc"] = accuracy
                self.log("probe/knn_acc", accuracy, on_step=False, on_epoch=True)
        self.history.append(record)

    def _probe_sets(
        self, train_limit: int | None, test_limit: int | None
    ) -> tuple[LabelledImages, LabelledImages] | None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "probe_train_dataset"):
            return None
        train, test = datamodule.probe_train_dataset(), datamodule.test_dataset()

        def subset(dataset: ImageArrayDataset, limit: int | None, seed: int) -> LabelledImages:
            if limit is None or limit >= len(dataset):
                return dataset.images, dataset.labels
            keep = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:limit])
            keep = torch.from_numpy(keep)
            return dataset.images[keep], dataset.labels[keep]

        return subset(train, train_limit, 1), subset(test, test_limit, 2)

    def _knn_monitor(self) -> float | None:
        sets = self._probe_sets(self.hparams.knn_train_limit, self.hparams.knn_test_limit)
        if sets is None:
            return None
        (train_x, train_y), (test_x, test_y) = sets
        train_f = encode_images(self.model.encode, train_x)
        test_f = encode_images(self.model.encode, test_x)
        k = min(self.hparams.knn_k, len(train_f))
        return float(knn_probe(train_f, train_y, test_f, test_y, k=k)["accuracy"])

    # -- test: probes on frozen features -------------------------------------------------------
    def test_step(self, batch: LabelledImages, batch_idx: int) -> None:
        images, labels = batch
        self._test_features.append(encode_images(self.model.encode, images))
        self._test_labels.append(labels.cpu())

    def on_test_epoch_end(self) -> None:
        sets = self._probe_sets(None, None)
        if sets is None or not self._test_features:
            raise ConfigError("test needs a data module with probe_train_dataset / test_dataset")
        (train_x, train_y), _ = sets
        train_f = encode_images(self.model.encode, train_x)
        test_f, test_y = torch.cat(self._test_features), torch.cat(self._test_labels)
        probe = LinearProbe().fit(train_f, train_y)
        self.log("test/linear_acc", probe.accuracy(test_f, test_y))
        k = min(self.hparams.knn_k, len(train_f))
        self.log(
            "test/knn_acc", float(knn_probe(train_f, train_y, test_f, test_y, k=k)["accuracy"])
        )
        self._test_features.clear()
        self._test_labels.clear()

    # -- optimisation --------------------------------------------------------------------------
    def _planned_steps(self) -> int:
        total = self.trainer.estimated_stepping_batches
        return max(1, int(total)) if math.isfinite(total) else 1

    def _parameter_groups(self) -> list[dict[str, Any]]:
        decay, no_decay = [], []
        for module in self.model.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if not parameter.requires_grad:
                    continue
                # Norm layers and biases are left out of weight decay (usual for SSL).
                is_norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.LayerNorm)
                (no_decay if is_norm or name == "bias" else decay).append(parameter)
        return [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizers(self) -> Optimizer | dict[str, Any]:
        hp = self.hparams
        groups = self._parameter_groups()
        if hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        elif hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)
        else:
            optimizer = LARS(groups, lr=hp.lr, momentum=hp.momentum)
        total = self._planned_steps()
        return warmup_cosine(
            optimizer,
            int(hp.warmup_fraction * total),
            total,
            cosine=hp.schedule != "constant",
            start_factor=0.0,
            skip_start=True,
        )
