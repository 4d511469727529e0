"""Generate a configuration's scenes once, then read them from the on-disk cache."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from wherewhat.data.mnist import load_mnist_digits
from wherewhat.data.scatter.config import SPLITS, ScatterConfig, check_split
from wherewhat.data.scatter.generator import ScatterScenes, generate_scatter
from wherewhat.data.scatter.store import (
    FORMAT_VERSION,
    cache_key,
    default_cache_root,
    read_json,
    read_split,
    write_json_atomic,
    write_split,
)
from wherewhat.errors import DataFormatError
from wherewhat.io import array_digest

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _digits_fingerprint(digits_root: str | None) -> str:
    pools = [load_mnist_digits(split, digits_root) for split in SPLITS]
    return array_digest(array.numpy() for pool in pools for array in pool)


def _root_key(digits_root: str | Path | None) -> str | None:
    return None if digits_root is None else str(Path(digits_root).expanduser().resolve())


def scatter_cache_dir(
    config: ScatterConfig,
    cache_root: str | Path | None = None,
    digits_root: str | Path | None = None,
) -> Path:
    """The ``<cache_root>/scatter-<key>`` folder that holds (or will hold) this config's scenes."""
    key = cache_key(config.to_dict(), _digits_fingerprint(_root_key(digits_root)))
    return default_cache_root(cache_root) / f"scatter-{key}"


def load_or_generate_reporting(
    config: ScatterConfig,
    split: str,
    cache_root: str | Path | None,
    digits_root: str | Path | None,
) -> tuple[ScatterScenes, bool]:
    """Return the scenes and whether they had to be generated."""
    check_split(split)
    folder = scatter_cache_dir(config, cache_root, digits_root)
    key = folder.name.removeprefix("scatter-")
    config_path = folder / "config.json"
    expected = {
        "format": FORMAT_VERSION,
        "key": key,
        "split": split,
        "count": config.count(split),
        "image_size": tuple(config.image_size),
        "with_masks": config.with_masks,
    }
    generated = False
    if not (folder / split).exists():
        log.info(
            "generating %d scattered-MNIST %s scenes into %s", expected["count"], split, folder
        )
        scenes = generate_scatter(config, split, digits_root)
        write_json_atomic(
            config_path,
            {
                "format": FORMAT_VERSION,
                "key": key,
                "config": config.to_dict(),
                "digits": "embedded" if digits_root is None else _root_key(digits_root),
            },
        )
        arrays = {
            "images": scenes.grey,
            "boxes": scenes.boxes_flat,
            "labels": scenes.labels_flat,
            "offsets": scenes.offsets,
            "masks": scenes.masks,
        }
        write_split(folder / split, arrays, {**expected, "n_boxes": len(scenes.labels_flat)})
        generated = True
    stored = read_json(config_path)
    if stored.get("config") != config.to_dict():
        raise DataFormatError(
            config_path,
            f"holds a different config than its key says; delete {folder} to regenerate",
        )
    arrays = read_split(folder / split, expected)
    scenes = ScatterScenes(
        config=config,
        split=split,
        grey=arrays["images"],
        boxes_flat=arrays["boxes"],
        labels_flat=arrays["labels"],
        offsets=arrays["offsets"],
        masks=arrays["masks"],
        cache_dir=folder / split,
    )
    if not generated:
        log.info("loaded %d scattered-MNIST %s scenes from %s", len(scenes), split, folder)
    return scenes, generated


def load_or_generate(
    config: ScatterConfig,
    split: str,
    cache_root: str | Path | None = None,
    digits_root: str | Path | None = None,
) -> ScatterScenes:
    """Scenes of ``split`` from the disk cache, generating and storing them on a miss.

    The cache folder is keyed on every config knob and on the digit pools, so a changed knob
    never reuses stale scenes. Images and masks come back memory-mapped (read-only).
    Raises ``DataFormatError`` naming the file if a cached file is corrupt.
    """
    return load_or_generate_reporting(config, split, cache_root, digits_root)[0]
