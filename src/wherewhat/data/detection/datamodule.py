"""Detection data in COCO or YOLO format as a ``LightningDataModule`` for the SSD, SSDIR and LZU
detection configs: change a config's ``data`` block to one of these and the task trains on it.

::

    data:
      class_path: wherewhat.data.detection.CocoDetectionDataModule
      init_args:
        train_annotations: data/coco/annotations/instances_train2017.json
        train_images: data/coco/train2017
        val_annotations: data/coco/annotations/instances_val2017.json
        val_images: data/coco/val2017
        image_size: [300, 300]
        classes: null              # every category; or e.g. [person, car]

Without a validation split, ``val_fraction`` of the training images (chosen by ``split_seed``)
validate; ``test`` and ``predict`` read the test split, else the validation split (logged). The
training loader resumes mid-epoch exactly (:class:`~wherewhat.data.loader.ResumableDataLoader`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
from torch import Tensor
from torch.utils.data import DataLoader

from wherewhat.data.detection.coco import read_coco
from wherewhat.data.detection.dataset import DetectionDataset, collate_detections
from wherewhat.data.detection.placement import RESIZE_MODES
from wherewhat.data.detection.records import BAD_BOX_POLICIES, DetectionSet
from wherewhat.data.detection.yolo import read_yolo, yolo_splits
from wherewhat.data.loader import ResumableDataLoader
from wherewhat.errors import ConfigError

__all__ = ["DetectionDataModule", "CocoDetectionDataModule", "YoloDetectionDataModule"]

log = logging.getLogger(__name__)


class DetectionDataModule(L.LightningDataModule):
    """The part shared by the COCO and YOLO modules: resizing, splits and loaders.

    Args:
        image_size: ``[H, W]`` of the model input (the detector's ``image_size``).
        channels: 1 (grey) or 3 (RGB); the detector's ``in_channels``.
        resize: ``letterbox`` (keep the aspect ratio, pad) or ``stretch``.
        pad_value: grey level 0-255 of the letterbox padding.
        classes: class names to train, in label order (None: all of the dataset's).
        bad_boxes: ``error`` (stop at the first unusable box) or ``drop`` (count and warn).
        batch_size, num_workers: of every loader.
        val_fraction: share of the training images that validate when there is no val split.
        split_seed: seed of that split and of the training order.
        cache_images: decode and resize each split once, in memory (fast epochs on small sets).
    """

    def __init__(
        self,
        image_size: Sequence[int] = (300, 300),
        channels: int = 3,
        resize: str = "letterbox",
        pad_value: int = 0,
        classes: list[str] | None = None,
        bad_boxes: str = "error",
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        cache_images: bool = False,
    ):
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ConfigError(f"resize={resize!r}: expected one of {RESIZE_MODES}")
        if bad_boxes not in BAD_BOX_POLICIES:
            raise ConfigError(f"bad_boxes={bad_boxes!r}: expected one of {BAD_BOX_POLICIES}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r}: expected an integer >= 1")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers={num_workers!r}: expected an integer >= 0")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"val_fraction={val_fraction!r}: expected a number in [0, 1)")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.channels = channels
        self.resize = resize
        self.pad_value = pad_value
        self.classes = None if classes is None else list(classes)
        self.bad_boxes = bad_boxes
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = float(val_fraction)
        self.split_seed = split_seed
        self.cache_images = cache_images
        self.train_set: DetectionDataset | None = None
        self.val_set: DetectionDataset | None = None
        self.test_set: DetectionDataset | None = None
        self.class_names: list[str] | None = None

    # -- what a format provides ----------------------------------------------------------------
    def read_split(self, split: str) -> DetectionSet | None:
        """The split (``train``, ``val``, ``test``) as a DetectionSet, None when not given."""
        raise NotImplementedError

    # -- splits --------------------------------------------------------------------------------
    def _dataset(self, data: DetectionSet, indices: np.ndarray | None = None) -> DetectionDataset:
        dataset = DetectionDataset(
            data, self.image_size, self.channels, self.resize, self.pad_value,
            cache=self.cache_images, indices=indices,
        )  # fmt: skip
        dataset.prepare()  # in this process, before any loader worker exists
        return dataset

    def _read(self, split: str) -> DetectionSet | None:
        data = self.read_split(split)
        if data is not None:
            log.info("%s split: %s", split, data.describe())
            if self.class_names is None:
                self.class_names = data.classes
            elif data.classes != self.class_names:
                raise ConfigError(
                    f"{data.source}: classes {data.classes} differ from the training split's "
                    f"{self.class_names}; give `classes` to fix one order"
                )
        return data

    def train_val_indices(self, n_images: int) -> tuple[np.ndarray, np.ndarray]:
        """Sorted train and validation indices when validation comes out of the train split."""
        order = np.random.default_rng(self.split_seed).permutation(n_images)
        n_val = int(round(self.val_fraction * n_images))
        return np.sort(order[n_val:]), np.sort(order[:n_val])

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            train = self._read("train")
            if train is None:
                raise ConfigError("no training split given: set the train files of the data block")
            val = self._read("val")
            if val is None:
                train_idx, val_idx = self.train_val_indices(len(train))
                log.info(
                    "no val split: %d of %d training images validate", len(val_idx), len(train)
                )
                self.train_set = self._dataset(train, train_idx)
                self.val_set = self._dataset(train, val_idx)
            else:
                self.train_set = self._dataset(train)
                self.val_set = self._dataset(val)
        if stage in (None, "test", "predict") and self.test_set is None:
            test = self._read("test")
            if test is None:
                test = self._read("val")
                if test is None:
                    raise ConfigError("no test or val split given: nothing to test or predict on")
                log.info("no test split: test and predict use the val split")
            self.test_set = self._dataset(test)

    def train_boxes(self) -> list[Tensor]:
        """Per-image training boxes in input pixels (LZU's fixed saliency is computed on them)."""
        if self.train_set is None:
            self.setup("fit")
        return self.train_set.input_boxes()

    # -- loaders -------------------------------------------------------------------------------
    def _loader(self, dataset: DetectionDataset | None) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() with the matching stage before asking for a loader")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_detections,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("call setup('fit') before asking for the train loader")
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            seed=self.split_seed,
            num_workers=self.num_workers,
            collate_fn=collate_detections,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)


def _pair(split: str, annotations: str | None, images: str | None) -> tuple[Path, Path] | None:
    if annotations is None and images is None:
        return None
    if annotations is None or images is None:
        raise ConfigError(
            f"{split}_annotations and {split}_images go together; got only "
            f"{split}_{'annotations' if images is None else 'images'}"
        )
    return Path(annotations), Path(images)


class CocoDetectionDataModule(DetectionDataModule):
    """COCO ``instances_*.json`` files and their image folders, per split (see
    :func:`~wherewhat.data.detection.coco.read_coco`); every other argument is
    :class:`DetectionDataModule`'s."""

    def __init__(
        self,
        train_annotations: str | None = None,
        train_images: str | None = None,
        val_annotations: str | None = None,
        val_images: str | None = None,
        test_annotations: str | None = None,
        test_images: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.splits = {
            "train": _pair("train", train_annotations, train_images),
            "val": _pair("val", val_annotations, val_images),
            "test": _pair("test", test_annotations, test_images),
        }

    def read_split(self, split: str) -> DetectionSet | None:
        pair = self.splits[split]
        if pair is None:
            return None
        return read_coco(*pair, classes=self.classes, bad_boxes=self.bad_boxes)


class YoloDetectionDataModule(DetectionDataModule):
    """A YOLO ``data.yaml`` and its ``train`` / ``val`` / ``test`` entries (see
    :func:`~wherewhat.data.detection.yolo.read_yolo`); every other argument is
    :class:`DetectionDataModule`'s."""

    def __init__(self, data_yaml: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.save_hyperparameters()
        if data_yaml is None:
            raise ConfigError("data_yaml is required: the dataset's data.yaml")
        self.data_yaml = Path(data_yaml)

    def read_split(self, split: str) -> DetectionSet | None:
        if split not in yolo_splits(self.data_yaml):
            if split == "train":
                raise ConfigError(f"{self.data_yaml}: no 'train' entry")
            return None
        return read_yolo(self.data_yaml, split, classes=self.classes, bad_boxes=self.bad_boxes)
