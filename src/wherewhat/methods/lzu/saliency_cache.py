"""The fixed saliency of LZU: one KDE over every training box, computed once and kept in a file.

The file stores the map with the settings it was computed with and a digest of the boxes, so
another grid, KDE or training set is refused with the file's name instead of silently reused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor

from wherewhat.errors import ConfigError
from wherewhat.geometry.saliency import dataset_saliency, load_saliency, save_saliency
from wherewhat.io import array_digest

__all__ = ["fixed_saliency_settings", "load_or_compute_fixed_saliency", "train_boxes_of"]


def fixed_saliency_settings(
    image_size: tuple[int, int],
    grid_shape: tuple[int, int],
    amplitude: float,
    bandwidth: float,
    size_power: float = 0.0,
) -> dict[str, list[int] | float]:
    """The knobs a fixed saliency depends on (besides the boxes), stored with it
    (``size_power`` only when it is not 0, so files of equal-weight maps keep their meaning)."""
    settings: dict[str, list[int] | float] = {
        "image_size": [int(s) for s in image_size],
        "grid_shape": [int(g) for g in grid_shape],
        "amplitude": float(amplitude),
        "bandwidth": float(bandwidth),
    }
    if size_power:
        settings["size_power"] = float(size_power)
    return settings


def _boxes_digest(boxes: Sequence[Tensor]) -> str:
    return array_digest(boxes, digest_size=12, separator=b"|")


def load_or_compute_fixed_saliency(
    path: str | Path | None,
    boxes: Iterable[Tensor] | None,
    image_size: tuple[int, int],
    grid_shape: tuple[int, int],
    *,
    amplitude: float,
    bandwidth: float,
    size_power: float = 0.0,
) -> Tensor:
    """The dataset-KDE saliency ``(1, 1, gh, gw)`` over training ``boxes`` (original px).

    With a ``path``: read it when the file exists (its settings and a digest of the boxes must
    match, else ``ConfigError`` naming the file), otherwise compute and write it atomically.
    ``boxes`` (one ``(n_i, 4)`` tensor per training image) may be None only when the file exists.
    """
    settings = fixed_saliency_settings(image_size, grid_shape, amplitude, bandwidth, size_power)
    box_list = None if boxes is None else [torch.as_tensor(b).reshape(-1, 4) for b in boxes]
    if path is not None and Path(path).is_file():
        saliency, meta = load_saliency(path)
        stored = {k: meta[k] for k in (*settings, "size_power") if k in meta}
        if stored != settings:
            raise ConfigError(
                f"{path}: fixed saliency was computed with {stored}, not {settings}; "
                "delete it or give another path"
            )
        if box_list is not None and meta.get("boxes_digest") != _boxes_digest(box_list):
            raise ConfigError(
                f"{path}: fixed saliency was computed from other training boxes "
                f"({meta.get('n_boxes')} boxes); delete it or give another path"
            )
        return saliency
    if box_list is None:
        raise ConfigError(
            f"fixed saliency: no file at {path} and no training boxes to compute it from"
        )
    saliency = dataset_saliency(
        box_list, tuple(image_size), tuple(grid_shape), amplitude=amplitude,
        bandwidth=bandwidth, size_power=size_power,
    )  # fmt: skip
    if path is not None:
        save_saliency(
            path,
            saliency,
            **settings,
            n_boxes=sum(len(b) for b in box_list),
            boxes_digest=_boxes_digest(box_list),
        )
    return saliency


def train_boxes_of(datamodule: pl.LightningDataModule | None) -> list[Tensor] | None:
    """Per-image training boxes (input pixels) of a data module that offers ``train_boxes()``
    (scattered MNIST, COCO, YOLO); None for other modules."""
    train_boxes = getattr(datamodule, "train_boxes", None)
    if not callable(train_boxes):
        return None
    return [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in train_boxes()]
