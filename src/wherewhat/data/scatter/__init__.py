"""Multi-scale scattered-MNIST scenes: real MNIST digits of many sizes on a black canvas.

One concern a module:

- :mod:`~wherewhat.data.scatter.config`: :class:`ScatterConfig`, every knob, validated;
- :mod:`~wherewhat.data.scatter.generator`: the scene generator (the algorithm, step by step);
- :mod:`~wherewhat.data.scatter.store`: the on-disk format of generated splits;
- :mod:`~wherewhat.data.scatter.cache`: :func:`load_or_generate` (generate once, then read);
- :mod:`~wherewhat.data.scatter.dataset`: :class:`ScatterMNIST` and :func:`collate_scenes`;
- :mod:`~wherewhat.data.scatter.datamodule`: :class:`ScatterMNISTDataModule`.

The names below are re-exported so that ``from wherewhat.data.scatter import ...`` keeps
working. A method's own preset lives with the method (LZU's street scenes:
:func:`wherewhat.methods.lzu.street.street_scene_config`).
"""

from wherewhat.data.scatter.cache import load_or_generate, scatter_cache_dir
from wherewhat.data.scatter.config import SPLITS, ScatterConfig
from wherewhat.data.scatter.datamodule import ScatterMNISTDataModule
from wherewhat.data.scatter.dataset import ScatterMNIST, collate_scenes
from wherewhat.data.scatter.generator import (
    DigitLayer,
    ScatterScenes,
    SceneDetail,
    generate_scatter,
    generate_scene,
)

__all__ = [
    "SPLITS",
    "DigitLayer",
    "SceneDetail",
    "ScatterConfig",
    "ScatterMNIST",
    "ScatterMNISTDataModule",
    "ScatterScenes",
    "collate_scenes",
    "generate_scatter",
    "generate_scene",
    "load_or_generate",
    "scatter_cache_dir",
]
