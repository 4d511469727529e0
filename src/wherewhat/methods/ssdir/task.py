"""Training, evaluation and prediction of :class:`~wherewhat.methods.ssdir.model.SSDIR`.

Batches are scattered-MNIST dicts (``image (B, C, H, W)``, ``boxes``, ``labels``; see
:func:`~wherewhat.data.scatter.collate_scenes`); a bare image tensor works too. Ground-truth
boxes and labels are never used for training. Logged per stage (``train`` / ``val`` / ``test``):
``loss``, ``elbo``, ``log_lik_image``, ``log_lik_objects``, ``kl_what``, ``kl_depth``,
``objects_per_image``, and ``recon_mse`` (torchmetrics, posterior means, on val / test).

The detector is loaded frozen from ``detector_checkpoint`` (a checkpoint of the SSD detector
task, or a ``state_dict`` file plus ``detector_args``); it is saved inside this task's own
checkpoints, so ``wherewhat test --ckpt_path`` restores the exact detector that was used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanSquaredError

from wherewhat.errors import ConfigError
from wherewhat.methods.ssdir.model import SSDIR, Likelihood, check_images, load_detector
from wherewhat.methods.ssdir.parts import DedupMode, PresentFrom

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


def _images_of(batch: Any) -> Tensor:
    if isinstance(batch, Mapping):
        return batch["image"]
    if isinstance(batch, list | tuple):
        return batch[0]
    return batch


class SSDIRTask(pl.LightningModule):
    """SSDIR with Adam (paper: lr 5e-4, batch 32) on the what / depth encoders and decoder.

    Args:
        detector_checkpoint: path of the trained detector (required unless ``detector`` is
            given).
        detector_args: ``SSDDetector`` constructor arguments that override / complete those
            stored in the checkpoint.
        detector: an ``SSDDetector`` instance instead of a checkpoint (library use and tests).
        lr: Adam learning rate.
        Everything else: see :class:`~wherewhat.methods.ssdir.model.SSDIR`.
    """

    def __init__(
        self,
        detector_checkpoint: str | None = None,
        detector_args: dict[str, Any] | None = None,
        z_what_size: int = 64,
        what_hidden: int = 3,
        z_what_sigma: float = 0.1,
        z_depth_sigma: float = 0.1,
        glimpse_size: int = 32,
        decoder_width: int = 256,
        background: bool = False,
        normalize_output: bool = True,
        dedup: DedupMode = "nms",
        present_from: PresentFrom = "not_background",
        present_threshold: float = 0.5,
        soft_min_present: float = 0.1,
        nms_iou: float = 0.45,
        max_objects: int = 100,
        likelihood: Likelihood = "bernoulli",
        likelihood_sigma: float = 0.1,
        alpha_obj: float = 10.0,
        alpha_rec: float = 10.0,
        alpha_what: float = 1.0,
        alpha_depth: float = 1.0,
        lr: float = 5e-4,
        detector: nn.Module | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["detector"])
        if detector is None:
            if detector_checkpoint is None:
                raise ConfigError(
                    "SSDIRTask: set model.init_args.detector_checkpoint to a trained detector "
                    "checkpoint (SSDIR needs a frozen detector)"
                )
            detector = load_detector(detector_checkpoint, detector_args)
        self.model = SSDIR(
            detector,
            z_what_size=z_what_size,
            what_hidden=what_hidden,
            z_what_sigma=z_what_sigma,
            z_depth_sigma=z_depth_sigma,
            glimpse_size=glimpse_size,
            decoder_width=decoder_width,
            background=background,
            normalize_output=normalize_output,
            dedup=dedup,
            present_from=present_from,
            present_threshold=present_threshold,
            soft_min_present=soft_min_present,
            nms_iou=nms_iou,
            max_objects=max_objects,
            likelihood=likelihood,
            likelihood_sigma=likelihood_sigma,
            alpha_obj=alpha_obj,
            alpha_rec=alpha_rec,
            alpha_what=alpha_what,
            alpha_depth=alpha_depth,
        )
        self.val_mse = MeanSquaredError()
        self.test_mse = MeanSquaredError()

    def forward(self, images: Tensor) -> dict[str, Any]:
        return self.model(images)

    def _checked_images(self, batch: Any, batch_idx: int, stage: str) -> Tensor:
        """The batch's images, or a ``ValueError`` that names the stage and batch index."""
        try:
            images = _images_of(batch)
            check_images(images, self.model.in_channels, self.model.input_size)
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise ValueError(f"SSDIR {stage} batch {batch_idx}: {err}") from err
        return images

    def _step(self, batch: Any, batch_idx: int, stage: str) -> Tensor:
        images = self._checked_images(batch, batch_idx, stage)
        outputs = self.model(images)
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

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, batch_idx, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, batch_idx, "test")

    def encode(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Per-object records per image (boxes, scores, labels, z_what, depth, anchor_index);
        threshold + NMS, posterior means. See :meth:`SSDIR.encode`."""
        return self.model.encode(images)

    def predict_step(self, batch: Any, batch_idx: int) -> list[dict[str, Tensor]]:
        images = self._checked_images(batch, batch_idx, "predict")
        return self.encode(images)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Only SSDIR's own networks: the detector is frozen (METHODS §1).
        return torch.optim.Adam(self.model.trainable_parameters(), lr=self.hparams.lr)
