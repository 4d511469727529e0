"""The SSDIR benchmark's floor rows (raw-pixel probe) and its store of trained models."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tests.test_ssdir_eval import SceneList, make_scenes
from torch import nn

from wherewhat.methods.ssdir.evaluation import size_bucket_names
from wherewhat.methods.ssdir.floors import box_pixels, raw_pixel_probe
from wherewhat.methods.ssdir.model_store import ModelStore, TrainingRecord
from wherewhat.methods.ssdir.settings import SSDIRBenchSettings


def test_box_pixels_are_the_boxes_contents_with_labels_and_sides():
    scenes = make_scenes(6)
    pixels, labels, sides = box_pixels(SceneList(scenes), side=8, batch_size=4)
    expected_labels = torch.cat([s["labels"] for s in scenes])
    boxes = torch.cat([s["boxes"] for s in scenes])
    assert pixels.shape == (len(expected_labels), 64)
    assert torch.equal(labels, expected_labels)
    assert torch.equal(sides, (boxes[:, 2:] - boxes[:, :2]).max(1).values)
    # each square is filled with grey level (label + 1) / 10; resampled inside it, every pixel
    # is that value (the crop samples pixel centres strictly inside the box)
    assert torch.allclose(pixels, ((labels + 1) / 10)[:, None].expand_as(pixels), atol=1e-5)


def test_raw_pixel_probe_reads_grey_levels_and_counts_every_test_digit():
    train, test = SceneList(make_scenes(40)), SceneList(make_scenes(12, offset=5))
    out = raw_pixel_probe(train, test, side=4)
    assert out["accuracy"] > 0.9  # grey level = class: linearly readable
    n_test = sum(len(s["labels"]) for s in test.scenes)
    assert out["n_test"] == n_test
    names = size_bucket_names((12.0, 20.0, 30.0, 45.0))
    assert sum(out[f"n_size_{name}"] for name in names) == n_test
    assert out["n_size_le12"] > 0 and out["n_size_gt45"] == 0  # squares of 8-14 px


def test_box_pixels_refuses_scenes_without_boxes():
    empty = [{"image": torch.zeros(1, 8, 8), "boxes": torch.zeros(0, 4),
              "labels": torch.zeros(0, dtype=torch.long)}]  # fmt: skip
    with pytest.raises(ValueError, match="no ground-truth box"):
        box_pixels(SceneList(empty))


def test_model_store_round_trip_and_fingerprints(tmp_path):
    settings = SSDIRBenchSettings.preset("quick")
    store = ModelStore(tmp_path)
    model = nn.Linear(3, 2)
    record = TrainingRecord(seconds=12.5, cpu_seconds=20.0, steps=7, best=0.5)
    identity = store.detector_identity(settings, "class_agnostic")
    path = store.save("detector", "class_agnostic", 0, identity, model, record)
    assert path is not None and path.is_file()
    fresh = nn.Linear(3, 2)
    assert store.load("detector", "class_agnostic", 0, identity, fresh) == record
    assert torch.equal(fresh.weight, model.weight)
    # another seed, another detector setting or another store: nothing found
    assert store.load("detector", "class_agnostic", 1, identity, fresh) is None
    changed = dataclasses.replace(settings, detector_max_steps=settings.detector_max_steps + 1)
    assert store.load("detector", "class_agnostic", 0,
                      store.detector_identity(changed, "class_agnostic"), fresh) is None  # fmt: skip
    assert ModelStore(None).load("detector", "class_agnostic", 0, identity, fresh) is None
    # an SSDIR's identity holds its arm's arguments; SSDIR steps do not change the detector's
    a = store.ssdir_identity(settings, "glimpse_invariance", "nms")
    assert a["ssdir_args"]["what_input"] == "glimpse" and a["ssdir_args"]["invariance_weight"] > 0
    assert a != store.ssdir_identity(settings, "glimpse", "nms")
    longer = dataclasses.replace(settings, ssdir_max_steps=settings.ssdir_max_steps + 1)
    assert store.detector_identity(longer, "class_agnostic") == identity
    # float32 is not named (files stored before the setting existed stay valid); bf16 is
    assert "precision" not in identity
    bf16 = dataclasses.replace(settings, precision="bf16-mixed")
    assert store.detector_identity(bf16, "class_agnostic")["precision"] == "bf16-mixed"
    assert store.load("detector", "class_agnostic", 0,
                      store.detector_identity(bf16, "class_agnostic"), fresh) is None  # fmt: skip
    with pytest.raises(ValueError, match="precision"):
        dataclasses.replace(settings, precision="16-mixed").check()
    # a file that is not a stored model is named
    bad = store._path("detector", "class_agnostic", 2, identity)
    torch.save({"weights": {}}, bad)
    with pytest.raises(ValueError, match=bad.name):
        store.load("detector", "class_agnostic", 2, identity, fresh)
