"""Shared test set-up: a headless plotting backend, one torch thread on request, the location of
../shared/data, the GPU skip, and synthetic scenes several test modules draw."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("WHEREWHAT_CACHE", str(Path(__file__).parent / ".cache"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test (tiny tensors: more threads only add overhead, a lot
    of it on a shared machine); the previous count is restored afterwards. Modules use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests that need it skip with the reason if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run only where a CUDA GPU is available."""
    cuda_tests = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not cuda_tests:
        return
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in cuda_tests:
        item.add_marker(skip)


def square_scenes(
    n: int, size: tuple[int, int], sides: tuple[int, ...], seed: int = 0, min_y: int = 0
) -> dict[str, Any]:
    """Synthetic scenes: per scene one bright square (a digit stand-in) of each side in
    ``sides``, at a random place with its top at or below ``min_y``, with its box, digit label
    and mask (0 background, 1 + label). ``image`` ``(n, 1, H, W)``, ``boxes`` / ``labels``
    lists of ``(len(sides), 4)`` / ``(len(sides),)``, ``mask`` ``(n, H, W)``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, *size)
    masks = torch.zeros(n, *size, dtype=torch.long)
    boxes, labels = [], []
    for i in range(n):
        scene_boxes, scene_labels = [], []
        for side in sides:
            x = int(torch.randint(0, size[1] - side, (1,), generator=generator))
            y = int(torch.randint(min_y, size[0] - side, (1,), generator=generator))
            label = int(torch.randint(0, 10, (1,), generator=generator))
            images[i, 0, y : y + side, x : x + side] = 1.0
            masks[i, y : y + side, x : x + side] = label + 1
            scene_boxes.append([x, y, x + side, y + side])
            scene_labels.append(label)
        boxes.append(torch.tensor(scene_boxes, dtype=torch.float32))
        labels.append(torch.tensor(scene_labels))
    return {"image": images, "boxes": boxes, "labels": labels, "mask": masks}
