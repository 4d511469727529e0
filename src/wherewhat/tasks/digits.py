"""Training, evaluation and prediction of :class:`~wherewhat.models.digits.DigitCNN`.

Batches are ``(images (B, 1, 28, 28) float in [0, 1], labels (B,) int64)``, as produced by
:class:`~wherewhat.data.digits.DigitsDataModule`. Logged: ``train/loss``, ``train/acc``,
``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from wherewhat.models.digits import DigitCNN
from wherewhat.models.spec import build_module, module_spec

__all__ = ["DigitClassifierTask"]


class DigitClassifierTask(pl.LightningModule):
    """Cross-entropy classification of digits with accuracy from torchmetrics.

    Args:
        model: the network (or its spec, see :mod:`wherewhat.models.spec`); default
            ``DigitCNN()``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        schedule: ``"cosine"`` decays the learning rate to zero over the run's planned optimizer
            steps (``trainer.estimated_stepping_batches``); ``"constant"`` keeps it. The cosine
            length depends on ``max_steps`` / ``max_epochs``, so a resumed run must keep them.
    """

    def __init__(
        self,
        model: DigitCNN | None = None,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        schedule: Literal["cosine", "constant"] = "cosine",
    ):
        super().__init__()
        self.model = build_module(model if model is not None else DigitCNN(), DigitCNN)
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model"] = module_spec(self.model)
        num_classes = self.model.num_classes
        self.train_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.example_input_array = torch.zeros(1, 1, 28, 28)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def _step(
        self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy
    ) -> Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        accuracy(logits, labels)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            prog_bar=True,
            on_step=on_step,
            on_epoch=True,
            batch_size=len(labels),
            sync_dist=not on_step,
        )
        self.log(
            f"{stage}/acc",
            accuracy,
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=len(labels),
        )
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_accuracy)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_accuracy)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test", self.test_accuracy)

    def predict_step(
        self, batch: tuple[Tensor, Tensor] | Tensor, batch_idx: int
    ) -> dict[str, Tensor]:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        probabilities = self.model(images).softmax(dim=1)
        return {"label": probabilities.argmax(dim=1), "probability": probabilities}

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total_steps = self.trainer.estimated_stepping_batches
        if self.hparams.schedule == "constant" or not math.isfinite(total_steps):
            return optimizer
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, int(total_steps))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}
