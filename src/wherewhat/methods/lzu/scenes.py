"""The LZU benchmark's data: cached street scenes and the datasets each task reads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from wherewhat.data.scatter import (
    ScatterConfig,
    ScatterMNIST,
    collate_scenes,
    load_or_generate,
    scatter_cache_dir,
)
from wherewhat.methods.lzu.settings import LZUBenchSettings, TaskName
from wherewhat.methods.lzu.street import band_rows, street_scene_config

__all__ = ["SceneData", "load_scenes", "scene_loader"]


@dataclass
class SceneData:
    """Scenes of one benchmark run.

    Attributes:
        config: the generator's settings (street preset with the run's ``data`` changes).
        cache_dir: the folder of the cached scenes (the fixed saliency is saved there too).
        train_boxes: one ``(n_i, 4)`` XYXY tensor (original px) per training scene used.
        band_rows: ``(y0, y1)`` original rows of the horizon band the evaluation splits by.
        detection, segmentation: ``(train, test)`` datasets; detection's have no masks.
    """

    config: ScatterConfig
    cache_dir: Path
    train_boxes: list[Tensor]
    band_rows: tuple[float, float]
    detection: tuple[ScatterMNIST, ScatterMNIST]
    segmentation: tuple[ScatterMNIST, ScatterMNIST]

    @property
    def original_size(self) -> tuple[int, int]:
        return (int(self.config.image_size[0]), int(self.config.image_size[1]))

    def split(self, task: TaskName) -> tuple[ScatterMNIST, ScatterMNIST]:
        return self.detection if task == "detection" else self.segmentation


def load_scenes(settings: LZUBenchSettings) -> SceneData:
    """Cached scenes (generated on the first call) and the datasets of both splits."""
    config = street_scene_config(**settings.data)
    train = load_or_generate(config, "train", settings.cache_root)
    test = load_or_generate(config, "test", settings.cache_root)
    no_masks = {"masks": None}
    return SceneData(
        config=config,
        cache_dir=scatter_cache_dir(config, settings.cache_root),
        train_boxes=[torch.from_numpy(np.array(train.boxes[i])) for i in range(settings.n_train)],
        band_rows=band_rows(config),
        detection=(
            ScatterMNIST(dataclasses.replace(train, **no_masks), range(settings.n_train)),
            ScatterMNIST(dataclasses.replace(test, **no_masks), range(settings.n_test)),
        ),
        segmentation=(
            ScatterMNIST(train, range(settings.n_train)),
            ScatterMNIST(test, range(settings.n_test)),
        ),
    )


def scene_loader(
    dataset: ScatterMNIST, batch_size: int, shuffle: bool, seed: int = 0
) -> DataLoader:
    """Batches of scenes; shuffled ones drop the last partial batch and follow ``seed``."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle,
        collate_fn=collate_scenes,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )
