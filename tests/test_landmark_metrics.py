"""Landmark metrics: NME with each normalisation, FR, AUC, CED and the accumulating metric."""

from __future__ import annotations

import math

import pytest
import torch

from wherewhat.metrics.landmarks import (
    LandmarkNME,
    auc,
    cumulative_error_curve,
    failure_rate,
    nme,
    normalizing_distance,
)


def _toy_face(num_points: int = 68) -> torch.Tensor:
    """A deterministic (1, K, 2) face: points on a grid inside [10, 50] x [20, 80]."""
    k = torch.arange(num_points, dtype=torch.float32)
    points = torch.stack([10 + (k * 7) % 41, 20 + (k * 13) % 61], dim=-1)
    return points.unsqueeze(0)


def test_nme_hand_computed_inter_ocular_68():
    target = _toy_face()
    target[0, 36] = torch.tensor([0.0, 0.0])
    target[0, 45] = torch.tensor([4.0, 3.0])  # inter-ocular distance 5
    pred = target.clone()
    pred[0, 0] += torch.tensor([3.0, 4.0])  # error 5 on one landmark
    pred[0, 10] += torch.tensor([-6.0, 8.0])  # error 10 on another
    assert torch.allclose(normalizing_distance(target), torch.tensor([5.0]))
    assert torch.allclose(nme(pred, target), torch.tensor([(5 + 10) / 68 / 5]))


def test_nme_normalisations_and_schemes():
    target = _toy_face()
    target[0, 36:42] = torch.tensor([[0, 0], [1, -1], [2, -1], [3, 0], [2, 1], [1, 1.0]])
    target[0, 42:48] = target[0, 36:42] + torch.tensor([9.0, 0.0])
    # eye centres (1.5, 0) and (10.5, 0): inter-pupil 9; outer corners 36 (0,0) and 45 (12,0)
    assert torch.allclose(normalizing_distance(target, "inter_pupil"), torch.tensor([9.0]))
    assert torch.allclose(normalizing_distance(target, "inter_ocular"), torch.tensor([12.0]))
    box = torch.tensor([[[0.0, 0.0], [8.0, 2.0], [4.0, 1.0]]])  # 8 x 2 box
    assert torch.allclose(normalizing_distance(box, "box"), torch.tensor([4.0]))
    assert torch.allclose(normalizing_distance(box, "diagonal"), torch.tensor([math.hypot(8, 2)]))

    wflw = _toy_face(98)
    wflw[0, 60], wflw[0, 72] = torch.tensor([1.0, 1.0]), torch.tensor([7.0, 9.0])
    assert torch.allclose(normalizing_distance(wflw), torch.tensor([10.0]))
    cofw = _toy_face(29)
    cofw[0, 8], cofw[0, 9] = torch.tensor([0.0, 0.0]), torch.tensor([0.0, 6.0])
    cofw[0, 16], cofw[0, 17] = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 4.0])
    assert torch.allclose(normalizing_distance(cofw), torch.tensor([6.0]))
    assert torch.allclose(normalizing_distance(cofw, "inter_pupil"), torch.tensor([3.0]))


def test_nme_is_invariant_to_similarity_transforms():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(4, 68, 2, generator=generator) * 100
    pred = target + torch.randn(4, 68, 2, generator=generator)
    angle = torch.tensor(0.7)
    rotation = torch.stack(
        [torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])]
    )

    def move(p):
        return 3.5 * p @ rotation.T + torch.tensor([20.0, -7.0])

    for mode in ("inter_ocular", "inter_pupil"):
        assert torch.allclose(
            nme(move(pred), move(target), mode), nme(pred, target, mode), rtol=1e-4
        )
    for mode in ("box", "diagonal"):  # axis-aligned boxes: scale and shift only
        assert torch.allclose(nme(pred * 2 + 5, target * 2 + 5, mode), nme(pred, target, mode))
    assert torch.allclose(nme(target, target), torch.zeros(4))


def test_nme_rejects_bad_input():
    face = _toy_face()
    with pytest.raises(ValueError, match="unknown normalisation"):
        nme(face, face, "eyes")
    with pytest.raises(ValueError, match="differ"):
        nme(face[:, :60], face)
    with pytest.raises(ValueError, match="68-, 98- or 29-point"):
        nme(face[:, :19], face[:, :19])
    assert nme(face[:, :19], face[:, :19], "box").shape == (1,)
    flat = torch.zeros(2, 68, 2)
    flat[0] = face[0]
    with pytest.raises(ValueError, match=r"zero or undefined for faces \[1\]"):
        normalizing_distance(flat)
    with pytest.raises(ValueError, match=r"\(B, K, 2\)"):
        nme(face[0], face[0])


def test_failure_rate_auc_and_ced_known_values():
    nmes = torch.tensor([0.05, 0.10, 0.15, 0.20])
    assert float(failure_rate(nmes, 0.10)) == pytest.approx(0.5)  # 0.10 itself is no failure
    assert float(failure_rate(nmes, 0.08)) == pytest.approx(0.75)
    # CED up to 0.1 of [0, 0.05, 0.2]: 1/3 on [0, 0.05), 2/3 on [0.05, 0.1] -> area 0.05 / 0.1
    three = torch.tensor([0.0, 0.05, 0.2])
    assert float(auc(three, 0.10)) == pytest.approx(0.5)
    assert float(auc(three, 0.10, steps=20000)) == pytest.approx(0.5, abs=1e-3)
    assert float(auc(torch.zeros(5))) == pytest.approx(1.0)
    assert float(auc(torch.full((5,), 0.3))) == pytest.approx(0.0)
    assert float(auc(torch.tensor([0.02]), 0.08)) == pytest.approx(0.75)
    errors, fraction = cumulative_error_curve(three, 0.10, steps=10)
    assert errors.shape == fraction.shape == (11,)
    assert torch.allclose(fraction, torch.tensor([1 / 3] * 5 + [2 / 3] * 6))
    assert (fraction.diff() >= 0).all()
    with pytest.raises(ValueError, match="at least one face"):
        failure_rate(torch.tensor([]))


def test_landmark_nme_metric_over_uneven_batches_equals_one_shot():
    generator = torch.Generator().manual_seed(3)
    target = torch.rand(23, 68, 2, generator=generator) * 200
    pred = (
        target
        + torch.randn(23, 68, 2, generator=generator) * torch.linspace(0.5, 30, 23)[:, None, None]
    )
    metric = LandmarkNME()
    for start, stop in [(0, 1), (1, 8), (8, 9), (9, 23)]:
        metric.update(pred[start:stop], target[start:stop])
    result = metric.compute()
    one_shot = nme(pred, target)
    assert metric.per_face().shape == (23,)
    assert torch.allclose(result["nme"], one_shot.mean())
    assert torch.allclose(result["fr"], failure_rate(one_shot))
    assert torch.allclose(result["auc"], auc(one_shot))
    assert 0 < float(result["fr"]) < 1  # the example spans both sides of the threshold
    metric.reset()
    metric.update(pred[:2], target[:2])
    assert torch.allclose(metric.compute()["nme"], one_shot[:2].mean())


def test_landmark_nme_metric_gathers_uneven_processes():
    """With a stand-in for the process group: faces from every process are concatenated."""
    generator = torch.Generator().manual_seed(4)
    target = torch.rand(9, 68, 2, generator=generator) * 100
    pred = target + torch.randn(9, 68, 2, generator=generator) * 3
    other = nme(
        pred[5:], target[5:], "inter_pupil"
    )  # what the second process accumulated (4 faces)

    def gather(tensor, group=None):
        return [tensor, other]

    metric = LandmarkNME(
        mode="inter_pupil", dist_sync_fn=gather, distributed_available_fn=lambda: True
    )
    metric.update(pred[:2], target[:2])
    metric.update(pred[2:5], target[2:5])
    result = metric.compute()
    assert torch.allclose(result["nme"], nme(pred, target, "inter_pupil").mean())
