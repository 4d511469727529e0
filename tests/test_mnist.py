"""Real MNIST digits: embedded split and the IDX reader."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from wherewhat.data.mnist import EMBEDDED_TRAIN_PER_CLASS, load_mnist_digits, read_idx
from wherewhat.errors import DataFormatError


def test_embedded_split_is_disjoint_and_balanced():
    train_x, train_y = load_mnist_digits("train")
    test_x, test_y = load_mnist_digits("test")
    all_x, _ = load_mnist_digits("all")
    assert train_x.shape == (10 * EMBEDDED_TRAIN_PER_CLASS, 28, 28) and train_x.dtype == torch.uint8
    assert test_x.shape == (1000, 28, 28)
    assert torch.equal(train_y.bincount(), torch.full((10,), EMBEDDED_TRAIN_PER_CLASS))
    assert torch.equal(test_y.bincount(), torch.full((10,), 100))
    assert len(all_x) == 5000
    # no digit image in both pools (compare exact pixel content)
    train_keys = {bytes(img.numpy()) for img in train_x}
    assert not any(bytes(img.numpy()) in train_keys for img in test_x)
    # real digits: ink on a dark background, not noise
    assert train_x.float().mean() < 60 and train_x.max() == 255


def _write_idx(path, array, gz):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images[:3], gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels[:3], gz)
    x, y = load_mnist_digits("train", root=tmp_path)
    assert np.array_equal(x.numpy(), images) and np.array_equal(y.numpy(), labels)
    x_all, _ = load_mnist_digits("all", root=tmp_path)
    assert len(x_all) == 10


def test_bad_idx_files_name_the_file(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"\x00" * 10)
    with pytest.raises(DataFormatError, match="train-images-idx3-ubyte.*declares shape"):
        read_idx(bad)
    bad.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataFormatError, match="magic"):
        read_idx(bad)
    with pytest.raises(DataFormatError, match="train-labels-idx1-ubyte"):
        load_mnist_digits("train", root=tmp_path)
    with pytest.raises(DataFormatError, match="expected a folder"):
        load_mnist_digits("train", root=tmp_path / "missing")
    with pytest.raises(ValueError, match="split"):
        load_mnist_digits("validation")
