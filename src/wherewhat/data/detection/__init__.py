"""Standard object-detection datasets: COCO and YOLO files, resized for a detector, batched.

``read_coco`` / ``read_yolo`` give a :class:`DetectionSet` (original pixels, checked entries);
:class:`DetectionDataset` makes fixed-size inputs; the DataModules plug them into configs.
"""

from wherewhat.data.detection.coco import read_coco
from wherewhat.data.detection.datamodule import (
    CocoDetectionDataModule,
    DetectionDataModule,
    YoloDetectionDataModule,
)
from wherewhat.data.detection.dataset import DetectionDataset, collate_detections
from wherewhat.data.detection.placement import Placement, placement_of
from wherewhat.data.detection.records import DetectionRecord, DetectionSet
from wherewhat.data.detection.yolo import read_yolo, yolo_label_path

__all__ = [
    "read_coco",
    "read_yolo",
    "yolo_label_path",
    "DetectionRecord",
    "DetectionSet",
    "DetectionDataset",
    "collate_detections",
    "Placement",
    "placement_of",
    "DetectionDataModule",
    "CocoDetectionDataModule",
    "YoloDetectionDataModule",
]
