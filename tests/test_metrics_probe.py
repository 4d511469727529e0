"""Table-2 protocol (IoU matching, logistic probe), k-NN probe and reconstruction MSE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics import MeanSquaredError

from wherewhat.metrics.probe import (
    UNMATCHED,
    knn_probe,
    latent_probe,
    match_objects_in_scenes,
    match_objects_to_labels,
)
from wherewhat.metrics.reconstruction import ReconstructionMSE, reconstruction_mse

GT_BOXES = torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]])
GT_LABELS = torch.tensor([3, 7])
PRED_BOXES = torch.tensor(
    [
        [0.0, 0, 10, 9],  # IoU 0.9 with the "3"
        [22, 22, 40, 40],  # IoU 324 / 400 = 0.81 with the "7"
        [5, 0, 15, 10],  # IoU 50 / 150 = 1/3 with the "3"
        [100, 100, 110, 110],  # overlaps nothing
    ]
)


def test_match_hand_example_with_min_iou():
    labels, matched = match_objects_to_labels(PRED_BOXES, GT_BOXES, GT_LABELS, min_iou=0.5)
    assert labels.tolist() == [3, 7, UNMATCHED, UNMATCHED]
    assert matched.tolist() == [True, True, False, False]
    labels, _ = match_objects_to_labels(PRED_BOXES, GT_BOXES, GT_LABELS, min_iou=0.3)
    assert labels.tolist() == [3, 7, 3, UNMATCHED]


def test_min_iou_zero_reproduces_the_reference_argmax():
    # No minimum: every object takes the label of its argmax-IoU box, even at zero overlap
    # (argmax of all-zero IoUs is the first box).
    labels, matched = match_objects_to_labels(PRED_BOXES, GT_BOXES, GT_LABELS, min_iou=0.0)
    assert labels.tolist() == [3, 7, 3, 3]
    assert matched.all()


def test_match_over_scenes_counts_unmatched_and_keeps_scene_index():
    matches = match_objects_in_scenes(
        [PRED_BOXES, torch.zeros(0, 4), PRED_BOXES[:2]],
        [GT_BOXES, GT_BOXES, torch.zeros(0, 4)],  # scene 2 has no ground truth
        [GT_LABELS, GT_LABELS, torch.zeros(0, dtype=torch.int64)],
    )
    assert matches.n_objects == 6
    assert matches.n_unmatched == 4  # two in scene 0, both of scene 2
    assert matches.image_index.tolist() == [0, 0, 0, 0, 2, 2]
    assert matches.labels[matches.matched].tolist() == [3, 7]
    assert matches.best_iou[:2].tolist() == pytest.approx([0.9, 0.81])
    summary = matches.summary()
    assert summary["n_matched"] == 2 and summary["unmatched_fraction"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="scene 1"):
        match_objects_in_scenes([PRED_BOXES] * 2, [GT_BOXES] * 2, [GT_LABELS, GT_LABELS[:1]])


def clusters(n_per_class: int, n_classes: int = 4, dim: int = 16, seed: int = 0, spread=0.5):
    """Gaussian clusters around well-separated centres (+ an offset, so raw scale matters)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 3.0 + 10.0
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centres[y] + rng.normal(size=(len(y), dim)) * spread, y


def test_logistic_probe_separable_clusters_near_perfect():
    z, y = clusters(100, seed=0)  # alternate samples: train and test share the centres
    train_z, train_y, test_z, test_y = z[::2], y[::2], z[1::2], y[1::2]
    result = latent_probe(torch.from_numpy(train_z), torch.from_numpy(train_y), test_z, test_y)
    assert result["accuracy"] >= 0.99 and result["f1"] >= 0.99
    assert result["converged"] and result["solver"] == "lbfgs"
    assert result["seeds"] == [0, 1, 2] and len(result["per_seed"]) == 3
    # lbfgs on the full set solves one convex problem: no spread over seeds.
    assert result["accuracy_std"] == pytest.approx(0.0)
    assert result["confusion_matrices"].shape == (3, 4, 4)
    assert result["confusion_matrices"].sum(axis=(1, 2)).tolist() == [len(test_y)] * 3


def test_logistic_probe_random_labels_is_at_chance_and_reports_spread():
    rng = np.random.default_rng(0)
    n_classes = 5
    train_z, test_z = rng.normal(size=(600, 8)), rng.normal(size=(2000, 8))
    train_y, test_y = rng.integers(0, n_classes, 600), rng.integers(0, n_classes, 2000)
    result = latent_probe(train_z, train_y, test_z, test_y, seeds=(0, 1, 2), train_subsample=300)
    assert abs(result["accuracy"] - 1 / n_classes) < 0.05
    # Different subsamples per seed give different fits: the std is real and reported.
    assert result["accuracy_std"] > 0
    accuracies = [s["accuracy"] for s in result["per_seed"]]
    assert result["accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert result["n_train"] == 300


def test_probe_rejects_unmatched_labels_and_bad_shapes():
    z, y = clusters(10)
    with pytest.raises(ValueError, match="unmatched"):
        latent_probe(z, np.where(y == 0, UNMATCHED, y), z, y)
    with pytest.raises(ValueError, match="one per feature row"):
        latent_probe(z, y[:-1], z, y)
    with pytest.raises(ValueError, match="non-finite"):
        latent_probe(np.full_like(z, np.nan), y, z, y)


def test_knn_probe_on_clusters_and_on_noise():
    z, y = clusters(100, seed=2)
    result = knn_probe(z[::2], y[::2], z[1::2], y[1::2], k=5)
    assert result["accuracy"] == pytest.approx(1.0)
    assert result["confusion_matrix"].trace() == len(y[1::2])
    rng = np.random.default_rng(1)
    noise = knn_probe(rng.normal(size=(500, 8)), rng.integers(0, 4, 500),
                      rng.normal(size=(2000, 8)), rng.integers(0, 4, 2000), k=10)  # fmt: skip
    assert abs(noise["accuracy"] - 0.25) < 0.05


def test_knn_probe_k1_on_the_training_set_is_exact_and_ties_break_by_similarity():
    rng = np.random.default_rng(3)
    z, y = rng.normal(size=(50, 6)), rng.integers(0, 3, 50)
    for weighting in ("uniform", "exp"):
        assert knn_probe(z, y, z, y, k=1, weighting=weighting)["accuracy"] == 1.0
    # One neighbour of each class (k=2): the more similar one wins the uniform vote.
    train_z = np.array([[1.0, 0.2], [1.0, -0.5]])
    result = knn_probe(train_z, np.array([0, 1]), np.array([[1.0, 0.0]]), np.array([0]), k=2,
                       weighting="uniform")  # fmt: skip
    assert result["accuracy"] == 1.0


# --------------------------------------------------------------------------- reconstruction


def test_mse_known_value_and_per_image():
    pred = torch.zeros(2, 1, 4, 4)
    target = torch.cat([torch.full((1, 1, 4, 4), 0.5), torch.ones(1, 1, 4, 4)])
    assert reconstruction_mse(pred, target).tolist() == pytest.approx([0.25, 1.0])
    metric = ReconstructionMSE()
    metric.update(pred, target)
    assert metric.compute().item() == pytest.approx(0.625)


def test_mse_over_uneven_batches_equals_one_shot_and_torchmetrics():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(9, 3, 8, 8, generator=g), torch.rand(9, 3, 8, 8, generator=g)
    ours, reference = ReconstructionMSE(), MeanSquaredError()
    for start, stop in ((0, 4), (4, 8), (8, 9)):  # last batch has one image
        ours.update(pred[start:stop], target[start:stop])
        reference.update(pred[start:stop], target[start:stop])
    one_shot = (pred.double() - target.double()).square().mean().item()
    assert ours.compute().item() == pytest.approx(one_shot, rel=1e-6)
    assert ours.compute().item() == pytest.approx(reference.compute().item(), rel=1e-5)
    assert ours.per_image().shape == (9,)
    assert ours.per_image().mean().item() == pytest.approx(one_shot)


def test_mse_rejects_out_of_range_and_mismatched_images():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reconstruction_mse(torch.full((1, 1, 2, 2), 255.0), torch.zeros(1, 1, 2, 2))
    assert reconstruction_mse(
        torch.full((1, 1, 2, 2), 2.0), torch.zeros(1, 1, 2, 2), check_range=False
    ).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="differ"):
        reconstruction_mse(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
    with (
        pytest.warns(UserWarning, match="before the ``update``"),
        pytest.raises(ValueError, match="no image"),
    ):
        ReconstructionMSE().compute()


def test_probe_accuracy_by_group_shows_where_it_falls_short():
    """Class 0 / 1 split along feature 0; the 'hard' test rows carry the wrong side's feature,
    so the probe gets exactly them wrong: accuracy 1 in group 'easy', 0 in 'hard'."""
    from wherewhat.metrics.probe import accuracy_by_group

    rng = np.random.default_rng(0)
    train_y = np.repeat([0, 1], 50)
    train_z = np.stack([np.where(train_y == 1, 2.0, -2.0) + rng.normal(0, 0.1, 100),
                        rng.normal(0, 0.1, 100)], 1)  # fmt: skip
    test_y = np.array([0, 1, 0, 1, 0, 1])
    side = np.array([-2.0, 2.0, -2.0, 2.0, 2.0, -2.0])  # the last two on the wrong side
    test_z = np.stack([side, np.zeros(6)], 1)
    result = latent_probe(train_z, train_y, test_z, test_y, seeds=(0, 1))
    assert result["test_correct"].tolist() == [1, 1, 1, 1, 0, 0]
    groups = np.array(["easy"] * 4 + ["hard"] * 2)
    assert accuracy_by_group(result["test_correct"], groups) == {
        "easy": {"accuracy": 1.0, "n": 4}, "hard": {"accuracy": 0.0, "n": 2}}  # fmt: skip
    assert accuracy_by_group([1, 0.5, 0], [2, 2, 0]) == {0: {"accuracy": 0.0, "n": 1},
                                                         2: {"accuracy": 0.75, "n": 2}}  # fmt: skip
    with pytest.raises(ValueError, match="groups has 5 entries"):
        accuracy_by_group(result["test_correct"], groups[:5])
