"""Benchmark utilities: counts against hand-computed values, latency bookkeeping, ONNX parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wherewhat.bench import (
    OnnxParityError,
    count_macs,
    count_parameters,
    export_checkpoint_to_onnx,
    export_onnx,
    format_markdown_table,
    machine_info,
    make_ort_session,
    measure_latency_onnx,
    measure_latency_torch,
    measure_training_throughput,
    peak_matmul_gflops,
    write_results,
)
from wherewhat.bench import suite as bench_suite
from wherewhat.bench.step_compute import measure_training_step
from wherewhat.errors import ConfigError, DataFormatError


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 4*3*3*3 + 4 = 112 parameters
        nn.BatchNorm2d(4),  # 4 + 4 = 8
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),  # 4*2 + 2 = 10
    )


class AffineWarp(nn.Module):
    """Predicts a near-identity affine transform and resamples the image with it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 8, 3, padding=1)
        self.theta = nn.Linear(8, 6)
        self.register_buffer("identity", torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.identity + 0.2 * torch.tanh(self.theta(self.features(x).mean((2, 3)))).view(
            -1, 2, 3
        )
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], 12, 10], align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)


class CheatsWhenExported(nn.Module):
    """Computes something else while being exported: ONNX and torch outputs differ by 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return x + 0.5
        return x


class BakesBatchSize(nn.Module):
    """``int()`` turns the traced batch size into a constant: only batch 2 runs in ONNX."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(int(x.shape[0]), -1).sum(1)


# ---------------------------------------------------------------- counting


def test_parameter_count_matches_hand_count():
    model = tiny_cnn()
    assert count_parameters(model) == 112 + 8 + 10
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 8 + 10
    assert count_parameters(model) == 130


def test_shared_parameters_are_counted_once():
    layer = nn.Linear(3, 3)
    assert count_parameters(nn.Sequential(layer, nn.ReLU(), layer)) == 12


def test_linear_and_conv_macs_match_hand_computation():
    linear = count_macs(nn.Linear(5, 7), torch.rand(3, 5))
    assert linear["macs"] == 3 * 5 * 7  # bias additions are not counted
    assert linear["flops"] == 2 * linear["macs"]

    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 10x10 -> 5x5
    assert count_macs(conv, torch.rand(2, 3, 10, 10))["macs"] == 2 * 8 * 5 * 5 * 3 * 3 * 3

    depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    assert count_macs(depthwise, torch.rand(1, 4, 6, 6))["macs"] == 4 * 6 * 6 * 3 * 3


def test_macs_per_module_and_training_flag():
    model = tiny_cnn().train()
    counted = count_macs(model, torch.rand(1, 3, 8, 8))
    conv, linear = 4 * 8 * 8 * 27, 4 * 2
    assert counted["by_module"] == {"": conv + linear, "0": conv, "5": linear}
    assert counted["macs"] == conv + linear
    assert model.training  # restored


def test_resnet18_macs_match_torchvision_table():
    import torchvision

    reference = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["_ops"]  # GMACs
    model = torchvision.models.resnet18(weights=None)
    macs = count_macs(model, torch.rand(1, 3, 224, 224))["macs"]
    assert macs / 1e9 == pytest.approx(reference, abs=5e-4)


# ---------------------------------------------------------------- timing


def _other_thread_count() -> tuple[int, int]:
    before = torch.get_num_threads()
    return before, (2 if before == 1 else 1)


def test_torch_latency_fields_are_consistent_and_threads_restored():
    model = tiny_cnn().train()
    before, asked = _other_thread_count()
    result = measure_latency_torch(
        model, torch.rand(4, 3, 16, 16), threads=asked, warmup=1, repeats=7
    )
    assert torch.get_num_threads() == before
    assert model.training
    assert result.threads == asked and result.batch_size == 4 and result.repeats == 7
    assert 0 < result.min_ms <= result.p10_ms <= result.p25_ms <= result.median_ms
    assert result.median_ms <= result.p75_ms <= result.p90_ms
    assert result.items_per_s == pytest.approx(4 / (result.median_ms / 1000))
    assert result.to_dict()["threads"] == asked


def test_onnx_latency_uses_the_session_thread_count(tmp_path):
    path = tmp_path / "cnn.onnx"
    export_onnx(tiny_cnn(), torch.rand(1, 3, 16, 16), path)
    result = measure_latency_onnx(path, torch.rand(3, 3, 16, 16), threads=1, warmup=1, repeats=5)
    assert result.backend == "onnxruntime" and result.threads == 1 and result.batch_size == 3
    assert 0 < result.p10_ms <= result.median_ms <= result.p90_ms

    session = make_ort_session(path, threads=2)
    assert measure_latency_onnx(session, torch.rand(1, 3, 16, 16), None, 0, 2).threads == 2
    with pytest.raises(ValueError, match="intra_op_num_threads=2"):
        measure_latency_onnx(session, torch.rand(1, 3, 16, 16), threads=1)


def test_training_throughput_leaves_model_untouched():
    model = tiny_cnn()
    before_weights = [p.detach().clone() for p in model.parameters()]
    before_threads, asked = _other_thread_count()
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 0, 1, 1, 0])

    def loss_fn(net, batch):
        return F.cross_entropy(net(batch[0]), batch[1])

    result = measure_training_throughput(model, loss_fn, (images, labels), steps=3, threads=asked)
    assert result.batch_size == 6 and result.steps == 3 and result.threads == asked
    assert float(result) == pytest.approx(6 * 3 / result.seconds)
    assert len(result.step_seconds) == 3
    assert sum(result.step_seconds) == pytest.approx(result.seconds)
    assert min(result.step_seconds) <= result.median_step_seconds <= max(result.step_seconds)
    assert torch.get_num_threads() == before_threads
    assert all(torch.equal(a, b) for a, b in zip(before_weights, model.parameters(), strict=True))


def test_training_step_compute_counts_hand_flops_and_leaves_model_and_random_state():
    torch.manual_seed(0)
    # dropout draws random numbers; batch norm would update its statistics in place
    model = nn.Sequential(nn.Linear(16, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).eval()
    before = [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
    batch = torch.rand(8, 16)

    def loss(net, x):
        return net(x).square().sum()

    torch.manual_seed(1)
    expected_next = torch.rand(3)
    torch.manual_seed(1)
    compute = measure_training_step(model, batch, threads=1, repeats=2, step=loss)
    assert torch.equal(torch.rand(3), expected_next)
    # forward 2 x 8 x 16 x 4 FLOPs and the weight gradient as many; the input needs none
    assert compute.step_gflop == pytest.approx(2 * (2 * 8 * 16 * 4) / 1e9)
    assert compute.threads == 1 and compute.step_seconds > 0
    rate = compute.step_gflop / compute.step_seconds / compute.peak_gflops
    assert compute.fraction_of_peak == pytest.approx(rate)
    assert set(compute.to_json("det")) == {
        "det_step_gflop", "det_step_seconds", "det_step_fraction_of_peak", "det_peak_gflops",
    }  # fmt: skip
    after = (*model.parameters(), *model.buffers())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_peak_gflops_is_positive_and_cached():
    first = peak_matmul_gflops(1, sizes=(64, 128), time_budget_s=0.05)
    assert first > 0
    again = peak_matmul_gflops(1, sizes=(64, 128), time_budget_s=0.05)
    assert again == first  # cached, not re-measured


def test_machine_info_names_the_setup():
    info = machine_info()
    assert info["cpu"] and info["torch"] == torch.__version__
    assert info["torch_threads"] == torch.get_num_threads()


# ---------------------------------------------------------------- ONNX export


def _ort_output(path, x: torch.Tensor) -> np.ndarray:
    session = make_ort_session(path, threads=1)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_cnn_export_matches_torch_with_dynamic_batch(tmp_path):
    model = tiny_cnn().eval()
    path = tmp_path / "sub" / "cnn.onnx"
    result = export_onnx(model, torch.rand(2, 3, 16, 16), path, input_names=["image"])
    assert path.is_file() and result.path == path
    assert result.checked_batch_sizes == [2, 3] and result.max_abs_diff <= 1e-4
    assert result.input_names == ["image"] and result.output_names == ["output"]
    assert result.exporter == "torchscript" and result.opset == 20 and not result.warnings
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["cnn.onnx"]  # no temp left
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(_ort_output(path, x), model(x).numpy(), atol=1e-4)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_affine_grid_sample_export_matches_torch(tmp_path, exporter):
    torch.manual_seed(0)
    model = AffineWarp().eval()
    path = tmp_path / "warp.onnx"
    result = export_onnx(model, torch.rand(2, 3, 16, 16), path, exporter=exporter)
    assert result.exporter == exporter
    assert result.checked_batch_sizes == [2, 3] and result.max_abs_diff <= 1e-4
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        expected = model(x).numpy()
    assert expected.shape == (4, 3, 12, 10)
    np.testing.assert_allclose(_ort_output(path, x), expected, atol=1e-4)


def test_parity_check_raises_on_different_outputs_and_writes_nothing(tmp_path):
    path = tmp_path / "cheat.onnx"
    with pytest.raises(OnnxParityError, match=r"max \|onnxruntime - torch\| = 0\.5"):
        export_onnx(CheatsWhenExported(), torch.rand(2, 3), path, exporter="torchscript")
    assert list(tmp_path.iterdir()) == []
    # the same model passes when the tolerance allows the difference
    loose = export_onnx(CheatsWhenExported(), torch.rand(2, 3), path, atol=0.6)
    assert loose.max_abs_diff == pytest.approx(0.5)


def test_auto_exporter_falls_back_to_dynamo_when_the_tracer_cannot_export(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(3))  # 4x4 -> 3x3: no factor
    with pytest.warns(RuntimeWarning, match="fell back to 'dynamo'"):
        result = export_onnx(model, torch.rand(2, 1, 6, 6), tmp_path / "pool.onnx")
    assert result.exporter == "dynamo" and result.checked_batch_sizes == [2, 3]
    assert result.max_abs_diff <= 1e-4
    assert any("adaptive_avg_pool2d" in text for text in result.warnings)


def test_parity_check_catches_a_batch_size_baked_in_by_the_tracer(tmp_path):
    with (
        pytest.warns(torch.jit.TracerWarning),
        pytest.raises(OnnxParityError, match="batch size 3"),
    ):
        export_onnx(
            BakesBatchSize(), torch.rand(2, 3, 4), tmp_path / "baked.onnx", exporter="torchscript"
        )
    # a fixed-batch export of the same model is fine
    with pytest.warns(torch.jit.TracerWarning, match="Python integer"):
        fixed = export_onnx(
            BakesBatchSize(), torch.rand(2, 3, 4), tmp_path / "fixed.onnx", dynamic_batch=False
        )
    assert fixed.checked_batch_sizes == [2]
    assert any("Python integer" in text for text in fixed.warnings)


# ---------------------------------------------------------------- Lightning checkpoints


def _tiny_task_class():
    import lightning.pytorch as pl

    class TinyClassifierTask(pl.LightningModule):
        def __init__(self, width: int = 4, classes: int = 3):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(width, classes),
            )
            self.example_input_array = torch.zeros(2, 1, 8, 8)

        def forward(self, x):
            return self.net(x)

        def export_model(self):
            return nn.Sequential(self.net, nn.Softmax(dim=1))

        def training_step(self, batch, _):
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return TinyClassifierTask


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    cls = _tiny_task_class()
    data = TensorDataset(torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,)))
    trainer = pl.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    module = cls(width=5)
    trainer.fit(module, DataLoader(data, batch_size=4))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return cls, module, path


def test_checkpoint_export_uses_hparams_and_export_model_hook(tiny_checkpoint, tmp_path):
    cls, trained, ckpt = tiny_checkpoint
    result = export_checkpoint_to_onnx(ckpt, tmp_path / "tiny.onnx", module_class=cls)
    assert result.checked_batch_sizes == [2, 3]
    x = torch.rand(3, 1, 8, 8)
    probabilities = _ort_output(result.path, x)
    with torch.no_grad():
        expected = torch.softmax(trained.eval()(x), dim=1).numpy()  # width=5 from hparams
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)

    shaped = export_checkpoint_to_onnx(ckpt, tmp_path / "b.onnx", (1, 1, 12, 12), module_class=cls)
    assert shaped.checked_batch_sizes == [1, 2]


def test_checkpoint_export_needs_a_known_class(tiny_checkpoint, tmp_path):
    _, _, ckpt = tiny_checkpoint
    with pytest.raises(DataFormatError, match="_class_path"):
        export_checkpoint_to_onnx(ckpt, tmp_path / "x.onnx")
    state = torch.load(ckpt, weights_only=True)
    state["hyper_parameters"]["_class_path"] = "somewhere.else.Task"
    foreign = tmp_path / "foreign.ckpt"
    torch.save(state, foreign)
    with pytest.raises(DataFormatError, match="outside wherewhat"):
        export_checkpoint_to_onnx(foreign, tmp_path / "x.onnx")
    state["hyper_parameters"]["_class_path"] = "wherewhat.no_such_module.Task"
    torch.save(state, foreign)
    with pytest.raises(ConfigError, match="cannot import module class"):
        export_checkpoint_to_onnx(foreign, tmp_path / "x.onnx")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        export_checkpoint_to_onnx(tmp_path / "missing.ckpt", tmp_path / "x.onnx")


# ---------------------------------------------------------------- suite and result files


def test_benchmark_model_rows_are_consistent(monkeypatch):
    monkeypatch.setattr(bench_suite, "peak_matmul_gflops", lambda threads: 100.0 * threads)
    result = bench_suite.benchmark_model(
        tiny_cnn(),
        (1, 3, 16, 16),
        threads=(1,),
        quick=True,
        throughput_batch=8,
        include_machine=False,
    )
    assert result["params"] == 130 and result["macs_per_image"] == 4 * 16 * 16 * 27 + 8
    assert result["onnx_export"]["max_abs_diff"] <= 1e-4
    rows = {(r["backend"], r["batch_size"]): r for r in result["speed"]}
    assert set(rows) == {("torch", 1), ("onnxruntime", 1), ("torch", 8), ("onnxruntime", 8)}
    for row in rows.values():
        seconds = row["median_ms"] / 1000
        assert row["achieved_gflops"] == pytest.approx(
            2 * result["macs_per_image"] * row["batch_size"] / seconds / 1e9
        )
        assert row["fraction_of_peak"] == pytest.approx(row["achieved_gflops"] / 100.0)
        assert row["threads"] == 1


def test_markdown_table_layout():
    table = format_markdown_table(
        [{"model": "a", "ms": 1.23456, "n": 1200}, {"model": "b|c", "ms": None, "n": 3}],
        ["model", ("ms", "median ms"), "n"],
    )
    assert table.splitlines() == [
        "| model | median ms | n |",
        "|---|---:|---:|",
        "| a | 1.23 | 1,200 |",
        "| b\\|c | - | 3 |",
    ]


def test_write_results_writes_json_and_markdown(tmp_path):
    data = {"latency_ms": np.float32(1.5), "count": np.int64(3), "rows": [{"a": 1}]}
    json_path, md_path = write_results("demo", data, "# Demo\n", results_dir=tmp_path / "r")
    assert json.loads(json_path.read_text()) == {"latency_ms": 1.5, "count": 3, "rows": [{"a": 1}]}
    assert md_path.read_text() == "# Demo\n"
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["demo.json", "demo.md"]


def test_write_figures_names_and_writes_each_png(tmp_path):
    from wherewhat.bench.tables import write_figures

    names = write_figures("demo", {"a": b"\x89PNG-a", "b": b"\x89PNG-b"}, tmp_path / "r")
    assert names == ["demo-a.png", "demo-b.png"]
    assert (tmp_path / "r" / "demo-b.png").read_bytes() == b"\x89PNG-b"
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == names  # no temporary left


def test_target_rows_compare_each_quantity_with_its_bound():
    from wherewhat.bench.tables import target_rows

    targets = {
        "ap50": {"op": ">=", "value": 0.95},
        "gain": {"op": ">", "value": 0.0},
        "mse": {"op": "<=", "value": 0.0121},
        "overhead": {"op": "<", "value": 0.25},
        "not_run": {"op": ">=", "value": 1.0},
    }
    measured = {"ap50": 0.95, "gain": 0.0, "mse": 0.02, "overhead": 0.1, "not_run": None}
    rows = target_rows(targets, measured)
    assert [r["met"] for r in rows] == [True, False, False, True, None]
    assert rows[2] == {"quantity": "mse", "target": "<= 0.0121", "measured": 0.02, "met": False}
    with pytest.raises(ValueError, match="'odd'.*got '=='"):
        target_rows({"odd": {"op": "==", "value": 1}}, {"odd": 1})
