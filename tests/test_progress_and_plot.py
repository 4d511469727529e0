"""Seeing training: the run-level progress lines and bars, metrics.csv -> curves.png, `wherewhat plot`."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ProgressBar, Timer
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wherewhat.cli import main
from wherewhat.errors import ConfigError, DataFormatError
from wherewhat.io import PNG_SIGNATURE
from wherewhat.training.harness import RunOptions, WherewhatCLI, run_lightning_cli
from wherewhat.training.plot import (
    CURVES_PNG,
    METRICS_CSV,
    group_by_family,
    metric_family,
    plot_curves,
    read_metrics_csv,
    write_curves,
)
from wherewhat.training.progress import (
    ProgressLines,
    RunClock,
    RunRichProgressBar,
    RunTQDMProgressBar,
    format_duration,
)
from wherewhat.training.run_dir import RUN_DIR_ENV

REPO = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = REPO / "configs" / "digits" / "default.yaml"

# As Lightning's CSVLogger writes it: a column per metric ever logged, empty where a row's
# logging call did not log that metric; a "nan" loss; a resumed run appending steps 2 and 5
# again after step 6 (so the file is not sorted by step); a metric that never got a value.
LIGHTNING_CSV = """\
epoch,step,train/loss_step,train/loss_epoch,train/acc,val/loss,val/acc,lr-AdamW,test/acc
0,0,2.5,,,,,0.001,
0,2,2.0,,,,,0.001,
0,3,,,,1.8,0.40,,
0,3,,2.2,0.30,,,,
1,4,nan,,,,,0.0005,
1,6,1.0,,,,,0.0005,
1,6,,,,1.2,0.70,,
0,2,1.9,,,,,0.001,
1,5,1.5,,,,,0.0005,
"""


@pytest.fixture(autouse=True)
def _isolated_run_dir_env(monkeypatch):
    # The CLI exports the run dir and seed_everything its seed: undo both after each test.
    for name in (RUN_DIR_ENV, "PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _run_dir_with_csv(tmp_path: Path, text: str = LIGHTNING_CSV) -> Path:
    run_dir = tmp_path / "runs" / "toy" / "20250101-000000"
    (run_dir / METRICS_CSV).parent.mkdir(parents=True)
    (run_dir / METRICS_CSV).write_text(text)
    return run_dir


# -- metrics.csv -> series ---------------------------------------------------------------------
def test_read_metrics_csv_keeps_each_metrics_own_steps_sorted(tmp_path):
    series = read_metrics_csv(_run_dir_with_csv(tmp_path) / METRICS_CSV)

    assert list(series) == [
        "train/loss_step", "train/loss_epoch", "train/acc", "val/loss", "val/acc", "lr-AdamW",
    ]  # fmt: skip  # CSV order; no epoch/step series; test/acc (never logged) omitted
    loss = series["train/loss_step"]
    # Gaps and the nan at step 4 skipped; the resumed rows sorted in, equal steps in file order.
    assert loss.steps.tolist() == [0, 2, 2, 5, 6]
    assert loss.values.tolist() == [2.5, 2.0, 1.9, 1.5, 1.0]
    assert series["val/acc"].steps.tolist() == [3, 6]
    assert series["val/acc"].values.tolist() == [0.40, 0.70]
    assert series["train/loss_epoch"].steps.tolist() == [3]
    assert series["lr-AdamW"].values.tolist() == [0.001, 0.001, 0.001, 0.0005, 0.0005, 0.0005]
    assert loss.steps.dtype == np.int64 and loss.values.dtype == np.float64


def test_read_metrics_csv_names_file_line_and_column_of_a_bad_cell(tmp_path):
    path = _run_dir_with_csv(tmp_path, "epoch,step,train/loss\n0,0,1.0\n0,1,oops\n") / METRICS_CSV
    with pytest.raises(DataFormatError, match=r"metrics\.csv:3: column 'train/loss'.*'oops'"):
        read_metrics_csv(path)
    path.write_text("epoch,train/loss\n0,1.0\n")
    with pytest.raises(DataFormatError, match=r"metrics\.csv:1: expected a header with a 'step'"):
        read_metrics_csv(path)


def test_metric_families_put_train_and_val_of_one_metric_in_one_panel():
    names = {
        "train/loss_step": "loss", "val/loss": "loss", "train/loss_cls": "loss",
        "train_loss_epoch": "loss", "train/acc": "acc", "val/acc": "acc", "val_map_50": "map_50",
        "val/map": "map", "lr-AdamW": "lr-AdamW", "probe/knn_acc": "probe/knn_acc",
    }  # fmt: skip
    assert {name: metric_family(name) for name in names} == names


def test_plot_curves_draws_exactly_the_given_series_one_panel_per_family(tmp_path):
    series = read_metrics_csv(_run_dir_with_csv(tmp_path) / METRICS_CSV)
    figure = plot_curves(series, title="toy")

    panels = {ax.get_title(): ax for ax in figure.axes}
    assert list(panels) == ["loss", "acc", "lr-AdamW"]  # loss first, then in CSV order
    assert list(group_by_family(series)) == list(panels)
    for family, members in group_by_family(series).items():
        ax = panels[family]
        assert ax.get_xlabel() == "step"
        drawn = {line.get_label(): line for line in ax.get_lines()}
        assert sorted(drawn) == sorted(item.name for item in members)
        for item in members:
            x, y = drawn[item.name].get_data()
            np.testing.assert_array_equal(x, item.steps)
            np.testing.assert_array_equal(y, item.values)


def test_plot_command_writes_a_png_of_sensible_size(tmp_path, capsys):
    run_dir = _run_dir_with_csv(tmp_path)
    main(["plot", str(run_dir)])

    target = run_dir / CURVES_PNG
    assert capsys.readouterr().out.strip() == str(target)
    assert target.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(target) as image:
        width, height = image.size
    assert 800 <= width <= 2000 and 250 <= height <= 1200  # three panels side by side
    assert target.stat().st_size > 10_000  # not an empty canvas
    assert not list(run_dir.glob(".*partial*"))  # written through wherewhat.io


def test_plot_errors_name_the_missing_or_empty_csv(tmp_path):
    with pytest.raises(DataFormatError, match=r"nowhere/csv/metrics\.csv: not found"):
        write_curves(tmp_path / "nowhere")
    empty = _run_dir_with_csv(tmp_path, "epoch,step,train/loss\n0,0,\n")
    with pytest.raises(DataFormatError, match="holds no metric values yet"):
        write_curves(empty)
    assert not (empty / CURVES_PNG).exists()


# -- the run clock and its text ----------------------------------------------------------------
def _fake_trainer(step: int = 0, total: float = 100, callbacks=(), **extra) -> SimpleNamespace:
    return SimpleNamespace(
        global_step=step, estimated_stepping_batches=total, max_steps=-1,
        callbacks=list(callbacks), is_global_zero=True, current_epoch=0, max_epochs=-1,
        callback_metrics={}, **extra,
    )  # fmt: skip


def test_run_clock_eta_from_the_rate_of_this_process_also_after_a_resume():
    now = [0.0]
    clock = RunClock(_fake_trainer(step=0, total=100), clock=lambda: now[0])
    now[0] = 5.0
    assert clock.eta(10) == pytest.approx(45.0)  # 90 steps left at 0.5 s per step
    assert clock.step_text(10) == "step 10/100 (10.0%)"

    resumed = RunClock(_fake_trainer(step=40, total=100), clock=lambda: now[0])
    now[0] = 10.0
    assert resumed.eta(50) == pytest.approx(25.0)  # 10 steps in 5 s: 50 left
    assert resumed.eta(40) is None  # no step yet: no rate

    unbounded = RunClock(_fake_trainer(total=float("inf")), clock=lambda: now[0])
    assert unbounded.total is None and unbounded.step_text(7) == "step 7"

    timer = Timer(duration={"seconds": 30})
    timer.time_remaining = lambda stage="train": 12.0
    capped = RunClock(_fake_trainer(total=100, callbacks=[timer]), clock=lambda: now[0])
    now[0] = 11.0
    assert capped.eta(1) == 12.0  # the time limit comes first
    assert [format_duration(s) for s in (0, 65, 3725, None)] == [
        "0:00:00",
        "0:01:05",
        "1:02:05",
        "?",
    ]


def test_progress_lines_every_n_seconds_in_an_unbounded_run():
    now = [0.0]
    stream = io.StringIO()
    lines = ProgressLines(every_seconds=10, stream=stream, clock=lambda: now[0])
    trainer = _fake_trainer(total=float("inf"))
    lines.on_train_start(trainer, None)
    for step in range(1, 8):
        now[0] += 4.0
        trainer.global_step = step
        lines.on_train_batch_end(trainer, None, {"loss": torch.tensor(float(step))}, None, step)

    # Step 1 (the first), then whenever 10 s have passed since the previous line.
    assert [int(re.search(r"step (\d+)", line)[1]) for line in lines.lines] == [1, 4, 7]
    # The loss is the mean of the batches since the previous line (5, 6, 7).
    assert lines.lines[-1].endswith("loss 6")
    assert "ETA ?" in lines.lines[-1] and "elapsed 0:00:28" in lines.lines[-1]
    assert stream.getvalue().splitlines() == lines.lines


class _TinyTask(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("val/loss", loss)
        self.log("val/score", 1.0 / (1.0 + loss))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_progress_lines_on_a_tiny_fit_count_to_the_total_with_eta():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 2), torch.randn(16, 1))
    stream = io.StringIO()  # not a terminal
    lines = ProgressLines(every_seconds=1e9, every_percent=25, stream=stream)
    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[lines],
    )  # fmt: skip
    trainer.fit(_TinyTask(), DataLoader(data, batch_size=4), DataLoader(data, batch_size=8))

    text = stream.getvalue()
    assert "\r" not in text and text.splitlines() == lines.lines
    *running, final = lines.lines
    steps = [int(re.search(r"step (\d+)/12 ", line)[1]) for line in running]
    assert steps == [1, 3, 6, 9, 12]  # the first step, then every 25 % of 3 x 4 steps
    for line in running:
        assert re.search(r"epoch [123]/3  elapsed \d:\d\d:\d\d  ETA \d:\d\d:\d\d  loss \S+", line)
    assert "val/score" not in running[0] and "val/score" in running[-1]  # after a validation
    assert final.startswith("wherewhat: done  step 12/12 (100.0%)  elapsed")
    assert re.search(r"val/score 0\.\d+$", final)


def test_progress_choice_auto_gives_plain_lines_off_a_terminal(monkeypatch):
    choose = WherewhatCLI._progress_bar
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("sys.stdout", io.StringIO())  # not a terminal
    assert isinstance(choose(RunOptions(progress="auto", progress_every=5), {}, []), ProgressLines)
    assert choose(RunOptions(progress="auto"), {}, []).every_seconds == 30.0
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert isinstance(choose(RunOptions(progress="auto"), {}, []), RunRichProgressBar)
    monkeypatch.setenv("CI", "true")
    assert isinstance(choose(RunOptions(progress="auto"), {}, []), ProgressLines)
    assert isinstance(choose(RunOptions(progress="tqdm"), {}, []), RunTQDMProgressBar)
    assert isinstance(choose(RunOptions(progress="lines"), {}, []), ProgressLines)
    assert choose(RunOptions(progress="none"), {}, []) is None
    assert choose(RunOptions(progress="lines"), {"enable_progress_bar": False}, []) is None
    assert choose(RunOptions(progress="auto"), {}, [ProgressBar()]) is None  # the user's own
    with pytest.raises(ConfigError, match=r"run\.progress_every: expected a positive"):
        choose(RunOptions(progress="lines", progress_every=0), {}, [])


def test_fit_off_a_terminal_prints_progress_lines_and_writes_curves(tmp_path, capsys):
    cli = run_lightning_cli([
        "fit", "--config", str(DIGITS_CONFIG), "--run.root", str(tmp_path), "--run.name", "digits",
        "--data.train_subset", "120", "--data.batch_size", "16", "--trainer.max_epochs", "1",
        "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "2",
    ])  # fmt: skip

    assert any(isinstance(c, ProgressLines) for c in cli.trainer.callbacks)
    out = capsys.readouterr()
    progress = [line for line in out.out.splitlines() if line.startswith("wherewhat: ")]
    steps = [int(m[1]) for line in progress if (m := re.search(r"step (\d+)/7 ", line))]
    assert (
        steps == sorted(steps) and steps[0] == 1 and steps[-1] == 7
    )  # 108 digits in batches of 16
    assert all(" ETA " in line for line in progress if not line.startswith("wherewhat: done"))
    assert progress[-1].startswith("wherewhat: done  step 7/7")
    assert "val/acc" in progress[-1]  # the monitored metric, after the validation
    curves = cli.run_dir / CURVES_PNG
    assert curves.read_bytes().startswith(PNG_SIGNATURE)
    assert f"curves: {curves}" in out.err
    assert set(read_metrics_csv(cli.run_dir / METRICS_CSV)) >= {"train/loss_step", "val/acc"}
