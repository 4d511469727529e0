"""The code bank holds the frozen encoder's codes for K augmentations per face."""

from __future__ import annotations

import torch
from tests.test_face_batches import _record

from wherewhat.data.face_batches import FaceCanvasCache, FaceCanvasItems
from wherewhat.data.face_crops import FaceLandmarkDataset
from wherewhat.methods.worldcomp2d.model import WorldComp2D, build_code_bank
from wherewhat.methods.worldcomp2d.task import WorldComp2DTask


def _items(augment_kwargs):
    records = [_record(seed) for seed in range(5)]
    faces = FaceLandmarkDataset(records, out_size=80, augment=True, seed=2, **augment_kwargs)
    return faces, FaceCanvasItems(faces, FaceCanvasCache(records, crop_size=80))


def test_bank_equals_fresh_encoder_codes_for_the_same_augmentation():
    torch.manual_seed(0)
    model = WorldComp2D(crop_size=80, refiner=False).eval()
    # Pixel-aligned augmentations (flip only): the per-face path is exact there.
    faces, items = _items({"scale_jitter": 0.0, "rotation_prob": 0.0})
    bank = build_code_bank(model, items, num_augmentations=3, batch_size=2)
    assert bank.codes.shape == (5, 3, 9, 256)
    flips = set()
    for k in range(3):
        faces.set_epoch(k)
        crops = torch.stack([faces[i]["image"] for i in range(5)])
        flips |= {bool(faces[i]["flipped"]) for i in range(5)}
        with torch.no_grad():
            fresh = model.encode(
                model.observe(model.normalize(crops), model.fixations.expand(5, -1, -1))
            )
        torch.testing.assert_close(bank.codes[:, k], fresh, atol=1e-4, rtol=0)
        points = torch.stack([faces[i]["points"] for i in range(5)])
        assert torch.equal(bank.points[:, k], points)
        codes, looked_up = bank.lookup(torch.tensor([3, 1]), k + 3)  # epoch k + K -> k
        assert torch.equal(codes, bank.codes[[3, 1], k])
        assert torch.equal(looked_up, points[[3, 1]])
    assert flips == {False, True}


def test_banked_localizer_step_trains_on_bank_codes_only():
    torch.manual_seed(0)
    task = WorldComp2DTask(WorldComp2D(crop_size=80, refiner=False), stage="localizer", code_bank=2)
    task.model.localizer.set_mean_shape(torch.rand(5, 68, 2) * 80)
    _, items = _items({})
    task.build_bank(items)
    batch = {"index": torch.tensor([0, 2, 4]), "points": torch.zeros(3, 68, 2)}
    calls = []
    task.model.encoder.register_forward_hook(lambda *a: calls.append(1))
    loss = task.training_step(batch, 0)
    assert loss.requires_grad and torch.isfinite(loss)
    assert not calls  # the encoder did not run
