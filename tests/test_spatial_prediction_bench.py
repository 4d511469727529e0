"""Spatial Prediction benchmark pipeline: random-init floor, validity rule, compute per arm,
child-process arms, merging results files (tiny CIFAR-like arrays, a tiny CNN)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from wherewhat.methods.spatial_prediction.arm_processes import arm_child_main
from wherewhat.methods.spatial_prediction.arms import build_task, model_step_flops, run_random_init
from wherewhat.methods.spatial_prediction.experiment import run_bench
from wherewhat.methods.spatial_prediction.markdown import bench_markdown, validity_banner
from wherewhat.methods.spatial_prediction.records import (
    ArmResult,
    EarlierRun,
    FaceArmResult,
    bench_result,
    check_mergeable,
    clears_floor,
    floor_margins,
    load_earlier_run,
    pool,
    valid_arms,
)
from wherewhat.methods.spatial_prediction.settings import (
    ARM_CHOICES,
    BenchSettings,
    arm_name,
    parse_arm,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blob_images(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(n, size, size, 3)`` uint8: a disc of a random colour on noise; its class (4) is the
    quadrant it sits in, which pooled features of an untrained network barely see."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    ys, xs = np.mgrid[:size, :size] + 0.5
    images = rng.integers(0, 90, (n, 1, 1, 3)) + rng.integers(0, 30, (n, size, size, 3))
    half = size / 2
    for i in range(n):
        r = rng.uniform(3, 6)
        cx = rng.uniform(r, half - r) + half * (labels[i] % 2)
        cy = rng.uniform(r, half - r) + half * (labels[i] // 2)
        images[i][(xs - cx) ** 2 + (ys - cy) ** 2 <= r**2] = rng.integers(120, 256, 3)
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory) -> str:
    x_train, y_train = blob_images(96, 0)
    x_test, y_test = blob_images(48, 1)
    path = tmp_path_factory.mktemp("sp-bench") / "blobs.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


def tiny_settings(npz: str, **changes) -> BenchSettings:
    """One epoch of a width-4 tiny CNN on 96 images: seconds per arm."""
    s = BenchSettings.preset(
        "tour", cifar_npz=npz, epochs=1, batch_size=32, train_images=None, test_images=None,
        corruption_images=24, readout_train_images=48, readout_test_images=24, readout_steps=5,
        reorder_images=8, arms=("simclr", "simclr_sp"), seeds=(0,),
    )  # fmt: skip
    s.task_args = {**s.task_args, "backbone": "tiny_cnn", "backbone_width": 4, "sp_local_size": 8,
                   "sp_hidden_dim": 16, "knn_train_limit": 48, "knn_test_limit": 24}  # fmt: skip
    return dataclasses.replace(s, **changes)


def fake_arm(name: str, seed: int, linear: float, **changes) -> ArmResult:
    """An arm record with the given linear probe and placeholder everything else."""
    values = dict(
        arm=name, base=name.split("_")[0], sp_lambda=0.5 if "_sp" in name else 0.0, seed=seed,
        linear_probe=linear, linear_probe_converged=True, knn=linear, corruption_accuracy=linear,
        reorder_accuracy_2x2=0.3, reorder_accuracy_3x3=0.2, sp_error_ratio=0.9,
        robustness={"clean": linear, "mean": linear}, where={"readout": {"ratio": 0.9}},
        epoch_seconds=10.0, epoch_cpu_seconds=10.0, train_minutes=1.0, train_cpu_minutes=1.0,
        worker_cpu_minutes=0.0, eval_minutes=0.1, eval_cpu_minutes=0.1,
        history=[{"epoch": 0.0, "seconds": 10.0, "knn_acc": linear}], step_losses={},
        epochs=1, steps=10, sp_local_size=16 if "_sp" in name else None,
    )  # fmt: skip
    return ArmResult(**{**values, **changes})


# -- the validity rule ------------------------------------------------------------------------


def test_an_arm_is_valid_only_at_or_above_random_init_plus_the_margin():
    assert clears_floor(0.53, 0.28, 0.25)
    assert not clears_floor(0.529, 0.28, 0.25)
    assert not clears_floor(math.nan, 0.28, 0.25) and not clears_floor(0.9, None, 0.25)
    # Lower is better (landmark NME): beat the untrained backbone by the margin.
    assert clears_floor(0.16, 0.175, 0.01, higher_is_better=False)
    assert not clears_floor(0.17, 0.175, 0.01, higher_is_better=False)
    linear = {"simclr": 0.60, "simclr_sp": 0.40, "byol": None}
    assert valid_arms(linear, 0.28, 0.25) == ["simclr"]
    margins = floor_margins(linear, 0.28, 0.25)
    assert margins["simclr"] == pytest.approx(0.07) and margins["simclr_sp"] == pytest.approx(-0.13)
    assert math.isnan(margins["byol"])


def test_gains_are_read_only_from_a_valid_base():
    s = BenchSettings.preset("full")
    floor = [fake_arm("random_init", 0, 0.28)]
    valid = bench_result([fake_arm("simclr", 0, 0.60), fake_arm("simclr_sp", 0, 0.62),
                          fake_arm("byol", 0, 0.40), fake_arm("byol_sp", 0, 0.70)],
                         floor, [], s, {}, 1.0)  # fmt: skip
    assert valid.valid_arms == ["simclr", "simclr_sp", "byol_sp"]
    assert valid.linear_probe_gain_simclr == pytest.approx(2.0)
    # BYOL's own base is below the bar: no gain, however good BYOL + SP looks.
    assert valid.linear_probe_gain_byol is None
    assert "byol is below the validity bar" in valid.gain_notes["linear_probe_gain_byol"]
    assert valid.linear_probe["random_init"] == pytest.approx(0.28)
    assert valid.linear_probe_above_random["byol"] == pytest.approx(12.0)
    banner = validity_banner(valid)
    assert "!!!" in banner and "byol:" in banner and "simclr:" not in banner


def fake_face_arm(name: str, seed: int, nme: float, random_nme: float) -> FaceArmResult:
    return FaceArmResult(
        arm=name, sp_lambda=0.5 if name.endswith("_sp") else 0.0, seed=seed, landmark_nme=nme,
        landmark_nme_map=nme, landmark_nme_mean_shape=0.2, landmark_nme_random_init=random_nme,
        landmark_nme_map_random_init=random_nme, alpha=1.0, n_train_faces=10, n_test_faces=5,
        train_minutes=1.0, history=[],
    )  # fmt: skip


def test_a_landmark_difference_is_read_only_when_simclr_beats_its_untrained_backbone():
    s = BenchSettings.preset("full")  # face_valid_margin 0.01
    floor = [fake_arm("random_init", 0, 0.28)]
    beaten = [fake_face_arm("simclr", 0, 0.150, 0.175), fake_face_arm("simclr_sp", 0, 0.140, 0.175)]
    result = bench_result([], floor, beaten, s, {}, 1.0)
    assert result.valid_face_arms == ["simclr", "simclr_sp"]
    assert result.landmark_nme_gain_simclr == pytest.approx(0.010)
    level = [fake_face_arm("simclr", 0, 0.170, 0.175), fake_face_arm("simclr_sp", 0, 0.140, 0.175)]
    result = bench_result([], floor, level, s, {}, 1.0)
    assert result.valid_face_arms == ["simclr_sp"]
    assert result.landmark_nme_gain_simclr is None
    assert "simclr" in result.gain_notes["landmark_nme_gain_simclr"]
    assert "FACE ARMS" in validity_banner(result)


def test_an_untrained_encoder_is_flagged_invalid_against_another_random_init(tiny_npz):
    s = tiny_settings(tiny_npz)
    floor = run_random_init(0, s, log=lambda m: None)
    untrained = run_random_init(1, s, log=lambda m: None)
    assert floor.epochs == 0 and 0.0 <= floor.linear_probe <= 1.0
    # The other random network, evaluated exactly like a trained arm, posing as SimCLR.
    posing = dataclasses.replace(untrained, arm="simclr", seed=0)
    result = bench_result([posing], [floor], [], s, {}, 0.0)
    assert result.valid_arms == []
    assert result.linear_probe_gain_simclr is None
    banner = validity_banner(result)
    assert "BELOW THE VALIDITY BAR" in banner and "simclr:" in banner
    markdown = bench_markdown(result)
    assert "| random init |" in markdown and "**NO**" in markdown


# -- arm names, settings and records round trips ----------------------------------------------


def test_arm_names_round_trip_and_bad_names_are_refused():
    for name in ARM_CHOICES:
        spec = parse_arm(name, 0.5, 16)
        assert arm_name(spec.base, spec.sp_lambda, 0.5, spec.local_size, 16) == name
    assert parse_arm("simclr_sp_s12", 0.5, 16).local_size == 12
    assert parse_arm("simclr_sp_l0.1", 0.5, 16).sp_lambda == pytest.approx(0.1)
    for bad in ("simclr_sp_l0.5", "simclr_sp_s16", "resnet", "simclr_l0.1"):
        with pytest.raises(ValueError, match="arm"):
            parse_arm(bad, 0.5, 16)


def test_the_default_plan_puts_each_pair_side_by_side():
    plan = BenchSettings.preset("full").plan()
    assert plan[:6] == [("simclr", 0), ("simclr_sp", 0), ("simclr", 1), ("simclr_sp", 1),
                        ("simclr", 2), ("simclr_sp", 2)]  # fmt: skip
    assert plan[6:8] == [("byol", 0), ("byol_sp", 0)]
    assert set(plan[8:]) == {("simclr_sp_l0.1", 0), ("simclr_sp_l1", 0), ("simclr_sp_s12", 0)}
    chosen = BenchSettings.preset("full", arms=("byol", "byol_sp"), seeds=(3, 4)).plan()
    assert chosen == [("byol", 3), ("byol_sp", 3), ("byol", 4), ("byol_sp", 4)]


def test_settings_and_arms_survive_the_results_file():
    s = BenchSettings.preset("full", arms=("simclr",), seeds=(1,))
    assert BenchSettings.from_dict(json.loads(json.dumps(dataclasses.asdict(s)))) == s
    arm = fake_arm("simclr_sp", 2, 0.5, step_gflop=math.nan)
    back = ArmResult.from_dict(json.loads(json.dumps(arm.to_dict())))
    assert back.to_dict().keys() == arm.to_dict().keys() and back.linear_probe == 0.5
    with pytest.raises(ValueError, match="unknown keys"):
        ArmResult.from_dict({**arm.to_dict(), "surprise": 1})


def test_merging_refuses_other_settings_and_later_runs_win():
    s = BenchSettings.preset("full")
    stored = json.loads(json.dumps(dataclasses.asdict(s)))
    earlier = EarlierRun("old.json", stored, [], [], [], [], 0.0, [])
    check_mergeable(earlier, dataclasses.replace(s, seeds=(5,), arms=("byol",)), faces=False)
    other = dataclasses.replace(s, epochs=s.epochs + 1, train_images=500)
    with pytest.raises(ValueError, match="epochs.*train_images"):
        check_mergeable(earlier, other, faces=False)
    wider = dataclasses.replace(s, task_args={**s.task_args, "backbone_width": 16})
    with pytest.raises(ValueError, match="task_args"):
        check_mergeable(earlier, wider, faces=False)
    old = [fake_arm("simclr", 0, 0.3), fake_arm("simclr", 1, 0.4)]
    new = [fake_arm("simclr", 1, 0.5), fake_arm("simclr_sp", 1, 0.6)]
    pooled = pool(old, new, key=lambda a: (a.arm, a.seed))
    assert [(a.arm, a.seed, a.linear_probe) for a in pooled] == [
        ("simclr", 0, 0.3), ("simclr", 1, 0.5), ("simclr_sp", 1, 0.6)]  # fmt: skip


# -- compute ----------------------------------------------------------------------------------


def test_step_flops_are_counted_without_touching_the_model(tiny_npz):
    s = tiny_settings(tiny_npz)
    task = build_task("simclr", 0.5, s)
    sampler = task.view_sampler()
    images = torch.from_numpy(blob_images(8, 3)[0]).permute(0, 3, 1, 2).float() / 255
    views = torch.utils.data.default_collate(
        [sampler(image, torch.Generator().manual_seed(i)) for i, image in enumerate(images)]
    )
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    with_sp = model_step_flops(task.model, (views, torch.zeros(8)))
    base = model_step_flops(build_task("simclr", 0.0, s).model, views)
    assert with_sp > base > 0
    after = task.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert all(p.grad is None for p in task.model.parameters())
    with pytest.raises(ValueError, match="global_views"):
        model_step_flops(task.model, images)


# -- the pipeline end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tiny_npz):
    return run_bench(tiny_settings(tiny_npz), log=lambda m: None)


def test_a_run_has_the_random_init_row_validity_and_compute_per_arm(tiny_run):
    result = tiny_run
    data = json.loads(json.dumps(result.to_dict(), allow_nan=True))
    assert data["linear_probe"]["random_init"] is not None
    assert data["knn"]["random_init"] is not None
    assert list(result.summary)[0] == "random_init"
    assert [a.arm for a in result.random_init] == ["random_init"]
    assert data["valid_arms"] == []  # one epoch of a tiny CNN learns nothing worth reading
    assert data.get("linear_probe_gain_simclr") is None and "linear_probe_gain_simclr" in (
        data["gain_notes"])  # fmt: skip
    assert data["epochs"] == 1
    for key in ("epoch_seconds", "step_fraction_of_peak", "step_gflop", "train_tflop"):
        assert set(data[key]) == {"simclr", "simclr_sp"}
        assert all(v > 0 for v in data[key].values()), key
    arm = result.arms[1]
    assert arm.arm == "simclr_sp" and arm.sp_local_size == 8 and arm.steps == 3
    assert arm.train_tflop == pytest.approx(arm.step_gflop * arm.steps / 1000)
    assert {"knn-curves", "simclr-knn", "relative-positions"} <= set(result.figures)
    assert "random init" in bench_markdown(result)


def test_a_child_process_arm_matches_its_json(tiny_npz, tmp_path):
    s = tiny_settings(tiny_npz)
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(dataclasses.asdict(s)))
    out, png = tmp_path / "arm.json", tmp_path / "pairs.png"
    arm_child_main([str(settings), "simclr_sp", "0", str(out), str(png)])
    arm = ArmResult.from_dict(json.loads(out.read_text()))
    assert (arm.arm, arm.seed, arm.epochs) == ("simclr_sp", 0, 1)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_merging_pools_arms_and_reuses_the_random_init(tiny_npz, tiny_run, tmp_path):
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(tiny_run.to_dict(), allow_nan=True))
    s = tiny_settings(tiny_npz, arms=("simclr",), seeds=(1,))
    merged = run_bench(s, log=lambda m: None, merge_with=earlier)
    assert [(a.arm, a.seed) for a in merged.arms] == [("simclr", 0), ("simclr", 1),
                                                      ("simclr_sp", 0)]  # fmt: skip
    assert [a.seed for a in merged.random_init] == [0, 1]
    assert merged.random_init[0].to_dict() == load_earlier_run(earlier).random_init[0].to_dict()
    assert merged.merged_from == [str(earlier)]
    with pytest.raises(ValueError, match="epochs"):
        run_bench(dataclasses.replace(s, epochs=2), log=lambda m: None, merge_with=earlier)


@pytest.mark.slow
def test_parallel_arms_run_in_child_processes(tiny_npz):
    result = run_bench(tiny_settings(tiny_npz, parallel=2), log=lambda m: None)
    assert [a.arm for a in result.arms] == ["simclr", "simclr_sp"]
    assert result.settings.num_workers == 0
    assert "relative-positions" in result.figures
