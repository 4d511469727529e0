"""Errors a user causes in ``wherewhat fit|validate|...``: one block, exit code 2, no traceback.

Each bad input of issue 18 (a missing data folder, a corrupt JPEG, a ``.pts`` with 67 points, a
truncated / random-bytes / foreign checkpoint, an option that contradicts the checkpoint, bad
YAML, an unknown option) gives ``wherewhat <command>: error: <where>: <what>`` plus a ``fix:``
line, exit code 2, and a traceback only with ``--debug`` or ``WHEREWHAT_DEBUG=1``. Most tests
call ``main`` in-process (the same code path, without paying the 6 s import per run); two run
``python -m wherewhat`` to check what a user really sees.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch._utils import ExceptionWrapper

from wherewhat.cli import main
from wherewhat.data.face_formats import write_pts
from wherewhat.data.images import load_image_folder
from wherewhat.errors import DEBUG_ENV, CheckpointError, DataFormatError, error_block
from wherewhat.training.checkpoint_file import read_checkpoint
from wherewhat.training.run_dir import RUN_DIR_ENV

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits" / "default.yaml")
LANDMARKS = str(REPO / "configs" / "landmark_baselines" / "default.yaml")
UNSAFE_ADVICE = "weights_only=False"  # torch's advice on a file it cannot unpickle


@pytest.fixture(autouse=True)
def _single_process_environment(monkeypatch):
    for name in (RUN_DIR_ENV, "RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_JOB_ID", DEBUG_ENV):
        monkeypatch.delenv(name, raising=False)


def _tiny(root: Path) -> list[str]:
    return [
        "--run.root", str(root), "--run.progress", "none",
        "--data.init_args.train_subset", "40", "--data.init_args.batch_size", "8",
        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


def _fails(capsys, args: list[str]) -> str:
    """Run ``wherewhat ARGS`` in-process; it must exit with 2 and print one error block."""
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    error = capsys.readouterr().err
    block = error[error.index(f"wherewhat {args[0]}: error: ") :]
    assert "Traceback" not in error and "usage:" not in error
    assert block.rstrip().endswith(f"(the traceback: run again with --debug or {DEBUG_ENV}=1)")
    return block


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    """A real 16-channel digits checkpoint, written by the CLI."""
    root = tmp_path_factory.mktemp("runs")
    main(["fit", "--config", DIGITS, *_tiny(root), "--run.name", "good"])
    (checkpoint,) = root.glob("good/*/checkpoints/last.ckpt")
    return checkpoint


# -- checkpoints -------------------------------------------------------------------------------
def test_damaged_checkpoints_say_so_without_unsafe_advice(tmp_path, capsys, good_checkpoint):
    random_bytes = tmp_path / "random.ckpt"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(5000))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good_checkpoint.read_bytes()[:20000])
    for path in (random_bytes, truncated):
        block = _fails(capsys, ["fit", "--config", DIGITS, "--ckpt_path", str(path)])
        assert f"error: {path}: not a readable checkpoint: corrupt or truncated" in block
        assert "fix: the file is damaged" in block and UNSAFE_ADVICE not in block
    block = _fails(capsys, ["test", "--config", DIGITS, "--ckpt_path", str(tmp_path / "no.ckpt")])
    assert "no.ckpt: expected a checkpoint file (.ckpt); no such file" in block
    plain = tmp_path / "plain.ckpt"
    torch.save({"weight": torch.zeros(2)}, plain)
    block = _fails(capsys, ["validate", "--config", DIGITS, "--ckpt_path", str(plain)])
    assert "not a Lightning checkpoint: expected a mapping with 'state_dict'" in block


def test_checkpoint_of_another_class_names_both(tmp_path, capsys, good_checkpoint):
    state = torch.load(good_checkpoint, weights_only=True)
    state["hyper_parameters"]["_class_path"] = "wherewhat.tasks.ssd.SSDTask"
    foreign = tmp_path / "ssd.ckpt"
    torch.save(state, foreign)
    block = _fails(
        capsys, ["fit", "--config", DIGITS, "--ckpt_path", str(foreign), "--run.root", str(tmp_path / "r")]
    )  # fmt: skip
    assert "a checkpoint of wherewhat.tasks.ssd.SSDTask" in block
    assert "the config's model.class_path is wherewhat.tasks.digits.DigitClassifierTask" in block
    assert not (tmp_path / "r").exists()  # stopped before a run directory was made
    # The same for the nested network alone (a checkpoint written outside the CLI).
    state = torch.load(good_checkpoint, weights_only=True)
    del state["hyper_parameters"]["_class_path"]
    state["hyper_parameters"]["model"]["class_path"] = "wherewhat.models.ssd.SSD"
    torch.save(state, foreign)
    block = _fails(capsys, ["fit", "--config", DIGITS, "--ckpt_path", str(foreign)])
    assert "a checkpoint of wherewhat.models.ssd.SSD" in block
    assert "model.init_args.model.class_path is wherewhat.models.digits.DigitCNN" in block


def test_override_that_contradicts_the_checkpoint_is_an_error(tmp_path, capsys, good_checkpoint):
    key = "--model.init_args.model.init_args.channels"
    args = ["fit", "--config", DIGITS, "--ckpt_path", str(good_checkpoint)]
    block = _fails(capsys, [*args, key, "32", "--model.init_args.lr=0.5"])
    assert f"{key} 32, but the checkpoint has {key[2:]} = 16" in block
    assert "--model.init_args.lr 0.5, but the checkpoint has model.init_args.lr = 0.002" in block
    assert "fix: drop those options" in block
    # An override that agrees with the checkpoint, and options outside the model, are fine.
    main([*args, key, "16", *_tiny(tmp_path), "--trainer.max_steps", "2"])
    assert "error" not in capsys.readouterr().err


def test_weights_that_do_not_fit_the_configured_model(tmp_path, capsys, good_checkpoint):
    state = torch.load(good_checkpoint, weights_only=True)
    del state["hyper_parameters"]  # nothing to rebuild the model from: the config decides
    bare = tmp_path / "bare.ckpt"
    torch.save(state, bare)
    wide = "--model.init_args.model.init_args.channels"
    block = _fails(capsys, ["validate", "--config", DIGITS, "--ckpt_path", str(bare), wide, "32", *_tiny(tmp_path)])  # fmt: skip
    assert f"{bare}: its weights do not fit the model built from the config" in block
    assert "7 shapes differ (model.features.0.bias: checkpoint (16,) vs model (32,), " in block


def test_read_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {}, "thing": Path("x")}, path)  # a Python object, not plain data
    with pytest.raises(CheckpointError, match="holds Python objects") as info:
        read_checkpoint(path)
    assert UNSAFE_ADVICE not in str(info.value) + str(info.value.hint)


# -- config and options ------------------------------------------------------------------------
def test_bad_yaml_missing_config_and_unknown_option(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: x\n  init_args: [1, 2\n")
    block = _fails(capsys, ["fit", "--config", str(bad)])
    assert f"error: {bad}:4: not valid YAML" in block and "<unicode string>" not in block
    assert "while parsing a flow sequence on line 3" in block
    block = _fails(capsys, ["fit", "--config", str(tmp_path / "none.yaml")])
    assert "none.yaml: no such file" in block
    block = _fails(capsys, ["fit", "--config", DIGITS, "--model.init_args.no_such_knob", "1"])
    assert "no_such_knob" in block and "fix: `wherewhat fit --help` lists every option" in block
    block = _fails(capsys, ["fit", "--config", DIGITS, "--trainer.max_steps", "many"])
    assert 'key "trainer.max_steps"' in block and "many" in block


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_accelerator_this_machine_lacks(tmp_path, capsys):
    block = _fails(capsys, ["fit", "--config", DIGITS, "--trainer.accelerator", "cuda", *_tiny(tmp_path)])  # fmt: skip
    assert "`CUDAAccelerator` can not run on your system" in block


# -- data --------------------------------------------------------------------------------------
def test_missing_data_folder_names_the_key(tmp_path, capsys):
    missing = tmp_path / "mnist"
    block = _fails(capsys, ["fit", "--config", DIGITS, "--data.init_args.root", str(missing), *_tiny(tmp_path)])  # fmt: skip
    assert f"error: {missing}: data.init_args.root: expected a folder" in block
    assert "no such folder" in block and "fix: set --data.init_args.root" in block


def _faces(root: Path, count: int = 6) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
            root / f"{index}_1.jpg", format="JPEG"
        )
        write_pts(root / f"{index}_1.pts", torch.tensor(rng.uniform(10, 38, (68, 2))))
    return root


def _faces_args(root: Path, runs: Path) -> list[str]:
    return [
        "fit", "--config", LANDMARKS, "--data.init_args.root", str(root),
        "--data.init_args.val_fraction", "0.2", "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "2", "--data.init_args.crop_size", "32",
        "--model.init_args.model.init_args.crop_size", "32", "--run.root", str(runs),
        "--run.progress", "none", "--trainer.max_steps", "1", "--trainer.accelerator", "cpu",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip


def test_bad_face_files_stop_at_start_up_not_in_a_worker(tmp_path, capsys):
    root = _faces(tmp_path / "faces")
    jpeg = root / "3_1.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:-60])  # cut short: its header still parses
    block = _fails(capsys, _faces_args(root, tmp_path / "runs"))
    assert f"error: {jpeg}: a JPEG without its end marker (FF D9): the file is cut short" in block
    assert "DataLoader worker" not in block and "fix: replace or remove the bad images" in block

    jpeg.unlink()
    (root / "3_1.pts").unlink()
    pts = root / "4_1.pts"
    write_pts(pts, torch.rand(67, 2) * 40)
    block = _fails(capsys, _faces_args(root, tmp_path / "runs"))
    assert f"error: {pts}: expected 68 points, found 67" in block
    assert "data.init_args.expected_points" in block


def test_non_images_in_an_image_folder_are_named_once(tmp_path, caplog):
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "a.png")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "test" / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with caplog.at_level(logging.WARNING, logger="wherewhat.data.images"):
        arrays = load_image_folder(tmp_path)
    assert len(arrays.y_train) == 2 and len(arrays.y_test) == 2
    (record,) = caplog.records  # one warning for the whole folder
    assert "ignored 2 files that are not images" in record.getMessage()
    assert "notes.txt" in record.getMessage() and ".DS_Store" in record.getMessage()


def test_an_error_from_a_loader_worker_shows_its_own_message():
    try:
        raise DataFormatError("faces/7.jpg", "cannot decode the image (broken data stream)")
    except DataFormatError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataFormatError) as info:
        wrapped.reraise()  # how PyTorch re-raises it in the main process
    block = error_block("fit", info.value)
    assert block.splitlines()[0] == (
        "wherewhat fit: error: faces/7.jpg: cannot decode the image (broken data stream) "
        "(raised in a DataLoader worker)"
    )
    assert "Traceback" not in block


def test_debug_shows_the_traceback_in_process(tmp_path, capsys, monkeypatch):
    args = ["fit", "--config", DIGITS, "--data.init_args.root", str(tmp_path / "nope")]
    for extra, env in (([], "1"), (["--debug"], None)):
        if env is None:
            monkeypatch.delenv(DEBUG_ENV, raising=False)
        else:
            monkeypatch.setenv(DEBUG_ENV, env)
        with pytest.raises(SystemExit) as stop:
            main([*args, *extra])
        assert stop.value.code == 2
        error = capsys.readouterr().err
        assert "Traceback (most recent call last)" in error and "DataFormatError" in error
        assert "error: " in error and "run again with --debug" not in error


# -- what a user sees: the real command --------------------------------------------------------
def _wherewhat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wherewhat", *args], capture_output=True, text=True, timeout=120
    )


def test_command_prints_one_block_and_exits_2_traceback_only_with_debug(tmp_path):
    path = tmp_path / "random.ckpt"
    path.write_bytes(np.random.default_rng(1).bytes(3000))
    args = ["fit", "--config", DIGITS, "--ckpt_path", str(path), "--run.root", str(tmp_path)]
    plain = _wherewhat(*args)
    assert plain.returncode == 2
    lines = plain.stderr.strip().splitlines()
    assert lines[0].startswith(f"wherewhat fit: error: {path}: not a readable checkpoint")
    assert lines[1].startswith("  fix: ") and len(lines) == 3
    assert UNSAFE_ADVICE not in plain.stderr and plain.stdout == ""
    debug = _wherewhat(*args, "--debug")
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr and "CheckpointError" in debug.stderr
    assert debug.stderr.strip().splitlines()[-2].startswith("wherewhat fit: error: ")
