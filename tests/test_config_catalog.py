"""Shipped configs by name: resolution rules, ``wherewhat configs``, and an installed wheel that
trains from a config name away from the repository."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from wherewhat.cli import main
from wherewhat.errors import ConfigError
from wherewhat.training.config_catalog import (
    PACKAGED_CONFIGS,
    resolve_config,
    resolve_config_names,
    shipped_configs,
)

REPO = Path(__file__).resolve().parents[1]


def test_the_repository_configs_folder_is_the_shipped_one():
    assert (REPO / "configs").resolve() == PACKAGED_CONFIGS
    names = [c.name for c in shipped_configs()]
    assert "ssdir/default" in names and "ssd/coco" in names
    assert len(names) == len(list(PACKAGED_CONFIGS.glob("*/*.yaml")))
    assert all(c.summary for c in shipped_configs()), "every config starts with a comment"


def test_names_resolve_and_an_existing_file_wins(tmp_path, monkeypatch):
    expected = PACKAGED_CONFIGS / "ssdir" / "default.yaml"
    assert resolve_config(str(REPO / "configs" / "ssdir" / "default.yaml")) is None  # a file
    monkeypatch.chdir(tmp_path)  # away from the repository
    for name in ("ssdir/default", "ssdir/default.yaml", "configs/ssdir/default.yaml"):
        assert resolve_config(name) == expected
    (tmp_path / "ssdir").mkdir()
    (tmp_path / "ssdir" / "default.yaml").write_text("trainer: {max_epochs: 1}\n")
    assert resolve_config("ssdir/default.yaml") is None  # the user's own file
    assert resolve_config("ssdir/nonexistent") is None and resolve_config("default") is None
    args = ["fit", "--config", "ssd/per_class", "--config=lzu/default", "--trainer.max_epochs", "1"]
    assert resolve_config_names(args) == [
        "fit", "--config", str(PACKAGED_CONFIGS / "ssd" / "per_class.yaml"),
        f"--config={PACKAGED_CONFIGS / 'lzu' / 'default.yaml'}", "--trainer.max_epochs", "1",
    ]  # fmt: skip


def test_configs_command_lists_names_and_unknown_names_say_how(capsys, tmp_path, monkeypatch):
    main(["configs", "ssd"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("ssd/default ") and "ssd/coco" in out
    assert "ssdir/" not in out
    with pytest.raises(SystemExit) as stop:
        main(["configs", "nothing"])
    assert stop.value.code == 2 and "methods:" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="digits/nothing: no such file") as caught:
        from wherewhat.training.harness import run_lightning_cli

        run_lightning_cli(["fit", "--config", "digits/nothing"])
    assert "wherewhat configs" in caught.value.hint


def _wheel_build_args() -> list[str]:
    """Build in this environment when its setuptools can (PEP 639 licence: >= 77), else let pip
    fetch one into an isolated build environment."""
    import setuptools

    major = int(setuptools.__version__.split(".")[0])
    return ["--no-build-isolation"] if major >= 77 else []


def test_installed_wheel_lists_configs_and_fits_by_name_away_from_the_repository(tmp_path):
    # Built from a copy of what the wheel is made of, so no stale build/ folder can leak in.
    project = tmp_path / "project"
    shutil.copytree(
        REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *_wheel_build_args(), "-q",
         "-w", str(wheels), str(project)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("wherewhat-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = set(archive.namelist())
    assert "wherewhat/configs/ssdir/default.yaml" in packed
    assert {"wherewhat/landmarking/models/worldcomp2d.pt",
            "wherewhat/landmarking/models/worldcomp2d.json"} <= packed  # fmt: skip
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def wherewhat(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "wherewhat", *args],
            cwd=elsewhere, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    where = wherewhat("configs", "--paths")
    assert str(site / "wherewhat" / "configs" / "digits" / "default.yaml") in where
    wherewhat(
        "fit", "--config", "digits/default", "--run.root", "runs", "--run.progress", "none",
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0",
    )  # fmt: skip
    assert list((elsewhere / "runs" / "digits").glob("*/checkpoints/last.ckpt"))
    if importlib.util.find_spec("cv2") is not None:  # the [faces] extra: the shipped model runs
        from wherewhat.methods.worldcomp2d.tour import sample_face_photo

        shutil.copy(sample_face_photo(), elsewhere / "photo.jpg")
        said = wherewhat("landmarks", "photo.jpg", "--backend", "torch", "--format", "json",
                         "--out", "marks.json")  # fmt: skip
        assert "1 photos, 1 faces" in said
        assert len(json.loads((elsewhere / "marks.json").read_text())["photos"]) == 1
