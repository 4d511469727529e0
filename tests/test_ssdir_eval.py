"""SSDIR evaluation glue, records on disk, figures and the tour section.

The evaluation runs on hand-built scenes (bright squares whose grey level encodes the class)
with a fake encoder that finds the squares itself, so every number is known: exact boxes give
AP 1 and a separable z_what gives probe accuracy 1; shifting one class's boxes by half a side
(IoU 1/3) makes exactly those objects unmatched and their digits missed.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader, Dataset

from wherewhat.io import png_bytes
from wherewhat.methods.ssdir.evaluation import (
    SceneObjects,
    coverage_counts,
    encode_scenes,
    evaluate_ssdir,
)
from wherewhat.methods.ssdir.experiment import run_ssdir_bench
from wherewhat.methods.ssdir.figures import (
    glimpse_panels,
    reconstruction_panels,
    ssdir_figures,
    zwhat_tsne,
)
from wherewhat.methods.ssdir.markdown import ssdir_markdown
from wherewhat.methods.ssdir.model import SSDIR
from wherewhat.methods.ssdir.object_records import SSDIRRecordsWriter, read_records, write_records
from wherewhat.methods.ssdir.records import (
    SSDIRArm,
    SSDIRBenchResult,
    assemble_result,
    merge_results,
    regime_block,
    summarize,
)
from wherewhat.methods.ssdir.settings import SSDIRBenchSettings
from wherewhat.models.ssd import SSDDetector
from wherewhat.report.html import png_size
from wherewhat.report.tour import SECTIONS
from wherewhat.tour import PAGE_MODULES, load_pages

SIDE = 64
NUM_CLASSES = 10


# -- hand-built scenes and a fake encoder ------------------------------------------------------


def make_scenes(n: int, offset: int = 0) -> list[dict]:
    """Scenes with 2-3 non-touching squares of side 8-14 px; class k is drawn at grey level
    (k + 1) / 10 and the classes cycle, so every class appears."""
    rng = np.random.default_rng(offset)
    spots = [(4, 4), (4, 36), (36, 4), (36, 36)]  # top-left corners of 4 quadrants
    scenes, k = [], offset
    for _ in range(n):
        image = torch.zeros(1, SIDE, SIDE)
        boxes, labels = [], []
        for y, x in [spots[i] for i in rng.permutation(4)[: rng.integers(2, 4)]]:
            side = int(rng.integers(8, 15))
            label = k % NUM_CLASSES
            k += 1
            image[0, y : y + side, x : x + side] = (label + 1) / 10
            boxes.append([x, y, x + side, y + side])
            labels.append(label)
        scenes.append(
            {"image": image, "boxes": torch.tensor(boxes, dtype=torch.float32),
             "labels": torch.tensor(labels)}
        )  # fmt: skip
    return scenes


class SceneList(Dataset):
    def __init__(self, scenes: list[dict]):
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict:
        return self.scenes[index]


class FakeEncoder(nn.Module):
    """Finds the squares: box = their exact extent, z_what = one-hot class (+ small noise),
    score 0.9; ``shift_class`` moves that class's boxes right by half their side;
    ``duplicate`` returns every object twice (the copy scored 0.6). Reconstruction = image / 2.
    """

    present_threshold = 0.5

    def __init__(self, shift_class: int | None = None, duplicate: bool = False):
        super().__init__()
        self.shift_class = shift_class
        self.duplicate = duplicate
        self.calls_in_training_mode = 0

    def encode(self, images: torch.Tensor, score_threshold: float | None = None) -> list[dict]:
        self.calls_in_training_mode += int(self.training)
        generator = torch.Generator().manual_seed(0)
        records = []
        for image in images:
            grey = image[0].numpy()
            components, _ = ndimage.label(grey > 0)
            boxes, classes = [], []
            for rows, cols in ndimage.find_objects(components):
                label = round(float(grey[rows.start, cols.start]) * 10) - 1
                box = [cols.start, rows.start, cols.stop, rows.stop]
                if label == self.shift_class:
                    half = (cols.stop - cols.start) / 2
                    box = [box[0] + half, box[1], box[2] + half, box[3]]
                boxes.append(box)
                classes.append(label)
            boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            scores = torch.full((len(boxes),), 0.9)
            z = (
                torch.nn.functional.one_hot(
                    torch.tensor(classes, dtype=torch.long), NUM_CLASSES
                ).float()
                * 3.0
            )
            z = z + 0.1 * torch.randn(z.shape, generator=generator)
            if self.duplicate:
                boxes, z = torch.cat([boxes, boxes]), torch.cat([z, z])
                scores = torch.cat([scores, torch.full((len(scores),), 0.6)])
            keep = scores >= (score_threshold or 0.0)
            records.append(
                {"boxes": boxes[keep], "scores": scores[keep],
                 "labels": torch.ones(int(keep.sum()), dtype=torch.long),
                 "z_what": z[keep], "depth": torch.zeros(int(keep.sum()))}
            )  # fmt: skip
        return records

    def forward(self, images: torch.Tensor) -> dict:
        return {"reconstruction": images / 2}


class PerClassFakeEncoder(FakeEncoder):
    """:class:`FakeEncoder` behind a per-class detector: each object's detector label is its
    class + 1, but ``wrong_class``'s objects get the next class's label."""

    def __init__(self, wrong_class: int):
        super().__init__()
        self.detector = SimpleNamespace(num_classes=NUM_CLASSES)
        self.wrong_class = wrong_class

    def encode(self, images: torch.Tensor, score_threshold: float | None = None) -> list[dict]:
        records = super().encode(images, score_threshold)
        for record in records:
            classes = record["z_what"].argmax(-1)  # one-hot x 3 + small noise
            wrong = classes == self.wrong_class
            record["labels"] = torch.where(wrong, (classes + 1) % NUM_CLASSES, classes) + 1
        return records


@pytest.fixture(scope="module")
def splits() -> tuple[SceneList, SceneList]:
    return SceneList(make_scenes(30, offset=0)), SceneList(make_scenes(12, offset=5))


# -- evaluation glue ---------------------------------------------------------------------------


def test_exact_boxes_and_separable_z_what_give_perfect_scores(splits):
    train, test = splits
    model = FakeEncoder().train()
    result = evaluate_ssdir(model, train, test, batch_size=5)
    m = result.metrics
    assert m["ap50"] == pytest.approx(1.0) and m["ap"] == pytest.approx(1.0)
    assert m["probe_accuracy"] == 1.0 and m["probe_f1"] == 1.0
    n_test_gt = sum(len(s["boxes"]) for s in test.scenes)
    assert m["test_objects"] == m["test_matched"] == m["test_gt"] == n_test_gt
    assert m["test_unmatched"] == m["test_gt_missed"] == m["test_duplicates"] == 0
    assert m["train_gt"] == m["train_matched"] == sum(len(s["boxes"]) for s in train.scenes)
    # reconstruction = image / 2, so the per-pixel MSE is mean(image^2) / 4
    images = torch.stack([s["image"] for s in test.scenes])
    assert m["recon_mse"] == pytest.approx(float((images**2).mean() / 4), rel=1e-5)
    assert m["min_iou"] == 0.5 and m["present_threshold"] == 0.5
    assert model.training and model.calls_in_training_mode == 0  # evaluated in eval mode
    assert "detector_label_accuracy" not in m  # no per-class detector here
    # Per size bucket of the matched digits: every bucket perfect, and together all of them.
    sides = torch.cat([(s["boxes"][:, 2:] - s["boxes"][:, :2]).max(1).values for s in test.scenes])
    edges = torch.tensor([12.0, 20.0, 30.0, 45.0])
    counts = torch.bincount(torch.searchsorted(edges, sides), minlength=5).tolist()
    names = ["le12", "12_20", "20_30", "30_45", "gt45"]
    assert [m[f"probe_n_size_{n}"] for n in names] == counts
    assert sum(counts) == m["probe_n_test"]
    for name, count in zip(names, counts, strict=True):
        value = m[f"probe_accuracy_size_{name}"]
        assert value == 1.0 if count else value != value  # an empty bucket: NaN


def test_detector_digit_accuracy_counts_wrong_labels_on_test_and_train_objects(splits):
    train, test = splits
    m = evaluate_ssdir(PerClassFakeEncoder(wrong_class=2), train, test, batch_size=5).metrics

    def expected(scenes: SceneList) -> float:
        labels = torch.cat([s["labels"] for s in scenes.scenes])
        return 1.0 - float((labels == 2).float().mean())

    assert m["detector_label_accuracy"] == pytest.approx(expected(test))
    assert m["detector_label_accuracy_train"] == pytest.approx(expected(train))
    assert m["detector_label_accuracy"] < 1.0


def test_size_buckets_are_named_and_cut_by_their_upper_edge():
    from wherewhat.methods.ssdir.evaluation import (
        SceneObjects,
        matched_box_sides,
        size_bucket_names,
    )

    assert size_bucket_names([12, 20.5]) == ["le12", "12_20.5", "gt20.5"]
    with pytest.raises(ValueError, match="increase"):
        size_bucket_names([20, 12])
    gt = torch.tensor([[0.0, 0.0, 12.0, 10.0], [50.0, 50.0, 60.0, 75.0]])
    objects = SceneObjects(
        boxes=[torch.tensor([[50.0, 50.0, 60.0, 74.0], [1.0, 0.0, 12.0, 10.0], [90.0, 90, 99, 99]])],
        gt_boxes=[gt], gt_labels=[torch.tensor([3, 7])],
    )  # fmt: skip
    matches = objects.match(0.5)  # the third box overlaps nothing: unmatched, left out
    assert matches.matched.tolist() == [True, True, False]
    assert matched_box_sides(objects, matches).tolist() == [25.0, 12.0]


def test_shifted_boxes_are_counted_unmatched_and_their_digits_missed(splits):
    train, test = splits
    shifted = 3
    n_shifted = sum(int((s["labels"] == shifted).sum()) for s in test.scenes)
    assert n_shifted > 0
    m = evaluate_ssdir(FakeEncoder(shift_class=shifted), train, test).metrics
    assert m["test_unmatched"] == m["test_gt_missed"] == n_shifted
    assert m["test_unmatched_fraction"] == pytest.approx(n_shifted / m["test_objects"])
    assert m["ap50"] < 1.0
    assert m["probe_accuracy"] == 1.0  # the other classes still separate perfectly
    assert m["probe_n_test"] == m["test_objects"] - n_shifted
    # the reference's protocol (any overlap) labels the shifted objects too
    loose = evaluate_ssdir(FakeEncoder(shift_class=shifted), train, test, min_iou=0.0).metrics
    assert loose["test_unmatched"] == 0 and loose["probe_n_test"] == loose["test_objects"]


def test_duplicates_are_counted_and_lower_scored_copies_do_not_hurt_ap50(splits):
    train, test = splits
    result = evaluate_ssdir(FakeEncoder(duplicate=True), train, test)
    m = result.metrics
    assert m["test_duplicates"] == m["test_gt"]
    assert m["ap50"] == pytest.approx(1.0)
    assert m["n_detections"] == 2 * m["test_gt"]
    assert result.test_objects.n_objects == 2 * m["test_gt"]  # both copies score >= 0.5


def test_coverage_counts_on_a_hand_case():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [21, 20, 31, 30], [60, 60, 70, 70]])
    objects = SceneObjects(boxes=[boxes], scores=[torch.tensor([0.9, 0.8, 0.7, 0.6])],
                           gt_boxes=[gt], gt_labels=[torch.tensor([1, 2, 3])])  # fmt: skip
    assert coverage_counts(objects, 0.5) == {"n_gt": 3, "n_gt_missed": 1, "n_duplicates": 1}


def test_probe_is_skipped_with_a_reason_when_nothing_matches(splits):
    train, test = splits

    class Nowhere(FakeEncoder):
        def encode(self, images, score_threshold=None):
            return [{**r, "boxes": r["boxes"] + 100} for r in super().encode(images)]

    m = evaluate_ssdir(Nowhere(), train, test).metrics
    assert math.isnan(m["probe_accuracy"]) and "no matched objects" in m["probe_skipped"]
    assert m["test_gt_missed"] == m["test_gt"] and m["ap50"] == 0.0


def test_a_malformed_batch_raises_with_its_index(splits):
    _, test = splits
    loader = [{"image": torch.zeros(2, 1, SIDE, SIDE), "boxes": [torch.zeros(0, 4)] * 2,
               "labels": [torch.zeros(0)] * 2}, {"image": torch.zeros(2, 1, SIDE, SIDE)}]  # fmt: skip
    with pytest.raises(ValueError, match="scene batch 1"):
        encode_scenes(FakeEncoder(), loader)
    with pytest.raises(ValueError, match="no scene"):
        encode_scenes(FakeEncoder(), DataLoader(SceneList([]), batch_size=2))


# -- records ----------------------------------------------------------------------------------


def _records() -> list[dict]:
    torch.manual_seed(0)
    out = []
    for n in (3, 0, 1):
        out.append(
            {"boxes": torch.rand(n, 4) * 100, "scores": torch.rand(n),
             "labels": torch.randint(1, 11, (n,)), "z_what": torch.randn(n, 8),
             "depth": torch.randn(n), "anchor_index": torch.randint(0, 600, (n,))}
        )  # fmt: skip
    return out


@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_records_round_trip_exactly(tmp_path, suffix):
    records = _records()
    path = write_records(records, tmp_path / f"records{suffix}", scene_ids=[7, 8, 9])
    back = read_records(path)
    assert [r["scene"] for r in back] == [7, 8, 9]
    for original, loaded in zip(records, back, strict=True):
        assert set(loaded) == {"scene", *original}
        for key, value in original.items():
            assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, key
            assert torch.equal(loaded[key], value), key
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_records_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\.json or \.pt"):
        write_records(_records(), tmp_path / "records.csv")
    bad = [{k: v for k, v in _records()[0].items() if k != "z_what"}]
    with pytest.raises(ValueError, match="missing"):
        write_records(bad, tmp_path / "r.json")
    short = [{**_records()[0], "depth": torch.zeros(1)}]
    with pytest.raises(ValueError, match="3 boxes but 1"):
        write_records(short, tmp_path / "r.json")


def test_records_writer_callback_writes_scene_indices(tmp_path):
    class Predictor(pl.LightningModule):
        def predict_step(self, batch, batch_idx):
            return [{"boxes": torch.full((1, 4), float(i)), "scores": torch.ones(1),
                     "z_what": torch.zeros(1, 2), "depth": torch.zeros(1)} for i in batch]  # fmt: skip

    writer = SSDIRRecordsWriter("out/records.json")
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[writer], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.predict(Predictor(), DataLoader(list(range(5)), batch_size=2), return_predictions=False)
    assert writer.written == tmp_path / "out" / "records.json"
    back = read_records(writer.written)
    assert [r["scene"] for r in back] == [0, 1, 2, 3, 4]
    assert [float(r["boxes"][0, 0]) for r in back] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="json or .pt"):
        SSDIRRecordsWriter("records.txt")


# -- figures ----------------------------------------------------------------------------------


def test_figures_are_pngs_of_the_documented_size(splits):
    _, test = splits
    images = torch.stack([s["image"] for s in test.scenes[:2]])
    boxes = [s["boxes"] for s in test.scenes[:2]]
    fig = reconstruction_panels(images, images / 2, boxes, scores=[torch.ones(len(b)) for b in
                                boxes], gt_boxes=boxes, panel_in=1.8)  # fmt: skip
    assert png_size(png_bytes(fig)) == (540, round(2 * (1.8 + 0.22) * 100))
    crops = torch.rand(5, 1, 16, 16)
    fig = glimpse_panels(crops, crops, labels=[0, 1, -1, 3, 4], scores=[0.9] * 5, ncols=4)
    assert png_size(png_bytes(fig)) == (320, round(2 * (2 * 0.8 + 0.22) * 100))
    labels = np.array([0] * 10 + [1] * 10 + [-1] * 5)
    z = np.random.default_rng(0).normal(size=(25, 4)) + labels[:, None] * 5
    fig = zwhat_tsne(z, labels, perplexity=5)  # a real (small) t-SNE
    assert png_size(png_bytes(fig)) == (460, 400)


def test_ssdir_figures_on_a_tiny_real_ssdir():
    torch.manual_seed(0)
    detector = SSDDetector(image_size=(SIDE, SIDE), width_mult=0.125)
    model = SSDIR(detector, z_what_size=8, what_hidden=1, glimpse_size=8, decoder_width=16,
                  present_threshold=0.0, max_objects=3)  # fmt: skip
    scenes = make_scenes(2)
    images = torch.stack([s["image"] for s in scenes])
    figures = ssdir_figures(
        model, images, [s["boxes"] for s in scenes], [s["labels"] for s in scenes],
        z_what=torch.randn(12, 8), labels=torch.arange(12) % 3,
    )  # fmt: skip
    assert set(figures) == {"reconstructions", "glimpses", "tsne"}
    width, height = png_size(png_bytes(figures["glimpses"]))
    assert width == round(6 * 0.8 * 100)  # 2 scenes x 3 objects, one row
    assert model.training  # mode restored


# -- tour section and benchmark pieces ----------------------------------------------------------


def test_section_is_registered():
    load_pages()
    assert "wherewhat.methods.ssdir.tour" in PAGE_MODULES
    assert "ssdir" in SECTIONS
    entry = SECTIONS.ordered(["ssdir"])[0]
    assert entry.order == 30 and entry.fn.__module__ == "wherewhat.methods.ssdir.tour"


# Every number an arm row of a results file holds besides evaluate_ssdir's metrics.
ARM_ROW = {
    "threads": 2, "speed_batch_size": 32, "scenes_per_s_batch1": 50.0,
    "scenes_per_s_batch32": 150.0, "latency_ms_batch1": 20.0, "latency_ms_batch32": 200.0,
    "params": 1000, "params_trainable": 500, "params_detector": 500, "macs_per_scene": 2e6,
    "macs_detector_per_scene": 1e6, "rendered_per_scene": 3.0, "detector_minutes": 5.0,
    "ssdir_minutes": 5.0, "train_minutes": 10.0, "train_cpu_minutes": 20.0,
    "eval_seconds": 1.0, "detector_steps": 10, "detector_best_val_map50": None,
    "ssdir_steps": 10, "ssdir_best_val_loss": None,
}  # fmt: skip


def made_up_arm(**row) -> SSDIRArm:
    """An arm with the given numbers (``variant``, ``seed``, ``dedup``, metrics, ...)."""
    return SSDIRArm.from_json({**ARM_ROW, **row})


def test_bench_summary_and_markdown_on_made_up_arms():
    def arm(variant, seed, acc):
        return made_up_arm(
            **{"variant": variant, "seed": seed, "dedup": "nms", "ap50": 0.9, "ap": 0.6,
               "probe_accuracy": acc, "recon_mse": 0.01, "train_minutes": 10.0,
               "params": 1000, "params_trainable": 500, "params_detector": 500,
               "macs_per_scene": 2e6, "macs_detector_per_scene": 1e6}
        )  # fmt: skip

    arms = [arm("class_agnostic", 0, 0.90), arm("class_agnostic", 1, 0.94)]
    summary = summarize(arms, ["class_agnostic"])["class_agnostic"].to_json()
    assert summary["probe_accuracy"] == pytest.approx(0.92)
    assert summary["probe_accuracy_std"] == pytest.approx(np.std([0.90, 0.94], ddof=1))
    settings = SSDIRBenchSettings.preset("quick", seeds=(0, 1))
    result = assemble_result(arms, [], settings, seconds=60.0, threads=2)
    text = ssdir_markdown(result)
    assert (
        "0.92 ± 0.028" in text
        and "| probe_accuracy_class_agnostic | >= 0.93 | 0.920 | no |" in text
    )
    with pytest.raises(ValueError, match="unknown SSDIR arm"):
        SSDIRBenchSettings.preset("quick", variants=("nope",)).check()
    with pytest.raises(ValueError, match="preset"):
        SSDIRBenchSettings.preset("huge")


def test_headline_takes_the_best_label_free_arm_and_the_faithful_arm_and_floors_warn():
    def arm(variant, seed, acc, **extra):
        return made_up_arm(variant=variant, seed=seed, dedup="nms", ap50=0.9, ap=0.6,
                           probe_accuracy=acc, recon_mse=0.01, **extra)  # fmt: skip

    arms = [
        arm("class_agnostic", 0, 0.70), arm("glimpse_invariance", 0, 0.94),
        arm("glimpse", 0, 0.88), arm("per_class", 0, 0.91, detector_label_accuracy=0.93),
        arm("per_class_eq4", 0, 0.92, detector_label_accuracy=0.93),
    ]  # fmt: skip
    variants = tuple(a.variant for a in arms)
    settings = SSDIRBenchSettings.preset("quick", variants=variants)
    result = assemble_result(arms, [], settings, seconds=60.0, threads=2)
    result.floors = {
        "raw_pixels": {"accuracy": 0.87, "side": 16, "accuracy_size_le12": 0.5, "n_size_le12": 3},
        "untrained_encoder": {"class_agnostic": {"probe_accuracy": 0.68},
                              "glimpse_invariance": {"probe_accuracy": 0.80}},
    }  # fmt: skip
    headline = result.headline
    assert headline.best_label_free_arm == "glimpse_invariance"
    assert headline.probe_accuracy_class_agnostic == pytest.approx(0.94)
    assert headline.label_free_margin_over_raw_pixels == pytest.approx(0.07)
    assert headline.probe_accuracy_per_class is None  # default scenes: not the paper's regime
    text = ssdir_markdown(result)
    # the cells arm is within 0.05 of its untrained floor: named loudly; the glimpse one is not
    assert "WARNING: arm class_agnostic does not clear its floor" in text
    assert "arm glimpse_invariance does not" not in text
    assert "floor: raw 16x16 pixels" in text and "| floor: raw pixels | - | - | 0.500 (3) |" in text
    document = result.to_json()
    assert document["arm_settings"]["glimpse_invariance"]["ssdir_args"]["what_input"] == "glimpse"
    assert document["arm_settings"]["per_class_eq4"]["detector"] == "per_class"
    again = SSDIRBenchResult.from_json(json.loads(json.dumps(document)))
    assert again.floors == result.floors and again.headline == headline


def test_the_faithful_arm_comes_from_the_regime_run_and_a_default_run_carries_it():
    def arm(variant, acc, recon):
        return made_up_arm(variant=variant, seed=0, dedup="nms", ap50=0.9, ap=0.6,
                           probe_accuracy=acc, recon_mse=recon,
                           detector_label_accuracy=0.98)  # fmt: skip

    arms = [arm("per_class", 0.95, 0.010), arm("per_class_eq4", 0.97, 0.011)]
    variants = ("per_class", "per_class_eq4")
    default = assemble_result(
        arms, [], SSDIRBenchSettings.preset("quick", variants=variants), 60.0, 2
    )
    assert default.faithful is None and default.headline.probe_accuracy_per_class is None
    with pytest.raises(ValueError, match="ssdir.json: expected a regime run"):
        regime_block(default, "ssdir.json")
    regime = assemble_result(
        arms, [], SSDIRBenchSettings.preset("quick", variants=variants, scenes="regime"), 60.0, 2
    )
    regime.floors = {"raw_pixels": {"accuracy": 0.86},
                     "untrained_encoder": {"per_class_eq4": {"probe_accuracy": 0.5}}}  # fmt: skip
    assert regime.headline.probe_accuracy_per_class == pytest.approx(0.97)  # eq. 4 arm first
    assert regime.headline.recon_mse_per_class == pytest.approx(0.011)
    block = regime_block(regime, "ssdir_regime.json")
    assert block["arm"] == "per_class_eq4" and block["seeds"] == [0]
    assert block["detector_label_accuracy"] == pytest.approx(0.98)
    assert (block["raw_pixel_floor"], block["untrained_encoder_floor"]) == (0.86, 0.5)

    label_free = assemble_result(
        [arm("glimpse", 0.93, 0.003)], [],
        SSDIRBenchSettings.preset("quick", variants=("glimpse",)), 60.0, 2,
    )  # fmt: skip
    label_free.regime = block
    headline = label_free.headline
    assert headline.probe_accuracy_per_class == pytest.approx(0.97)
    assert headline.recon_mse_per_class == pytest.approx(0.011)
    assert headline.probe_accuracy_class_agnostic == pytest.approx(0.93)
    text = ssdir_markdown(label_free)
    assert "| per_class_eq4 (seeds [0]) | 0.97 | 0.011 | 0.98 | - | 0.9 |" in text
    assert "| floor: untrained encoder | 0.5 |" in text
    assert "| probe_accuracy_per_class | >= 0.97 | 0.970 | yes |" in text
    again = SSDIRBenchResult.from_json(json.loads(json.dumps(label_free.to_json())))
    assert again.regime == block and again.headline == headline
    later = assemble_result(
        [made_up_arm(variant="glimpse", seed=1, dedup="nms", probe_accuracy=0.95)], [],
        SSDIRBenchSettings.preset("quick", variants=("glimpse",), seeds=(1,)), 60.0, 2,
    )  # fmt: skip
    assert merge_results(again, later).regime == block


def test_results_of_two_runs_merge_into_the_pooled_seeds():
    def arm(seed, acc, dedup="nms"):
        return made_up_arm(
            **{"variant": "class_agnostic", "seed": seed, "dedup": dedup, "ap50": 0.9,
               "ap": 0.6, "probe_accuracy": acc, "recon_mse": 0.01, "train_minutes": 10.0 + seed,
               "params": 1000, "params_trainable": 500, "params_detector": 500,
               "macs_per_scene": 2e6, "macs_detector_per_scene": 1e6, "test_duplicates": 0,
               "test_unmatched_fraction": 0.0, "rendered_per_scene": 3.0,
               "ssdir_minutes": 5.0}
        )  # fmt: skip

    def run(seeds, ablation, arms, ablation_arms=()):
        settings = SSDIRBenchSettings.preset(
            "quick", seeds=seeds, dedup_ablation=ablation
        )  # JSON round trip: what the results file holds
        stored = assemble_result(arms, ablation_arms, settings, 60.0, 2)
        return SSDIRBenchResult.from_json(json.loads(json.dumps(stored.to_json())))

    first = run((0,), ("nms", "none"), [arm(0, 0.90)], [arm(0, 0.90), arm(0, 0.91, "none")])
    later = run((1, 2), (), [arm(1, 0.94), arm(2, 0.92)])
    merged = merge_results(first, later).to_json()
    assert merged["seeds"] == [0, 1, 2] and merged["settings"]["seeds"] == [0, 1, 2]
    assert merged["probe_accuracy_class_agnostic"] == pytest.approx(0.92)
    assert merged["probe_accuracy_class_agnostic_std"] == pytest.approx(0.02)
    assert merged["train_minutes_one_seed"] == pytest.approx(11.0)
    assert [a["dedup"] for a in merged["dedup_ablation"]] == ["nms", "none"]
    assert merged["settings"]["dedup_ablation"] == ["nms", "none"] and merged["seconds"] == 120.0
    with pytest.raises(ValueError, match=r"\(variant, seed\)"):
        merge_results(first, run((0,), (), [arm(0, 0.5)]))
    glimpse = made_up_arm(variant="glimpse", seed=0, dedup="nms", probe_accuracy=0.95)
    extra = assemble_result([glimpse], [], SSDIRBenchSettings.preset(
        "quick", seeds=(0,), dedup_ablation=(), variants=("glimpse",)), 30.0, 2)  # fmt: skip
    extra.floors = {"untrained_encoder": {"glimpse": {"probe_accuracy": 0.6}}}
    first.floors = {"raw_pixels": {"accuracy": 0.8}}
    pooled = merge_results(first, extra)
    assert pooled.settings.variants == ("class_agnostic", "glimpse")
    assert pooled.headline.best_label_free_arm == "glimpse"
    assert set(pooled.floors) == {"raw_pixels", "untrained_encoder"}
    other = run((1,), (), [arm(1, 0.94)])
    other.settings.ssdir_max_steps += 1
    with pytest.raises(ValueError, match="ssdir_max_steps"):
        merge_results(first, other)


@pytest.mark.slow
def test_run_ssdir_bench_end_to_end_on_a_tiny_setting():
    settings = SSDIRBenchSettings.preset(
        "quick", n_train=32, n_test=8, batch_size=8, detector_max_steps=3, ssdir_max_steps=3,
        validate=True, val_fraction=0.25,
        dedup_ablation=("nms", "none"), tsne_points=50, figure_scenes=2,
    )  # fmt: skip
    run = run_ssdir_bench(settings=settings, log=lambda message: None)
    result = {**run.to_json(), "figures": run.figures}
    assert result["seeds"] == [0] and result["probe_accuracy_per_class"] is None
    assert [a["dedup"] for a in result["dedup_ablation"]] == ["nms", "none"]
    assert {"class_agnostic-reconstructions"} <= set(result["figures"])
    arm = result["arms"][0]
    assert arm["ssdir_steps"] == 3 and arm["detector_best_val_map50"] is not None
    # one validation per epoch, each read after the detector computed its AP
    assert arm["detector_val_map50_curve"] == [pytest.approx(arm["detector_best_val_map50"])]
    assert arm["train_tflop"] > 0 and 0 < arm["ssdir_step_fraction_of_peak"] < 1
    assert 0 < arm["detector_loop_fraction_of_peak"] < 1
    assert 0 <= result["floors"]["raw_pixels"]["accuracy"] <= 1
    assert set(result["floors"]["untrained_encoder"]) == {"class_agnostic"}


@pytest.mark.slow
def test_arms_share_their_seeds_detector_and_a_stored_run_is_reused(tmp_path):
    settings = SSDIRBenchSettings.preset(
        "quick", n_train=32, n_test=8, batch_size=8, detector_max_steps=3, ssdir_max_steps=4,
        variants=("class_agnostic", "glimpse_invariance"), tsne_points=50, figure_scenes=2,
        probe_curve_scenes=(16, 8),
    )  # fmt: skip
    logged: list[str] = []
    first = run_ssdir_bench(settings=settings, log=logged.append, models_dir=tmp_path,
                            floors=False)  # fmt: skip
    assert sum("detector ready" in line for line in logged) == 1  # one detector, two arms
    assert {a.variant for a in first.arms} == {"class_agnostic", "glimpse_invariance"}
    assert len(list(tmp_path.glob("detector-*.pt"))) == 1
    assert len(list(tmp_path.glob("ssdir-*.pt"))) == 2
    for arm in first.arms:  # one epoch of 4 steps: one point of the probe curve
        assert [step for step, _ in arm.metrics["ssdir_probe_curve"]] == [4]
    again = run_ssdir_bench(settings=settings, log=lambda message: None, models_dir=tmp_path,
                            floors=False)  # fmt: skip
    for a, b in zip(first.arms, again.arms, strict=True):  # stored: same weights and records
        assert a.ssdir_minutes == b.ssdir_minutes and a.detector_minutes == b.detector_minutes
        for key in ("probe_accuracy", "recon_mse", "ap50", "test_objects"):
            assert a.metrics[key] == pytest.approx(b.metrics[key], nan_ok=True)


def test_probe_accuracy_per_pyramid_level_when_the_model_reports_levels(splits):
    from types import SimpleNamespace

    class LevelledEncoder(FakeEncoder):
        """Objects of even classes come from level-0 anchors, odd classes from level 1."""

        def __init__(self):
            super().__init__()
            self.detector = SimpleNamespace(anchor_level=torch.arange(NUM_CLASSES) % 2,
                                            num_classes=1)  # fmt: skip

        def encode(self, images, score_threshold=None):
            records = super().encode(images, score_threshold)
            for record in records:
                record["anchor_index"] = record["z_what"].argmax(1)  # the object's class
            return records

    train, test = splits
    m = evaluate_ssdir(LevelledEncoder(), train, test, batch_size=5).metrics
    labels = torch.cat([s["labels"] for s in test.scenes])
    assert m["probe_n_level_0"] == int((labels % 2 == 0).sum())
    assert m["probe_n_level_1"] == int((labels % 2 == 1).sum())
    assert m["probe_accuracy_level_0"] == m["probe_accuracy_level_1"] == 1.0
    assert "probe_n_level_0" not in evaluate_ssdir(FakeEncoder(), train, test).metrics
