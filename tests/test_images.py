"""CIFAR-style arrays and image folders for self-supervised learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from wherewhat.data.images import (
    SelfSupervisedDataModule,
    balanced_subset,
    load_cifar_npz,
    load_image_folder,
)
from wherewhat.errors import DataFormatError


def test_shared_cifar_subset_loads(shared_data):
    arrays = load_cifar_npz(shared_data / "cifar10" / "cifar10_subset.npz")
    assert arrays.x_train.shape == (20000, 32, 32, 3) and arrays.x_test.shape == (10000, 32, 32, 3)
    assert arrays.classes[0] == "airplane" and arrays.num_classes == 10
    assert np.array_equal(np.bincount(arrays.y_train), np.full(10, 2000))


def test_datamodule_batches_and_balanced_probe_subset(shared_data):
    module = SelfSupervisedDataModule(
        npz_path=str(shared_data / "cifar10" / "cifar10_subset.npz"),
        batch_size=64,
        probe_per_class=10,
        train_limit=500,
        test_limit=128,
    )
    images, labels = next(iter(module.train_dataloader()))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    probe = module.probe_train_dataset()
    assert len(probe) == 100 and torch.equal(probe.labels.bincount(), torch.full((10,), 10))
    assert len(module.test_dataset()) == 128
    assert len(module.train_dataset()) == 500


def test_npz_errors_name_file_and_key(tmp_path):
    path = tmp_path / "broken.npz"
    np.savez(path, x_train=np.zeros((2, 8, 8, 3), np.uint8), y_train=np.zeros(2, np.int64))
    with pytest.raises(DataFormatError, match=r"broken\.npz.*missing keys \['x_test', 'y_test'\]"):
        load_cifar_npz(path)
    np.savez(
        path,
        x_train=np.zeros((2, 8, 8, 3), np.float32),
        y_train=np.zeros(2, np.int64),
        x_test=np.zeros((1, 8, 8, 3), np.uint8),
        y_test=np.zeros(1, np.int64),
    )
    with pytest.raises(DataFormatError, match="x_train: expected uint8"):
        load_cifar_npz(path)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="garbage.npz"):
        load_cifar_npz(tmp_path / "garbage.npz")


def test_image_folder_layout_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                    folder / f"{i}.png"
                )
    arrays = load_image_folder(tmp_path)
    assert arrays.classes == ["cat", "dog"] and arrays.x_train.shape == (6, 12, 12, 3)
    assert arrays.y_test.tolist() == [0, 0, 1, 1]
    (tmp_path / "train" / "dog" / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataFormatError, match="bad.png"):
        load_image_folder(tmp_path)


def test_balanced_subset_is_seeded():
    labels = np.repeat(np.arange(3), 10)
    a, b = balanced_subset(labels, 4, seed=1), balanced_subset(labels, 4, seed=1)
    assert np.array_equal(a, b) and np.array_equal(np.bincount(labels[a]), [4, 4, 4])
    with pytest.raises(ValueError, match="class"):
        balanced_subset(labels, 11, seed=0)


def test_embedded_digits_as_cifar_arrays(tmp_path):
    from wherewhat.data.images import write_digits_npz
    from wherewhat.data.mnist import load_mnist_digits

    arrays = load_cifar_npz(write_digits_npz(tmp_path / "digits.npz"))
    digits, labels = load_mnist_digits("test")
    assert arrays.x_train.shape == (4000, 32, 32, 3) and arrays.x_test.shape == (1000, 32, 32, 3)
    assert arrays.classes == [str(d) for d in range(10)]
    np.testing.assert_array_equal(arrays.x_test[:, 2:30, 2:30, 1], digits.numpy())
    assert arrays.x_test[:, :2].max() == 0 and arrays.x_test[:, 30:].max() == 0
    np.testing.assert_array_equal(arrays.y_test, labels.numpy())
