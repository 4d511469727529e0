"""COCO object-detection annotations (``instances_*.json`` + an image folder) -> DetectionSet.

The file is indexed with ``pycocotools`` (the same index its evaluator uses). COCO boxes are
``[x, y, width, height]`` in pixels from the top-left corner of the image, which is the
project's frame, so XYXY is ``[x, y, x + width, y + height]``.

What the reader does with each case:

- ``iscrowd: 1`` annotations become ``crowd_boxes``: never training targets.
- images without annotations are kept (they teach the detector what background looks like).
- labels follow the categories sorted by id (COCO's 80 classes -> 0..79), or ``classes`` (names)
  in the order given; boxes of other categories are counted in one warning.
- an annotation with an unknown ``category_id`` or ``image_id``, a malformed entry or a missing
  image file is a :class:`~wherewhat.errors.DataFormatError` naming the file and the entry; a box
  without area or outside the image too, unless ``bad_boxes="drop"`` (then counted and warned).
"""

from __future__ import annotations

import contextlib
import io
import json
import numbers
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wherewhat.data.detection.records import (
    BadBoxes,
    DetectionRecord,
    DetectionSet,
    as_box_array,
    checked_box,
    class_mapping,
    warn_ignored_classes,
)
from wherewhat.errors import DataFormatError

__all__ = ["read_coco"]

_LISTED = 5


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataFormatError(path, "no such file (expected COCO instances JSON)")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataFormatError(path, f"not valid JSON: {error.msg}", line=error.lineno) from None
    if not isinstance(data, dict):
        raise DataFormatError(path, f"expected a JSON object, found {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataFormatError(path, f"expected a list under '{key}'")
    if not isinstance(data.setdefault("annotations", []), list):
        raise DataFormatError(path, "expected a list under 'annotations'")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_entries(path: Path, data: dict[str, Any]) -> None:
    """Every image, category and annotation has the fields the reader needs."""
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not {"id", "file_name", "width", "height"} <= set(image):
            raise DataFormatError(
                path, f"images[{index}]: expected 'id', 'file_name', 'width' and 'height'"
            )
        if (
            not (_is_number(image["width"]) and _is_number(image["height"]))
            or min(image["width"], image["height"]) <= 0
        ):
            raise DataFormatError(
                path, f"image {image['id']}: width/height must be positive numbers"
            )
    for index, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not {"id", "name"} <= set(category):
            raise DataFormatError(path, f"categories[{index}]: expected 'id' and 'name'")
    names = [category["name"] for category in data["categories"]]
    doubled = sorted({name for name in names if names.count(name) > 1})
    if doubled:
        raise DataFormatError(path, f"categories: names {doubled} appear more than once")
    for index, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict) or not {"image_id", "category_id", "bbox"} <= set(
            annotation
        ):
            raise DataFormatError(
                path, f"annotations[{index}]: expected 'image_id', 'category_id' and 'bbox'"
            )
        annotation.setdefault("id", f"#{index}")  # pycocotools indexes annotations by id


def _coco_index(data: dict[str, Any]):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress lines
        coco.createIndex()
    return coco


def read_coco(
    annotations: str | Path,
    images_root: str | Path,
    classes: Sequence[str] | None = None,
    bad_boxes: str = "error",
) -> DetectionSet:
    """Read a COCO detection split.

    Args:
        annotations: the ``instances_*.json`` file.
        images_root: the folder that ``file_name`` entries are relative to.
        classes: class names to train, in label order (None: every category, sorted by id).
        bad_boxes: ``"error"`` (default) or ``"drop"`` (counted in one warning).
    """
    path, root = Path(annotations), Path(images_root)
    data = _load_json(path)
    _check_entries(path, data)
    if not root.is_dir():
        raise DataFormatError(root, f"no such folder (the images of {path})")
    coco = _coco_index(data)
    categories = sorted(coco.cats.values(), key=lambda category: category["id"])
    label_of_name = class_mapping([c["name"] for c in categories], classes, path)
    name_of_id = {category["id"]: category["name"] for category in categories}

    for annotation in data["annotations"]:
        entry = f"annotation {annotation['id']}"
        if annotation["image_id"] not in coco.imgs:
            raise DataFormatError(path, f"{entry}: unknown image_id {annotation['image_id']!r}")
        if annotation["category_id"] not in name_of_id:
            raise DataFormatError(
                path,
                f"{entry} (image {annotation['image_id']}): unknown category_id "
                f"{annotation['category_id']!r}; categories has ids {sorted(name_of_id)[:20]}",
            )

    missing = [
        f"image {image['id']} '{image['file_name']}'"
        for image in data["images"]
        if not (root / image["file_name"]).is_file()
    ]
    if missing:
        listed = ", ".join(missing[:_LISTED]) + (" ..." if len(missing) > _LISTED else "")
        raise DataFormatError(
            path, f"{len(missing)} images listed here are missing from {root}: {listed}"
        )

    bad, ignored = BadBoxes(bad_boxes, path), Counter()
    records = []
    for image in data["images"]:
        size = (int(image["height"]), int(image["width"]))
        boxes, labels, crowd = [], [], []
        for annotation in coco.imgToAnns.get(image["id"], []):
            entry = f"annotation {annotation['id']} (image {image['id']})"
            bbox = annotation["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
                bad.report(path, entry, f"bbox {bbox!r}: expected [x, y, width, height]")
                continue
            x, y, w, h = (float(v) for v in bbox)
            box, problem = checked_box(x, y, x + w, y + h, size)
            if box is None:
                bad.report(path, entry, problem)
                continue
            if annotation.get("iscrowd", 0):
                crowd.append(box)
                continue
            name = name_of_id[annotation["category_id"]]
            if name not in label_of_name:
                ignored[name] += 1
                continue
            boxes.append(box)
            labels.append(label_of_name[name])
        records.append(
            DetectionRecord(
                image_path=root / image["file_name"],
                size=size,
                boxes=as_box_array(boxes),
                labels=np.asarray(labels, dtype=np.int64),
                crowd_boxes=as_box_array(crowd),
                entry=f"{path}: image {image['id']}",
            )
        )
    bad.warn()
    warn_ignored_classes(ignored, path)
    return DetectionSet(records=records, classes=list(label_of_name), source=path)
