"""YOLO detection data (``data.yaml``, ``images/``, ``labels/*.txt``) -> DetectionSet.

The layout Ultralytics and most labelling tools export::

    data.yaml           path: .   train: images/train   val: images/val   names: [cat, dog]
    images/train/a.jpg
    labels/train/a.txt  one object per line: class cx cy w h (fractions of the image size)

- ``path`` (optional) is the dataset root, relative to the YAML file's folder; each split is a
  folder of images, a ``.txt`` file listing images, or a list of either. ``names`` is a list or
  a ``{index: name}`` mapping.
- An image's label file is its path with the last ``images`` folder replaced by ``labels`` and
  the suffix by ``.txt``. No label file, or an empty one, means an image without objects (the
  format's way to give background images); their number is logged.
- Photos are taken as displayed (EXIF orientation applied), as YOLO tools label them.
- A line with more than 5 values is a segmentation polygon (``class x1 y1 x2 y2 ...``); its box is
  the polygon's extent.
- A line that does not parse, or a class index outside ``names``, is a
  :class:`~wherewhat.errors.DataFormatError` naming the label file and line; a box without area
  or outside the image too, unless ``bad_boxes="drop"`` (then counted and warned).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from wherewhat.data.detection.records import (
    BadBoxes,
    DetectionRecord,
    DetectionSet,
    as_box_array,
    checked_box,
    class_mapping,
    warn_ignored_classes,
)
from wherewhat.data.face_formats import parse_decimal
from wherewhat.errors import ConfigError, DataFormatError

__all__ = ["read_yolo", "yolo_label_path", "yolo_splits", "YOLO_SPLITS"]

log = logging.getLogger(__name__)

YOLO_SPLITS = ("train", "val", "test")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING = (5, 6, 7, 8)  # orientations that swap width and height
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def yolo_label_path(image_path: Path) -> Path:
    """``.../images/x/a.jpg`` -> ``.../labels/x/a.txt`` (the last ``images`` folder)."""
    parts = list(image_path.parts)
    for index in range(len(parts) - 2, -1, -1):
        if parts[index] == "images":
            parts[index] = "labels"
            return Path(*parts).with_suffix(".txt")
    raise DataFormatError(image_path, "no 'images' folder in the path to find its 'labels' twin")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataFormatError(path, "no such file (expected a YOLO data.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        raise DataFormatError(path, f"not valid YAML: {error}", line=line) from None
    if not isinstance(data, dict):
        raise DataFormatError(path, "expected a mapping with 'train', 'val' and 'names'")
    return data


def yolo_splits(data_yaml: str | Path) -> list[str]:
    """The splits ``data_yaml`` gives (a non-empty ``train`` / ``val`` / ``test`` entry)."""
    data = _read_yaml(Path(data_yaml))
    return [split for split in YOLO_SPLITS if data.get(split)]


def _class_names(path: Path, data: dict[str, Any]) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise DataFormatError(path, f"names: expected indices 0..{len(keys) - 1}, found {keys}")
        names = [names[k] for k in keys]
    if not isinstance(names, list) or not names:
        raise DataFormatError(path, "names: expected a list of class names or {index: name}")
    names = [str(name) for name in names]
    if "nc" in data and data["nc"] != len(names):
        raise DataFormatError(path, f"nc is {data['nc']} but names lists {len(names)} classes")
    return names


def _split_images(path: Path, root: Path, entry: Any, split: str) -> list[Path]:
    """The image files of one split entry (folder, .txt list, or a list of those), sorted."""
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in entries:
        where = root / str(item)
        if where.is_dir():
            images += sorted(p for p in where.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        elif where.is_file() and where.suffix == ".txt":
            for number, line in enumerate(where.read_text(encoding="utf-8").splitlines(), 1):
                line = line.strip()
                if line:
                    image = Path(line) if Path(line).is_absolute() else where.parent / line
                    if not image.is_file():
                        raise DataFormatError(where, f"image {line!r} does not exist", line=number)
                    images.append(image)
        else:
            raise DataFormatError(
                path, f"{split}: {where} is neither a folder of images nor a .txt list"
            )
    if not images:
        raise DataFormatError(path, f"{split}: no images ({', '.join(map(str, entries))})")
    return images


def _image_size(image_path: Path) -> tuple[int, int]:
    """``(H, W)`` as displayed: YOLO tools normalise labels by the EXIF-rotated image."""
    try:
        with Image.open(image_path) as image:  # reads the header only
            width, height = image.size
            if image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING:
                width, height = height, width
    except (UnidentifiedImageError, OSError) as error:
        raise DataFormatError(image_path, f"cannot read the image: {error}") from None
    return height, width


def _label_line(
    label_path: Path, number: int, line: str, n_classes: int, size: tuple[int, int]
) -> tuple[int, tuple[float, float, float, float]]:
    """One label line -> (class index, XYXY box in pixels, unchecked)."""
    tokens = line.split()
    if len(tokens) < 5 or (len(tokens) > 5 and len(tokens) % 2 == 0):
        raise DataFormatError(
            label_path,
            f"expected 'class cx cy w h' or 'class x1 y1 x2 y2 ...', found {line[:60]!r}",
            line=number,
        )
    if not tokens[0].isdigit() or int(tokens[0]) >= n_classes:
        raise DataFormatError(
            label_path,
            f"class {tokens[0]!r}: expected an index in [0, {n_classes}) (data.yaml names)",
            line=number,
        )
    values = [parse_decimal(token) for token in tokens[1:]]
    if any(value is None for value in values):
        raise DataFormatError(label_path, f"expected numbers, found {line[:60]!r}", line=number)
    height, width = size
    if len(values) == 4:
        cx, cy, w, h = values
        box = (
            (cx - w / 2) * width,
            (cy - h / 2) * height,
            (cx + w / 2) * width,
            (cy + h / 2) * height,
        )
    else:
        xs, ys = values[0::2], values[1::2]
        box = (min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height)
    return int(tokens[0]), box


def read_yolo(
    data_yaml: str | Path,
    split: str,
    classes: Sequence[str] | None = None,
    bad_boxes: str = "error",
) -> DetectionSet:
    """Read one split (``train``, ``val`` or ``test``) of a YOLO dataset.

    Args:
        data_yaml: the dataset's ``data.yaml``.
        split: which entry of the YAML to read.
        classes: class names to train, in label order (None: ``names`` as listed).
        bad_boxes: ``"error"`` (default) or ``"drop"`` (counted in one warning).
    """
    if split not in YOLO_SPLITS:
        raise ConfigError(f"split={split!r}: expected one of {YOLO_SPLITS}")
    path = Path(data_yaml)
    data = _read_yaml(path)
    names = _class_names(path, data)
    root = path.parent / str(data.get("path") or ".")
    if not data.get(split):
        raise DataFormatError(path, f"no '{split}' entry")
    label_of_name = class_mapping(names, classes, path)
    bad, ignored = BadBoxes(bad_boxes, path), Counter()
    records, without_labels = [], 0
    for image_path in _split_images(path, root, data[split], split):
        size = _image_size(image_path)
        label_path = yolo_label_path(image_path)
        boxes, labels = [], []
        if not label_path.is_file():
            without_labels += 1
            lines: list[str] = []
        else:
            lines = label_path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            index, raw = _label_line(label_path, number, line, len(names), size)
            box, problem = checked_box(*raw, size)
            if box is None:
                bad.report(label_path, "", problem, line=number)
                continue
            if names[index] not in label_of_name:
                ignored[names[index]] += 1
                continue
            boxes.append(box)
            labels.append(label_of_name[names[index]])
        records.append(
            DetectionRecord(
                image_path=image_path,
                size=size,
                boxes=as_box_array(boxes),
                labels=np.asarray(labels, dtype=np.int64),
                entry=str(label_path),
                exif_transpose=True,
            )
        )
    if without_labels:
        log.info(
            "%s (%s): %d of %d images have no label file: images without objects",
            path,
            split,
            without_labels,
            len(records),
        )
    bad.warn()
    warn_ignored_classes(ignored, path)
    return DetectionSet(records=records, classes=list(label_of_name), source=path)
