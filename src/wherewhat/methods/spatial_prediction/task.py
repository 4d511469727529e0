"""Self-supervised pre-training (SimCLR or BYOL, optionally with Spatial Prediction).

:class:`SelfSupervisedTask` holds only the training logic; the networks, views and losses are
:mod:`wherewhat.methods.spatial_prediction`. It

* builds the method (``base`` + backbone + optional SP plug-in with weight ``sp_lambda``) and
  the matching :class:`~wherewhat.methods.spatial_prediction.ViewSampler`, which it installs as the data
  module's ``train_transform`` at ``setup`` (unless the user set a sampler of their own), so
  views are drawn inside DataLoader workers (torch runs each worker with one thread);
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

    wherewhat fit --config configs/ssl_cifar_simclr_sp.yaml
    wherewhat test --config configs/ssl_cifar_simclr_sp.yaml --ckpt_path runs/.../last.ckpt
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightly.utils.lars import LARS
from torch import Tensor, nn

from wherewhat.errors import ConfigError
from wherewhat.methods.spatial_prediction import (
    CropConfig,
    SpatialPredictionConfig,
    SSLMethod,
    ViewSampler,
    ViewSamplerConfig,
    build_backbone,
    build_ssl_method,
)
from wherewhat.methods.spatial_prediction.probes import LinearProbe, encode_images
from wherewhat.metrics.probe import knn_probe
from wherewhat.training.schedules import warmup_cosine

__all__ = ["SelfSupervisedTask"]


class SelfSupervisedTask(pl.LightningModule):
    """SimCLR / BYOL pre-training with an optional Spatial Prediction term.

    Args:
        base: ``"simclr"`` or ``"byol"``.
        backbone: :func:`~wherewhat.methods.spatial_prediction.build_backbone` name (``resnet18_cifar``,
            ``tiny_cnn``); ``backbone_width``: its width; ``backbone_args``: other constructor
            arguments (e.g. ``mean`` / ``std``).
        method_args: arguments of :class:`~wherewhat.methods.spatial_prediction.SimCLR` /
            :class:`~wherewhat.methods.spatial_prediction.BYOL` (projection sizes, ``temperature``,
            ``momentum_base`` ...).
        sp_lambda: SP weight (0: the base method exactly: no SP views, no SP term).
        sp_pairs, sp_local_scale, sp_local_size, sp_min_gap, sp_hidden_dim, sp_antisymmetric,
            sp_loss: :class:`~wherewhat.methods.spatial_prediction.SpatialPredictionConfig` (``sp_local_size``
            is the side of the square local views in pixels).
        global_scale, global_size: the base method's two crops (area fraction range, side).
        flip_p: probability of mirroring the whole image (all views together).
        optimizer: ``adamw``, ``sgd`` (momentum, Nesterov) or ``lars`` (lightly's; biases and
            norm parameters are excluded from weight decay in every case).
        lr, weight_decay, momentum: optimizer settings.
        warmup_fraction: share of the planned steps with a linear warm-up from 0.
        schedule: ``cosine`` (to 0 at the last planned step) or ``constant`` after warm-up.
        knn_every_n_epochs: k-NN probe every N epochs (0: never) on ``knn_train_limit``
            probe-training and ``knn_test_limit`` test images (seeded subsets), ``k = knn_k``.
    """

    def __init__(
        self,
        base: Literal["simclr", "byol"] = "simclr",
        backbone: str = "resnet18_cifar",
        backbone_width: int = 16,
        backbone_args: dict[str, Any] | None = None,
        method_args: dict[str, Any] | None = None,
        sp_lambda: float = 0.0,
        sp_pairs: int = 1,
        sp_local_scale: tuple[float, float] = (0.05, 0.4),
        sp_local_size: int = 16,
        sp_min_gap: float = 0.0,
        sp_hidden_dim: int = 512,
        sp_antisymmetric: bool = False,
        sp_loss: Literal["smooth_l1", "l1"] = "smooth_l1",
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
    ):
        super().__init__()
        self.save_hyperparameters()
        if optimizer not in ("adamw", "sgd", "lars"):
            raise ConfigError(f"model.optimizer must be adamw, sgd or lars, got {optimizer!r}")
        if schedule not in ("cosine", "constant"):
            raise ConfigError(f"model.schedule must be cosine or constant, got {schedule!r}")
        if not 0 <= warmup_fraction < 1:
            raise ConfigError(f"model.warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if sp_pairs < 1:
            raise ConfigError(f"model.sp_pairs must be >= 1, got {sp_pairs}")
        self.sp_config = SpatialPredictionConfig(
            weight=sp_lambda,
            num_pairs=sp_pairs,
            local_scale=tuple(sp_local_scale),
            local_size=(sp_local_size, sp_local_size),
            min_gap=sp_min_gap,
            hidden_dim=sp_hidden_dim,
            antisymmetric=sp_antisymmetric,
            loss=sp_loss,
        )
        encoder = build_backbone(backbone, width=backbone_width, **(backbone_args or {}))
        # SP is attached with weight 0 too (the module is created last, so the base method's
        # initialisation is identical); with weight 0 it is never called.
        self.model: SSLMethod = build_ssl_method(
            base, encoder, spatial_prediction=self.sp_config, **(method_args or {})
        )
        self.history: list[dict[str, float]] = []
        self.step_losses: list[dict[str, float]] = []
        self._epoch_sums: dict[str, float] = defaultdict(float)
        self._epoch_steps = 0
        self._epoch_start: tuple[float, float] | None = None
        self._test_features: list[Tensor] = []
        self._test_labels: list[Tensor] = []

    # -- views ---------------------------------------------------------------------------------
    def view_sampler_config(self) -> ViewSamplerConfig:
        """The sampler this task trains on: two global views (+ SP pairs when lambda > 0)."""
        hp = self.hparams
        size = (hp.global_size, hp.global_size)
        base = ViewSamplerConfig(
            global_crop=CropConfig(scale=tuple(hp.global_scale), size=size), flip_p=hp.flip_p
        )
        return self.sp_config.view_sampler_config(base)

    def view_sampler(self) -> ViewSampler:
        return ViewSampler(self.view_sampler_config())

    def setup(self, stage: str) -> None:
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

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
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

    def _probe_sets(self, train_limit: int | None, test_limit: int | None):
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "probe_train_dataset"):
            return None
        train, test = datamodule.probe_train_dataset(), datamodule.test_dataset()

        def subset(dataset, limit, seed):
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
    def test_step(self, batch: Any, batch_idx: int) -> None:
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

    def configure_optimizers(self) -> Any:
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
