"""The landmark benchmark's schedule, compute records, refiner decision, release files, walk
resume and i.i.d. code bank (:mod:`wherewhat.methods.worldcomp2d.training_runs`,
:mod:`~wherewhat.models.landmark_release`)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from tests.test_code_bank import _items
from tests.test_worldcomp2d_task import TINY

from wherewhat.errors import ConfigError
from wherewhat.io import json_fingerprint
from wherewhat.methods.worldcomp2d.experiment import _refiner_decision
from wherewhat.methods.worldcomp2d.model import WorldComp2D
from wherewhat.methods.worldcomp2d.records import (
    Accuracy,
    CostsAndSpeed,
    ModelResult,
    TrainingRecord,
)
from wherewhat.methods.worldcomp2d.settings import STAGES, LandmarkBenchSettings
from wherewhat.methods.worldcomp2d.store import TrainedStore
from wherewhat.methods.worldcomp2d.task import WorldComp2DTask
from wherewhat.methods.worldcomp2d.training_runs import (
    _planned_epochs,
    baseline_budget_minutes,
    worldcomp2d_settings,
)
from wherewhat.models.landmark_baselines import PFLDRegressor
from wherewhat.models.landmark_release import load_release, write_release
from wherewhat.tasks.landmark_baselines import PFLDTask

TINY_WC = {**TINY, "crop_size": 64}


def test_schedule_runs_whole_when_it_fits_else_what_fits():
    s = LandmarkBenchSettings()
    # 10 steps/epoch at 0.1 s: 1 s per epoch; 2000 epochs need 2000 s.
    assert _planned_epochs(s, 2000, 0.1, 10, budget_s=3000) == 2000
    fits = _planned_epochs(s, 2000, 0.1, 10, budget_s=1000)
    assert 900 <= fits < 1000  # what fits, a little under the budget
    assert _planned_epochs(s, None, 0.1, 10, budget_s=1000) == fits  # baselines fill it
    assert _planned_epochs(dataclasses.replace(s, max_epochs=7), 2000, 0.1, 10, 1000) == 7


def test_training_record_compute_and_round_trip():
    record = TrainingRecord(
        steps_per_epoch=8, minutes=2.0, epochs=50, steps=400, schedule_epochs=200,
        seconds_per_step=0.5, step_gflop=20.0, extra_tflop=1.5, peak_gflops=100.0,
        curve=[{"epoch": 50, "minutes": 2.0, "nme": 0.07}], trained_at="t",
    )  # fmt: skip
    assert record.train_tflop == pytest.approx(400 * 20.0 / 1e3 + 1.5)
    assert record.step_fraction_of_peak == pytest.approx(20.0 / 0.5 / 100.0)
    assert record.fraction_of_schedule == pytest.approx(0.25)
    back = TrainingRecord.from_saved(json.loads(json.dumps(record.saved())), "t")
    assert back.reused and dataclasses.replace(back, reused=False) == record
    assert TrainingRecord(8, 1.0, 1, 8).train_tflop is None  # not counted: no total


def _costs(speed: float) -> CostsAndSpeed:
    return CostsAndSpeed(
        params=10, macs=10, ort_faces_per_s_1thread=speed, ort_faces_per_s_2threads=speed,
        torch_faces_per_s_1thread=speed, ort_ms_1thread=1.0, ort_ms_2threads=1.0,
        torch_ms_1thread=1.0, onnx_max_abs_diff=0.0, onnx_parity_error=None, onnx_exporter="x",
    )  # fmt: skip


def _row(nme: float, speed: float, runs: dict[str, TrainingRecord]) -> ModelResult:
    return ModelResult.summed(Accuracy(nme, 0.0, 0.5, 10), _costs(speed), runs, [])


def test_model_row_sums_its_runs():
    a = TrainingRecord(8, 1.0, 10, 80, step_gflop=10.0, trained_at="2026-01-01")
    b = TrainingRecord(8, 2.0, 5, 40, step_gflop=1.0, extra_tflop=2.0, trained_at="2026-02-01")
    row = _row(0.05, 100.0, {"encoder": a, "localizer": b})
    assert row.train_minutes == 3.0 and row.trained_at == "2026-02-01"
    assert row.train_tflop == pytest.approx(0.8 + 0.04 + 2.0)
    assert row.epochs == {"encoder": 10, "localizer": 5}


@pytest.mark.parametrize(("gain", "keeps"), [(0.0005, False), (0.002, True)])
def test_refiner_stays_on_the_default_path_only_if_it_pays(gain, keeps):
    run = TrainingRecord(8, 1.0, 1, 8, trained_at="t")
    models = {
        "worldcomp2d": _row(0.06 - gain, 30.0, {"encoder": run}),
        "worldcomp2d_no_refiner": _row(0.06, 300.0, {"encoder": run}),
    }
    decision, shipped = _refiner_decision(models, min_gain=0.001)
    assert decision["on_default_path"] is keeps
    assert shipped == ("worldcomp2d" if keeps else "worldcomp2d_no_refiner")
    expected = list(STAGES) if keeps else ["encoder", "localizer"]
    assert models["worldcomp2d"].default_path == expected
    assert decision["nme_gain"] == pytest.approx(gain)


@pytest.mark.parametrize("use_refiner", [False, True])
def test_release_file_round_trip_is_weights_only_and_exact(tmp_path, use_refiner):
    torch.manual_seed(0)
    model = WorldComp2D(**TINY_WC).eval()
    model.localizer.set_mean_shape(torch.rand(3, 68, 2) * 64)
    model.use_refiner = use_refiner
    weights, meta = write_release(tmp_path, "wc", model, {"validation": {"nme": 0.05}})
    assert torch.load(weights, weights_only=True)["use_refiner"] is use_refiner
    loaded = load_release(weights)
    crops = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(crops), model(crops), atol=0, rtol=0)
    assert json.loads(meta.read_text())["validation"]["nme"] == 0.05
    pfld = PFLDRegressor(width_mult=0.25, crop_size=64).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            load_release(write_release(tmp_path, "p", pfld, {})[0])(crops), pfld(crops)
        )


def test_release_loader_rejects_foreign_files(tmp_path):
    torch.save({"format": "other"}, tmp_path / "x.pt")
    with pytest.raises(ConfigError, match="x.pt: not a wherewhat landmark release"):
        load_release(tmp_path / "x.pt")
    spec = {"class_path": "os.system", "init_args": {}}
    torch.save({"format": "wherewhat-landmark-model-1", "spec": spec}, tmp_path / "y.pt")
    with pytest.raises(ConfigError, match="not a wherewhat network"):
        load_release(tmp_path / "y.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_release(tmp_path / "missing.pt")


def test_baseline_budget_is_worldcomp2d_training_time(tmp_path):
    settings = LandmarkBenchSettings()
    store = TrainedStore(tmp_path)
    with pytest.raises(ConfigError, match="--baseline-minutes"):
        baseline_budget_minutes(settings, store)
    fingerprint = json_fingerprint(worldcomp2d_settings(settings))
    for stage, minutes in zip(STAGES, (30.0, 10.0, 5.0), strict=True):
        checkpoint, meta = store.paths(stage)
        checkpoint.write_bytes(b"")
        meta.write_text(json.dumps({"fingerprint": fingerprint, "record": {"minutes": minutes}}))
    assert baseline_budget_minutes(settings, store) == pytest.approx(45.0)
    given = dataclasses.replace(settings, baseline_minutes=12.0)
    assert baseline_budget_minutes(given, store) == 12.0


def test_walk_resumes_mid_epoch_exactly_and_resets_at_the_next_epoch():
    task = WorldComp2DTask(WorldComp2D(**TINY_WC, refiner=False), stage="localizer")
    task.on_train_epoch_start()
    for _ in range(3):
        task.walk.step(4)
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)
    torch.manual_seed(1)
    expected = task.walk.step(4)

    resumed = WorldComp2DTask(WorldComp2D(**TINY_WC, refiner=False), stage="localizer")
    resumed.on_load_checkpoint(checkpoint)
    resumed.on_train_epoch_start()  # epoch 0 again: resumed mid-epoch
    assert resumed.walk.steps == 3
    torch.manual_seed(1)
    torch.testing.assert_close(resumed.walk.step(4), expected, atol=0, rtol=0)

    later = WorldComp2DTask(WorldComp2D(**TINY_WC, refiner=False), stage="localizer")
    later.on_load_checkpoint({**checkpoint, "fixation_walk": {**checkpoint["fixation_walk"],
                                                              "epoch": -1}})  # fmt: skip
    later.on_train_epoch_start()  # a checkpoint of an earlier epoch: the walk starts afresh
    assert later.walk.steps == 0 and len(later.walk.offset) == 0


def test_iid_bank_cuts_views_at_jittered_points_and_tells_them():
    torch.manual_seed(0)
    task = WorldComp2DTask(
        WorldComp2D(crop_size=80, refiner=False).eval(),
        stage="localizer", code_bank=2, jitter_mode="iid",
    )  # fmt: skip
    faces, items = _items({"scale_jitter": 0.0, "rotation_prob": 0.0})
    bank = task.build_bank(items, batch_size=2)
    told = bank.told_positions(torch.arange(5), 1)
    offsets = told - task.model.fixations
    assert offsets.abs().max() <= 5 and offsets.abs().max() > 0
    assert torch.equal(offsets, offsets.round())  # whole pixels: native views stay exact
    faces.set_epoch(1)
    crops = torch.stack([faces[i]["image"] for i in range(5)])
    with torch.no_grad():
        fresh = task.model.encode(task.model.observe(task.model.normalize(crops), told))
    torch.testing.assert_close(bank.codes[:, 1], fresh, atol=1e-4, rtol=0)
    walk = WorldComp2DTask(
        WorldComp2D(crop_size=80, refiner=False), stage="localizer", code_bank=2
    ).build_bank(items, batch_size=2)
    assert walk.told is None  # the reference: the localizer is told the nominal grid
    assert torch.equal(walk.told_positions(torch.arange(2), 0)[0], walk.fixations)


def test_channels_last_baseline_gives_the_same_loss():
    torch.manual_seed(0)
    plain = PFLDTask(PFLDRegressor(width_mult=0.25, crop_size=64))
    fast = PFLDTask(PFLDRegressor(width_mult=0.25, crop_size=64), channels_last=True)
    fast.model.load_state_dict(plain.model.state_dict())
    batch = {"image": torch.rand(2, 3, 64, 64), "points": torch.rand(2, 68, 2) * 64}
    torch.testing.assert_close(fast.training_loss(batch, 0), plain.training_loss(batch, 0))
    first_conv = next(p for p in fast.model.parameters() if p.ndim == 4)
    assert first_conv.is_contiguous(memory_format=torch.channels_last)
