"""COCO and YOLO detection data: boxes round-trip from the files to the model input, crowd and
empty images are handled as documented, bad entries give errors naming file and entry, and an
SSD trains from a COCO fixture through the command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wherewhat.cli import main
from wherewhat.data.detection import (
    CocoDetectionDataModule,
    DetectionDataset,
    YoloDetectionDataModule,
    placement_of,
    read_coco,
    read_yolo,
    yolo_label_path,
)
from wherewhat.data.detection.placement import place_image
from wherewhat.errors import ConfigError, DataFormatError
from wherewhat.methods.lzu.saliency_cache import train_boxes_of

REPO = Path(__file__).resolve().parents[1]


def _photo(path: Path, width: int, height: int, boxes=()) -> None:
    """A dark image with a bright rectangle at each XYXY box (integer pixel edges)."""
    pixels = np.full((height, width, 3), 20, dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        pixels[int(y0) : int(y1), int(x0) : int(x1)] = 230
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _coco_fixture(root: Path, annotations: list[dict] | None = None) -> Path:
    """Three images (one without objects) of different sizes; categories with unsorted ids."""
    images = [
        {"id": 1, "file_name": "a.png", "width": 80, "height": 60},
        {"id": 2, "file_name": "sub/b.png", "width": 40, "height": 100},
        {"id": 7, "file_name": "empty.png", "width": 50, "height": 50},
    ]
    _photo(root / "images" / "a.png", 80, 60, [(10, 20, 30, 50), (50, 5, 70, 15)])
    _photo(root / "images" / "sub" / "b.png", 40, 100, [(4, 60, 36, 96)])
    _photo(root / "images" / "empty.png", 50, 50)
    if annotations is None:
        annotations = [
            {"id": 11, "image_id": 1, "category_id": 5, "bbox": [10, 20, 20, 30], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [50, 5, 20, 10]},
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [4, 60, 32, 36], "iscrowd": 1},
            {"id": 14, "image_id": 2, "category_id": 5, "bbox": [4, 60, 32, 36]},
        ]
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 5, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_boxes_crowd_empty_images_and_class_order(tmp_path):
    path = _coco_fixture(tmp_path)
    data = read_coco(path, tmp_path / "images")
    assert data.classes == ["cat", "dog"]  # sorted by category id: 3, 5
    a, b, empty = data.records
    assert a.size == (60, 80) and b.size == (100, 40)
    np.testing.assert_array_equal(a.boxes, [[10, 20, 30, 50], [50, 5, 70, 15]])
    assert a.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(b.boxes, [[4, 60, 36, 96]])  # the crowd one is not a target
    np.testing.assert_array_equal(b.crowd_boxes, [[4, 60, 36, 96]])
    assert len(empty.boxes) == 0 and empty.labels.dtype == np.int64  # kept, without objects


def test_coco_class_selection_orders_labels_and_counts_the_rest(tmp_path, caplog):
    path = _coco_fixture(tmp_path)
    with caplog.at_level(logging.WARNING):
        data = read_coco(path, tmp_path / "images", classes=["dog"])
    assert data.classes == ["dog"]
    assert [r.labels.tolist() for r in data.records] == [[0], [0], []]
    assert "1 boxes of classes not in `classes`" in caplog.text and "cat (1)" in caplog.text
    with pytest.raises(ConfigError, match=r"\['horse'\] are not in"):
        read_coco(path, tmp_path / "images", classes=["horse"])


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ({"id": 21, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]}, r"annotation 21 \(image 1\): unknown category_id 9"),
        ({"id": 22, "image_id": 4, "category_id": 5, "bbox": [1, 1, 5, 5]}, r"annotation 22: unknown image_id 4"),
        ({"id": 23, "image_id": 1, "category_id": 5, "bbox": [1, 1, 0, 5]}, r"annotation 23 \(image 1\): box .* has no area"),
        ({"id": 24, "image_id": 1, "category_id": 5, "bbox": [70, 1, 30, 5]}, r"annotation 24 \(image 1\): box .* leaves the 80x60 image"),
        ({"id": 25, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5]}, r"annotation 25 \(image 1\): bbox \[1, 1, 5\]"),
    ],
    ids=["unknown-category", "unknown-image", "no-area", "outside", "malformed"],
)  # fmt: skip
def test_coco_bad_entries_name_the_file_and_entry(tmp_path, annotation, message):
    path = _coco_fixture(tmp_path, [annotation])
    with pytest.raises(DataFormatError, match=message) as caught:
        read_coco(path, tmp_path / "images")
    assert str(caught.value).startswith(str(path))


def test_coco_drop_policy_counts_bad_boxes_and_missing_images_are_errors(tmp_path, caplog):
    bad = {"id": 23, "image_id": 1, "category_id": 5, "bbox": [1, 1, 0, 5]}
    good = {"id": 24, "image_id": 1, "category_id": 5, "bbox": [1, 1, 4, 5]}
    path = _coco_fixture(tmp_path, [bad, good])
    with caplog.at_level(logging.WARNING):
        data = read_coco(path, tmp_path / "images", bad_boxes="drop")
    assert len(data.records[0].boxes) == 1
    assert "dropped 1 bad boxes" in caplog.text and "annotation 23" in caplog.text
    (tmp_path / "images" / "sub" / "b.png").unlink()
    with pytest.raises(
        DataFormatError, match=r"1 images listed here are missing .*image 2 'sub/b.png'"
    ):
        read_coco(path, tmp_path / "images")
    path.write_text('{"images": [}')
    with pytest.raises(DataFormatError, match="not valid JSON") as caught:
        read_coco(path, tmp_path / "images")
    assert caught.value.path == path and caught.value.line == 1


def _yolo_fixture(root: Path) -> Path:
    """train: two images (one without a label file), val: one; names as a mapping."""
    _photo(root / "images" / "train" / "a.png", 80, 60, [(10, 20, 30, 50)])
    _photo(root / "images" / "train" / "b.png", 40, 40)
    _photo(root / "images" / "val" / "c.png", 64, 32, [(0, 0, 32, 16)])
    labels = root / "labels"
    (labels / "train").mkdir(parents=True)
    (labels / "val").mkdir(parents=True)
    # box (10, 20)-(30, 50) of 80x60, and a triangle polygon whose extent is (40,6)-(72,30)
    (labels / "train" / "a.txt").write_text(
        "1 0.25 0.5833333 0.25 0.5\n\n0 0.5 0.1 0.9 0.1 0.7 0.5\n"
    )
    (labels / "val" / "c.txt").write_text("0 0.25 0.25 0.5 0.5\n")
    path = root / "data.yaml"
    path.write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: cat, 1: dog}\n")
    return path


def test_yolo_boxes_polygons_and_images_without_labels(tmp_path, caplog):
    path = _yolo_fixture(tmp_path)
    with caplog.at_level(logging.INFO):
        train = read_yolo(path, "train")
    assert train.classes == ["cat", "dog"]
    a, b = train.records
    np.testing.assert_allclose(a.boxes, [[10, 20, 30, 50], [40, 6, 72, 30]], atol=1e-3)
    assert a.labels.tolist() == [1, 0] and a.size == (60, 80)
    assert len(b.boxes) == 0 and "1 of 2 images have no label file" in caplog.text
    assert (
        yolo_label_path(tmp_path / "images" / "val" / "c.png")
        == tmp_path / "labels" / "val" / "c.txt"
    )
    np.testing.assert_allclose(read_yolo(path, "val").records[0].boxes, [[0, 0, 32, 16]])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("2 0.5 0.5 0.1 0.1", r"class '2': expected an index in \[0, 2\)"),
        ("0 0.5 0.5 0.1", "expected 'class cx cy w h'"),
        ("0 0.5 nan 0.1 0.1", "expected numbers"),
        ("0 0.5 0.5 0.0 0.1", "has no area"),
    ],
    ids=["class", "count", "nan", "no-area"],
)
def test_yolo_bad_lines_name_the_label_file_and_line(tmp_path, line, message):
    path = _yolo_fixture(tmp_path)
    label = tmp_path / "labels" / "train" / "a.txt"
    label.write_text("1 0.25 0.5 0.25 0.5\n" + line + "\n")
    with pytest.raises(DataFormatError, match=message) as caught:
        read_yolo(path, "train")
    assert caught.value.path == label and caught.value.line == 2


@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_placed_image_and_mapped_boxes_agree(mode):
    size, target = (60, 100), (48, 64)
    box = np.array([[20, 10, 60, 40]], dtype=np.float32)
    pixels = np.zeros((*size, 3), dtype=np.uint8)
    pixels[10:40, 20:60] = 255
    placement = placement_of(size, target, mode)
    placed = place_image(Image.fromarray(pixels), placement, target, pad_value=0)
    assert placed.shape == (*target, 3)
    bright = np.argwhere(placed[:, :, 0] > 127)
    found = [bright[:, 1].min(), bright[:, 0].min(), bright[:, 1].max() + 1, bright[:, 0].max() + 1]
    np.testing.assert_allclose(placement.boxes(box)[0], found, atol=1.0)
    np.testing.assert_allclose(placement.original_boxes(placement.boxes(box)), box, atol=1e-4)
    if mode == "letterbox":  # aspect kept: 100x60 -> 64x38, centred with 5 rows above
        assert placement.content_size == (38, 64) and placement.offset_y == 5
        assert placed[:5].max() == 0


def test_coco_datamodule_batches_cache_and_train_boxes(tmp_path):
    path = _coco_fixture(tmp_path)
    module = CocoDetectionDataModule(
        train_annotations=str(path), train_images=str(tmp_path / "images"),
        image_size=[64, 64], batch_size=3, val_fraction=0.0,
    )  # fmt: skip
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (3, 3, 64, 64) and batch["image"].dtype == torch.float32
    order = batch["index"].tolist()
    # a: 80x60 -> x 0.8, y 0.8 + 8 rows; b: 40x100 -> 26x64 px (x 0.65 + 19 columns, y 0.64)
    expected = {0: [[8, 24, 24, 48], [40, 12, 56, 20]], 1: [[21.6, 38.4, 42.4, 61.44]], 2: []}
    for index, boxes in zip(order, batch["boxes"], strict=True):
        np.testing.assert_allclose(
            boxes.numpy().reshape(-1, 4), np.reshape(expected[index], (-1, 4)), atol=1e-4
        )
    cached = DetectionDataset(module.train_set.dataset, (64, 64), cache=True)
    cached.prepare()
    plain = DetectionDataset(module.train_set.dataset, (64, 64))
    assert all(torch.equal(cached[i]["image"], plain[i]["image"]) for i in range(3))
    boxes = train_boxes_of(module)  # what LZU's fixed saliency is computed from
    assert [len(b) for b in boxes] == [2, 1, 0]
    with pytest.raises(ConfigError, match="no test or val split given"):
        module.setup("test")


def test_datamodules_split_validation_and_refuse_half_given_splits(tmp_path):
    path = _coco_fixture(tmp_path)
    with pytest.raises(ConfigError, match="val_annotations and val_images go together"):
        CocoDetectionDataModule(train_annotations=str(path), train_images=str(tmp_path / "images"),
                                val_annotations=str(path))  # fmt: skip
    yolo = YoloDetectionDataModule(
        data_yaml=str(_yolo_fixture(tmp_path / "yolo")), image_size=[32, 32]
    )
    yolo.setup("fit")
    assert (len(yolo.train_set), len(yolo.val_set)) == (2, 1)
    yolo.setup("test")  # no test entry: the val split
    assert len(yolo.test_set) == 1 and yolo.class_names == ["cat", "dog"]


def test_ssd_fits_from_a_coco_fixture_through_the_cli(tmp_path):
    path = _coco_fixture(tmp_path)
    main([
        "fit", "--config", str(REPO / "configs" / "ssd" / "coco.yaml"),
        "--data.init_args.train_annotations", str(path),
        "--data.init_args.train_images", str(tmp_path / "images"),
        "--data.init_args.val_annotations", str(path),
        "--data.init_args.val_images", str(tmp_path / "images"),
        "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
        "--model.init_args.model.init_args.num_classes", "2",
        "--run.root", str(tmp_path / "runs"), "--run.name", "coco", "--run.progress", "none",
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    (run,) = (tmp_path / "runs" / "coco").iterdir()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2


def test_yolo_takes_photos_as_displayed_with_their_exif_orientation(tmp_path):
    displayed = np.zeros((80, 40, 3), dtype=np.uint8)  # 40 wide, 80 tall, as a viewer shows it
    displayed[0:20, 0:10] = 255
    raw = Image.fromarray(displayed).transpose(Image.Transpose.ROTATE_90)  # stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    (tmp_path / "images" / "train").mkdir(parents=True)
    raw.save(tmp_path / "images" / "train" / "a.jpg", exif=exif, quality=95)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.125 0.125 0.25 0.25\n")
    path = tmp_path / "data.yaml"
    path.write_text("train: images/train\nnames: [block]\n")
    data = read_yolo(path, "train")
    assert data.records[0].size == (80, 40)
    np.testing.assert_allclose(data.records[0].boxes, [[0, 0, 10, 20]], atol=1e-4)
    item = DetectionDataset(data, (80, 40), channels=1)[0]
    assert item["image"][0, 0:20, 0:10].mean() > 0.9 and item["image"][0, 30:, :].mean() < 0.1
