"""Floor rows of the SSDIR probe: what a linear probe reads without any learned z_what.

- :func:`raw_pixel_probe`: the same logistic-regression probe on the raw pixels of each digit's
  ground-truth box, resampled to ``side x side`` (16 x 16 = 256 numbers, four times z_what's
  64). A z_what that does not beat it has learned nothing a linear probe could not read from
  the image itself.
- The untrained-encoder floor is an SSDIR evaluated before training (same detector, same
  objects), which the benchmark measures with :func:`~wherewhat.methods.ssdir.evaluation.
  evaluate_ssdir` directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from wherewhat.geometry.transformer import extract
from wherewhat.methods.ssdir.evaluation import (
    DEFAULT_SIZE_EDGES,
    batch_parts,
    scene_batches,
    size_bucket_names,
    size_buckets,
)
from wherewhat.metrics.probe import accuracy_by_group, latent_probe

__all__ = ["box_pixels", "raw_pixel_probe"]


@torch.no_grad()
def box_pixels(
    scenes: Dataset | DataLoader | Iterable, side: int = 16, batch_size: int = 64
) -> tuple[Tensor, Tensor, Tensor]:
    """Every ground-truth digit of the scenes as raw pixels.

    Returns:
        ``(N, C * side * side)`` pixels of each box resampled bilinearly to ``side`` px, ``(N,)``
        digit labels and ``(N,)`` the box's longer side in px (for size buckets).
    """
    pixels, labels, sides = [], [], []
    for index, batch in enumerate(scene_batches(scenes, batch_size)):
        images, boxes, digit = batch_parts(batch, index)
        counts = torch.tensor([len(b) for b in boxes])
        if int(counts.sum()) == 0:
            continue
        flat_boxes = torch.cat([torch.as_tensor(b).reshape(-1, 4).float() for b in boxes])
        owner = torch.repeat_interleave(torch.arange(len(images)), counts)
        crops = extract(images.float(), flat_boxes, (side, side), batch_index=owner)
        pixels.append(crops.flatten(1))
        labels.append(torch.cat([torch.as_tensor(d).reshape(-1).long() for d in digit]))
        sides.append((flat_boxes[:, 2:] - flat_boxes[:, :2]).max(1).values)
    if not pixels:
        raise ValueError("box_pixels: the scenes hold no ground-truth box")
    return torch.cat(pixels), torch.cat(labels), torch.cat(sides)


def raw_pixel_probe(
    train_scenes: Dataset | DataLoader | Iterable,
    test_scenes: Dataset | DataLoader | Iterable,
    *,
    side: int = 16,
    seeds: Sequence[int] = (0,),
    size_edges: Sequence[float] = DEFAULT_SIZE_EDGES,
    max_iter: int = 5000,
) -> dict[str, Any]:
    """The probe of :func:`~wherewhat.methods.ssdir.evaluation.evaluate_ssdir` on
    :func:`box_pixels` of every ground-truth digit (train scenes fit, test scenes score).

    Returns ``accuracy``, ``f1``, ``n_train``, ``n_test``, ``side`` and per size bucket
    ``accuracy_size_<b>`` / ``n_size_<b>`` (the evaluation's buckets of the box's longer side).
    """
    train_x, train_y, _ = box_pixels(train_scenes, side)
    test_x, test_y, test_sides = box_pixels(test_scenes, side)
    probe = latent_probe(train_x, train_y, test_x, test_y, seeds=seeds, max_iter=max_iter)
    names = size_bucket_names(size_edges)
    by_size = accuracy_by_group(probe["test_correct"], size_buckets(test_sides.numpy(), size_edges))
    out: dict[str, Any] = {
        "accuracy": float(probe["accuracy"]),
        "f1": float(probe["f1"]),
        "n_train": int(probe["n_train"]),
        "n_test": int(probe["n_test"]),
        "side": side,
    }
    for name in names:
        group = by_size.get(name, {"accuracy": float("nan"), "n": 0})
        out[f"accuracy_size_{name}"] = float(group["accuracy"])
        out[f"n_size_{name}"] = int(group["n"])
    return out
