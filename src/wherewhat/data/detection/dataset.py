"""A :class:`DetectionSet` as a torch ``Dataset`` of fixed-size inputs, and its collation.

Each item is one image resized into the model's input (:mod:`.placement`) with its boxes mapped:

- ``image`` float32 ``(C, H, W)`` in [0, 1];
- ``boxes`` ``(n, 4)`` XYXY input pixels, ``labels`` ``(n,)`` int64, ``crowd_boxes`` ``(m, 4)``;
- ``index`` (into the set), so predictions can be traced back to the file.

This is the batch layout the SSD, SSDIR and LZU tasks read (the one of scattered-MNIST scenes),
plus ``crowd_boxes``. With ``cache=True`` every image is decoded and resized once, in
:meth:`DetectionDataset.prepare`, and epochs read a uint8 array: decoding is then not repeated
per epoch (memory: N x H x W x C bytes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from wherewhat.data.detection.placement import Placement, place_image, placement_of
from wherewhat.data.detection.records import DetectionRecord, DetectionSet
from wherewhat.errors import ConfigError, DataFormatError

__all__ = ["DetectionDataset", "collate_detections"]

log = logging.getLogger(__name__)

_MODES = {1: "L", 3: "RGB"}
_REPORT_SECONDS = 10.0


class DetectionDataset(Dataset):
    """Fixed-size model inputs of a detection set (optionally a subset ``indices``).

    Args:
        dataset: the images and their boxes.
        image_size: ``(H, W)`` of the model input.
        channels: 1 (grey) or 3 (RGB).
        resize: ``letterbox`` (keep the aspect ratio, pad) or ``stretch``.
        pad_value: grey level of the padding, 0-255.
        cache: decode and resize every image once (:meth:`prepare`) and keep them in memory.
    """

    def __init__(
        self,
        dataset: DetectionSet,
        image_size: Sequence[int],
        channels: int = 3,
        resize: str = "letterbox",
        pad_value: int = 0,
        cache: bool = False,
        indices: Sequence[int] | None = None,
    ):
        if channels not in _MODES:
            raise ConfigError(f"channels={channels!r}: expected 1 (grey) or 3 (RGB)")
        if len(image_size) != 2 or min(image_size) < 1:
            raise ConfigError(f"image_size={list(image_size)!r}: expected [height, width] > 0")
        if not 0 <= int(pad_value) <= 255:
            raise ConfigError(f"pad_value={pad_value!r}: expected a grey level in [0, 255]")
        self.dataset = dataset
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.channels = channels
        self.resize = resize
        self.pad_value = int(pad_value)
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices)
        self.placements = [
            placement_of(dataset.records[int(i)].size, self.image_size, resize)
            for i in self.indices
        ]
        self.cache = cache
        self._pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def record(self, index: int) -> DetectionRecord:
        return self.dataset.records[int(self.indices[index])]

    def placement(self, index: int) -> Placement:
        return self.placements[index]

    def input_boxes(self) -> list[Tensor]:
        """Every item's boxes in input pixels, without decoding any image."""
        return [
            torch.from_numpy(self.placements[i].boxes(self.record(i).boxes))
            for i in range(len(self))
        ]

    def _decode(self, index: int) -> np.ndarray:
        record = self.record(index)
        try:
            with Image.open(record.image_path) as opened:
                image = ImageOps.exif_transpose(opened) if record.exif_transpose else opened
                if (image.height, image.width) != record.size:
                    raise DataFormatError(
                        record.image_path,
                        f"is {image.width}x{image.height} px but {record.entry} says "
                        f"{record.size[1]}x{record.size[0]}: its boxes would be misplaced",
                    )
                converted = image.convert(_MODES[self.channels])
        except (UnidentifiedImageError, OSError) as error:
            raise DataFormatError(record.image_path, f"cannot read the image: {error}") from None
        return place_image(converted, self.placements[index], self.image_size, self.pad_value)

    def prepare(self) -> None:
        """Decode and resize every image once into memory (``cache=True``); logs progress."""
        if not self.cache or self._pixels is not None:
            return
        pixels = np.empty((len(self), *self.image_size, self.channels), dtype=np.uint8)
        start = last = time.perf_counter()
        for index in range(len(self)):
            pixels[index] = self._decode(index)
            now = time.perf_counter()
            if now - last > _REPORT_SECONDS:
                last = now
                log.info("%s: decoded %d / %d images", self.dataset.source, index + 1, len(self))
        log.info(
            "%s: %d images decoded and resized in %.1f s (%.0f MB in memory)",
            self.dataset.source,
            len(self),
            time.perf_counter() - start,
            pixels.nbytes / 1e6,
        )
        self._pixels = pixels

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        if self.cache and self._pixels is None:
            self.prepare()
        pixels = self._pixels[index] if self._pixels is not None else self._decode(index)
        record, placement = self.record(index), self.placements[index]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 255,
            "boxes": torch.from_numpy(placement.boxes(record.boxes)),
            "labels": torch.from_numpy(record.labels.copy()),
            "crowd_boxes": torch.from_numpy(placement.boxes(record.crowd_boxes)),
            "index": int(self.indices[index]),
        }


def collate_detections(batch: Sequence[Mapping[str, Tensor | int]]) -> dict[str, object]:
    """Stack ``image`` (B, C, H, W) and ``index`` (B,); keep the box sets as lists."""
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "boxes": [item["boxes"] for item in batch],
        "labels": [item["labels"] for item in batch],
        "crowd_boxes": [item["crowd_boxes"] for item in batch],
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.long),
    }
