"""WorldComp2D (Jin & Jeong): a proximity-structured latent and a localizer for face landmarks.

Inference on a square face crop ``(B, C, S, S)`` in [0, 1] (S = 256, side 1.25 x the landmark
box, see :func:`wherewhat.data.face_crops.face_crop`):

1. fixations: a fixed 3 x 3 grid of crop points (:func:`grid_fixations`);
2. observation per fixation: a native 27 x 27 view and a 109 x 109 context view resampled to
   27 x 27 (no antialiasing), stacked on channels (:func:`extract_views`, one ``grid_sample``);
3. :class:`ProximityEncoder`: each observation -> a unit 256-d code, trained with
   :class:`PWConLoss` so that codes of views near the same landmark are close;
4. :class:`FixationLocalizer`: the 9 [code, fixation] pairs -> landmark offsets from a mean
   shape -> landmarks in crop pixels;
5. optional :class:`LandmarkRefiner`: a small heatmap net on a native view at each predicted
   landmark, moving it by at most 1 px.

Map crop predictions to original pixels with :func:`wherewhat.data.face_crops.uncrop_points`.
Geometry and losses live in :mod:`wherewhat.methods.worldcomp2d.parts` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wherewhat.geometry import normalized_to_pixel, pixel_to_normalized
from wherewhat.methods.worldcomp2d.parts import (
    ContrastiveViews,
    FixationWalk,
    PWConLoss,
    extract_views,
    grid_fixations,
    heatmap_loss,
    heatmap_peak_offsets,
    heatmap_targets,
    jitter_fixations,
    proximity_weights,
    sample_contrastive_views,
    view_offsets,
)
from wherewhat.models.face_landmarks import (
    GREY_MEAN,
    GREY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    mean_shape_from_points,
)
from wherewhat.models.spec import configurable

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "GREY_MEAN",
    "GREY_STD",
    "ProximityEncoder",
    "FixationLocalizer",
    "LandmarkRefiner",
    "WorldComp2D",
    "mean_shape_from_points",
    "sample_landmark_subset",
    "CodeBank",
    "build_code_bank",
    # re-exported from wherewhat.methods.worldcomp2d.parts
    "ContrastiveViews",
    "PWConLoss",
    "extract_views",
    "grid_fixations",
    "heatmap_loss",
    "heatmap_peak_offsets",
    "heatmap_targets",
    "jitter_fixations",
    "FixationWalk",
    "proximity_weights",
    "sample_contrastive_views",
    "view_offsets",
]


def _is_exporting() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _linear_bn_relu(in_features: int, out_features: int) -> nn.Sequential:
    # No bias: the BatchNorm that follows has its own shift.
    return nn.Sequential(
        nn.Linear(in_features, out_features, bias=False),
        nn.BatchNorm1d(out_features),
        nn.ReLU(inplace=True),
    )


class ProximityEncoder(nn.Module):
    """Observation -> unit-norm latent code (the "proximity-dependent encoder").

    ``len(channels)`` x [conv3x3 (no bias) + BN + ReLU] with ``strides`` -> flatten ->
    Linear ``hidden`` + BN + ReLU -> Linear ``latent`` -> L2 normalisation. It sees no
    coordinates: only PWConLoss gives its codes their spatial structure.

    Args:
        in_channels: 6 for two RGB views, 2 for two grey views.
        view_size: side of the observation (27); sets the flattened size (2 x 2 x 256).
    Shapes: ``(N, in_channels, view_size, view_size)`` -> ``(N, latent)``, unit L2 norm.
    """

    def __init__(
        self,
        in_channels: int = 6,
        channels: Sequence[int] = (32, 32, 64, 64, 128, 256),
        strides: Sequence[int] = (2, 1, 2, 1, 2, 2),
        hidden: int = 512,
        latent: int = 256,
        view_size: int = 27,
    ):
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"need one stride per conv layer, got {channels} and {strides}")
        layers, width, side = [], in_channels, view_size
        for out_channels, stride in zip(channels, strides, strict=True):
            layers.append(_conv_bn_relu(width, out_channels, stride))
            width, side = out_channels, (side - 1) // stride + 1  # 3x3, padding 1
        self.features = nn.Sequential(*layers, nn.Flatten(1))
        self.project = nn.Sequential(
            _linear_bn_relu(width * side * side, hidden), nn.Linear(hidden, latent)
        )
        self.in_channels = in_channels
        self.view_size = view_size
        self.latent = latent

    def forward(self, observations: Tensor) -> Tensor:
        return nn.functional.normalize(self.project(self.features(observations)), dim=1)


class FixationLocalizer(nn.Module):
    """Codes of all fixations + where they were taken -> landmarks in crop pixels.

    Input per fixation i: ``[z_i, u_i]`` with u_i the fixation in normalised crop coordinates;
    all F are concatenated (F x (D + 2) = 2322 for 9 x 256) -> ``hidden`` x [Linear (no bias)
    + BN + ReLU] -> Linear 2K -> tanh, added to :attr:`mean_shape` (normalised crop coordinates,
    a buffer: set it with :meth:`set_mean_shape` from training shapes) -> crop pixels.
    The output layer starts near zero, so an untrained localizer predicts the mean shape.

    Shapes: codes ``(B, F, D)``, fixations ``(B, F, 2)`` or ``(F, 2)`` px -> ``(B, K, 2)`` px.
    """

    mean_shape: Tensor
    crop_hw: Tensor

    def __init__(
        self,
        num_landmarks: int = 68,
        num_fixations: int = 9,
        latent: int = 256,
        hidden: Sequence[int] = (512, 512),
        crop_size: int = 256,
    ):
        super().__init__()
        layers, width = [], num_fixations * (latent + 2)
        for features in hidden:
            layers.append(_linear_bn_relu(width, features))
            width = features
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(width, 2 * num_landmarks)
        nn.init.normal_(self.output.weight, std=0.01)
        nn.init.zeros_(self.output.bias)
        self.register_buffer("mean_shape", torch.zeros(num_landmarks, 2))
        # (H, W) as a tensor: the coordinate helpers then add no constants to ONNX traces.
        self.register_buffer("crop_hw", torch.tensor([crop_size, crop_size]), persistent=False)
        self.num_landmarks = num_landmarks
        self.num_fixations = num_fixations
        self.crop_size = crop_size

    @torch.no_grad()
    def set_mean_shape(self, points: Tensor) -> None:
        """Set the prior from training landmarks ``(N, K, 2)`` in crop pixels."""
        self.mean_shape.copy_(mean_shape_from_points(points, self.crop_size, self.num_landmarks))

    def forward_normalized(self, codes: Tensor, fixations: Tensor) -> Tensor:
        """Landmarks in normalised crop coordinates ``(B, K, 2)`` (for an MSE loss there)."""
        batch = codes.shape[0]
        where = pixel_to_normalized(fixations.to(codes.dtype), self.crop_hw)
        where = where.expand(batch, *where.shape[-2:])
        features = torch.cat([codes, where], dim=-1).flatten(1)
        offsets = torch.tanh(self.output(self.hidden(features)))
        return self.mean_shape + offsets.view(batch, self.num_landmarks, 2)

    def forward(self, codes: Tensor, fixations: Tensor) -> Tensor:
        normalised = self.forward_normalized(codes, fixations)
        return normalized_to_pixel(normalised, self.crop_hw)


class _DepthwiseBlock(nn.Module):
    """x + SiLU(GN(pointwise(depthwise3x3(x)))): ``(N, C, h, w)`` -> same."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm = nn.GroupNorm(groups, channels)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.act(self.norm(self.pointwise(self.depthwise(x))))


def sample_landmark_subset(
    batch: int,
    num_landmarks: int,
    size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Per image, ``size`` distinct landmark indices drawn uniformly: ``(batch, size)`` long.

    In random order (a prefix of a random permutation per image); ``size == num_landmarks``
    gives a permutation of all of them. Draws from ``generator`` (default: the global torch RNG,
    which ``seed_everything`` seeds and resumed runs restore).
    """
    if not 1 <= size <= num_landmarks:
        raise ValueError(f"landmark subset size must be in [1, {num_landmarks}], got {size}")
    keys = torch.rand(batch, num_landmarks, generator=generator, device=device)
    return keys.argsort(dim=1)[:, :size]


class LandmarkRefiner(nn.Module):
    """Moves each landmark to the peak of a heatmap predicted on a native view around it.

    Per landmark k: the native ``view_size`` px view centred on its current position plus a
    constant channel ``2k / (K - 1) - 1`` (which landmark it is) -> stem conv3x3 ``width``
    (no bias) + GN + SiLU -> ``num_blocks`` depthwise residual blocks -> conv1x1 -> heatmap.
    Trained (:meth:`loss`) towards Gaussians of std ``sigma`` px at the true landmarks. At
    inference the landmark moves to the heatmap's argmax, clamped to +-``max_step`` px per
    axis (the reference: 1 px; 2 for COFW). Views are centred on the continuous position (no
    rounding), so the refined output keeps sub-pixel precision.

    Shapes: image ``(B, C, H, W)`` (already normalised), landmarks ``(B, K, 2)`` px ->
    heatmaps ``(B, K, n, n)`` / refined landmarks ``(B, K, 2)``.
    """

    def __init__(
        self,
        num_landmarks: int = 68,
        image_channels: int = 3,
        width: int = 24,
        num_blocks: int = 4,
        groups: int = 6,
        view_size: int = 27,
        max_step: float = 1.0,
        sigma: float = 1.5,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(image_channels + 1, width, 3, padding=1, bias=False),
            nn.GroupNorm(groups, width),
            nn.SiLU(),
        )
        self.blocks = nn.Sequential(*[_DepthwiseBlock(width, groups) for _ in range(num_blocks)])
        self.head = nn.Conv2d(width, 1, 1)
        nn.init.normal_(self.head.weight, std=0.01)  # start from flat, near-zero heatmaps
        nn.init.zeros_(self.head.bias)
        identity = torch.linspace(-1.0, 1.0, num_landmarks) if num_landmarks > 1 else torch.zeros(1)
        self.register_buffer("landmark_code", identity)
        self.num_landmarks = num_landmarks
        self.view_size = view_size
        self.max_step = max_step
        self.sigma = sigma

    def heatmaps(
        self,
        image: Tensor,
        landmarks: Tensor,
        image_size: tuple[int, int] | Tensor | None = None,
        landmark_index: Tensor | None = None,
    ) -> Tensor:
        """Heatmaps ``(B, N, n, n)`` of views at ``landmarks`` ``(B, N, 2)``.

        ``image_size`` as in :func:`extract_views`. ``landmark_index`` ``(B, N)`` long says
        which landmark each view is of (its identity channel); default: view k is landmark k
        (then N = K).
        """
        batch, num = landmarks.shape[:2]
        size = self.view_size
        views = extract_views(image, landmarks, (size,), size, image_size=image_size)
        if landmark_index is None:
            code = self.landmark_code.to(views.dtype)[None, :, None, None, None]
        else:
            code = self.landmark_code.to(views.dtype)[landmark_index][..., None, None, None]
        code = code.expand(batch, num, 1, size, size)
        inputs = torch.cat([views, code], dim=2).flatten(0, 1)
        return self.head(self.blocks(self.stem(inputs))).view(batch, num, size, size)

    def loss(
        self,
        image: Tensor,
        centres: Tensor,
        landmarks: Tensor,
        landmarks_per_image: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Training loss: heatmaps of views at ``centres`` ``(B, K, 2)`` (e.g. predictions plus
        a few px of noise) against Gaussians (``sigma``) at the true ``landmarks`` ``(B, K, 2)``;
        MSE averaged over landmarks that fall inside their view (:func:`heatmap_loss`).

        ``landmarks_per_image``: train on a random subset of that many landmarks per image
        (:func:`sample_landmark_subset`, drawn from ``generator``, default the global torch
        RNG), which cuts the refiner's training cost by K / subset: its heatmap net is shared by
        all landmarks, so a subset is an unbiased sample of the full loss's terms. ``None``:
        all K in order. Inference always refines every landmark.
        """
        index = None
        if landmarks_per_image is not None:
            index = sample_landmark_subset(
                landmarks.shape[0], landmarks.shape[1], landmarks_per_image, generator,
                device=landmarks.device,
            )  # fmt: skip
            pick = index[..., None].expand(-1, -1, 2)
            centres, landmarks = centres.gather(1, pick), landmarks.gather(1, pick)
        targets, valid = heatmap_targets(landmarks, centres, self.view_size, self.sigma)
        heatmaps = self.heatmaps(image, centres, landmark_index=index)
        return heatmap_loss(heatmaps, targets, valid)

    def forward(
        self, image: Tensor, landmarks: Tensor, image_size: tuple[int, int] | Tensor | None = None
    ) -> Tensor:
        heatmaps = self.heatmaps(image, landmarks, image_size)
        return landmarks + heatmap_peak_offsets(heatmaps, self.max_step)


@configurable
class WorldComp2D(nn.Module):
    """The inference path: face crop -> fixation views -> codes -> landmarks (-> refined).

    Args:
        num_landmarks: K (68 for 300-W, 98 WFLW, 29 COFW).
        image_channels: 3 (RGB) or 1 (grey; COFW).
        crop_size: S, side of the square input crop.
        fixations_per_side: the fixation grid is per_side x per_side (:func:`grid_fixations`).
        view_size: n, samples per side of every view (27).
        view_sides: sides in crop pixels of the views stacked per fixation: native first.
        encoder_channels, encoder_strides, encoder_hidden, latent: :class:`ProximityEncoder`.
        localizer_hidden: :class:`FixationLocalizer` hidden widths.
        refiner: build a :class:`LandmarkRefiner` (``use_refiner`` switches it at run time).
        refiner_width, refiner_blocks, refiner_groups, refiner_max_step, refiner_sigma:
            :class:`LandmarkRefiner`.
        mean, std: input normalisation (default ImageNet for RGB, the reference's for grey).

    Records its constructor arguments (:func:`~wherewhat.models.spec.configurable`), so a task
    takes it whole and a checkpoint rebuilds it from its spec.
    Shapes: crops ``(B, C, S, S)`` float in [0, 1] -> landmarks ``(B, K, 2)`` in crop pixels.
    """

    fixations: Tensor
    crop_hw: Tensor
    mean: Tensor
    std: Tensor

    def __init__(
        self,
        num_landmarks: int = 68,
        image_channels: int = 3,
        crop_size: int = 256,
        fixations_per_side: int = 3,
        view_size: int = 27,
        view_sides: Sequence[float] = (27, 109),
        encoder_channels: Sequence[int] = (32, 32, 64, 64, 128, 256),
        encoder_strides: Sequence[int] = (2, 1, 2, 1, 2, 2),
        encoder_hidden: int = 512,
        latent: int = 256,
        localizer_hidden: Sequence[int] = (512, 512),
        refiner: bool = True,
        refiner_width: int = 24,
        refiner_blocks: int = 4,
        refiner_groups: int = 6,
        refiner_max_step: float = 1.0,
        refiner_sigma: float = 1.5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ):
        super().__init__()
        if image_channels not in (1, 3) and (mean is None or std is None):
            raise ValueError(f"give mean and std for {image_channels}-channel images")
        mean = mean if mean is not None else (IMAGENET_MEAN if image_channels == 3 else GREY_MEAN)
        std = std if std is not None else (IMAGENET_STD if image_channels == 3 else GREY_STD)
        if len(mean) != image_channels or len(std) != image_channels:
            raise ValueError(f"mean/std need {image_channels} values, got {mean} and {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.register_buffer("fixations", grid_fixations(crop_size, fixations_per_side))
        # (H, W) of the crop as a tensor: keeps ONNX graphs free of shape arithmetic.
        self.register_buffer("crop_hw", torch.tensor([crop_size, crop_size]), persistent=False)
        self.view_sides = tuple(float(side) for side in view_sides)
        self.view_size = view_size
        self.crop_size = crop_size
        self.image_channels = image_channels
        self.num_landmarks = num_landmarks
        self.encoder = ProximityEncoder(
            image_channels * len(self.view_sides),
            encoder_channels,
            encoder_strides,
            encoder_hidden,
            latent,
            view_size,
        )
        self.localizer = FixationLocalizer(
            num_landmarks, fixations_per_side**2, latent, localizer_hidden, crop_size
        )
        self.refiner = (
            LandmarkRefiner(
                num_landmarks,
                image_channels,
                refiner_width,
                refiner_blocks,
                refiner_groups,
                view_size,
                refiner_max_step,
                refiner_sigma,
            )
            if refiner
            else None
        )
        self.use_refiner = refiner
        self.channels_last = False

    # -- stages, for training and inspection --------------------------------------------

    def normalize(self, crops: Tensor) -> Tensor:
        """[0, 1] crops -> model input statistics (outside the crop then reads as the mean)."""
        return (crops - self.mean) / self.std

    def observe(self, image: Tensor, centres: Tensor) -> Tensor:
        """Observations at ``centres`` ``(B, N, 2)`` of a *normalised* image:
        ``(B, N, V * C, n, n)``."""
        size = (self.crop_size, self.crop_size)
        if not _is_exporting() and tuple(image.shape[-2:]) != size:
            raise ValueError(f"expected {size} images, got {tuple(image.shape)}")
        return extract_views(
            image, centres, self.view_sides, self.view_size, image_size=self.crop_hw
        )

    def encode(self, observations: Tensor) -> Tensor:
        """``(B, N, V * C, n, n)`` -> codes ``(B, N, D)``.

        With ``channels_last`` set (a run-time switch, e.g. the training task's; not part of the
        model's spec) the observations are made ``channels_last`` first, which is faster on CPU
        when the encoder's weights are too (``encoder.to(memory_format=torch.channels_last)``).
        """
        batch, num = observations.shape[:2]
        flat = observations.flatten(0, 1)
        if self.channels_last and not _is_exporting():
            flat = flat.contiguous(memory_format=torch.channels_last)
        return self.encoder(flat).view(batch, num, -1)

    def localize(self, image: Tensor, fixations: Tensor | None = None) -> Tensor:
        """Coarse landmarks ``(B, K, 2)`` px from a normalised image, at ``fixations``
        (``(B, F, 2)``, e.g. :func:`jitter_fixations`; default the fixed grid)."""
        batch = image.shape[0]
        if fixations is None:
            fixations = self.fixations.expand(batch, -1, -1)
        codes = self.encode(self.observe(image, fixations))
        return self.localizer(codes, fixations)

    def forward(self, crops: Tensor, fixations: Tensor | None = None) -> Tensor:
        if not _is_exporting():
            expected = (self.image_channels, self.crop_size, self.crop_size)
            if crops.ndim != 4 or tuple(crops.shape[1:]) != expected:
                raise ValueError(
                    f"expected face crops (B, {', '.join(map(str, expected))}), "
                    f"got {tuple(crops.shape)}"
                )
        image = self.normalize(crops)
        landmarks = self.localize(image, fixations)
        if self.refiner is not None and self.use_refiner:
            landmarks = self.refiner(image, landmarks, self.crop_hw)
        return landmarks


class CodeBank(nn.Module):
    """The frozen encoder's codes for K augmentations of every training face, computed once.

    ``codes`` ``(N, K, F, D)``: face i, augmentation k (the data's draws of epoch k), the F
    fixations of ``fixations``; ``points`` ``(N, K, L, 2)`` the landmarks in that augmented crop
    (crop px, relabelled after a flip). A localizer epoch then costs its MLP only: look up
    ``codes[index, epoch % K]``. ``fixations`` is the nominal grid; the views may have been cut
    around it (``build_code_bank``'s ``offsets``, drawn once per face and augmentation).
    ``told`` ``(N, K, F, 2)`` or None: where the localizer is told each entry's views were cut
    (:meth:`told_positions`); None: the nominal grid (the reference's walk jitter).
    """

    codes: Tensor
    points: Tensor
    fixations: Tensor
    told: Tensor | None

    def __init__(
        self, codes: Tensor, points: Tensor, fixations: Tensor, told: Tensor | None = None
    ):
        super().__init__()
        self.register_buffer("codes", codes, persistent=False)
        self.register_buffer("points", points, persistent=False)
        self.register_buffer("fixations", fixations, persistent=False)
        self.register_buffer("told", told, persistent=False)

    def told_positions(self, index: Tensor, augmentation: int) -> Tensor:
        """``(B, F, 2)``: the fixations the localizer is told for faces ``index``."""
        if self.told is None:
            return self.fixations.expand(len(index), -1, -1)
        k = augmentation % self.num_augmentations
        return self.told[index.to(self.told.device), k]

    @property
    def num_augmentations(self) -> int:
        return self.codes.shape[1]

    def lookup(self, index: Tensor, augmentation: int) -> tuple[Tensor, Tensor]:
        """``(codes (B, F, D), points (B, L, 2))`` of faces ``index`` in augmentation k."""
        k = augmentation % self.num_augmentations
        index = index.to(self.codes.device)
        return self.codes[index, k], self.points[index, k]


@torch.no_grad()
def build_code_bank(
    model: WorldComp2D,
    items,
    num_augmentations: int,
    batch_size: int = 128,
    fixations: Tensor | None = None,
    offsets: Tensor | None = None,
    tell_offsets: bool = False,
) -> CodeBank:
    """Encode every face of ``items`` (a :class:`~wherewhat.data.face_batches.FaceCanvasItems`)
    in the draws of epochs ``0 .. num_augmentations - 1`` with the fast view sampler.

    ``offsets`` ``(N, K, F, 2)`` (optional): cut face i's views of augmentation k at the grid
    plus ``offsets[i, k]``. ``tell_offsets`` False (the reference's walk jitter,
    :func:`~wherewhat.methods.worldcomp2d.parts.walk_offsets`): the localizer is told the
    nominal grid; True (i.i.d. jitter): it is told where the views were cut.

    The encoder runs in eval mode (frozen BatchNorm statistics), as in the localizer stage.
    """
    from wherewhat.data.face_batches import sample_crop_views

    if num_augmentations < 1:
        raise ValueError(f"num_augmentations must be >= 1, got {num_augmentations}")
    device = model.fixations.device
    grid = model.fixations if fixations is None else fixations.to(device)
    if offsets is not None and offsets.shape != (len(items), num_augmentations, *grid.shape):
        raise ValueError(
            f"offsets must be (faces, augmentations, F, 2) = "
            f"{(len(items), num_augmentations, *grid.shape)}, got {tuple(offsets.shape)}"
        )
    was_training = model.encoder.training
    model.encoder.eval()
    codes, points = [], []
    for k in range(num_augmentations):
        per_k_codes, per_k_points = [], []
        for start in range(0, len(items), batch_size):
            batch = [items[(i, k)] for i in range(start, min(start + batch_size, len(items)))]
            canvas = torch.stack([b["canvas"] for b in batch]).to(device)
            crop_from_canvas = torch.stack([b["crop_from_canvas"] for b in batch]).to(device)
            centres = grid.expand(len(batch), -1, -1)
            if offsets is not None:
                centres = centres + offsets[start : start + len(batch), k].to(device)
            views = sample_crop_views(
                canvas,
                crop_from_canvas,
                centres,
                model.view_sides,
                model.view_size,
                model.crop_size,
                model.mean,
                model.std,
            )
            per_k_codes.append(model.encode(views))
            per_k_points.append(torch.stack([b["points"] for b in batch]).to(device))
        codes.append(torch.cat(per_k_codes))
        points.append(torch.cat(per_k_points))
    model.encoder.train(was_training)
    told = None
    if tell_offsets and offsets is not None:
        told = grid.to(offsets.device) + offsets
    return CodeBank(torch.stack(codes, dim=1), torch.stack(points, dim=1), grid.clone(), told)
