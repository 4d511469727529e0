"""Training, evaluation and prediction of :class:`~wherewhat.methods.ssdir.model.SSDIR`.

Batches are scattered-MNIST dicts (``image (B, C, H, W)``, ``boxes``, ``labels``; see
:func:`~wherewhat.data.scatter.collate_scenes`); a bare image tensor works too. Ground-truth
boxes and labels are never used for training. Logged per stage (``train`` / ``val`` / ``test``):
``loss``, ``elbo``, ``log_lik_image``, ``log_lik_objects``, ``kl_what``, ``kl_depth``,
``objects_per_image``, and ``recon_mse`` (torchmetrics, posterior means, on val / test).

The frozen detector comes with the model: in a config,
``model.init_args.model.init_args.detector_checkpoint`` is the path of a checkpoint of the SSD
detector task (or a ``state_dict`` file plus ``detector_args``), read by
:func:`~wherewhat.methods.ssdir.model.load_detector`. It is saved inside this task's own
checkpoints, so ``wherewhat test --ckpt_path`` restores the exact detector that was used; and the
stored model spec describes the detector itself rather than that path, so
``SSDIRTask.load_from_checkpoint`` needs no detector checkpoint file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import lightning.pytorch as pl
import torch
from torch import Tensor
from torchmetrics import MeanSquaredError

from wherewhat.methods.ssdir.model import SSDIR, check_images
from wherewhat.models.spec import build_module, module_spec
from wherewhat.training.precision import float32_loss, to_float32

__all__ = ["SSDIRTask"]

_LOGGED = (
    "loss",
    "elbo",
    "log_lik_image",
    "log_lik_objects",
    "kl_what",
    "kl_depth",
    "objects_per_image",
)


# A scattered-MNIST batch dict, an (images, ...) tuple / list, or bare images.
Batch: TypeAlias = Mapping[str, Any] | Sequence[Tensor] | Tensor


def _images_of(batch: Batch) -> Tensor:
    if isinstance(batch, Mapping):
        return batch["image"]
    if isinstance(batch, list | tuple):
        return batch[0]
    return batch


class SSDIRTask(pl.LightningModule):
    """SSDIR with Adam (paper: lr 5e-4, batch 32) on the what / depth encoders and decoder.

    Args:
        model: the :class:`~wherewhat.methods.ssdir.model.SSDIR` network (or its spec, see
            :mod:`wherewhat.models.spec`), its frozen detector included.
        lr: Adam learning rate.
    """

    def __init__(self, model: SSDIR, lr: float = 5e-4):
        super().__init__()
        self.model = build_module(model, SSDIR)
        self.save_hyperparameters(ignore=["model"])
        spec = module_spec(self.model)
        # The checkpoint holds the detector's weights, so it rebuilds the detector from its own
        # arguments instead of re-reading the detector checkpoint (which may have moved since).
        spec["init_args"].update(
            detector=module_spec(self.model.detector), detector_checkpoint=None, detector_args=None
        )
        self.hparams["model"] = spec
        self.val_mse = MeanSquaredError()
        self.test_mse = MeanSquaredError()

    def forward(self, images: Tensor) -> dict[str, Any]:
        return self.model(images)

    def _checked_images(self, batch: Batch, batch_idx: int, stage: str) -> Tensor:
        """The batch's images, or a ``ValueError`` that names the stage and batch index."""
        try:
            images = _images_of(batch)
            check_images(images, self.model.in_channels, self.model.input_size)
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise ValueError(f"SSDIR {stage} batch {batch_idx}: {err}") from err
        return images

    def _step(self, batch: Batch, batch_idx: int, stage: str) -> Tensor:
        images = self._checked_images(batch, batch_idx, stage)
        outputs = to_float32(self.model(images))  # bf16 under mixed precision
        with float32_loss(images):
            terms = self.model.loss(images, outputs)
        on_step = stage == "train"
        for name in _LOGGED:
            self.log(
                f"{stage}/{name}",
                terms[name],
                prog_bar=name == "loss",
                on_step=on_step,
                on_epoch=True,
                batch_size=len(images),
                sync_dist=not on_step,
            )
        if stage == "train":
            self.log("train/recon_mse", terms["recon_mse"], on_step=True, batch_size=len(images))
        else:
            metric = self.val_mse if stage == "val" else self.test_mse
            metric(outputs["reconstruction"], images)
            self.log(f"{stage}/recon_mse", metric, prog_bar=True, on_epoch=True)
        return terms["loss"]

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._step(batch, batch_idx, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, batch_idx, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, batch_idx, "test")

    def encode(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Per-object records per image (boxes, scores, labels, z_what, depth, anchor_index);
        threshold + NMS, posterior means. See :meth:`SSDIR.encode`."""
        return self.model.encode(images)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Tensor]]:
        images = self._checked_images(batch, batch_idx, "predict")
        return self.encode(images)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Only SSDIR's own networks: the detector is frozen (METHODS §1).
        return torch.optim.Adam(self.model.trainable_parameters(), lr=self.hparams.lr)
