"""The experiment toolkit of the core: atomic files, fingerprints, schedules, mean_std, fit, and
networks as specs (tasks take their model)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from wherewhat.errors import ConfigError
from wherewhat.io import array_digest, atomic_path, json_fingerprint, write_atomic
from wherewhat.metrics.summary import mean_std
from wherewhat.models.digits import DigitCNN
from wherewhat.models.spec import build_module, configurable, module_spec
from wherewhat.tasks.digits import DigitClassifierTask
from wherewhat.training.fit import fit, recording_fits
from wherewhat.training.schedules import WarmupCosine, step_decay, warmup_cosine

# -- io ------------------------------------------------------------------------------------------


def test_write_atomic_replaces_whole_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "deep" / "result.json"
    write_atomic(target, "old")
    write_atomic(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_atomic_path_keeps_the_old_file_when_the_block_fails(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("complete old model")
    with pytest.raises(RuntimeError, match="exporter crashed"), atomic_path(target) as temporary:
        temporary.write_text("half a mod")
        raise RuntimeError("exporter crashed")
    assert target.read_text() == "complete old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_json_fingerprint_ignores_key_order_and_sees_values():
    a = json_fingerprint({"lr": 0.1, "steps": [1, 2]})
    assert a == json_fingerprint({"steps": [1, 2], "lr": 0.1})
    assert a != json_fingerprint({"lr": 0.2, "steps": [1, 2]})
    assert len(a) == 16 and int(a, 16) >= 0


def test_array_digest_reads_tensors_as_float32_and_separates_arrays():
    ints = torch.arange(6).reshape(2, 3)
    assert array_digest([ints]) == array_digest([ints.numpy().astype(np.float32)])
    # Without a separator two arrays hash as their concatenation; with one they do not.
    whole, halves = [np.arange(4.0)], [np.arange(2.0), np.arange(2.0, 4.0)]
    assert array_digest(whole) == array_digest(halves)
    assert array_digest(whole, separator=b"|") != array_digest(halves, separator=b"|")
    assert len(array_digest(whole, digest_size=12)) == 24


# -- summaries -----------------------------------------------------------------------------------


def test_mean_std_known_values_and_edge_cases():
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert std == pytest.approx(
        math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    )
    assert mean_std([0.5]) == (0.5, 0.0)
    assert mean_std([3.0, None, math.nan, math.inf, 5.0]) == (4.0, pytest.approx(math.sqrt(2)))
    nothing = mean_std([None, math.nan])
    assert math.isnan(nothing[0]) and math.isnan(nothing[1])


# -- schedules -----------------------------------------------------------------------------------


def test_warmup_cosine_factor_known_values():
    detector = WarmupCosine(warmup_steps=4, total_steps=14, cosine=True, start_factor=0.01)
    assert detector(0) == pytest.approx(0.01)
    assert detector(2) == pytest.approx(0.01 + 0.99 * 0.5)
    assert detector(4) == pytest.approx(1.0)
    assert detector(9) == pytest.approx(0.5)  # half of the 10 cosine steps
    assert detector(14) == pytest.approx(0.0) and detector(99) == pytest.approx(0.0)
    # lightly's convention: counted from step 1, so a zero start still moves step 0.
    ssl = WarmupCosine(warmup_steps=4, total_steps=8, start_factor=0.0, skip_start=True)
    assert [ssl(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    flat = WarmupCosine(warmup_steps=2, total_steps=0, cosine=False)
    assert flat(5) == 1.0


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)


def test_schedules_return_the_bare_optimizer_when_nothing_is_scheduled():
    optimizer = _optimizer()
    assert warmup_cosine(optimizer, 0, math.inf, cosine=True) is optimizer
    assert step_decay(optimizer, 0.1, None, 100) is optimizer
    assert step_decay(optimizer, 0.1, 0.5, math.inf) is optimizer


def test_step_decay_multiplies_once_at_the_fraction():
    optimizer = _optimizer()
    scheduler = step_decay(optimizer, 0.1, 0.5, 10)["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1.0] * 5 + [0.1] * 3)


# -- networks as specs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    depth: int = 2
    sizes: tuple[int, ...] = (4, 8)


@configurable
class _Pair(nn.Module):
    def __init__(
        self,
        inner: nn.Module,
        scale: float = 2.0,
        sizes: tuple[int, ...] = (1, 2),
        options: _Options | dict | None = None,
    ):
        super().__init__()
        self.inner, self.scale = inner, scale


def test_module_spec_round_trip_with_a_nested_network():
    pair = _Pair(DigitCNN(channels=4, hidden=8), sizes=(3,), options=_Options(depth=3))
    spec = module_spec(pair)
    assert spec["class_path"].endswith("._Pair")
    assert spec["init_args"]["scale"] == 2.0 and spec["init_args"]["sizes"] == [3]
    assert spec["init_args"]["options"] == {"depth": 3, "sizes": [4, 8]}  # plain data
    assert spec["init_args"]["inner"]["init_args"] == {
        "num_classes": 10, "channels": 4, "hidden": 8, "dropout": 0.25,
    }  # fmt: skip
    json.dumps(spec)  # plain data
    rebuilt = build_module(spec, _Pair)
    assert module_spec(rebuilt) == spec
    assert build_module(pair, _Pair) is pair


def test_build_module_names_the_problem():
    with pytest.raises(ConfigError, match="expected a .*DigitCNN as model, got .*_Pair"):
        build_module(_Pair(nn.Identity()), DigitCNN)
    with pytest.raises(ConfigError, match="cannot import"):
        build_module({"class_path": "wherewhat.models.no_such.Net"}, nn.Module)
    with pytest.raises(ConfigError, match="needs a 'class_path'"):
        build_module({"init_args": {}}, nn.Module)
    with pytest.raises(TypeError, match="does not record its constructor arguments"):
        module_spec(nn.Linear(2, 2))


def test_task_takes_its_model_and_checkpoint_rebuilds_it(tmp_path):
    task = DigitClassifierTask(model=DigitCNN(channels=4, hidden=8), lr=0.01)
    assert task.hparams["model"]["init_args"]["channels"] == 4
    assert "channels" not in task.hparams  # the task does not repeat the network's arguments
    trainer_free_path = tmp_path / "task.ckpt"
    torch.save(
        {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
         "pytorch-lightning_version": "2.6.0"},
        trainer_free_path,
    )  # fmt: skip
    loaded = DigitClassifierTask.load_from_checkpoint(trainer_free_path, map_location="cpu")
    assert loaded.model.init_args == task.model.init_args
    for name, tensor in task.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


# -- fit -----------------------------------------------------------------------------------------


def test_fit_trains_a_tiny_task_and_reports_what_it_did():
    torch.manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.rand(64, 1, 28, 28) * 0.3
    images[labels == 1, :, :14, :14] += 0.6  # class 1: a bright top-left quadrant
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=16, shuffle=True
    )
    task = DigitClassifierTask(model=DigitCNN(num_classes=2, channels=4, hidden=16), lr=0.02,
                               schedule="constant")  # fmt: skip
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(task.eval()(images), labels).item()
    with recording_fits() as recorded:
        record = fit(task, train_loader=loader, max_steps=40)
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(task.eval()(images), labels).item()
    assert record.steps == 40 and record.epochs == 10
    assert record.seconds > 0 and record.cpu_seconds > 0
    assert math.isfinite(record.final_loss) and record.best is None
    assert after < 0.7 * before
    assert recorded == [record] and record.task == "DigitClassifierTask"
    steps, losses = zip(*record.loss_curve, strict=True)
    assert steps == tuple(range(1, 41))  # one point per optimizer step
    assert losses[0] == pytest.approx(before, rel=0.5) and min(losses[-5:]) < losses[0]


def test_fit_refuses_unclear_requests():
    task = DigitClassifierTask(model=DigitCNN(channels=2, hidden=4))
    with pytest.raises(ValueError, match="exactly one of data"):
        fit(task, max_steps=1)
    with pytest.raises(ValueError, match="needs validate=True"):
        fit(task, train_loader=[], monitor="val/acc")
