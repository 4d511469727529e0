"""The landmark benchmark's saved trained models: reuse across invocations, fingerprints,
train-only runs, stage-by-stage resume (:mod:`wherewhat.methods.worldcomp2d.experiment`).

Real faces from ``../shared/data/faces68`` (skipped if absent); tiny models and one step per
training run; latency and figures are stubbed out (they do not depend on where the weights
come from), so the module runs in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import pytest
import torch

from wherewhat.errors import ConfigError
from wherewhat.methods.worldcomp2d import experiment as landmarks
from wherewhat.methods.worldcomp2d import training_runs
from wherewhat.methods.worldcomp2d.experiment import run_landmark_bench
from wherewhat.methods.worldcomp2d.markdown import landmark_markdown
from wherewhat.methods.worldcomp2d.records import CostsAndSpeed
from wherewhat.methods.worldcomp2d.settings import (
    ABLATIONS,
    STAGES,
    LandmarkBenchSettings,
    training_settings,
)
from wherewhat.models.landmark_release import load_release

TINY_WC = dict(
    encoder_channels=(8, 8, 16, 16, 16, 32),
    encoder_hidden=32,
    latent=16,
    localizer_hidden=(64, 64),
    refiner_width=6,
    refiner_groups=2,
    refiner_blocks=1,
)
FILES = [f"worldcomp2d-{s}" for s in STAGES] + ["pfld_baseline"]


def _network(class_path: str, **init_args) -> dict:
    """A task's ``model`` argument as the benchmark reads it from a config: a spec."""
    return {"class_path": class_path, "init_args": init_args}


def _costs_stub(name, model, crop, workdir, settings):
    return CostsAndSpeed(
        params=1, macs=1, ort_faces_per_s_1thread=1.0, ort_faces_per_s_2threads=1.0,
        torch_faces_per_s_1thread=1.0, ort_ms_1thread=1.0, ort_ms_2threads=1.0,
        torch_ms_1thread=1.0, onnx_max_abs_diff=None, onnx_parity_error=None,
        onnx_exporter="stub",
    )  # fmt: skip


@pytest.fixture(scope="module")
def settings(shared_data) -> LandmarkBenchSettings:
    root = shared_data / "faces68"
    if not root.is_dir():
        pytest.skip(f"no faces at {root}")
    wc = _network("wherewhat.methods.worldcomp2d.model.WorldComp2D", **TINY_WC)
    runs = {stage: {"model": {"model": wc}} for stage in STAGES}
    pfld = _network("wherewhat.models.landmark_baselines.PFLDRegressor", width_mult=0.25)
    runs["pfld_baseline"] = {"model": {"model": pfld}}
    return LandmarkBenchSettings.preset(
        "tour",
        faces_root=str(root),
        models=("worldcomp2d", "pfld_baseline"),
        runs=runs,
        max_steps=1,
        threads=1,
        data_overrides=dict(max_faces=24, batch_size=4, eval_batch_size=8, num_workers=0),
    )


@pytest.fixture(scope="module")
def patched():
    """No ONNX export, latency or figures; Lightning's warnings silenced."""
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        mp.setattr(landmarks, "_costs_and_speed", _costs_stub)
        mp.setattr(landmarks, "_figures", lambda *args: {})
        yield mp


@pytest.fixture(scope="module")
def first(settings, patched, tmp_path_factory):
    """(trained_dir, result) of a first run that trains every model and evaluates."""
    trained_dir = tmp_path_factory.mktemp("trained")
    result = run_landmark_bench(settings, log=lambda m: None, trained_dir=trained_dir)
    return trained_dir, result


@pytest.fixture
def no_training(monkeypatch):
    def refuse(task, *args, **kwargs):
        raise AssertionError(f"trained {getattr(task, 'stage', type(task).__name__)}")

    monkeypatch.setattr(training_runs, "_train", refuse)


@pytest.fixture
def fitted_runs(monkeypatch) -> list[str]:
    """Records which runs ``_train`` trains (WorldComp2D: the stage, else the task class)."""
    fitted: list[str] = []
    real_fit = training_runs._train

    def recording(task, *args, **kwargs):
        fitted.append(getattr(task, "stage", type(task).__name__))
        return real_fit(task, *args, **kwargs)

    monkeypatch.setattr(training_runs, "_train", recording)
    return fitted


def _entry(trained_dir, stem: str) -> dict:
    return json.loads((trained_dir / f"{stem}.json").read_text())


def test_first_run_saves_every_training_run(first, settings):
    trained_dir, result = first
    for stem in FILES:
        assert (trained_dir / f"{stem}.ckpt").is_file()
        entry = _entry(trained_dir, stem)
        model = "worldcomp2d" if stem.startswith("worldcomp2d") else stem
        assert entry["model"] == model
        assert entry["settings"] == training_settings(settings, model)
        assert entry["record"]["steps"] == 1
        assert entry["split"]["val_faces"] == result.split.val_faces
    assert not any(m.reused for m in result.models.values())
    # WorldComp2D's minutes are its stages'; without refiner, stages 1 + 2.
    stages = [result.training[s].minutes for s in STAGES]
    assert result.models["worldcomp2d"].train_minutes == pytest.approx(sum(stages))
    assert result.models["worldcomp2d_no_refiner"].train_minutes == pytest.approx(sum(stages[:2]))


def test_second_run_reuses_without_training_and_scores_the_same(first, settings, no_training):
    trained_dir, result = first
    again = run_landmark_bench(settings, log=lambda m: None, trained_dir=trained_dir)
    assert again.models.keys() == result.models.keys()
    for name, model in again.models.items():
        before = result.models[name]
        assert model.reused
        assert model.accuracy.nme == before.accuracy.nme  # the same weights, bit for bit
        assert model.train_minutes == before.train_minutes
        assert model.trained_at == before.trained_at
    assert all(r.reused for r in again.training.values())
    assert "reused" in landmark_markdown(again)


def test_other_settings_raise_naming_the_file_and_the_difference(first, settings, no_training):
    trained_dir, _ = first
    with pytest.raises(ConfigError, match=r"worldcomp2d-encoder\.json.*seed: 0 \(saved\) vs 1"):
        run_landmark_bench(
            dataclasses.replace(settings, seed=1), trained_dir=trained_dir, train_only=True
        )
    pfld = _network("wherewhat.models.landmark_baselines.PFLDRegressor", width_mult=0.5)
    runs = {**settings.runs, "pfld_baseline": {"model": {"model": pfld}}}
    other = dataclasses.replace(settings, models=("pfld_baseline",), runs=runs)
    with pytest.raises(ConfigError, match=r"pfld_baseline\.json.*width_mult: 0\.25 \(saved\)"):
        run_landmark_bench(other, trained_dir=trained_dir, train_only=True)


def test_train_only_resumes_at_the_first_missing_stage(first, settings, tmp_path, fitted_runs):
    trained_dir = tmp_path / "trained"
    shutil.copytree(first[0], trained_dir)
    (trained_dir / "worldcomp2d-localizer.json").unlink()  # as if stopped during stage 2
    encoder = _entry(trained_dir, "worldcomp2d-encoder")
    wc_only = dataclasses.replace(settings, models=("worldcomp2d",))
    result = run_landmark_bench(wc_only, log=lambda m: None, trained_dir=trained_dir,
                                train_only=True)  # fmt: skip
    # The refiner was saved, but it started from the old localizer: trained again too.
    assert fitted_runs == ["localizer", "refiner"]
    assert not result.models
    assert [result.training[s].reused for s in STAGES] == [True, False, False]
    assert _entry(trained_dir, "worldcomp2d-encoder") == encoder
    for stem in FILES:
        assert _entry(trained_dir, stem)["fingerprint"] == _entry(first[0], stem)["fingerprint"]


def test_retrain_replaces_saved_runs(first, settings, tmp_path, fitted_runs):
    trained_dir = tmp_path / "trained"
    shutil.copytree(first[0], trained_dir)
    other = dataclasses.replace(settings, models=("pfld_baseline",), seed=1)
    run_landmark_bench(other, log=lambda m: None, trained_dir=trained_dir, retrain=True,
                       train_only=True)  # fmt: skip
    assert fitted_runs == ["PFLDTask"]
    assert _entry(trained_dir, "pfld_baseline")["settings"]["seed"] == 1
    assert _entry(trained_dir, "worldcomp2d-encoder") == _entry(first[0], "worldcomp2d-encoder")


def test_train_only_needs_a_trained_dir(settings):
    with pytest.raises(ValueError, match="trained_dir"):
        run_landmark_bench(settings, train_only=True)


def test_runs_record_their_compute_and_the_default_path(first):
    _, result = first
    for record in result.training.values():
        assert record.step_gflop > 0 and record.peak_gflops > 0
        total = record.steps * record.step_gflop / 1e3 + record.extra_tflop
        assert record.train_tflop == pytest.approx(total)
    decision = result.refiner
    assert decision["default_model"] in ("worldcomp2d", "worldcomp2d_no_refiner")
    shipped = result.models[decision["default_model"]]
    assert shipped.default_path == (list(STAGES) if decision["on_default_path"] else
                                    list(STAGES[:2]))  # fmt: skip
    assert result.models["pfld_baseline"].default_path == ["pfld_baseline"]
    assert any(decision["default_model"] in t.target for t in result.targets)


def test_ablations_train_variants_next_to_the_saved_model(
    first, settings, tmp_path, fitted_runs, monkeypatch
):
    trained_dir = tmp_path / "trained"
    shutil.copytree(first[0], trained_dir)
    shifts = []
    recording = training_runs._train

    def noting_the_data(task, data, *args, **kwargs):
        shifts.append(data.shift_jitter)
        return recording(task, data, *args, **kwargs)

    monkeypatch.setattr(training_runs, "_train", noting_the_data)
    variants = dataclasses.replace(
        settings, models=("worldcomp2d",), ablations=("jitter_iid", "pairs_4", "box_noise")
    )
    result = run_landmark_bench(variants, log=lambda m: None, trained_dir=trained_dir,
                                release_dir=tmp_path / "release")  # fmt: skip
    # The model itself is reused; box_noise changes the localizer's data only.
    assert fitted_runs == ["localizer", "encoder", "localizer", "localizer"]
    assert shifts == [0.0, 0.0, 0.0, 0.15]
    assert set(result.ablations) == {"worldcomp2d_no_refiner", "jitter_iid", "pairs_4",
                                     "box_noise"}  # fmt: skip
    assert all(0 < value < 10 for value in result.ablations.values())
    assert not (trained_dir / "ablation-jitter_iid-encoder.json").exists()
    entry = _entry(trained_dir, "ablation-pairs_4-encoder")
    assert entry["settings"]["ablation"] == {"encoder": {"views_per_image": 4}}
    assert "Ablations" in landmark_markdown(result)
    released = json.loads((tmp_path / "release" / "worldcomp2d_box_noise.json").read_text())
    assert released["ablation"] == ABLATIONS["box_noise"]
    assert released["validation"]["nme"] == pytest.approx(result.ablations["box_noise"])
    assert set(released["run_fingerprints"]) == {"localizer"}
    assert all(released["run_fingerprints"].values())
    assert load_release(tmp_path / "release" / "worldcomp2d_box_noise.pt").use_refiner is False


def test_budgeted_stages_keep_snapshots_and_curves(settings, patched, tmp_path):
    runs = {run: {**args, "epochs": 5} if run in STAGES else args
            for run, args in settings.runs.items()}  # fmt: skip
    budgeted = dataclasses.replace(
        settings, models=("worldcomp2d",), runs=runs, max_steps=None, max_epochs=2,
        budget_minutes=30.0, calibration_steps=2, encoder_snapshots=(0.5,),
        encoder_curve=True, probe_epochs=1, probe_bank=2,
        data_overrides={**settings.data_overrides, "batched_views": True},
    )  # fmt: skip
    result = run_landmark_bench(budgeted, log=lambda m: None, trained_dir=tmp_path)
    encoder, localizer = result.training["encoder"], result.training["localizer"]
    assert encoder.epochs == 2 and encoder.fraction_of_schedule == pytest.approx(0.4)
    assert not encoder.curve  # no landmarks before the localizer
    assert [row["epoch"] for row in localizer.curve] == [1, 2]
    assert localizer.seconds_per_step > 0
    snapshot = torch.load(tmp_path / "worldcomp2d-encoder-at0.5.pt", weights_only=True)
    assert snapshot["epoch"] == 1
    assert [row["encoder_epoch"] for row in result.encoder_curve] == [1, 2]
    assert all(0 < row["nme"] < 10 for row in result.encoder_curve)


def test_mean_shape_floor_row_flags_models_that_do_not_clear_it(first):
    _, result = first
    floor = result.floor
    assert floor is not None and 0 < floor.nme < 10 and floor.num_faces == result.split.val_faces
    bar = (1 - result.settings.floor_margin) * floor.nme
    expected = [name for name, m in result.models.items() if m.accuracy.nme <= bar]
    assert result.valid_models == expected
    text = landmark_markdown(result)
    assert "mean shape (floor)" in text
    # One training step per run cannot beat the mean shape by 25 %: flagged.
    assert len(expected) < len(result.models) and "BELOW THE FLOOR" in text
