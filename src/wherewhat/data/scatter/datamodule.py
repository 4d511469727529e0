"""Scattered-MNIST train / test loaders as a ``LightningDataModule``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from wherewhat.data.loader import ResumableDataLoader
from wherewhat.data.scatter.cache import load_or_generate, load_or_generate_reporting
from wherewhat.data.scatter.config import SPLITS, ScatterConfig
from wherewhat.data.scatter.dataset import ScatterMNIST, collate_scenes
from wherewhat.data.scatter.generator import ScatterScenes
from wherewhat.errors import ConfigError

log = logging.getLogger(__name__)

_D = ScatterConfig()


class ScatterMNISTDataModule(L.LightningDataModule):
    """Scattered-MNIST scenes for Lightning; every ScatterConfig knob is an init argument.

    Validation scenes are ``round(val_fraction * n_train)`` train scenes chosen with
    ``split_seed`` (the same on every process); test and predict use the test split.
    ``prepare_data`` generates and caches both splits once (rank 0 per node); ``setup`` only loads
    them (it generates, with a warning, if the cache is missing, e.g. outside a Trainer).
    """

    def __init__(
        self,
        image_size: tuple[int, int] = _D.image_size,
        channels: int = _D.channels,
        layout: str = _D.layout,
        grid_sizes: Sequence[tuple[int, int]] = _D.grid_sizes,
        min_digit_size: int = _D.min_digit_size,
        max_digit_size: int = _D.max_digit_size,
        position_variance: float = _D.position_variance,
        cell_filled_threshold: float = _D.cell_filled_threshold,
        digit_set: Sequence[int] = _D.digit_set,
        min_digits: int = _D.min_digits,
        max_digits: int = _D.max_digits,
        n_train: int = _D.n_train,
        n_test: int = _D.n_test,
        seed: int = _D.seed,
        band_center: float = _D.band_center,
        band_width: float = _D.band_width,
        band_strength_small: float = _D.band_strength_small,
        band_strength_large: float = _D.band_strength_large,
        full_size_distance: float = _D.full_size_distance,
        perspective_power: float = _D.perspective_power,
        size_jitter: float = _D.size_jitter,
        stray_fraction: float = _D.stray_fraction,
        max_overlap: float = _D.max_overlap,
        with_masks: bool = _D.with_masks,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        cache_root: str | None = None,
        digits_root: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.config = ScatterConfig(
            image_size=image_size,
            channels=channels,
            layout=layout,
            grid_sizes=grid_sizes,
            min_digit_size=min_digit_size,
            max_digit_size=max_digit_size,
            position_variance=position_variance,
            cell_filled_threshold=cell_filled_threshold,
            digit_set=digit_set,
            min_digits=min_digits,
            max_digits=max_digits,
            n_train=n_train,
            n_test=n_test,
            seed=seed,
            band_center=band_center,
            band_width=band_width,
            band_strength_small=band_strength_small,
            band_strength_large=band_strength_large,
            full_size_distance=full_size_distance,
            perspective_power=perspective_power,
            size_jitter=size_jitter,
            stray_fraction=stray_fraction,
            max_overlap=max_overlap,
            with_masks=with_masks,
        )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r}: expected an integer >= 1")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers={num_workers!r}: expected an integer >= 0")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"val_fraction={val_fraction!r}: expected a number in [0, 1)")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = float(val_fraction)
        self.split_seed = split_seed
        self.cache_root = cache_root
        self.digits_root = digits_root
        self.train_set: ScatterMNIST | None = None
        self.val_set: ScatterMNIST | None = None
        self.test_set: ScatterMNIST | None = None

    @classmethod
    def from_config(cls, config: ScatterConfig, **kwargs: Any) -> ScatterMNISTDataModule:
        """Build from a :class:`ScatterConfig` plus loader arguments (batch_size, ...)."""
        return cls(**config.to_dict(), **kwargs)

    def _scenes(self, split: str) -> ScatterScenes:
        scenes, generated = load_or_generate_reporting(
            self.config, split, self.cache_root, self.digits_root
        )
        if generated:
            log.warning(
                "setup() generated the %s scenes: prepare_data() was not run first; in DDP every "
                "process would do this work",
                split,
            )
        return scenes

    def prepare_data(self) -> None:
        for split in SPLITS:
            load_or_generate(self.config, split, self.cache_root, self.digits_root)

    def train_val_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted train and validation scene indices into the train split (fixed by split_seed)."""
        order = np.random.default_rng(self.split_seed).permutation(self.config.n_train)
        n_val = int(round(self.val_fraction * self.config.n_train))
        return np.sort(order[n_val:]), np.sort(order[:n_val])

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            train = self._scenes("train")
            train_idx, val_idx = self.train_val_indices()
            self.train_set = ScatterMNIST(train, train_idx)
            self.val_set = ScatterMNIST(train, val_idx)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = ScatterMNIST(self._scenes("test"))

    def train_boxes(self) -> list[Tensor]:
        """Per-scene training boxes ``(n_i, 4)`` XYXY px (LZU's fixed saliency is computed on
        them); sets up the fit stage if needed."""
        if self.train_set is None:
            self.setup("fit")
        scenes = self.train_set.scenes
        return [torch.from_numpy(scenes.boxes[int(i)].copy()) for i in self.train_set.indices]

    def _loader(self, dataset: ScatterMNIST | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() with the matching stage before asking for a loader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_scenes,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        # Resumable: its position inside the epoch is saved in checkpoints, so a run resumed
        # mid-epoch sees exactly the batches an uninterrupted run would have seen.
        if self.train_set is None:
            raise RuntimeError("call setup('fit') before asking for the train loader")
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.split_seed,
            num_workers=self.num_workers,
            collate_fn=collate_scenes,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
