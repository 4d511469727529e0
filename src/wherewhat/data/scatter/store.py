"""On-disk cache of generated scattered-MNIST scenes.

Layout (format version ``FORMAT_VERSION``)::

    <cache_root>/scatter-<key>/
        config.json            {"format", "key", "config": ScatterConfig.to_dict(), "digits"}
        train/                 one folder per split, made visible by one atomic rename
            meta.json          {"format", "key", "split", "count", "n_boxes", "image_size",
                                "with_masks"}
            images.npy         (N, H, W) uint8   one grey plane per scene (channels are copies)
            boxes.npy          (M, 4) float32    XYXY pixels, all scenes concatenated
            labels.npy         (M,) int64        digit class per box
            offsets.npy        (N + 1,) int64    scene i owns rows offsets[i]:offsets[i+1]
            masks.npy          (N, H, W) uint8   optional: 0 background, 1 + digit class
        test/                  same files

``key`` hashes the format version, every config knob and a fingerprint of the digit pools, so
any change lands in a new folder. ``<cache_root>`` is the argument, else ``$WHEREWHAT_CACHE``,
else ``~/.cache/wherewhat``. Images and masks are memory-mapped on load, so data-loader workers
and DDP processes on one machine share one copy through the page cache.

Writes go to a hidden temporary folder that is renamed into place, so a reader never sees a
half-written split; when two processes race, the first rename wins and the other reads it. A
file that is unreadable or inconsistent raises ``DataFormatError`` naming it (nothing is
regenerated behind the user's back): delete the ``scatter-<key>`` folder to regenerate.
An interrupted write leaves a ``.tmp-*`` folder beside the splits that is safe to delete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wherewhat.errors import DataFormatError
from wherewhat.io import json_fingerprint, write_atomic

__all__ = [
    "FORMAT_VERSION",
    "default_cache_root",
    "cache_key",
    "write_json_atomic",
    "read_json",
    "write_split",
    "read_split",
]

FORMAT_VERSION = 1
_ARRAY_FILES = ("images", "boxes", "labels", "offsets", "masks")


def default_cache_root(cache_root: str | Path | None = None) -> Path:
    """The argument if given, else ``$WHEREWHAT_CACHE``, else ``~/.cache/wherewhat``."""
    if cache_root is not None:
        return Path(cache_root).expanduser()
    env = os.environ.get("WHEREWHAT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "wherewhat"


def cache_key(config: Mapping[str, Any], digits_fingerprint: str) -> str:
    """16 hex digits identifying (format version, config, digit pools)."""
    return json_fingerprint(
        {"format": FORMAT_VERSION, "config": config, "digits": digits_fingerprint}
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _share(path: Path, directory: bool = False) -> None:
    """Give ``mkstemp``/``mkdtemp`` output (0600/0700) the usual umask-based permissions, so a
    cache shared by several users or jobs stays readable."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it over ``path``."""
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object; a missing or malformed file raises ``DataFormatError`` naming it."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataFormatError(path, f"cannot read cache metadata ({exc}); {_hint(path)}") from exc
    if not isinstance(payload, dict):
        raise DataFormatError(path, f"expected a JSON object; {_hint(path)}")
    return payload


def _hint(path: Path) -> str:
    """Tell the user which folder to delete: the enclosing ``scatter-<key>`` folder."""
    folder = next((p for p in path.parents if p.name.startswith("scatter-")), path.parent)
    return f"delete {folder} to regenerate"


def write_split(
    split_dir: Path, arrays: Mapping[str, np.ndarray | None], meta: Mapping[str, Any]
) -> bool:
    """Write one split's arrays + ``meta.json`` into ``split_dir`` atomically.

    Returns ``True`` if this call created ``split_dir``, ``False`` if another process got there
    first (its copy is then kept and ours discarded).
    """
    split_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{split_dir.name}-", dir=split_dir.parent))
    try:
        for name, array in arrays.items():
            if name not in _ARRAY_FILES:
                raise ValueError(f"unknown array {name!r}; expected one of {_ARRAY_FILES}")
            if array is not None:
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
        with open(tmp / "meta.json", "w") as handle:
            json.dump(dict(meta), handle, indent=2, sort_keys=True)
        _share(tmp, directory=True)
        try:
            os.replace(tmp, split_dir)
        except OSError:
            if (split_dir / "meta.json").is_file():
                return False  # a concurrent writer finished first
            raise
        return True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataFormatError(path, f"cannot read array ({exc}); {_hint(path)}") from exc


def _expect(path: Path, array: np.ndarray, dtype: np.dtype, shape: tuple[int | None, ...]) -> None:
    ok = array.dtype == dtype and array.ndim == len(shape)
    ok = ok and all(
        want is None or got == want for got, want in zip(array.shape, shape, strict=True)
    )
    if not ok:
        wanted = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise DataFormatError(
            path,
            f"expected {np.dtype(dtype).name} array of shape {wanted}, found "
            f"{array.dtype.name} {tuple(array.shape)}; {_hint(path)}",
        )


def read_split(split_dir: Path, expected_meta: Mapping[str, Any]) -> dict[str, np.ndarray | None]:
    """Load and check one split written by :func:`write_split`.

    ``expected_meta`` must hold ``key``, ``split``, ``count``, ``image_size`` and ``with_masks``;
    any mismatch with ``meta.json`` or with the arrays raises ``DataFormatError`` naming the file.
    Returns ``images`` and ``masks`` memory-mapped read-only, the rest in memory.
    """
    meta_path = split_dir / "meta.json"
    meta = read_json(meta_path)
    for name, want in expected_meta.items():
        got = meta.get(name)
        if isinstance(want, tuple):
            got = tuple(got) if isinstance(got, list) else got
        if got != want:
            raise DataFormatError(
                meta_path, f"{name} is {got!r}, expected {want!r}; {_hint(meta_path)}"
            )
    count = int(expected_meta["count"])
    height, width = expected_meta["image_size"]
    out: dict[str, np.ndarray | None] = {}
    path = split_dir / "images.npy"
    out["images"] = _load_array(path, mmap=True)
    _expect(path, out["images"], np.dtype(np.uint8), (count, height, width))
    path = split_dir / "offsets.npy"
    offsets = _load_array(path, mmap=False)
    _expect(path, offsets, np.dtype(np.int64), (count + 1,))
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise DataFormatError(path, f"offsets must start at 0 and never decrease; {_hint(path)}")
    n_boxes = int(offsets[-1])
    out["offsets"] = offsets
    path = split_dir / "boxes.npy"
    out["boxes"] = _load_array(path, mmap=False)
    _expect(path, out["boxes"], np.dtype(np.float32), (n_boxes, 4))
    path = split_dir / "labels.npy"
    out["labels"] = _load_array(path, mmap=False)
    _expect(path, out["labels"], np.dtype(np.int64), (n_boxes,))
    out["masks"] = None
    if expected_meta["with_masks"]:
        path = split_dir / "masks.npy"
        out["masks"] = _load_array(path, mmap=True)
        _expect(path, out["masks"], np.dtype(np.uint8), (count, height, width))
    return out
