"""Image-classification data for self-supervised learning: CIFAR-10 arrays and image folders.

Two on-disk formats:

* **CIFAR-10 ``.npz``**: keys ``x_train`` (N, H, W, 3) uint8, ``y_train`` (N,) int, ``x_test``,
  ``y_test`` and optionally ``classes`` (names). This is the layout of ``shared/data/cifar10``;
  any array set of that shape works (e.g. STL-10 converted to arrays).
* **Image folder**: ``ROOT/train/<class>/*.png|jpg`` and ``ROOT/test/<class>/*``, torchvision's
  ``ImageFolder`` layout, one folder per split.

Both give uint8 HWC images + int64 labels. Views for self-supervised methods are made by a
``train_transform`` callable (tensor image -> anything), so the SSL method owns augmentation.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from wherewhat.data.loader import ResumableDataLoader, SampleKey
from wherewhat.errors import ConfigError, DataFormatError

__all__ = [
    "ImageArrays",
    "load_cifar_npz",
    "load_image_folder",
    "balanced_subset",
    "ImageArrayDataset",
    "BatchTransformCollate",
    "SelfSupervisedDataModule",
    "write_digits_npz",
]

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_LISTED = 10  # how many ignored files a warning names before "... and N more"


@dataclass
class ImageArrays:
    """Train and test images ``(N, H, W, C)`` uint8 with labels ``(N,)`` int64 and class names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _check_split(path: Path, images: np.ndarray, labels: np.ndarray, split: str) -> np.ndarray:
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise DataFormatError(
            path,
            f"x_{split}: expected uint8 (N, H, W, 1|3) images, found {images.dtype} {images.shape}",
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataFormatError(
            path, f"y_{split}: expected ({images.shape[0]},) labels, found {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(path, f"y_{split}: expected integer labels, found {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise DataFormatError(path, f"y_{split}: negative label {labels.min()}")
    return labels.astype(np.int64)


def load_cifar_npz(path: str | Path) -> ImageArrays:
    """Read CIFAR-style arrays from an ``.npz`` file (layout in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "no such file (expected a CIFAR-style .npz)")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays.files)
            if missing:
                raise DataFormatError(
                    path, f"missing keys {sorted(missing)}; found {sorted(arrays.files)}"
                )
            data = {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataFormatError):
            raise
        raise DataFormatError(path, f"not a readable .npz archive ({exc})") from exc
    y_train = _check_split(path, data["x_train"], data["y_train"], "train")
    y_test = _check_split(path, data["x_test"], data["y_test"], "test")
    num_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    classes = [str(c) for c in data["classes"]] if "classes" in data else []
    if not classes:
        classes = [str(i) for i in range(num_classes)]
    elif len(classes) < num_classes:
        raise DataFormatError(
            path, f"{len(classes)} class names but labels go up to {num_classes - 1}"
        )
    return ImageArrays(data["x_train"], y_train, data["x_test"], y_test, classes)


def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataFormatError(path, f"cannot decode image ({exc})") from exc


def _read_folder_split(
    split_root: Path, classes: list[str] | None, ignored: list[Path] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One split's images and labels; files that are not images (by suffix) are appended to
    ``ignored`` (and skipped)."""
    if not split_root.is_dir():
        raise DataFormatError(split_root, "expected a folder with one sub-folder per class")
    found = sorted(p.name for p in split_root.iterdir() if p.is_dir())
    if not found:
        raise DataFormatError(split_root, "no class sub-folders")
    classes = classes or found
    unknown = set(found) - set(classes)
    if unknown:
        raise DataFormatError(split_root, f"class folders {sorted(unknown)} not in the train split")
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = split_root / name
        entries = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
        files = [p for p in entries if p.suffix.lower() in _IMAGE_SUFFIXES]
        if ignored is not None:
            ignored.extend(p for p in entries if p.suffix.lower() not in _IMAGE_SUFFIXES)
        for file in files:
            images.append(_read_rgb(file))
            labels.append(label)
    if not images:
        raise DataFormatError(split_root, f"no images with suffix in {sorted(_IMAGE_SUFFIXES)}")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DataFormatError(
            split_root,
            f"images must share one size to be stacked; found sizes {sorted(shapes)[:4]}",
        )
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def load_image_folder(root: str | Path) -> ImageArrays:
    """Read ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (same-size images) into arrays.

    Files in the class folders without an image suffix (``notes.txt``, ``.DS_Store``...) are
    skipped and named in one logged warning."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(
            root,
            "expected a folder with train/<class>/ and test/<class>/ image folders; "
            + ("a file" if root.exists() else "no such folder"),
        )
    ignored: list[Path] = []
    x_train, y_train, classes = _read_folder_split(root / "train", None, ignored)
    x_test, y_test, _ = _read_folder_split(root / "test", classes, ignored)
    if ignored:
        shown = ", ".join(str(p) for p in ignored[:_LISTED])
        more = f", ... and {len(ignored) - _LISTED} more" if len(ignored) > _LISTED else ""
        logger.warning(
            "%s: ignored %d files that are not images (%s): %s%s",
            root,
            len(ignored),
            "/".join(sorted(_IMAGE_SUFFIXES)),
            shown,
            more,
        )
    return ImageArrays(x_train, y_train, x_test, y_test, classes)


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` examples of every class, drawn with a fixed seed, sorted."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise ConfigError(
                f"class {label} has {len(members)} examples, {per_class} per class requested",
                hint="lower data.init_args.train_limit / probe_per_class",
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


class ImageArrayDataset(Dataset):
    """``(image, label)`` pairs from uint8 HWC arrays; images become float32 ``(C, H, W)`` in [0, 1].

    ``transform`` (optional) is applied to that tensor, e.g. an SSL view sampler returning
    several views with their boxes. Indexed by an ``(index, sample_seed)`` key (from a
    :class:`~wherewhat.data.loader.ResumableDataLoader` with ``sample_seeds=True``), a transform
    that takes a ``generator`` argument draws from a generator seeded with ``sample_seed``: the
    views then depend on the epoch and index only, so a resumed run sees the same views.

    ``defer_transform=True`` leaves the transform to a :class:`BatchTransformCollate`: items are
    ``(image uint8 (C, H, W), sample_seed, label)`` (``sample_seed`` -1 for a bare index).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Callable[[Tensor], object] | None = None,
        defer_transform: bool = False,
    ):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.transform = None if defer_transform else transform
        self.defer_transform = defer_transform
        self._seedable = self.transform is not None and _takes_generator(self.transform)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | SampleKey):
        index, seed = key if isinstance(key, tuple) else (key, None)
        if self.defer_transform:
            return self.images[index], -1 if seed is None else seed, self.labels[index]
        image = self.images[index].float().div_(255.0)
        if self.transform is not None:
            if seed is not None and self._seedable:
                image = self.transform(image, generator=torch.Generator().manual_seed(seed))
            else:
                image = self.transform(image)
        return image, self.labels[index]


class BatchTransformCollate:
    """``collate_fn`` applying a batched transform to a whole batch of seeded images.

    Items are ``(image uint8 (C, H, W), sample_seed, label)`` (an :class:`ImageArrayDataset`
    with ``defer_transform=True``); returns ``(transform.batch(images, generators), labels)``
    with one generator per image seeded with its ``sample_seed`` (torch's global RNG for -1),
    i.e. the same output a per-sample transform with those generators gives, in one call.
    """

    def __init__(self, transform: object):
        if not callable(getattr(transform, "batch", None)):
            raise ConfigError(
                f"{type(transform).__name__} has no batch(images, generators) method; "
                "use it as a per-sample transform"
            )
        self.transform = transform

    def __call__(self, items: list[tuple[Tensor, int, Tensor]]) -> tuple[object, Tensor]:
        images = torch.stack([item[0] for item in items])
        generators = [
            None if int(seed) < 0 else torch.Generator().manual_seed(int(seed))
            for _, seed, _ in items
        ]
        labels = torch.stack([item[2] for item in items])
        return self.transform.batch(images, generators), labels


def _takes_generator(transform: Callable) -> bool:
    try:
        return "generator" in inspect.signature(transform).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


class SelfSupervisedDataModule(L.LightningDataModule):
    """Unlabelled training images, a labelled subset for probes, and the labelled test split.

    Args:
        npz_path: CIFAR-style ``.npz`` (see module docstring); or
        image_folder: a folder with ``train/`` and ``test/`` class folders. Exactly one is given.
        train_transform: callable on a float ``(C, H, W)`` image, e.g. the SSL view sampler.
        batch_transform: when ``train_transform`` also has ``batch(images, generators)`` (the
            view sampler has), apply it once per batch (:class:`BatchTransformCollate`): the
            same views as per image, drawn with batched tensor ops. ``False``: per image.
        probe_per_class: labelled training examples per class for linear / k-NN probes
            (``None``: all training images).
        train_limit / test_limit: use only N images for quick runs: a class-balanced subset
            drawn with ``seed`` for train, a random subset with a fixed seed (the same for every
            run seed) for test.
    """

    def __init__(
        self,
        npz_path: str | None = None,
        image_folder: str | None = None,
        train_transform: Callable[[Tensor], object] | None = None,
        batch_size: int = 256,
        probe_per_class: int | None = None,
        train_limit: int | None = None,
        test_limit: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        batch_transform: bool = True,
    ):
        super().__init__()
        if (npz_path is None) == (image_folder is None):
            raise ConfigError(
                "data.init_args: give exactly one of npz_path or image_folder, got "
                f"npz_path={npz_path!r}, image_folder={image_folder!r}"
            )
        # Cheap checks at start-up; the files are read in setup(), before any worker starts.
        if npz_path is not None and not Path(npz_path).is_file():
            raise DataFormatError(
                npz_path,
                "data.init_args.npz_path: expected a CIFAR-style .npz file; "
                + ("a folder" if Path(npz_path).is_dir() else "no such file"),
                hint="set --data.init_args.npz_path to the .npz (e.g. ../shared/data/cifar10/"
                "cifar10_subset.npz) or use --data.init_args.image_folder",
            )
        if image_folder is not None and not Path(image_folder).is_dir():
            raise DataFormatError(
                image_folder,
                "data.init_args.image_folder: expected a folder with train/<class>/ and "
                "test/<class>/ images; no such folder",
                hint="set --data.init_args.image_folder to that folder or use "
                "--data.init_args.npz_path",
            )
        self.npz_path, self.image_folder = npz_path, image_folder
        self.train_transform = train_transform
        self.batch_transform = batch_transform
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.probe_per_class, self.train_limit, self.test_limit = (
            probe_per_class,
            train_limit,
            test_limit,
        )
        self.arrays: ImageArrays | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        arrays = (
            load_cifar_npz(self.npz_path) if self.npz_path else load_image_folder(self.image_folder)
        )
        if self.train_limit is not None:
            per_class = self.train_limit // arrays.num_classes
            keep = balanced_subset(arrays.y_train, per_class, self.seed)
            arrays.x_train, arrays.y_train = arrays.x_train[keep], arrays.y_train[keep]
        if self.test_limit is not None and self.test_limit < len(arrays.y_test):
            # A random subset with a fixed seed: test files are often sorted by class (CIFAR-10's
            # is), so the first N would be one class; and every run seed sees the same images.
            keep = np.sort(
                np.random.default_rng(0).permutation(len(arrays.y_test))[: self.test_limit]
            )
            arrays.x_test, arrays.y_test = arrays.x_test[keep], arrays.y_test[keep]
        self.arrays = arrays

    def _loader(self, dataset: Dataset) -> DataLoader:
        """Evaluation loader: dataset order, no augmentation."""
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _transform_per_batch(self) -> bool:
        return self.batch_transform and callable(getattr(self.train_transform, "batch", None))

    def train_dataset(self) -> ImageArrayDataset:
        self.setup()
        return ImageArrayDataset(
            self.arrays.x_train,
            self.arrays.y_train,
            self.train_transform,
            defer_transform=self._transform_per_batch(),
        )

    def probe_train_dataset(self) -> ImageArrayDataset:
        """Labelled, un-augmented training images for fitting probes."""
        self.setup()
        keep = np.arange(len(self.arrays.y_train))
        if self.probe_per_class is not None:
            keep = balanced_subset(self.arrays.y_train, self.probe_per_class, self.seed + 1)
        return ImageArrayDataset(self.arrays.x_train[keep], self.arrays.y_train[keep])

    def test_dataset(self) -> ImageArrayDataset:
        self.setup()
        return ImageArrayDataset(self.arrays.x_test, self.arrays.y_test)

    def train_dataloader(self) -> DataLoader:
        # drop_last keeps contrastive batch sizes constant; the dropped images are a different
        # random few each epoch, so no image is systematically unseen. Order and views come
        # from (seed, epoch, index) alone, so `fit --resume` continues the epoch exactly.
        return ResumableDataLoader(
            self.train_dataset(),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            seed=self.seed,
            sample_seeds=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=BatchTransformCollate(self.train_transform)
            if self._transform_per_batch()
            else None,
        )

    def probe_train_dataloader(self) -> DataLoader:
        return self._loader(self.probe_train_dataset())

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset())


def write_digits_npz(path: str | Path, size: int = 32) -> Path:
    """The embedded MNIST digits (:func:`wherewhat.data.mnist.load_mnist_digits`) as a
    CIFAR-style ``.npz``: ``(N, size, size, 3)`` uint8, the 28-px digit centred (zero padding),
    grey repeated in 3 channels, the embedded train / test split, classes ``"0"``..``"9"``.
    Lets the image-classification pipelines run where no CIFAR arrays exist."""
    from wherewhat.data.mnist import load_mnist_digits

    if size < 28:
        raise ConfigError(f"size={size}: the digits are 28 px; expected >= 28")
    pad = (size - 28) // 2
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        images, labels = load_mnist_digits(split)
        canvas = np.zeros((len(images), size, size, 3), dtype=np.uint8)
        canvas[:, pad : pad + 28, pad : pad + 28, :] = images.numpy()[..., None]
        arrays[f"x_{split}"], arrays[f"y_{split}"] = canvas, labels.numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays, classes=np.array([str(d) for d in range(10)]))
    return path
