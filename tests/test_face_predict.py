"""Landmark prediction on a folder of photos: boxes, crops, the .pts / overlay writer, the CLI."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from wherewhat.data.face_formats import read_pts, write_pts
from wherewhat.data.face_predict import (
    FacePredictDataModule,
    LandmarkPredictionWriter,
    find_faces,
    read_boxes_file,
)
from wherewhat.errors import DataFormatError
from wherewhat.geometry import apply_affine
from wherewhat.methods.worldcomp2d.model import WorldComp2D
from wherewhat.methods.worldcomp2d.task import WorldComp2DTask

# Crop-frame points the stub model "predicts" on a 64 px crop: the crop's centre and a corner.
CROP_POINTS = torch.tensor([[32.0, 32.0], [0.0, 0.0], [64.0, 48.0]])


class _FixedCropPoints(pl.LightningModule):
    """Predicts CROP_POINTS on every crop, mapped to original pixels like the real tasks."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def predict_step(self, batch, batch_idx):
        from wherewhat.data.face_crops import uncrop_points

        crop = CROP_POINTS.expand(len(batch["image"]), -1, -1)
        return {"crop_points": crop, "points": uncrop_points(crop, batch["affine"])}


def _photo(path: Path, width: int = 120, height: int = 90) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def _trainer(callback) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
    )  # fmt: skip


def _predict(module, data, callback) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*num_workers.*")
        _trainer(callback).predict(module, data, return_predictions=False)


def test_writer_writes_pts_in_the_photo_frame_from_a_boxes_file(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "a.png")
    _photo(photos / "b.jpg")
    # Face 0 of a.png: box 40 x 20 px at (10, 30) -> square crop of side 1.25 * 40 = 50 px
    # centred on (30, 40); a 64 px crop pixel is 50 / 64 photo px. a.png has two faces.
    (tmp_path / "boxes.txt").write_text(
        "# photo x1 y1 x2 y2\na.png 10 30 50 50\n\na.png 60 10 100 70\nb.jpg 0 0 64 64\n"
    )
    data = FacePredictDataModule(
        str(photos), boxes_file=str(tmp_path / "boxes.txt"), crop_size=64, batch_size=2
    )
    out = tmp_path / "out"
    writer = LandmarkPredictionWriter(output_dir=str(out))
    _predict(_FixedCropPoints(), data, writer)

    assert sorted(p.name for p in out.iterdir()) == [
        "a_0.pts", "a_1.pts", "a_landmarks.png", "b.pts", "b_landmarks.png",
    ]  # fmt: skip
    scale = 50 / 64
    expected = (CROP_POINTS - 32) * scale + torch.tensor([30.0, 40.0])
    torch.testing.assert_close(read_pts(out / "a_0.pts"), expected, atol=1e-4, rtol=0)
    # Face 1: side 1.25 * 60 = 75 px centred on (80, 40).
    expected = (CROP_POINTS - 32) * (75 / 64) + torch.tensor([80.0, 40.0])
    torch.testing.assert_close(read_pts(out / "a_1.pts"), expected, atol=1e-4, rtol=0)
    with Image.open(out / "a_landmarks.png") as overlay:
        assert overlay.size == (120, 90)
    # A second run into the same folder never overwrites what is there.
    with pytest.raises(FileExistsError, match="a_0.pts exists"):
        _predict(_FixedCropPoints(), data, LandmarkPredictionWriter(output_dir=str(out)))


def test_pts_boxes_are_the_landmark_box_and_predictions_round_trip(tmp_path):
    _photo(tmp_path / "face.jpg", 200, 160)
    landmarks = torch.tensor([[50.25, 40.5], [130.0, 60.0], [90.0, 120.75]])
    write_pts(tmp_path / "face.pts", landmarks)
    (faces,) = find_faces(tmp_path)
    torch.testing.assert_close(faces.box, torch.tensor([50.25, 40.5, 130.0, 120.75]))
    data = FacePredictDataModule(str(tmp_path), crop_size=64, batch_size=1)
    data.setup()
    item = data.dataset[0]
    # An oracle that predicts the true landmarks in the crop writes them back unchanged.

    class Oracle(_FixedCropPoints):
        def predict_step(self, batch, batch_idx):
            from wherewhat.data.face_crops import uncrop_points

            crop = apply_affine(landmarks.double(), batch["affine"][0].double()).float()[None]
            return {"crop_points": crop, "points": uncrop_points(crop, batch["affine"])}

    out = tmp_path / "out"
    _predict(Oracle(), data, LandmarkPredictionWriter(output_dir=str(out), overlays=False))
    torch.testing.assert_close(read_pts(out / "face.pts"), landmarks, atol=1e-4, rtol=0)
    assert item["image"].shape == (3, 64, 64) and not (out / "face_landmarks.png").exists()


def test_boxes_file_errors_name_the_line(tmp_path):
    _photo(tmp_path / "a.png")
    bad = tmp_path / "boxes.txt"
    bad.write_text("a.png 1 2 3 4\na.png 10 10 5 20\n")
    with pytest.raises(DataFormatError, match=r"boxes.txt:2: .*x1 < x2"):
        read_boxes_file(bad, tmp_path)
    bad.write_text("a.png 1 2 3\n")
    with pytest.raises(DataFormatError, match=r"boxes.txt:1: .*x1 y1 x2 y2"):
        read_boxes_file(bad, tmp_path)
    bad.write_text("missing.png 1 2 3 4\n")
    with pytest.raises(DataFormatError, match=r"boxes.txt:1: .*not found"):
        read_boxes_file(bad, tmp_path)


def test_writer_needs_original_pixel_points(tmp_path):
    class NoPoints(_FixedCropPoints):
        def predict_step(self, batch, batch_idx):
            return {"crop_points": CROP_POINTS[None]}

    _photo(tmp_path / "a.png")
    (tmp_path / "boxes.txt").write_text("a.png 10 30 50 50\n")
    data = FacePredictDataModule(str(tmp_path), boxes_file=str(tmp_path / "boxes.txt"),
                                 crop_size=64)  # fmt: skip
    with pytest.raises(ValueError, match="'points'"):
        _predict(NoPoints(), data, LandmarkPredictionWriter(output_dir=str(tmp_path / "o")))


def test_cli_predict_with_the_config_and_a_checkpoint(tmp_path):
    """``wherewhat predict --config configs/worldcomp2d/predict.yaml --ckpt_path ...``: the
    checkpoint's (tiny) model replaces the config's and .pts + overlays land in the run dir."""
    from wherewhat.training.harness import run_lightning_cli

    tiny = dict(
        encoder_channels=(8, 8, 16, 16, 16, 32), encoder_hidden=32, latent=16,
        localizer_hidden=(32,), refiner_width=6, refiner_groups=2, refiner_blocks=1,
    )  # fmt: skip
    task = WorldComp2DTask(WorldComp2D(**tiny), stage="refiner")
    hparams = {
        **dict(task.hparams),
        "_class_path": "wherewhat.methods.worldcomp2d.task.WorldComp2DTask",
    }
    checkpoint = tmp_path / "tiny.ckpt"
    torch.save(
        {"state_dict": task.state_dict(), "hyper_parameters": hparams,
         "pytorch-lightning_version": pl.__version__},
        checkpoint,
    )  # fmt: skip
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "p.jpg", 160, 120)
    write_pts(photos / "p.pts", torch.tensor([[40.0, 30.0], [100.0, 50.0], [70.0, 100.0]]))
    config = Path(__file__).resolve().parents[1] / "configs" / "worldcomp2d" / "predict.yaml"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        cli = run_lightning_cli(
            ["predict", "--config", str(config), "--ckpt_path", str(checkpoint),
             "--data.init_args.root", str(photos), "--run.dir", str(tmp_path / "run"),
             "--run.progress", "none"]
        )  # fmt: skip
    assert isinstance(cli.model, WorldComp2DTask) and cli.model.model.encoder.latent == 16
    written = read_pts(tmp_path / "run" / "predictions" / "p.pts")
    assert written.shape == (68, 2) and torch.isfinite(written).all()
    assert (tmp_path / "run" / "predictions" / "p_landmarks.png").is_file()
