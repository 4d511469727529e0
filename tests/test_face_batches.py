"""The fast face data path equals the per-face crop path on the same geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wherewhat.data.face_batches import (
    FaceCanvasCache,
    FaceCanvasItems,
    crops_from_canvas,
    default_margin,
    sample_crop_views,
)
from wherewhat.data.face_crops import FaceLandmarkDataset, warp_to_crop
from wherewhat.data.faces import FaceRecord
from wherewhat.methods.worldcomp2d.model import WorldComp2D
from wherewhat.methods.worldcomp2d.parts import sample_contrastive_views


def _record(seed: int, size: int = 160, side: float = 64.0) -> FaceRecord:
    """A random photo with 68 landmarks whose box side is ``side`` px (crop scale 1 at S =
    1.25 * side)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    points = torch.tensor(rng.uniform(0, side, (68, 2)), dtype=torch.float32)
    points[0] = torch.tensor([0.0, 0.0])
    points[1] = torch.tensor([side, side])
    points += torch.tensor([40.0, 37.0])  # box centre (72, 69): crop pixel centres on pixel centres
    return FaceRecord(
        Path(f"face{seed}.png"), points, None, "synthetic", f"f{seed}", f"f{seed}", image=image
    )


def _views_per_face(model, crops, centres):
    return model.observe(model.normalize(crops), centres)


@pytest.mark.parametrize("flip", [False, True])
def test_batched_views_equal_per_face_path_on_pixel_aligned_geometry(flip):
    crop = 80  # 1.25 * 64: scale 1, integer shift
    records = [_record(seed) for seed in range(3)]
    faces = FaceLandmarkDataset(
        records,
        out_size=crop,
        augment=True,
        scale_jitter=0.0,
        rotation_prob=0.0,
        flip_prob=1.0 if flip else 0.0,
    )
    cache = FaceCanvasCache(records, crop_size=crop, margin=default_margin(crop))
    items = FaceCanvasItems(faces, cache)
    batch = [items[i] for i in range(3)]
    canvas = torch.stack([b["canvas"] for b in batch])
    crop_from_canvas = torch.stack([b["crop_from_canvas"] for b in batch])
    points = torch.stack([b["points"] for b in batch])
    # The per-face path on the same geometry and source: its crops, then views.
    reference = torch.stack([faces[i]["image"] for i in range(3)])
    assert torch.equal(torch.stack([faces[i]["points"] for i in range(3)]), points)
    per_face = torch.stack(
        [warp_to_crop(canvas[i], crop_from_canvas[i].double(), crop) for i in range(3)]
    )
    # The canvas holds the original's pixels (uint8, exact at scale 1).
    torch.testing.assert_close(per_face, reference, atol=1e-4, rtol=0)
    model = WorldComp2D(crop_size=crop, refiner=False)
    generator = torch.Generator().manual_seed(0)
    views = sample_contrastive_views(points, (crop, crop), generator)
    centres = torch.cat([views.centres, model.fixations.expand(3, -1, -1)], dim=1)
    # Some context views reach outside the crop: the padding must match too.
    expected = _views_per_face(model, reference, centres)
    got = sample_crop_views(
        canvas,
        crop_from_canvas,
        centres,
        model.view_sides,
        model.view_size,
        crop,
        model.mean,
        model.std,
    )
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-4
    # Same centres: the centre sample of the native view is the crop pixel at the centre.
    c = model.view_size // 2
    x, y = centres[0, 0].floor().long().tolist()
    assert torch.allclose(got[0, 0, :3, c, c], model.normalize(reference)[0, :, y, x], atol=1e-5)
    torch.testing.assert_close(
        crops_from_canvas(canvas, crop_from_canvas, crop), reference, atol=1e-4, rtol=0
    )


def test_batched_views_close_to_per_face_path_with_rotation_and_scale():
    crop = 80
    records = [_record(seed) for seed in range(4)]
    faces = FaceLandmarkDataset(records, out_size=crop, augment=True, seed=3, rotation_prob=1.0)
    cache = FaceCanvasCache(records, crop_size=crop)
    items = FaceCanvasItems(faces, cache)
    batch = [items[i] for i in range(4)]
    canvas = torch.stack([b["canvas"] for b in batch]).float() / 255
    crop_from_canvas = torch.stack([b["crop_from_canvas"] for b in batch])
    crops = torch.stack([faces[i]["image"] for i in range(4)])
    built = crops_from_canvas(canvas, crop_from_canvas, crop)
    # One interpolation of the same pixels (the canvas is the original at scale 1 here).
    assert (built - crops).abs().max() < 1e-4
    model = WorldComp2D(crop_size=crop, refiner=False)
    centres = model.fixations.expand(4, -1, -1)
    got = sample_crop_views(
        canvas,
        crop_from_canvas,
        centres,
        model.view_sides,
        model.view_size,
        crop,
        model.mean,
        model.std,
    )
    expected = _views_per_face(model, crops, centres)
    # Native views at the fixations: the per-face path samples its crop at pixel centres.
    native = slice(0, 3)
    assert (got[:, :, native] - expected[:, :, native]).abs().max() < 1e-4
    # Context views: the per-face path interpolates twice; only that blur differs.
    assert (got - expected).abs().mean() < 0.1


def test_canvas_items_follow_the_per_face_draws():
    records = [_record(seed) for seed in range(5)]
    faces = FaceLandmarkDataset(records, out_size=80, augment=True, seed=7)
    items = FaceCanvasItems(faces, FaceCanvasCache(records, crop_size=80))
    for epoch in (0, 3):
        for i in range(5):
            fast = items[(i, epoch)]
            faces.set_epoch(epoch)
            slow = faces[i]
            assert torch.allclose(fast["affine"], slow["affine"])
            assert torch.equal(fast["points"], slow["points"])
            assert bool(fast["flipped"]) == bool(slow["flipped"])


def test_shift_jitter_moves_the_crop_centre_and_keeps_the_other_draws():
    records = [_record(seed) for seed in range(6)]
    plain = FaceLandmarkDataset(records, out_size=80, augment=True, seed=2, rotation_prob=0.0)
    shifted = FaceLandmarkDataset(records, out_size=80, augment=True, seed=2, rotation_prob=0.0,
                                  shift_jitter=0.2)  # fmt: skip
    moves = []
    for i in range(6):
        scale, angle, flip, _ = plain._draw(i)
        assert shifted._draw(i)[:3] == (scale, angle, flip)  # the earlier draws are kept
        (dx, dy) = shifted._draw(i)[3]
        assert max(abs(dx), abs(dy)) <= 0.2
        # The face's box centre lands in the crop at (centre - shift * side) / side * crop/1.25.
        box_centre = (records[i].points.min(0).values + records[i].points.max(0).values) / 2
        a, b = plain.crop_affine(i)[0], shifted.crop_affine(i)[0]
        side_in_crop = 80 / 1.25 / scale
        move = (b - a)[:2, :2] @ box_centre.double() + (b - a)[:2, 2]
        expected = -torch.tensor([dx, dy], dtype=torch.float64) * side_in_crop
        if flip:
            expected[0] = -expected[0]
        torch.testing.assert_close(move, expected)
        moves.append(move.abs().max().item())
    assert max(moves) > 1.0  # the draws are not all zero
    with pytest.raises(ValueError, match="shift_jitter"):
        FaceLandmarkDataset(records, out_size=80, augment=True, shift_jitter=1.5)


def test_shifted_crops_fit_the_canvas_and_equal_the_per_face_path():
    crop = 80
    records = [_record(seed) for seed in range(4)]
    faces = FaceLandmarkDataset(records, out_size=crop, augment=True, seed=5, rotation_prob=1.0,
                                scale_jitter=0.1, shift_jitter=0.15)  # fmt: skip
    margin = default_margin(crop, 0.1, 10.0, 0.15, 1.25)
    assert margin > default_margin(crop, 0.1, 10.0)
    items = FaceCanvasItems(faces, FaceCanvasCache(records, crop_size=crop, margin=margin))
    for i in range(4):
        item = items[i]
        # Every corner of the shifted crop lies inside the canvas.
        corners = torch.tensor([[0, 0], [crop, 0], [0, crop], [crop, crop]], dtype=torch.float64)
        inverse = torch.linalg.inv(item["crop_from_canvas"].double())
        inside = corners @ inverse[:2, :2].T + inverse[:2, 2]
        assert inside.min() >= 0 and inside.max() <= crop + 2 * margin
        built = crops_from_canvas(item["canvas"][None].float() / 255,
                                  item["crop_from_canvas"][None], crop)  # fmt: skip
        assert (built[0] - faces[i]["image"]).abs().max() < 1e-4


def test_fast_path_trains_encoder_and_banked_localizer_on_real_faces(shared_data, tmp_path):
    import lightning.pytorch as pl

    from wherewhat.data.face_datamodule import FaceLandmarkDataModule
    from wherewhat.methods.worldcomp2d.task import WorldComp2DTask

    root = shared_data / "faces68"
    if not root.is_dir():
        pytest.skip(f"no faces at {root}")
    torch.manual_seed(0)
    data = FaceLandmarkDataModule(
        str(root), val_fraction=0.3, max_faces=16, batch_size=4, batched_views=True
    )
    data.setup("fit")
    assert isinstance(data.train_set, FaceCanvasItems)
    batch = next(iter(data.train_dataloader()))
    assert batch["canvas"].dtype == torch.uint8 and "image" not in batch

    def trainer():
        return pl.Trainer(
            max_steps=2,
            limit_val_batches=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            accelerator="cpu",
            default_root_dir=tmp_path,
        )

    model = WorldComp2D(refiner=False, encoder_hidden=32, latent=16, localizer_hidden=(16,))
    encoder = WorldComp2DTask(model, stage="encoder")
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    trainer().fit(encoder, datamodule=data)
    assert any(not torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    second = WorldComp2D(refiner=False, encoder_hidden=32, latent=16, localizer_hidden=(16,))
    second.encoder.load_state_dict(model.encoder.state_dict())
    localizer = WorldComp2DTask(second, stage="localizer", code_bank=2)
    localizer_before = {k: v.clone() for k, v in second.localizer.state_dict().items()}
    trainer().fit(localizer, datamodule=data)
    assert localizer.bank is not None and localizer.bank.codes.shape[:2] == (len(data.train_set), 2)
    changed = second.localizer.state_dict()
    assert any(not torch.equal(localizer_before[k], changed[k]) for k in changed)


def test_batch_images_and_points_builds_crops_of_a_fast_batch():
    from torch.utils.data import default_collate

    from wherewhat.data.face_crops import batch_images_and_points

    records = [_record(seed) for seed in range(3)]
    faces = FaceLandmarkDataset(
        records, out_size=80, augment=True, scale_jitter=0.0, rotation_prob=0.0
    )
    items = FaceCanvasItems(faces, FaceCanvasCache(records, crop_size=80))
    batch = default_collate([items[(i, 1)] for i in range(3)])
    images, points = batch_images_and_points(batch, 0)
    faces.set_epoch(1)
    expected = torch.stack([faces[i]["image"] for i in range(3)])
    assert images.shape == (3, 3, 80, 80)
    assert (images - expected).abs().max() < 1e-4
    assert torch.equal(points, batch["points"])


def test_channels_last_encoder_gives_the_same_codes():
    from wherewhat.methods.worldcomp2d.task import WorldComp2DTask

    torch.manual_seed(0)
    model = WorldComp2D(crop_size=80, refiner=False).eval()
    observations = torch.randn(2, 9, 6, 27, 27)
    expected = model.encode(observations)
    task = WorldComp2DTask(model, channels_last=True)
    assert task.model.channels_last
    task.model.eval()
    torch.testing.assert_close(task.model.encode(observations), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("stage", ["encoder", "localizer", "refiner"])
def test_every_stage_steps_on_a_fast_batch(stage):
    from torch.utils.data import default_collate

    from wherewhat.methods.worldcomp2d.task import WorldComp2DTask

    torch.manual_seed(0)
    records = [_record(seed) for seed in range(4)]
    faces = FaceLandmarkDataset(records, out_size=80, augment=True)
    items = FaceCanvasItems(faces, FaceCanvasCache(records, crop_size=80))
    batch = default_collate([items[(i, 0)] for i in range(4)])
    task = WorldComp2DTask(WorldComp2D(crop_size=80), stage=stage)
    task.model.localizer.set_mean_shape(batch["points"])
    task.on_train_epoch_start()
    loss = task.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.requires_grad


def test_fast_loader_with_a_worker(shared_data):
    from wherewhat.data.face_datamodule import FaceLandmarkDataModule

    root = shared_data / "faces68"
    if not root.is_dir():
        pytest.skip(f"no faces at {root}")
    data = FaceLandmarkDataModule(
        str(root), val_fraction=0.3, max_faces=12, batch_size=4, batched_views=True, num_workers=1
    )
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert batches and all(b["canvas"].shape[0] == 4 for b in batches)
