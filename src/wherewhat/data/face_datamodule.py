"""A LightningDataModule over a folder of images with iBUG ``.pts`` landmarks (300-W style).

The faces are split once into train / validation by photo name with a fixed seed
(:func:`~wherewhat.data.faces.split_by_name`, faces of one photo stay together), cropped as
WorldComp2D expects (square crop of side ``side_factor`` x the landmark box, resized to
``crop_size``) by :class:`~wherewhat.data.face_crops.FaceLandmarkDataset`, and augmented on the
training side only (scale, mirror flip with the landmark permutation, rotation: the reference's
augmentations). Validation and test keep every face: no partial batch is dropped there.

Batches are dicts (default collate):
    ``image`` ``(B, 3, S, S)`` float in [0, 1]; ``points`` ``(B, K, 2)`` crop pixels;
    ``affine`` ``(B, 3, 3)`` original -> crop; ``original_points`` ``(B, K, 2)`` the annotation
    in original pixels (in the item's landmark order, i.e. relabelled after a flip);
    ``index`` ``(B,)``; ``flipped`` ``(B,)`` bool.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from wherewhat.data.face_batches import FaceCanvasCache, FaceCanvasItems, default_margin
from wherewhat.data.face_crops import FaceLandmarkDataset, face_crop_affine
from wherewhat.data.faces import FaceRecord, check_image_files, load_pts_folder, split_by_name
from wherewhat.data.loader import EpochSeededSampler, ResumableDataLoader
from wherewhat.errors import ConfigError, DataFormatError
from wherewhat.geometry import apply_affine

__all__ = ["FaceCrops", "FaceLandmarkDataModule", "crop_points_of"]


class _EpochKeySampler(EpochSeededSampler):
    """:class:`EpochSeededSampler` that yields ``(index, epoch)`` keys.

    The epoch travels with every key, so a dataset copy inside a worker process selects that
    epoch's augmentation itself (a ``set_epoch`` call in the main process would not reach it).
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        order = super().__iter__()
        return iter([(int(index), self.epoch) for index in order])


class FaceCrops(Dataset):
    """:class:`FaceLandmarkDataset` items plus ``original_points``; keys ``i`` or ``(i, epoch)``.

    A key ``(i, epoch)`` first calls :meth:`FaceLandmarkDataset.set_epoch` (its augmentation
    draws depend on ``(seed, epoch, i)`` only), so items are identical with or without workers
    and after a resume.
    """

    def __init__(self, faces: FaceLandmarkDataset):
        self.faces = faces

    def __len__(self) -> int:
        return len(self.faces)

    @property
    def records(self) -> list[FaceRecord]:
        return self.faces.records

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        if epoch is not None:
            self.faces.set_epoch(epoch)
        item = self.faces[index]
        original = self.faces.records[index].points
        if bool(item["flipped"]):
            original = original[list(self.faces.permutation)]
        item["original_points"] = original.float()
        return item


def crop_points_of(
    records: Sequence[FaceRecord],
    crop_size: int = 256,
    side_factor: float = 1.25,
    crop_from: str = "landmarks",
) -> Tensor:
    """Unaugmented landmarks of ``records`` in their crop frame: ``(N, K, 2)`` float32 px.

    The same crops as an unaugmented :class:`FaceLandmarkDataset`, without reading any image
    (e.g. for the mean-shape prior of WorldComp2D's localizer).
    """
    shapes = []
    for record in records:
        source = record.points if crop_from == "landmarks" else record.box
        affine = face_crop_affine(source, crop_size, side_factor)
        shapes.append(apply_affine(record.points.double(), affine))
    return torch.stack(shapes).float()


class FaceLandmarkDataModule(pl.LightningDataModule):
    """Train / val from one ``.pts`` folder (split by photo with ``split_seed``), test optional.

    Args:
        root: folder searched recursively for images with same-stem ``.pts`` files.
        val_fraction: share of *photos* that form the validation split.
        split_seed: seed of the split (kept apart from ``seed`` so runs with different training
            seeds are evaluated on the same faces).
        test_root: a separate ``.pts`` folder for ``test`` / ``predict`` (e.g. 300-W's test
            set); default: the validation split.
        expected_points: landmarks per face (68 for 300-W); ``None`` accepts any one scheme.
        max_faces: use only a seeded sample of this many faces (before the split), for quick
            runs and tests; ``None`` uses all.
        crop_size, side_factor, crop_from: the crops (:class:`FaceLandmarkDataset`).
        augment: training augmentation on / off. Its parts, as in the reference: side scale
            ``1 +- scale_jitter``, mirror flip with probability ``flip_prob`` (landmarks
            relabelled by the scheme's permutation), rotation in ``+-max_rotation_deg`` with
            probability ``rotation_prob``; and, not in the reference, a centre shift of up to
            ``shift_jitter`` x the box's longer side per axis (0 by default), so that a model
            reads faces from a detector's imprecise boxes.
        batch_size: training batch; the last partial training batch of an epoch is dropped
            (BatchNorm needs more than one face, and every epoch reshuffles).
        eval_batch_size: validation / test batch (default ``batch_size``); nothing is dropped.
        num_workers: DataLoader worker processes.
        seed: shuffle order and augmentation draws.
        batched_views: the fast training path (:mod:`wherewhat.data.face_batches`): every
            training photo is decoded once at ``setup`` into a uint8 canvas (about
            ``3 * (1.25 S)^2`` bytes per face, 0.3 GB for 1,074 faces at S = 256) and training
            batches carry ``canvas`` + ``crop_from_canvas`` instead of ``image``; the task cuts
            its views with one ``grid_sample`` per batch. Same augmentation draws as the
            per-face path (``False``, the default), so the two can be compared in one run.
            Validation and test always use the per-face path.
    """

    def __init__(
        self,
        root: str,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        test_root: str | None = None,
        expected_points: int | None = 68,
        max_faces: int | None = None,
        crop_size: int = 256,
        side_factor: float = 1.25,
        crop_from: str = "landmarks",
        augment: bool = True,
        scale_jitter: float = 0.05,
        shift_jitter: float = 0.0,
        flip_prob: float = 0.5,
        max_rotation_deg: float = 10.0,
        rotation_prob: float = 0.6,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        batched_views: bool = False,
    ):
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if max_faces is not None and max_faces < 2:
            raise ConfigError(f"data.max_faces must be >= 2 or null, got {max_faces}")
        if batch_size < 2:
            raise ConfigError(f"data.batch_size must be >= 2 (BatchNorm), got {batch_size}")
        if crop_from not in ("landmarks", "box"):
            raise ConfigError(f"data.crop_from must be 'landmarks' or 'box', got {crop_from!r}")
        for key, folder in (("root", root), ("test_root", test_root)):
            if folder is not None and not Path(folder).is_dir():
                raise DataFormatError(
                    folder,
                    f"data.init_args.{key}: expected a folder of images with same-stem .pts "
                    f"files; {'a file' if Path(folder).exists() else 'no such folder'}",
                    hint=f"set --data.init_args.{key} to that folder (e.g. ../shared/data/faces68)",
                )
        self.root = Path(root)
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.test_root = None if test_root is None else Path(test_root)
        self.expected_points = expected_points
        self.max_faces = max_faces
        self.crop_size = crop_size
        self.side_factor = side_factor
        self.crop_from = crop_from
        self.augment = augment
        self.scale_jitter = scale_jitter
        self.shift_jitter = shift_jitter
        self.flip_prob = flip_prob
        self.max_rotation_deg = max_rotation_deg
        self.rotation_prob = rotation_prob
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.batched_views = batched_views
        self.train_records: list[FaceRecord] | None = None
        self.val_records: list[FaceRecord] | None = None
        self.train_set: FaceCrops | FaceCanvasItems | None = None
        self.val_set: FaceCrops | None = None
        self.test_set: FaceCrops | None = None

    # -- splits --------------------------------------------------------------------------------
    def split(self) -> tuple[list[FaceRecord], list[FaceRecord]]:
        """The (train, val) records: a pure function of the folder, ``max_faces`` and
        ``split_seed``."""
        records = load_pts_folder(self.root, self.expected_points)
        if self.max_faces is not None and self.max_faces < len(records):
            chosen = np.random.default_rng(self.split_seed).permutation(len(records))
            records = [records[i] for i in sorted(chosen[: self.max_faces].tolist())]
        train, val = split_by_name(records, self.val_fraction, self.split_seed)
        if not train or not val:
            raise ConfigError(
                f"{self.root}: {len(records)} faces split into {len(train)} train and "
                f"{len(val)} validation faces; need both non-empty (more photos or another "
                "val_fraction)"
            )
        return train, val

    def _crops(self, records: Sequence[FaceRecord], augment: bool) -> FaceCrops:
        return FaceCrops(
            FaceLandmarkDataset(
                records,
                out_size=self.crop_size,
                side_factor=self.side_factor,
                augment=augment,
                seed=self.seed,
                scale_jitter=self.scale_jitter,
                shift_jitter=self.shift_jitter,
                max_rotation_deg=self.max_rotation_deg,
                rotation_prob=self.rotation_prob,
                flip_prob=self.flip_prob,
                crop_from=self.crop_from,
            )
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_records is None:
            self.train_records, self.val_records = self.split()
            if len(self.train_records) < self.batch_size:
                raise ConfigError(
                    f"the training split has {len(self.train_records)} faces, fewer than "
                    f"data.batch_size={self.batch_size}; lower the batch size"
                )
            # Before any loader worker starts: a bad image stops the run here, with its name.
            check_image_files(self.train_records + self.val_records, self.root)
            self.train_set = self._crops(self.train_records, self.augment)
            if self.batched_views:
                cache = FaceCanvasCache(
                    self.train_records,
                    self.crop_size,
                    self.side_factor,
                    self.crop_from,
                    margin=default_margin(
                        self.crop_size,
                        self.scale_jitter,
                        self.max_rotation_deg,
                        self.shift_jitter,
                        self.side_factor,
                    ),  # fmt: skip
                )
                self.train_set = FaceCanvasItems(self.train_set.faces, cache)
            self.val_set = self._crops(self.val_records, augment=False)
        if stage in (None, "test", "predict") and self.test_set is None:
            if self.test_root is None:
                self.test_set = self.val_set
            else:
                test = load_pts_folder(self.test_root, self.expected_points)
                check_image_files(test, self.test_root)
                self.test_set = self._crops(test, augment=False)

    def train_crop_points(self) -> Tensor:
        """Unaugmented crop-frame landmarks of the training split ``(N, K, 2)`` (mean shape)."""
        if self.train_records is None:
            self.setup("fit")
        assert self.train_records is not None
        return crop_points_of(self.train_records, self.crop_size, self.side_factor, self.crop_from)

    # -- loaders -------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup('fit') must run first"
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=_EpochKeySampler(len(self.train_set), seed=self.seed, shuffle=True),
            seed=self.seed,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _evaluation_loader(self, dataset: FaceCrops | None) -> DataLoader:
        assert dataset is not None, "setup() must run first"
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            drop_last=False,  # every face counts in NME / FR / AUC
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._evaluation_loader(self.test_set)
