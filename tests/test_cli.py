"""The `wherewhat` command line: dispatch, usage errors, run directories, resume convenience."""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from wherewhat import __version__
from wherewhat.cli import main, parse_input_shape
from wherewhat.errors import ConfigError
from wherewhat.training.run_dir import RUN_DIR_ENV, create_run_dir, resolve_run_dir

REPO = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = REPO / "configs" / "digits" / "default.yaml"
_LAUNCH_VARIABLES = (
    RUN_DIR_ENV, "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE",
    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _single_process_environment(monkeypatch):
    for name in _LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in (RUN_DIR_ENV, "PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.setenv(name, "")  # records the original state, restored after each test
        monkeypatch.delenv(name)


def _wherewhat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wherewhat", *args], capture_output=True, text=True, timeout=120
    )


# -- the top-level parser ----------------------------------------------------------------------
def test_help_lists_every_command_and_version_prints():
    result = _wherewhat("--help")
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "predict", "tour", "data", "bench", "export"):
        assert command in result.stdout
    version = _wherewhat("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"wherewhat {__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "required: COMMAND"),
        (["data"], "required: ACTION"),
        (["bench", "resnet18", "--input", "3xbanana"], "expected a shape like 1x3x128x128"),
        (["tour", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_bad_command_lines_are_usage_errors(capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "usage: wherewhat" in error and message in error


def test_unknown_config_key_is_rejected_before_any_run_dir_exists(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(DIGITS_CONFIG), "--run.root", str(tmp_path), "--model.init_args.no_such_knob", "1"])  # fmt: skip
    assert stop.value.code == 2
    assert "no_such_knob" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_parse_input_shape():
    assert parse_input_shape("1x3x128x128") == (1, 3, 128, 128)
    assert parse_input_shape("7") == (7,)
    for bad in ("", "1x", "1x0x2", "1,3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_input_shape(bad)


# -- dispatch to the other packages (stand-ins record the call) -------------------------------
def _stand_in(monkeypatch, module_name: str, **functions) -> list:
    calls: list = []
    module = types.ModuleType(module_name)
    for name, result in functions.items():

        def record(*args, _name=name, _result=result, **kwargs):
            calls.append((_name, args, kwargs))
            return _result

        setattr(module, name, record)
    monkeypatch.setitem(sys.modules, module_name, module)
    return calls


def test_tour_passes_options_and_prints_report_path(monkeypatch, capsys, tmp_path):
    report = tmp_path / "report.html"
    calls = _stand_in(monkeypatch, "wherewhat.tour", run=report)
    sys.modules["wherewhat.tour"].TourFailed = RuntimeError
    main(["tour", "--out", str(tmp_path), "--faces-root", "/faces", "--full"])
    (_, args, kwargs), = calls  # fmt: skip
    assert args == (str(tmp_path),)
    assert kwargs["faces_root"] == "/faces" and kwargs["quick"] is False
    assert capsys.readouterr().out.strip() == str(report)
    calls.clear()
    main(["tour"])
    assert calls[0][1] == ("runs/tour",) and calls[0][2]["quick"] is True


def test_bench_export_and_data_commands_call_their_modules(monkeypatch, capsys, tmp_path):
    bench = _stand_in(
        monkeypatch,
        "wherewhat.bench.suite",
        benchmark_model_by_name={"name": "resnet18", "input_shape": [2, 3, 32, 32], "speed": []},
    )
    main(["bench", "resnet18", "--input", "2x3x32x32", "--threads", "1", "2", "--json"])
    expected = {"onnx": False, "quick": False, "throughput_batch": None, "threads": (1, 2)}
    assert bench == [("benchmark_model_by_name", ("resnet18", (2, 3, 32, 32)), expected)]
    capsys.readouterr()
    main(["bench", "resnet18", "--quick", "--throughput-batch", "8", "--onnx", "--json"])
    assert bench[-1][2] == {"onnx": True, "quick": True, "throughput_batch": 8}
    assert '"name": "resnet18"' in capsys.readouterr().out

    exported = types.SimpleNamespace(path=tmp_path / "m.onnx")
    export = _stand_in(
        monkeypatch, "wherewhat.bench.onnx_export", export_checkpoint_to_onnx=exported
    )
    main(["export", "onnx", "x.ckpt", "--out", str(tmp_path / "m.onnx")])
    assert export[0][1] == ("x.ckpt", str(tmp_path / "m.onnx"))
    assert export[0][2] == {"module_class": None, "exporter": "auto"}
    assert capsys.readouterr().out.strip() == str(tmp_path / "m.onnx")

    preview = _stand_in(monkeypatch, "wherewhat.report.preview", preview_dataset=tmp_path / "p.png")
    main(["data", "preview", "faces68", "--root", "/faces", "--out", str(tmp_path / "p.png")])
    assert preview[0][1] == ("faces68", "/faces", str(tmp_path / "p.png"))

    class FakeConfig:
        @classmethod
        def from_dict(cls, values):
            return values

    scenes = types.SimpleNamespace(grey=[0, 0, 0], cache_dir=tmp_path)
    scatter = _stand_in(monkeypatch, "wherewhat.data.scatter", load_or_generate=scenes)
    sys.modules["wherewhat.data.scatter"].ScatterConfig = FakeConfig
    config = tmp_path / "scatter.yaml"
    config.write_text("image_size: [64, 64]\n")
    capsys.readouterr()
    main(["data", "generate", "scatter", "--config", str(config), "--cache-root", str(tmp_path)])
    assert [call[1][1] for call in scatter] == ["train", "test"]
    assert scatter[0][1][0] == {"image_size": [64, 64]}
    assert scatter[0][2] == {"cache_root": str(tmp_path)}
    assert "train: 3 scenes" in capsys.readouterr().out


def test_bad_yaml_for_data_generate_names_the_file(tmp_path, capsys):
    config = tmp_path / "scatter.yaml"
    config.write_text("image_size: [64, 64\n")
    with pytest.raises(SystemExit) as stop:
        main(["data", "generate", "scatter", "--config", str(config)])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert f"{config}:2: not valid YAML" in error and "<unicode string>" not in error


# -- run directories ---------------------------------------------------------------------------
def test_run_dirs_are_never_reused(tmp_path):
    first = create_run_dir(tmp_path, "exp", stamp="20250101-000000")
    second = create_run_dir(tmp_path, "exp", stamp="20250101-000000")
    assert (first.name, second.name) == ("20250101-000000", "20250101-000000-1")
    with pytest.raises(ConfigError):
        create_run_dir(tmp_path, "../escape")


def test_processes_of_one_distributed_run_share_its_dir(tmp_path, monkeypatch):
    # A process Lightning started for local rank 1 inherits rank 0's directory.
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "given"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_run_dir(tmp_path, "exp") == (tmp_path / "given", False)
    # SLURM: every rank derives the same folder from the job id; rank 0 creates it.
    monkeypatch.setenv(RUN_DIR_ENV, "")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert resolve_run_dir(tmp_path, "exp") == (tmp_path / "exp" / "slurm-42", False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert resolve_run_dir(tmp_path, "exp") == (tmp_path / "exp" / "slurm-42", True)
    # torchrun without a rendezvous id cannot agree on a name: say so.
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="--run.dir"):
        resolve_run_dir(tmp_path, "exp")


def _smoke_args(root: Path) -> list[str]:
    return [
        "--run.root", str(root),
        "--run.name", "smoke",
        "--run.progress", "none",
        "--data.train_subset", "80",
        "--data.batch_size", "16",
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1",
    ]  # fmt: skip


def test_fit_writes_run_dir_layout_and_resume_continues_in_it(tmp_path):
    main(["fit", "--config", str(DIGITS_CONFIG), *_smoke_args(tmp_path)])
    (run,) = (tmp_path / "smoke").iterdir()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints[-1] == "last.ckpt" and checkpoints[0].startswith("best-")
    assert len(checkpoints) == 2
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["run"]["name"] == "smoke" and config["seed_everything"] == 0
    assert config["model"]["class_path"] == "wherewhat.tasks.digits.DigitClassifierTask"
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_step", "val/acc", "step"} <= set(header)
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] == 2

    config_before = (run / "config.yaml").read_bytes()
    main(["fit", "--resume", str(run), "--trainer.max_epochs", "2", "--run.root", str(tmp_path)])
    assert list((tmp_path / "smoke").iterdir()) == [run]  # the run continues in its folder
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # Written at the end of training (val/acc did not improve, so no scheduled save): both
    # epochs completed.
    assert (resumed["epoch"], resumed["global_step"]) == (2, 4)
    main(["fit", "--resume", str(run), "--trainer.max_epochs", "3", "--run.root", str(tmp_path)])
    again = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (again["epoch"], again["global_step"]) == (3, 6)
    assert (run / "config.yaml").read_bytes() == config_before  # kept; the resume's beside it
    assert yaml.safe_load((run / "config-1.yaml").read_text())["trainer"]["max_epochs"] == 2

    last = run / "checkpoints" / "last.ckpt"
    main(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(last), "--trainer.limit_predict_batches", "1"])  # fmt: skip
    (predicted,) = [p for p in (tmp_path / "smoke").iterdir() if p != run]
    (batch,) = torch.load(predicted / "predictions.pt", weights_only=True)
    assert batch["label"].shape == (16,)
    assert torch.equal(batch["label"], batch["probability"].argmax(dim=1))
