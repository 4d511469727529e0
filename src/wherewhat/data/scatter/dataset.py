"""Scenes as a torch ``Dataset`` (:class:`ScatterMNIST`) and their batch collation."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from wherewhat.data.scatter.generator import ScatterScenes

log = logging.getLogger(__name__)


class ScatterMNIST(Dataset):
    """Torch view of :class:`ScatterScenes` (optionally a subset ``indices``).

    Items: ``image`` float32 (C, H, W) in [0, 1], ``boxes`` float32 (n, 4) XYXY pixels,
    ``labels`` int64 (n,) digit classes, and ``mask`` int64 (H, W) when the scenes have masks.
    """

    def __init__(self, scenes: ScatterScenes, indices: Sequence[int] | None = None):
        self.scenes = scenes
        self.indices = np.arange(len(scenes)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        scene = int(self.indices[index])
        start, stop = self.scenes.offsets[scene], self.scenes.offsets[scene + 1]
        grey = torch.from_numpy(np.array(self.scenes.grey[scene])).float().div_(255.0)
        item = {
            "image": grey.unsqueeze(0).repeat(self.scenes.config.channels, 1, 1),
            "boxes": torch.from_numpy(np.array(self.scenes.boxes_flat[start:stop])),
            "labels": torch.from_numpy(np.array(self.scenes.labels_flat[start:stop])),
        }
        if self.scenes.masks is not None:
            item["mask"] = torch.from_numpy(np.array(self.scenes.masks[scene])).long()
        return item


def collate_scenes(batch: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor | list[Tensor]]:
    """Stack ``image`` (B, C, H, W) and ``mask`` (B, H, W); keep ``boxes``/``labels`` as lists."""
    out: dict[str, Tensor | list[Tensor]] = {
        "image": torch.stack([item["image"] for item in batch]),
        "boxes": [item["boxes"] for item in batch],
        "labels": [item["labels"] for item in batch],
    }
    if "mask" in batch[0]:
        out["mask"] = torch.stack([item["mask"] for item in batch])
    return out
