"""A small CNN that classifies 28x28 digits: the harness's reference model and "hello world".

Plain ``nn.Module``: usable without Lightning, exportable to ONNX. It takes raw images in [0, 1]
and normalises them itself (MNIST mean / std), like every wherewhat model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wherewhat.models.spec import configurable

__all__ = ["DigitCNN", "MNIST_MEAN", "MNIST_STD"]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@configurable
class DigitCNN(nn.Module):
    """Three 3x3 conv layers, two 2x2 poolings, a dropout-regularised two-layer head.

    Args:
        num_classes: number of output logits.
        channels: width of the first conv layers (the last one has twice as many).
        hidden: width of the hidden fully connected layer.
        dropout: dropout probability before each fully connected layer.

    Shapes: ``(B, 1, 28, 28)`` float in [0, 1] -> logits ``(B, num_classes)``. Other square
    sizes divisible by 4 work too (the head adapts through adaptive pooling to 7x7).
    """

    def __init__(
        self, num_classes: int = 10, channels: int = 16, hidden: int = 64, dropout: float = 0.25
    ):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * channels * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: Tensor) -> Tensor:
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()  # ONNX export
        if not tracing and (images.ndim != 4 or images.shape[1] != 1):
            raise ValueError(f"expected images of shape (B, 1, H, W), got {tuple(images.shape)}")
        normalised = (images - MNIST_MEAN) / MNIST_STD
        return self.head(self.features(normalised))

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Predicted class per image, ``(B,)`` int64."""
        return self(images).argmax(dim=1)
