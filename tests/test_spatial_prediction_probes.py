"""Probes of frozen SSL features: linear / k-NN, corruptions, SP read-out, landmark regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wherewhat.methods.spatial_prediction import PhotometricConfig, SpatialPredictionConfig, TinyCNN
from wherewhat.methods.spatial_prediction.probes import (
    CORRUPTIONS,
    LinearProbe,
    corrupt,
    encode_images,
    fit_sp_readout,
    landmark_probe,
    sample_view_pairs,
    sp_pair_error,
)
from wherewhat.metrics.probe import knn_probe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def separable(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes: Gaussian blobs (std 0.3) around far-apart centres in 8 dims."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.zeros(3, 8)
    centres[0, 0], centres[1, 1], centres[2, 2] = 5.0, 5.0, 5.0
    labels = torch.arange(3).repeat_interleave(n_per_class)
    return centres[labels] + 0.3 * torch.randn(len(labels), 8, generator=g), labels


def test_linear_and_knn_probes_give_known_accuracies():
    train_x, train_y = separable(50, 0)
    test_x, test_y = separable(40, 1)
    # Relabel 12 of the 120 test points to a wrong class: a perfect probe scores exactly 0.9.
    wrong = test_y.clone()
    wrong[::10] = (wrong[::10] + 1) % 3
    probe = LinearProbe().fit(train_x, train_y)
    assert probe.converged
    assert probe.accuracy(test_x, test_y) == 1.0
    assert probe.accuracy(test_x, wrong) == pytest.approx(0.9)
    assert knn_probe(train_x, train_y, test_x, wrong, k=20)["accuracy"] == pytest.approx(0.9)
    # Labels unrelated to the features: the probe cannot beat chance by much.
    shuffled = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(2))]
    chance = LinearProbe().fit(train_x, shuffled).accuracy(test_x, test_y)
    assert chance < 0.6
    with pytest.raises(RuntimeError, match="before fit"):
        LinearProbe().predict(test_x)
    with pytest.raises(ValueError, match="single class"):
        LinearProbe().fit(train_x, torch.zeros_like(train_y))


def smooth_images(n: int, seed: int, size: int = 24) -> torch.Tensor:
    """Random low-frequency colour images in [0.1, 0.9] (natural-image-like spectra)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")
    return (0.1 + 0.8 * images).clamp(0, 1)


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corruptions_are_deterministic_and_severity_monotone(kind):
    images = smooth_images(6, 0)
    images = images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    images = images.clamp(0, 1)
    distances = []
    for severity in (1, 2, 3):
        once = corrupt(images, kind, severity, seed=3)
        torch.testing.assert_close(once, corrupt(images, kind, severity, seed=3), rtol=0, atol=0)
        assert once.shape == images.shape and once.min() >= 0 and once.max() <= 1
        distances.append(float((once - images).pow(2).mean()))
    assert 0 < distances[0] < distances[1] < distances[2]
    if kind == "gaussian_noise":
        assert not torch.equal(corrupt(images, kind, 2, seed=3), corrupt(images, kind, 2, seed=4))
    # uint8 input is accepted and scaled to [0, 1].
    as_uint8 = (images * 255).round().to(torch.uint8)
    assert corrupt(as_uint8, kind, 1).dtype == torch.float32


def test_corrupt_rejects_unknown_kind_and_severity():
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(torch.rand(1, 3, 8, 8), "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(torch.rand(1, 3, 8, 8), "contrast", 4)


def test_encode_images_restores_mode_and_gives_maps():
    encoder = TinyCNN(4).train()
    images = (torch.rand(5, 3, 16, 16) * 255).to(torch.uint8)
    pooled = encode_images(encoder, images, batch_size=2)
    assert pooled.shape == (5, 16) and encoder.training
    flat = encode_images(encoder, images, feature_map=True)
    assert flat.shape == (5, 16 * 4 * 4)
    # Eval mode inside: the same images give the same features in any batch size.
    torch.testing.assert_close(pooled, encode_images(encoder, images, batch_size=5))


def gradient_images(n: int, size: int = 32) -> torch.Tensor:
    """R = x / W, G = y / H at pixel centres, B = 0.5: a view's mean colour is its box centre."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    image = torch.stack(
        [centres[None].expand(size, size), centres[:, None].expand(size, size),
         torch.full((size, size), 0.5)]
    )  # fmt: skip
    return image[None].expand(n, -1, -1, -1).contiguous()


class MeanColour(nn.Module):
    """Frozen 'encoder': a view's mean red and green = where it came from."""

    feature_dim = 2

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return views[:, :2].mean((-1, -2))


class Noise(nn.Module):
    """Frozen 'encoder' whose features say nothing about the view (seeded noise)."""

    feature_dim = 2

    def __init__(self):
        super().__init__()
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(views), 2, generator=self.generator)


def test_sp_readout_learns_positions_only_when_the_features_hold_them():
    config = SpatialPredictionConfig(num_pairs=1, hidden_dim=32)
    clean = PhotometricConfig.off()  # the colour code must survive
    train = sample_view_pairs(gradient_images(600), config, seed=0, photometric=clean)
    test = sample_view_pairs(gradient_images(200), config, seed=1, photometric=clean)
    assert train.flipped.any() and not train.flipped.all()  # both frames occur
    informed = sp_pair_error(fit_sp_readout(MeanColour(), train, config, 2, steps=300), test)
    blind = sp_pair_error(fit_sp_readout(Noise(), train, config, 2, steps=300), test)
    assert informed["mae_dy"] < 0.06 < 0.15 < blind["mae_dy"]
    # Targets live in the frame the network sees: a flip mirrors the content, but a view's mean
    # colour (cut from the unflipped image, then mirrored) still tells the unflipped x, so dx
    # (negated under flips) cannot be read from it: its error stays at the blind level.
    assert informed["mae_dx"] > 0.8 * blind["mae_dx"]
    assert informed["ratio"] < 0.85 and blind["ratio"] > 0.9
    # Pairs are a pure function of the seed.
    again = sample_view_pairs(gradient_images(200), config, seed=1, photometric=clean)
    torch.testing.assert_close(again.views, test.views)


def test_landmark_probe_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    n_train, n_test, dim = 300, 100, 12
    base = torch.rand(68, 2, generator=g) * 40 + 10
    base[36], base[45] = torch.tensor([15.0, 20.0]), torch.tensor([45.0, 20.0])  # eye corners
    weights = torch.randn(dim, 68 * 2, generator=g)
    features = torch.randn(n_train + n_test, dim, generator=g)
    points = (base.flatten() + features @ weights).view(-1, 68, 2)
    result = landmark_probe(features[:n_train], points[:n_train], features[n_train:],
                            points[n_train:])  # fmt: skip
    assert result["nme"] < 1e-3
    assert result["nme_mean_shape"] > 0.1
    assert result["alpha"] == 0.1 and result["n_test"] == n_test
    # Features unrelated to the points: no better than the mean shape.
    noise = torch.randn(n_train + n_test, dim, generator=g)
    blind = landmark_probe(noise[:n_train], points[:n_train], noise[n_train:], points[n_train:])
    assert blind["nme"] > 0.9 * blind["nme_mean_shape"]
    with pytest.raises(ValueError, match="expected"):
        landmark_probe(features[:10], points[:9], features[:5], points[:5])


def test_linear_probe_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        LinearProbe().fit(torch.tensor([[float("nan")], [1.0]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer labels"):
        LinearProbe().fit(np.zeros((3, 2)), np.zeros(2, np.int64))
