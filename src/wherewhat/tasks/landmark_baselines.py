"""Training of the face-landmark baselines (:mod:`wherewhat.models.landmark_baselines`).

Same harness, data, crops, augmentation and evaluation as WorldComp2D
(:mod:`wherewhat.methods.worldcomp2d.task`): batches of
:class:`~wherewhat.data.face_datamodule.FaceLandmarkDataModule`, NME / FR@10 / AUC@10 in
original-image pixels over every validation face, the same logged keys (``train/loss``,
``val/loss``, ``val/nme``, ``val/fr10``, ``val/auc10``, ``val/num_faces``; fractions), the same
``predict_step`` output and ``export_model`` hook. Each task takes its network (``model``, built
or as a spec, see :mod:`wherewhat.models.spec`) and holds only the training options. The
configs: ``configs/landmark_baselines/default.yaml`` (the heatmap baseline) and its delta
``pfld.yaml``::

    wherewhat fit --config configs/landmark_baselines/default.yaml
    wherewhat fit --config configs/landmark_baselines/pfld.yaml
    wherewhat validate --config configs/landmark_baselines/default.yaml \
        --ckpt_path RUN/checkpoints/last.ckpt
    wherewhat export onnx RUN/checkpoints/last.ckpt --out heatmap.onnx

- :class:`PFLDTask`: :class:`~wherewhat.models.landmark_baselines.PFLDRegressor`, L2 (PFLD's
  loss without its pose / attribute weights) or L1 on normalised crop coordinates.
- :class:`PIPHeatmapTask`: :class:`~wherewhat.models.landmark_baselines.PIPHeatmapNet`,
  PIPNet's loss: ``score_weight`` x score-map MSE + L1 of the own and the neighbours' x and y
  offsets at each landmark's true cell (PIPNet: 10, 1, 1).

Both set their shape prior (PFLD: the mean shape it regresses from; PIPNet: each landmark's
neighbours) from the training split at ``setup`` (the data module's ``train_crop_points()``).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from wherewhat.data.face_crops import (
    batch_images_and_points,
    prediction_record,
    uncrop_points,
)
from wherewhat.errors import ConfigError
from wherewhat.geometry import pixel_to_normalized
from wherewhat.metrics.landmarks import LandmarkNME
from wherewhat.models.landmark_baselines import (
    PFLDRegressor,
    PIPHeatmapNet,
    encode_grid_targets,
    pip_losses,
)
from wherewhat.models.spec import build_module, module_spec
from wherewhat.training.schedules import step_decay

__all__ = ["LandmarkBaselineTask", "PFLDTask", "PIPHeatmapTask"]

_FAILURE_THRESHOLD = 0.10  # FR@10 and AUC@10
# The networks these tasks train: crops -> landmarks, with a mean-shape prior.
LandmarkBaseline = PFLDRegressor | PIPHeatmapNet


class LandmarkBaselineTask(pl.LightningModule):
    """Shared training / evaluation logic; subclasses pass their network and define
    :meth:`losses`.

    ``model`` maps crops ``(B, C, S, S)`` in [0, 1] to landmarks ``(B, K, 2)`` crop px and has
    ``set_mean_shape(points)``, ``image_channels`` and ``crop_size``. Optimiser: Adam (``lr``,
    ``weight_decay``), the learning rate multiplied by ``lr_decay`` once after the fraction
    ``lr_decay_at`` of the planned steps (``None``: constant). ``channels_last``: train on
    ``channels_last`` weights and images (faster on CPU; same numbers up to round-off). A
    subclass saves its hyper-parameters (``save_hyperparameters(ignore=["model"])``, the model
    as its spec).
    """

    model: LandmarkBaseline

    def __init__(
        self,
        model: LandmarkBaseline,
        lr: float,
        weight_decay: float,
        lr_decay: float,
        lr_decay_at: float | None,
        channels_last: bool = False,
    ):
        super().__init__()
        if lr <= 0:
            raise ConfigError(f"model.lr must be > 0, got {lr}")
        if lr_decay_at is not None and not 0.0 < lr_decay_at <= 1.0:
            raise ConfigError(f"model.lr_decay_at must be in (0, 1] or null, got {lr_decay_at}")
        self.model = model
        self.channels_last = channels_last
        if channels_last:  # faster convolutions on CPU (oneDNN's preferred layout)
            self.model.to(memory_format=torch.channels_last)
        self.val_nme = LandmarkNME(threshold=_FAILURE_THRESHOLD)
        self.test_nme = LandmarkNME(threshold=_FAILURE_THRESHOLD)
        size = model.crop_size
        self.example_input_array = torch.zeros(1, model.image_channels, size, size)

    # -- subclass API --------------------------------------------------------------------------
    def losses(self, images: Tensor, points: Tensor) -> dict[str, Tensor]:
        """``{"loss": total, ...parts}`` for crops ``(B, C, S, S)`` and crop-px ``points``."""
        raise NotImplementedError

    # -- hooks ---------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        points_of = getattr(datamodule, "train_crop_points", None)
        if not callable(points_of):
            raise ConfigError(
                f"{type(self).__name__} needs the training shapes: use a data module with "
                "train_crop_points() (FaceLandmarkDataModule)"
            )
        self.model.set_mean_shape(points_of())  # a resumed checkpoint restores the same values

    def forward(self, crops: Tensor) -> Tensor:
        """Face crops ``(B, C, S, S)`` in [0, 1] -> landmarks ``(B, K, 2)`` in crop pixels."""
        return self.model(crops)

    def export_model(self) -> nn.Module:
        """The inference network (crop -> landmarks in crop pixels), a copy in eval mode."""
        return copy.deepcopy(self.model).eval()

    def _training_losses(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        images, points = batch_images_and_points(batch, batch_idx)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.losses(images, points)

    def training_loss(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """The training loss on ``batch`` (no logging)."""
        return self._training_losses(batch, batch_idx)["loss"]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        parts = self._training_losses(batch, batch_idx)
        size = len(batch["points"])
        self.log("train/loss", parts["loss"], prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=size)  # fmt: skip
        for name, value in parts.items():
            if name != "loss":
                self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True,
                         batch_size=size)  # fmt: skip
        return parts["loss"]

    def _evaluate(self, batch: dict[str, Tensor], batch_idx: int, split: str) -> None:
        images, points = batch_images_and_points(batch, batch_idx)
        loss = self.losses(images, points)["loss"]
        predicted = self.model(images)
        target = batch.get("original_points")
        if target is None:
            target = uncrop_points(points, batch["affine"])
        metric = self.val_nme if split == "val" else self.test_nme
        metric.update(uncrop_points(predicted, batch["affine"]), target)
        self.log(f"{split}/loss", loss, prog_bar=True, on_step=False, on_epoch=True,
                 batch_size=len(images), sync_dist=True)  # fmt: skip

    def _log_nme(self, split: str, metric: LandmarkNME) -> None:
        result = metric.compute()
        self.log(f"{split}/nme", result["nme"], prog_bar=True)
        self.log_dict(
            {
                f"{split}/fr10": result["fr"],
                f"{split}/auc10": result["auc"],
                f"{split}/num_faces": float(len(metric.per_face())),
            }
        )
        metric.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_nme("val", self.val_nme)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._log_nme("test", self.test_nme)

    def predict_step(self, batch: dict[str, Tensor] | Tensor, batch_idx: int) -> dict[str, Tensor]:
        """:func:`~wherewhat.data.face_crops.prediction_record` of the batch's crops."""
        images = batch["image"] if isinstance(batch, dict) else batch
        return prediction_record(self.model(images), batch)

    def configure_optimizers(self) -> Optimizer | dict[str, Any]:
        optimizer = torch.optim.Adam(
            self.model.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        return step_decay(
            optimizer,
            self.hparams.lr_decay,
            self.hparams.lr_decay_at,
            self.trainer.estimated_stepping_batches,
        )


class PFLDTask(LandmarkBaselineTask):
    """PFLD-style direct regression (:class:`PFLDRegressor`).

    Args:
        model: the network (or its spec, see :mod:`wherewhat.models.spec`); default
            ``PFLDRegressor()``.
        loss: ``"l2"`` (PFLD: squared error per landmark, mean over landmarks and faces) or
            ``"l1"``, on normalised crop coordinates.
        lr, weight_decay, lr_decay, lr_decay_at, channels_last: see the base class.
    """

    model: PFLDRegressor

    def __init__(
        self,
        model: PFLDRegressor | None = None,
        loss: Literal["l2", "l1"] = "l2",
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        lr_decay: float = 0.1,
        lr_decay_at: float | None = 0.7,
        channels_last: bool = False,
    ):
        network = build_module(model if model is not None else PFLDRegressor(), PFLDRegressor)
        super().__init__(network, lr, weight_decay, lr_decay, lr_decay_at, channels_last)
        if loss not in ("l2", "l1"):
            raise ConfigError(f"model.loss must be 'l2' or 'l1', got {loss!r}")
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = module_spec(self.model)

    def losses(self, images: Tensor, points: Tensor) -> dict[str, Tensor]:
        predicted = self.model.forward_normalized(images)
        target = pixel_to_normalized(points.to(predicted.dtype), self.model.crop_hw)
        error = predicted - target
        if self.hparams.loss == "l2":
            loss = error.pow(2).sum(-1).mean()
        else:
            loss = error.abs().sum(-1).mean()
        return {"loss": loss}


class PIPHeatmapTask(LandmarkBaselineTask):
    """PIPNet-style grid heatmaps with offsets (:class:`PIPHeatmapNet`).

    Args:
        model: the network (or its spec, see :mod:`wherewhat.models.spec`); default
            ``PIPHeatmapNet()`` (ResNet-18, stride 32, 10 neighbours).
        score_weight, offset_weight, neighbor_weight: loss weights (PIPNet: 10, 1, 1); the
            offset terms are x + y, each an L1 mean, as in PIPNet.
        lr, weight_decay, lr_decay, lr_decay_at, channels_last: see the base class.
    """

    model: PIPHeatmapNet

    def __init__(
        self,
        model: PIPHeatmapNet | None = None,
        score_weight: float = 10.0,
        offset_weight: float = 1.0,
        neighbor_weight: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_decay: float = 0.1,
        lr_decay_at: float | None = 0.7,
        channels_last: bool = False,
    ):
        network = build_module(model if model is not None else PIPHeatmapNet(), PIPHeatmapNet)
        super().__init__(network, lr, weight_decay, lr_decay, lr_decay_at, channels_last)
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = module_spec(self.model)

    def losses(self, images: Tensor, points: Tensor) -> dict[str, Tensor]:
        model = self.model
        score, offset, neighbor = model.head_outputs(images)
        targets = encode_grid_targets(
            points.to(score.dtype), model.neighbors, model.grid, model.stride
        )
        parts = pip_losses(score, offset, neighbor, targets)
        # pip_losses averages x and y together; PIPNet adds an x and a y term.
        total = (
            self.hparams.score_weight * parts["score"]
            + self.hparams.offset_weight * 2 * parts["offset"]
            + self.hparams.neighbor_weight * 2 * parts["neighbor"]
        )
        return {"loss": total, **parts}
