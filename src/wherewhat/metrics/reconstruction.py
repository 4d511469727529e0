"""Reconstruction error: per-pixel mean squared error on images in [0, 1].

This is the number SSDIR's paper reports (MNIST: SSDIR 0.0121, SPAIR 0.0036, SPACE 0.0016): the
squared difference averaged over every pixel and channel of every test image. The metric sums
squared errors and counts elements over batches (what torchmetrics ``MeanSquaredError`` does),
so an uneven last batch weighs exactly as much as its pixels; nothing is dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["reconstruction_mse", "ReconstructionMSE"]


def _check_images(pred: Tensor, target: Tensor, check_range: bool) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.ndim < 2 or pred.shape[0] == 0 or pred[0].numel() == 0:
        raise ValueError(f"expected a non-empty batch (B, ...) of images, got {tuple(pred.shape)}")
    for name, images in (("pred", pred), ("target", target)):
        if not torch.isfinite(images).all():
            raise ValueError(f"{name} holds non-finite values")
        if check_range and (images.min() < 0 or images.max() > 1):
            raise ValueError(
                f"{name} spans [{float(images.min()):.4g}, {float(images.max()):.4g}]; expected "
                "images in [0, 1] (rescale, or pass check_range=False)"
            )


def reconstruction_mse(pred: Tensor, target: Tensor, check_range: bool = True) -> Tensor:
    """Per-image MSE ``(B,)`` of images ``(B, ...)`` (e.g. ``(B, C, H, W)``), in float64.

    The mean over images equals the per-pixel MSE of the batch when all images have the same
    size, which they do in a batch. ``check_range`` rejects values outside [0, 1].
    """
    _check_images(pred, target, check_range)
    diff = pred.detach().double() - target.detach().double()
    return diff.square().flatten(1).mean(dim=1)


class ReconstructionMSE(Metric):
    """Per-pixel MSE accumulated over batches (and processes).

    ``update(pred, target)`` with images ``(B, ...)`` in [0, 1]; ``compute()`` returns the
    per-pixel MSE over everything seen (float32 0-d tensor), equal to torchmetrics
    ``MeanSquaredError`` on the same data. :meth:`per_image` returns each image's MSE ``(N,)``
    in update order (kept only when ``keep_per_image``, the default).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, check_range: bool = True, keep_per_image: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.check_range = check_range
        self.keep_per_image = keep_per_image
        self.add_state("sum_squared_error", torch.tensor(0.0, dtype=torch.float64), "sum")
        self.add_state("total", torch.tensor(0, dtype=torch.int64), "sum")
        self.add_state("per_image_mse", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor) -> None:
        per_image = reconstruction_mse(pred, target, self.check_range)
        pixels = pred[0].numel()
        self.sum_squared_error += per_image.sum() * pixels
        self.total += per_image.numel() * pixels
        if self.keep_per_image:
            self.per_image_mse.append(per_image)

    def per_image(self) -> Tensor:
        if not self.keep_per_image:
            raise RuntimeError("per-image values were not kept (keep_per_image=False)")
        return dim_zero_cat(self.per_image_mse)

    def compute(self) -> Tensor:
        if int(self.total) == 0:
            raise ValueError("ReconstructionMSE.compute: no image was added (call update first)")
        return (self.sum_squared_error / self.total).float()
