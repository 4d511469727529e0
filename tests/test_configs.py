"""Shipped configs: every file parses, and layered configs (``base:``) expand as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wherewhat.errors import ConfigError
from wherewhat.tasks.digits import DigitClassifierTask
from wherewhat.training.config_files import expand_config_bases, load_layered_config
from wherewhat.training.harness import run_lightning_cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_configs_live_in_one_folder_per_method_or_shared_model():
    assert CONFIGS, "no configs found"
    loose = [p.name for p in CONFIGS if p.parent == REPO / "configs"]
    assert loose == [], f"configs outside a folder: {loose}"
    for folder in {p.parent for p in CONFIGS}:
        assert (folder / "default.yaml").is_file(), f"{folder} has no default.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_every_config_parses(path, capsys):
    with pytest.raises(SystemExit) as stop:
        run_lightning_cli(["fit", "--config", str(path), "--print_config"])
    assert stop.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"]
    # A task takes its model: its init_args carry no network arguments beside a nested spec.
    model = printed["model"]["init_args"].get("model")
    assert model is None or "class_path" in model, f"{path}: model is not a nested spec"


def test_bases_go_first_in_order_and_keep_other_arguments(tmp_path):
    (tmp_path / "default.yaml").write_text("trainer: {max_epochs: 3}\n")
    (tmp_path / "mid.yaml").write_text("base: default.yaml\ntrainer: {max_epochs: 4}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "leaf.yaml").write_text("base: ../mid.yaml\n")
    leaf = str(tmp_path / "sub" / "leaf.yaml")
    expanded = expand_config_bases(["fit", f"--config={leaf}", "--trainer.max_steps", "2"])
    assert expanded == [
        "fit",
        "--config", str(tmp_path / "default.yaml"),
        "--config", str(tmp_path / "mid.yaml"),
        "--config", leaf,
        "--trainer.max_steps", "2",
    ]  # fmt: skip
    plain = ["fit", "--config", str(tmp_path / "default.yaml")]
    assert expand_config_bases(plain) == plain


def test_base_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="form a loop"):
        expand_config_bases(["--config", str(tmp_path / "a.yaml")])
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: 'base: missing.yaml' names .*missing\.yaml"):
        expand_config_bases(["--config", str(tmp_path / "c.yaml")])
    (tmp_path / "d.yaml").write_text("base: [x]\n")
    with pytest.raises(ConfigError, match=r"d\.yaml: 'base' must be a path"):
        expand_config_bases(["--config", str(tmp_path / "d.yaml")])


def test_a_delta_overrides_its_base_and_the_run_is_named_after_both(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    default = REPO / "configs" / "digits" / "default.yaml"
    (folder / "default.yaml").write_text(default.read_text())
    (folder / "wide.yaml").write_text(
        "base: default.yaml\nmodel:\n  init_args:\n    model:\n      init_args: {channels: 24}\n"
    )
    cli = run_lightning_cli(
        ["fit", "--config", str(folder / "wide.yaml"), "--run.root", str(tmp_path / "runs"),
         "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
         "--data.init_args.batch_size", "8"]
    )  # fmt: skip
    assert cli.model.model.init_args["channels"] == 24
    assert cli.model.model.init_args["hidden"] == 64  # from the base
    assert cli.run_dir.parent.name == "digits_wide"
    saved = yaml.safe_load((cli.run_dir / "config.yaml").read_text())
    assert saved.get("base") is None  # the saved config is complete: resume needs no base
    # A checkpoint written through the CLI rebuilds the same network.
    loaded = DigitClassifierTask.load_from_checkpoint(
        cli.run_dir / "checkpoints" / "last.ckpt", map_location="cpu"
    )
    assert loaded.model.init_args == cli.model.model.init_args


def test_load_layered_config_merges_like_the_cli(tmp_path):
    (tmp_path / "default.yaml").write_text(
        "model:\n  class_path: a.Task\n  init_args:\n    lr: 0.1\n    sizes: [1, 2]\n"
        "    model: {class_path: a.Net, init_args: {width: 8, depth: 2}}\n"
        "trainer: {max_epochs: 3}\n"
    )
    (tmp_path / "wide.yaml").write_text(
        "base: default.yaml\nmodel:\n  init_args:\n    sizes: [5]\n"
        "    model: {init_args: {width: 16}}\n"
    )
    (tmp_path / "other.yaml").write_text(
        "base: default.yaml\nmodel:\n  init_args:\n    model: {class_path: a.Other, init_args: {k: 1}}\n"
    )
    wide = load_layered_config(tmp_path / "wide.yaml")
    assert wide == {
        "model": {"class_path": "a.Task", "init_args": {
            "lr": 0.1, "sizes": [5], "model": {"class_path": "a.Net", "init_args": {"width": 16, "depth": 2}}}},
        "trainer": {"max_epochs": 3},
    }  # fmt: skip
    other = load_layered_config(tmp_path / "other.yaml")["model"]["init_args"]["model"]
    assert other == {"class_path": "a.Other", "init_args": {"k": 1}}  # a new class: replaced whole
