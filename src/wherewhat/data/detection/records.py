"""What a detection dataset holds once read: per image its file, size, boxes and classes.

Both readers (:mod:`.coco`, :mod:`.yolo`) produce a :class:`DetectionSet`; everything after them
(resizing, batching, the DataModule) knows only this. Boxes are XYXY float32 pixels of the
original image in the project's frame (origin at the top-left corner of the top-left pixel).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wherewhat.errors import ConfigError, DataFormatError

__all__ = [
    "DetectionRecord",
    "DetectionSet",
    "BAD_BOX_POLICIES",
    "BadBoxes",
    "checked_box",
    "class_mapping",
]

log = logging.getLogger(__name__)

BAD_BOX_POLICIES = ("error", "drop")
# A box may reach this far (pixels) past the image border before it counts as bad; annotation
# tools round, so boxes overshoot by a pixel now and then. Such boxes are clipped.
BORDER_TOLERANCE = 1.0
_LISTED = 5  # bad entries named in a "drop" warning before "... and N more"


@dataclass
class DetectionRecord:
    """One image: ``boxes`` (n, 4) float32 XYXY pixels, ``labels`` (n,) int64 in ``[0, K)``,
    ``crowd_boxes`` (m, 4) regions marked as crowds (never training targets), ``size`` (H, W)."""

    image_path: Path
    size: tuple[int, int]
    boxes: np.ndarray
    labels: np.ndarray
    crowd_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    entry: str = ""  # how the source names this image (COCO image id, YOLO label file)
    exif_transpose: bool = False  # boxes refer to the EXIF-rotated image (YOLO), not raw pixels


@dataclass
class DetectionSet:
    """The images of one split and the class names; ``labels`` index ``classes``."""

    records: list[DetectionRecord]
    classes: list[str]
    source: Path

    def __len__(self) -> int:
        return len(self.records)

    @property
    def n_boxes(self) -> int:
        return sum(len(record.boxes) for record in self.records)

    def describe(self) -> str:
        empty = sum(1 for record in self.records if len(record.boxes) == 0)
        crowd = sum(len(record.crowd_boxes) for record in self.records)
        return (
            f"{self.source}: {len(self.records)} images ({empty} without objects), "
            f"{self.n_boxes} boxes, {crowd} crowd regions, {len(self.classes)} classes"
        )


def class_mapping(
    available: Sequence[str], wanted: Sequence[str] | None, source: Path
) -> dict[str, int]:
    """Class name -> label: every available class in order, or ``wanted`` in its order.

    A wanted name the dataset does not have is a :class:`ConfigError` (a typo would otherwise
    train a class that never appears)."""
    if wanted is None:
        return {name: index for index, name in enumerate(available)}
    missing = [name for name in wanted if name not in set(available)]
    if missing:
        raise ConfigError(
            f"classes {missing} are not in {source} (it has {list(available)[:20]}"
            + (" ..." if len(available) > 20 else "")
            + ")"
        )
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"classes {list(wanted)}: each name may appear once")
    return {name: index for index, name in enumerate(wanted)}


class BadBoxes:
    """Collects boxes that cannot be used: raises on the first under ``policy="error"``, counts
    and warns once under ``policy="drop"`` (so nothing is dropped silently)."""

    def __init__(self, policy: str, source: Path):
        if policy not in BAD_BOX_POLICIES:
            raise ConfigError(f"bad_boxes={policy!r}: expected one of {BAD_BOX_POLICIES}")
        self.policy = policy
        self.source = source
        self.dropped: list[str] = []

    def report(self, path: Path, entry: str, problem: str, *, line: int | None = None) -> None:
        """A bad box in ``path`` (at ``line``), in the entry named ``entry`` (may be empty)."""
        message = f"{entry}: {problem}" if entry else problem
        if self.policy == "error":
            raise DataFormatError(
                path,
                message,
                line=line,
                hint="fix the entry, or pass bad_boxes='drop' to leave such boxes out (counted)",
            )
        self.dropped.append(f"{path}{'' if line is None else f':{line}'}: {message}")

    def warn(self) -> None:
        if not self.dropped:
            return
        shown = "; ".join(self.dropped[:_LISTED])
        more = (
            f"; ... and {len(self.dropped) - _LISTED} more" if len(self.dropped) > _LISTED else ""
        )
        log.warning("%s: dropped %d bad boxes: %s%s", self.source, len(self.dropped), shown, more)


def checked_box(
    x0: float, y0: float, x1: float, y1: float, size: tuple[int, int]
) -> tuple[list[float] | None, str]:
    """The box clipped to the image, or ``(None, why)`` when it is not finite, has no area, or
    lies more than ``BORDER_TOLERANCE`` px outside the ``(H, W)`` image."""
    height, width = size
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None, f"box {[x0, y0, x1, y1]} is not finite"
    if x1 <= x0 or y1 <= y0:
        return None, f"box {[x0, y0, x1, y1]} (XYXY px) has no area"
    tol = BORDER_TOLERANCE
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        return None, f"box {[x0, y0, x1, y1]} (XYXY px) leaves the {width}x{height} image"
    clipped = [max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return None, f"box {[x0, y0, x1, y1]} (XYXY px) has no area inside the image"
    return clipped, ""


def warn_ignored_classes(ignored: Counter, source: Path) -> None:
    """One warning naming the classes left out by a ``classes`` selection and their counts."""
    if ignored:
        listed = ", ".join(f"{name} ({count})" for name, count in ignored.most_common(10))
        log.warning(
            "%s: %d boxes of classes not in `classes` are not used: %s",
            source,
            sum(ignored.values()),
            listed,
        )


def as_box_array(boxes: list[list[float]]) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
