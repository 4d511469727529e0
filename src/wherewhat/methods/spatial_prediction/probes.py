"""Probes of frozen self-supervised features: classes, corruptions, "where", face landmarks.

Every probe takes features from a frozen encoder (:func:`encode_images`, eval mode, no
gradients) and fits only a small read-out with a fixed protocol, chosen before seeing any test
number and never tuned on the test split:

* :class:`LinearProbe`: multinomial logistic regression on standardised features (L-BFGS,
  ``C = 1``). The k-NN probe is :func:`wherewhat.metrics.probe.knn_probe`.
* :func:`corrupt` / :func:`corruption_accuracy`: the linear probe, fitted on clean training
  features, scored on test images with Gaussian noise, Gaussian blur or reduced contrast at three
  severities (CIFAR-10-C's levels 1, 3 and 5 of each).
* :func:`sample_view_pairs`, :func:`fit_sp_readout`, :func:`sp_pair_error`: Spatial
  Prediction's own error on held-out local-view pairs, with the method's trained head or with a
  head fitted afterwards on frozen features (so methods trained without SP can be compared on
  the same footing, and :func:`~wherewhat.methods.spatial_prediction.patch_reorder_accuracy` works for them).
* :func:`landmark_probe`: ridge regression from features to landmark coordinates, scored by
  NME (:func:`wherewhat.metrics.landmarks.nme`), with the mean-shape baseline beside it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from wherewhat.methods.spatial_prediction.head import (
    SpatialPrediction,
    SpatialPredictionConfig,
    spatial_prediction_loss,
    spatial_targets,
)
from wherewhat.methods.spatial_prediction.views import PhotometricConfig, ViewSampler
from wherewhat.metrics.landmarks import nme
from wherewhat.metrics.summary import mean_std

__all__ = [
    "CORRUPTIONS",
    "encode_images",
    "LinearProbe",
    "corrupt",
    "corruption_accuracy",
    "ViewPairs",
    "sample_view_pairs",
    "SPReadout",
    "fit_sp_readout",
    "sp_pair_error",
    "landmark_probe",
    "summarize",
]

# Severity parameter per corruption for severities 1, 2, 3 = CIFAR-10-C's levels 1, 3 and 5:
# noise standard deviation, blur sigma in pixels, contrast factor (1 = unchanged).
CORRUPTIONS: dict[str, tuple[float, float, float]] = {
    "gaussian_noise": (0.04, 0.08, 0.10),
    "gaussian_blur": (0.4, 0.7, 1.0),
    "contrast": (0.75, 0.4, 0.15),
}


# --------------------------------------------------------------------------- features


def _as_float_images(images: Tensor) -> Tensor:
    if images.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise ValueError(f"expected uint8 or float images, got {images.dtype}")
    return images


@torch.no_grad()
def encode_images(
    encoder: Callable[[Tensor], Tensor],
    images: Tensor,
    batch_size: int = 512,
    feature_map: bool = False,
) -> Tensor:
    """Frozen features of ``images`` ``(N, C, H, W)`` (uint8, or float in [0, 1]).

    ``encoder`` maps a float batch to ``(B, D)`` (a backbone, or ``SSLMethod.encode``); with
    ``feature_map=True`` it is called with ``return_map=True`` and the flattened map
    ``(B, D * h * w)`` is returned instead of the pooled features. An ``nn.Module`` (or the
    module owning a bound method) runs in eval mode and gets its previous mode back.

    Returns ``(N, D)`` float32.
    """
    module = encoder if isinstance(encoder, nn.Module) else getattr(encoder, "__self__", None)
    was_training = module.training if isinstance(module, nn.Module) else None
    if isinstance(module, nn.Module):
        module.eval()
    # The images go to the encoder's device (a GPU model, CPU probe images).
    parameter = next(module.parameters(), None) if isinstance(module, nn.Module) else None
    device = images.device if parameter is None else parameter.device
    try:
        parts = []
        for start in range(0, len(images), batch_size):
            batch = _as_float_images(images[start : start + batch_size].to(device))
            if feature_map:
                parts.append(encoder(batch, return_map=True)[1].flatten(1))
            else:
                parts.append(encoder(batch))
        if not parts:
            raise ValueError("encode_images: no images")
        return torch.cat(parts).float()
    finally:
        if was_training is not None:
            module.train(was_training)


# --------------------------------------------------------------------------- linear probe


def _features(name: str, x: Tensor | np.ndarray) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(f"{name}: expected (N, D) features with N >= 1, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: non-finite feature values")
    return array.astype(np.float64)


def _labels(name: str, y: Tensor | np.ndarray, n: int) -> np.ndarray:
    array = (y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)).reshape(-1)
    if len(array) != n or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected {n} integer labels, got {array.dtype} {array.shape}")
    return array.astype(np.int64)


@dataclass
class LinearProbe:
    """Logistic regression on standardised frozen features, one fixed protocol.

    ``C`` (inverse L2 strength) and ``max_iter`` are fixed up front: nothing here looks at
    test data. The scaler is fitted on the training features only. After :meth:`fit`,
    ``converged`` says whether L-BFGS met its tolerance (reported, not hidden).
    """

    C: float = 1.0
    max_iter: int = 1000
    converged: bool | None = None
    _scaler: StandardScaler | None = field(default=None, repr=False)
    _model: LogisticRegression | None = field(default=None, repr=False)

    def fit(self, features: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> LinearProbe:
        x = _features("features", features)
        y = _labels("labels", labels, len(x))
        if len(np.unique(y)) < 2:
            raise ValueError("LinearProbe.fit: the training labels hold a single class")
        self._scaler = StandardScaler().fit(x)
        self._model = LogisticRegression(C=self.C, max_iter=self.max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            self._model.fit(self._scaler.transform(x), y)
        self.converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        return self

    def predict(self, features: Tensor | np.ndarray) -> np.ndarray:
        if self._model is None or self._scaler is None:
            raise RuntimeError("LinearProbe.predict before fit")
        return self._model.predict(self._scaler.transform(_features("features", features)))

    def accuracy(self, features: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
        predicted = self.predict(features)
        return float(np.mean(predicted == _labels("labels", labels, len(predicted))))


# --------------------------------------------------------------------------- corruptions


def corrupt(images: Tensor, kind: str, severity: int, seed: int = 0) -> Tensor:
    """``images`` ``(N, C, H, W)`` (uint8 or float in [0, 1]) with one corruption applied.

    ``kind``: ``gaussian_noise`` (additive, std from :data:`CORRUPTIONS`), ``gaussian_blur``
    (separable Gaussian, reflect padding, kernel ``2 * ceil(3 sigma) + 1``) or ``contrast``
    (``(x - mean) * c + mean`` with each image's per-channel mean). ``severity`` 1..3. The noise
    is one draw of a generator seeded with ``seed``, scaled by the severity's std, so a seed
    gives the same corrupted images every time and a higher severity only moves further from
    the clean image. Returns float32 in [0, 1].
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; choose from {sorted(CORRUPTIONS)}")
    levels = CORRUPTIONS[kind]
    if not 1 <= severity <= len(levels):
        raise ValueError(f"severity must be in 1..{len(levels)}, got {severity}")
    x = _as_float_images(images)
    value = levels[severity - 1]
    if kind == "gaussian_noise":
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)
        out = x + value * noise.to(x.device)
    elif kind == "gaussian_blur":
        radius = math.ceil(3 * value)
        out = gaussian_blur(x, [2 * radius + 1] * 2, [value, value])
    else:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        out = (x - mean) * value + mean
    return out.clamp(0.0, 1.0)


def corruption_accuracy(
    probe: LinearProbe,
    encoder: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    seed: int = 0,
    batch_size: int = 512,
) -> dict[str, float]:
    """Accuracy of a fitted linear ``probe`` on every corruption and severity of ``images``.

    Keys ``"<kind>_<severity>"`` (e.g. ``gaussian_noise_3``), ``clean``, and ``mean`` (over the
    nine corrupted sets).
    """
    out = {"clean": probe.accuracy(encode_images(encoder, images, batch_size), labels)}
    for kind, levels in CORRUPTIONS.items():
        for severity in range(1, len(levels) + 1):
            corrupted = corrupt(images, kind, severity, seed)
            features = encode_images(encoder, corrupted, batch_size)
            out[f"{kind}_{severity}"] = probe.accuracy(features, labels)
    corrupted_keys = [k for k in out if k != "clean"]
    out["mean"] = float(np.mean([out[k] for k in corrupted_keys]))
    return out


# --------------------------------------------------------------------------- Spatial Prediction


@dataclass
class ViewPairs:
    """Local view pairs with their SP targets.

    ``views`` ``(N, 2, C, h, w)``, ``boxes`` ``(N, 2, 4)`` XYXY px in the original frame,
    ``image_size`` ``(N, 2)`` (H, W), ``flipped`` ``(N,)`` bool, ``image_index`` ``(N,)``.
    """

    views: Tensor
    boxes: Tensor
    image_size: Tensor
    flipped: Tensor
    image_index: Tensor

    def __len__(self) -> int:
        return len(self.views)


_PAIR_CHUNK = 1024


def _image_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def sample_view_pairs(
    images: Tensor,
    config: SpatialPredictionConfig,
    pairs_per_image: int = 1,
    seed: int = 0,
    photometric: PhotometricConfig | None = None,
) -> ViewPairs:
    """Local pairs drawn from ``images`` ``(N, C, H, W)`` exactly as in SP training (the
    sampler of ``config``: crops, whole-image flip, per-view jitter), from a seeded generator,
    so evaluation pairs are the same for every model. ``photometric`` replaces the local views'
    jitter (e.g. ``PhotometricConfig.off()`` for geometry checks)."""
    sampler_config = config.view_sampler_config()
    sampler_config.num_pairs = pairs_per_image
    if photometric is not None:
        sampler_config.local_photometric = photometric
    if len(images) == 0:
        raise ValueError("sample_view_pairs needs at least one image")
    sampler = ViewSampler(sampler_config)
    # One generator per image, seeded from (seed, index): the views of an image do not depend
    # on which other images are drawn with it; chunks bound the memory of one batched call.
    floats = _as_float_images(images)
    chunks = [
        sampler.batch(
            floats[start : start + _PAIR_CHUNK],
            [
                _image_generator(seed, i)
                for i in range(start, min(len(floats), start + _PAIR_CHUNK))
            ],
        )
        for start in range(0, len(floats), _PAIR_CHUNK)
    ]
    batch = {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}
    k = pairs_per_image
    return ViewPairs(
        views=batch["local_views"].flatten(0, 1),
        boxes=batch["local_boxes"].flatten(0, 1),
        image_size=batch["image_size"].repeat_interleave(k, 0),
        flipped=batch["flipped"].repeat_interleave(k, 0),
        image_index=torch.arange(len(images)).repeat_interleave(k),
    )


class SPReadout(nn.Module):
    """A frozen encoder plus an SP module: what :func:`sp_pair_error` and
    :func:`~wherewhat.methods.spatial_prediction.patch_reorder_accuracy` need (``encode`` and
    ``spatial_prediction``). ``encode`` standardises the encoder's features with the
    per-dimension ``mean`` / ``std`` of the read-out's training views."""

    def __init__(
        self,
        encoder: nn.Module,
        spatial_prediction: SpatialPrediction,
        mean: Tensor | None = None,
        std: Tensor | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.spatial_prediction = spatial_prediction
        dim = spatial_prediction.head.mlp[0].in_features // 2
        self.register_buffer("mean", torch.zeros(dim) if mean is None else mean.detach().clone())
        self.register_buffer("std", torch.ones(dim) if std is None else std.detach().clone())

    def encode(self, images: Tensor) -> Tensor:
        return (self.encoder(images) - self.mean) / self.std


def _pair_features(
    encoder: Callable[[Tensor], Tensor], pairs: ViewPairs, batch_size: int
) -> Tensor:
    """Features ``(N, 2, D)`` of both views of every pair."""
    flat = encode_images(encoder, pairs.views.flatten(0, 1), batch_size)
    return flat.view(len(pairs), 2, -1)


def fit_sp_readout(
    encoder: nn.Module,
    pairs: ViewPairs,
    config: SpatialPredictionConfig,
    feature_dim: int,
    steps: int = 500,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
) -> SPReadout:
    """Fit a fresh SP head on the frozen ``encoder``'s features of ``pairs`` (standardised per
    dimension over these pairs; Adam, ``steps`` minibatches drawn with ``seed``); the encoder's
    weights are not changed. Returns the readout in eval mode."""
    features = _pair_features(encoder, pairs, 512)
    mean = features.flatten(0, 1).mean(0)
    std = features.flatten(0, 1).std(0).clamp_min(1e-6)
    features = (features - mean) / std
    generator = torch.Generator().manual_seed(seed)
    torch_state = torch.get_rng_state()
    torch.manual_seed(seed)  # the head's initialisation
    try:
        sp = SpatialPrediction(feature_dim, config)
    finally:
        torch.set_rng_state(torch_state)
    targets = _targets(sp, pairs)
    optimizer = torch.optim.Adam(sp.head.parameters(), lr=lr)
    sp.train()
    for _ in range(steps):
        idx = torch.randint(0, len(pairs), (min(batch_size, len(pairs)),), generator=generator)
        prediction = sp.head(features[idx, 0], features[idx, 1])
        loss = spatial_prediction_loss(prediction, targets[idx], config.loss, config.beta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return SPReadout(encoder, sp, mean, std).eval()


def _targets(sp: SpatialPrediction, pairs: ViewPairs) -> Tensor:
    return spatial_targets(
        pairs.boxes[:, 0], pairs.boxes[:, 1], pairs.image_size, sp.max_ratio, pairs.flipped
    )


@torch.no_grad()
def sp_pair_error(model: nn.Module, pairs: ViewPairs, batch_size: int = 512) -> dict[str, float]:
    """SP error of ``model`` (``encode`` + ``spatial_prediction``) on held-out ``pairs``.

    Returns ``loss`` (the model's SP loss), ``loss_zero`` (the loss of always predicting 0),
    ``ratio`` = loss / loss_zero (1: no better than knowing nothing; a model that cannot see
    positions stays near 1), and ``mae_dx`` / ``mae_dy`` / ``mae_ds`` (mean absolute errors in
    image sizes and in the normalised log-scale).
    """
    sp = model.spatial_prediction
    was_training = model.training
    model.eval()
    try:
        features = _pair_features(model.encode, pairs, batch_size)
        prediction = sp.head(features[:, 0], features[:, 1])
    finally:
        model.train(was_training)
    target = _targets(sp, pairs)
    loss = float(spatial_prediction_loss(prediction, target, sp.config.loss, sp.config.beta))
    zero = float(
        spatial_prediction_loss(torch.zeros_like(target), target, sp.config.loss, sp.config.beta)
    )
    mae = (prediction - target).abs().mean(0)
    return {
        "loss": loss,
        "loss_zero": zero,
        "ratio": loss / zero,
        "mae_dx": float(mae[0]),
        "mae_dy": float(mae[1]),
        "mae_ds": float(mae[2]),
    }


# --------------------------------------------------------------------------- landmarks


def landmark_probe(
    train_features: Tensor | np.ndarray,
    train_points: Tensor,
    test_features: Tensor | np.ndarray,
    test_points: Tensor,
    alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1000.0),
    normalization: str = "inter_ocular",
) -> dict[str, float]:
    """Linear (ridge) regression from frozen features to landmarks, scored by NME.

    Args:
        train_features / test_features: ``(N, D)``.
        train_points / test_points: ``(N, K, 2)`` landmarks in the frame the features saw (e.g.
            face-crop pixels; NME is invariant to the crop's similarity transform).
        alphas: ridge strengths; one is chosen by leave-one-out error on the *training* faces
            (``RidgeCV``), features standardised on the training faces.
        normalization: NME normaliser (:func:`~wherewhat.metrics.landmarks.normalizing_distance`).

    Returns ``nme`` (mean over test faces, a fraction), ``nme_mean_shape`` (predicting the
    training mean shape for every face: the no-information baseline), ``alpha`` (chosen),
    ``n_train``, ``n_test``.
    """
    x_train = _features("train_features", train_features)
    x_test = _features("test_features", test_features)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train features have {x_train.shape[1]} dims, test {x_test.shape[1]}")
    for name, points, n in (("train_points", train_points, len(x_train)),
                            ("test_points", test_points, len(x_test))):  # fmt: skip
        if points.ndim != 3 or points.shape[-1] != 2 or len(points) != n:
            raise ValueError(f"{name}: expected ({n}, K, 2), got {tuple(points.shape)}")
    k = train_points.shape[1]
    y_train = train_points.reshape(len(x_train), -1).double().numpy()
    scaler = StandardScaler().fit(x_train)
    ridge = RidgeCV(alphas=list(alphas)).fit(scaler.transform(x_train), y_train)
    predicted = torch.from_numpy(ridge.predict(scaler.transform(x_test))).view(-1, k, 2)
    target = test_points.double()
    mean_shape = torch.from_numpy(y_train.mean(0)).view(1, k, 2).expand_as(target)
    return {
        "nme": float(nme(predicted, target, normalization).mean()),
        "nme_mean_shape": float(nme(mean_shape, target, normalization).mean()),
        "alpha": float(ridge.alpha_),
        "n_train": len(x_train),
        "n_test": len(x_test),
    }


def summarize(values: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """``{name: [v per seed]}`` -> ``{name: mean, name_std: sample std}``, as
    :func:`~wherewhat.metrics.summary.mean_std` (std 0 for one value, NaN for none)."""
    out: dict[str, float] = {}
    for name, seq in values.items():
        out[name], out[f"{name}_std"] = mean_std(seq)
    return out
