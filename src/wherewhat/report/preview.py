"""``wherewhat data preview``: a PNG grid of a dataset's samples with their geometry drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wherewhat.data.faces import load_pts_folder, read_face_image
from wherewhat.data.scatter import ScatterConfig, load_or_generate
from wherewhat.errors import ConfigError
from wherewhat.report.figures import faces_with_landmarks, save_png, scene_grid

__all__ = ["PREVIEW_DATASETS", "preview_dataset"]

PREVIEW_DATASETS = ("scatter", "faces68", "pts")


def _pick(count: int, n: int, seed: int) -> list[int]:
    """``min(n, count)`` distinct indices in increasing order, chosen with ``seed``."""
    if count == 0:
        return []
    chosen = np.random.default_rng(seed).choice(count, size=min(n, count), replace=False)
    return sorted(int(i) for i in chosen)


def preview_dataset(
    name: str,
    root: str | Path | None,
    out: str | Path,
    n: int = 16,
    seed: int = 0,
    split: str = "test",
) -> Path:
    """Write a PNG grid of ``n`` random samples of dataset ``name`` with boxes or landmarks.

    Args:
        name: ``"scatter"`` (scattered-MNIST scenes of the default configuration; ``root`` is
            the scene cache folder or None for the default cache) or ``"faces68"`` / ``"pts"``
            (``root``: a folder tree of images with same-stem ``.pts`` files).
        root: see ``name``.
        out: the PNG file to write (folders are created).
        n: number of samples shown (fewer if the dataset is smaller).
        seed: which samples.
        split: scatter only: ``"train"`` or ``"test"``.

    Returns:
        ``out`` as a Path.
    """
    if n < 1:
        raise ConfigError(f"preview: n={n!r}: expected at least 1 sample")
    if name == "scatter":
        scenes = load_or_generate(ScatterConfig(), split, cache_root=root)
        picked = _pick(len(scenes), n, seed)
        if not picked:
            raise ConfigError(f"preview: the scatter {split} split holds no scenes")
        fig = scene_grid(
            [scenes.images[i] for i in picked],
            [scenes.boxes[i] for i in picked],
            [scenes.labels[i] for i in picked],
            ncols=4,
            titles=[f"{split} {i}" for i in picked],
        )
    elif name in ("faces68", "pts"):
        if root is None:
            raise ConfigError(f"preview {name}: give --root, a folder of images with .pts files")
        expected = 68 if name == "faces68" else None
        records = load_pts_folder(root, expected_points=expected)
        picked = _pick(len(records), n, seed)
        fig = faces_with_landmarks(
            [read_face_image(records[i]) for i in picked],
            [records[i].points for i in picked],
            ncols=4,
            titles=[records[i].name for i in picked],
        )
    else:
        raise ConfigError(f"preview: unknown dataset {name!r}; choose from {PREVIEW_DATASETS}")
    return save_png(fig, out)
