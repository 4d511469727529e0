"""WorldComp2D's geometry and losses: fixation views, view sampling, PWConLoss, heatmap targets.

Everything here is a pure function (or a loss module) on tensors in the crop's pixel frame
(:mod:`wherewhat.geometry.coords`: origin at the top-left corner of the top-left pixel, pixel
(row i, col j) centred at (j + 0.5, i + 0.5)). The networks that use them are in
:mod:`wherewhat.methods.worldcomp2d.model`.

**Views.** A view of side ``s`` px centred at (x, y) covers the box [x - s/2, x + s/2] x
[y - s/2, y + s/2]; it is sampled on an ``n x n`` grid whose samples sit at the centres of the
``n x n`` equal cells of that box (``grid_sample`` with ``align_corners=False``), bilinearly,
zeros outside the image. Consequences:

- native view (s = n = 27) centred on a pixel centre: sample j sits exactly on the pixel
  centre at x + (j - 13), so the view is an exact copy of the 27 x 27 pixels around it (the
  reference's integer slicing);
- context view (s = 109, n = 27): sample j sits at x - 54.5 + (j + 0.5) * 109 / 27, which is
  exactly where ``F.interpolate(patch109, 27, mode="bilinear", align_corners=False,
  antialias=False)`` samples the 109 x 109 pixels around that centre: a resize without
  antialiasing, done without materialising the 109 x 109 patch;
- the centre sample (index n // 2 for odd n) is the view's centre point.

The reference pads the ImageNet-normalised image with 0, i.e. with the mean colour; sampling
the *normalised* image with zeros padding does the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wherewhat.geometry import pixel_to_normalized

__all__ = [
    "view_offsets",
    "extract_views",
    "grid_fixations",
    "jitter_fixations",
    "FixationWalk",
    "walk_offsets",
    "ContrastiveViews",
    "proximity_weights",
    "sample_contrastive_views",
    "PWConLoss",
    "heatmap_targets",
    "heatmap_loss",
    "heatmap_peak_offsets",
]


# --------------------------------------------------------------------------------------------
# Views


def view_offsets(
    sides: Sequence[float], out_size: int, *, dtype=torch.float32, device=None
) -> Tensor:
    """Sample positions of square views relative to their centre: ``(V, n, n, 2)`` (x, y) px.

    View v has side ``sides[v]`` px and ``n = out_size`` samples per axis, at the centres of
    the n equal cells of the box (see the module docstring). Row index is y, column index is x.
    """
    steps = (torch.arange(out_size, dtype=dtype, device=device) + 0.5) / out_size - 0.5
    side = torch.stack([steps * float(s) for s in sides])[:, None, :]  # (V, 1, n)
    along_x = side.expand(-1, out_size, out_size)
    along_y = side.transpose(1, 2).expand(-1, out_size, out_size)
    return torch.stack([along_x, along_y], dim=-1)


def extract_views(
    images: Tensor,
    centres: Tensor,
    sides: Sequence[float],
    out_size: int,
    *,
    image_size: tuple[int, int] | Tensor | None = None,
    padding_mode: str = "zeros",
) -> Tensor:
    """Multi-scale square views around many points of each image, in ONE ``grid_sample`` call.

    Args:
        images: ``(B, C, H, W)``.
        centres: ``(B, N, 2)`` view centres, pixel frame (x, y).
        sides: V view sides in pixels, e.g. ``(27, 109)``; each is sampled at ``out_size``.
        out_size: n, samples per axis of every view.
        image_size: ``(H, W)`` when known in advance, as ints or a tensor ``(2,)`` (e.g. a
            buffer: then ONNX tracing neither records shape arithmetic nor warns about
            constants); default ``images.shape[-2:]``.
    Returns:
        ``(B, N, V * C, n, n)``: views of one centre stacked on channels, view-major (all C
        channels of the first side, then of the second, ...).
    """
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    if not tracing and (images.ndim != 4 or centres.ndim != 3 or centres.shape[-1] != 2):
        raise ValueError(
            f"expected images (B, C, H, W) and centres (B, N, 2), got {tuple(images.shape)} "
            f"and {tuple(centres.shape)}"
        )
    batch, channels = images.shape[:2]
    num_points, num_views = centres.shape[1], len(sides)
    offsets = view_offsets(sides, out_size, dtype=images.dtype, device=images.device)
    points = centres.to(images.dtype)[:, :, None, None, None, :] + offsets  # (B, N, V, n, n, 2)
    # All views of an image become rows of one tall sampling grid: one call for the batch.
    size = image_size if image_size is not None else images.shape[-2:]
    grid = pixel_to_normalized(points, size).reshape(
        batch, num_points * num_views * out_size, out_size, 2
    )
    sampled = F.grid_sample(
        images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False
    )  # (B, C, N * V * n, n)
    sampled = sampled.reshape(batch, channels, num_points, num_views, out_size, out_size)
    return sampled.permute(0, 2, 3, 1, 4, 5).reshape(
        batch, num_points, num_views * channels, out_size, out_size
    )


def grid_fixations(
    crop_size: int = 256, per_side: int = 3, *, dtype=torch.float32, device=None
) -> Tensor:
    """The fixed fixation grid: ``(per_side ** 2, 2)`` (x, y) pixel centres, row-major.

    Pixel indices ``crop_size * (i + 1) // (per_side + 1)`` on both axes, at their centres
    (+0.5), so native views are exact pixel copies. 256 px, 3 per side: (64.5, 128.5, 192.5)^2,
    the reference's integer fixations (64, 128, 192) in our frame.
    """
    if per_side < 1 or crop_size < per_side + 1:
        raise ValueError(f"need 1 <= per_side < crop_size, got {per_side}, {crop_size}")
    index = torch.tensor(
        [crop_size * (i + 1) // (per_side + 1) for i in range(per_side)], dtype=dtype
    )
    ys, xs = torch.meshgrid(index + 0.5, index + 0.5, indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2).to(device)


def jitter_fixations(
    fixations: Tensor,
    batch_size: int,
    max_shift: int = 5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Training augmentation: each image's fixations moved by whole pixels, at most ``max_shift``.

    ``fixations`` ``(F, 2)`` -> ``(batch_size, F, 2)``: the nominal grid plus independent
    integer offsets uniform in [-max_shift, max_shift] per image, fixation and axis, drawn
    afresh from the *nominal* grid at every call: i.i.d., bounded by ``max_shift``. This is
    *not* the reference's jitter, which is :class:`FixationWalk` (a random walk of +-5 px steps
    reset every epoch, so bounded by ``steps_per_epoch * 5`` px). Whole pixels keep native views
    exact pixel copies. Drawn on the fixations' device (``generator``, if given, must live
    there).
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    shifts = torch.randint(
        -max_shift,
        max_shift + 1,
        (batch_size, *fixations.shape),
        generator=generator,
        device=fixations.device,
    )
    return fixations[None] + shifts.to(fixations)


class FixationWalk:
    """The reference's localizer jitter: fixation grids that random-walk during an epoch.

    As the reference code (``Networks/Localizer/Train.py``): one grid per batch slot, and at
    every training step each fixation of each slot moves, in place, by an integer step uniform
    in ``[-max_step, max_step]`` per axis; :meth:`reset` (every epoch start: the reference
    rebuilds the grid inside its ``train()``) puts every slot back on the nominal grid. After t
    steps of an epoch a coordinate is within ``t * max_step`` px of the nominal grid, so the walk
    is bounded by ``steps_per_epoch * max_step`` px (``ceil(1074 / 50) * 5 = 110`` px for 1,074
    faces at batch 50); its typical excursion is ~10 px RMS per axis (``max_step * sqrt(t / 3)``
    at step t). The reference feeds the localizer the *nominal* positions: the views are cut at
    the walked points, the localizer is told the grid.

    Args:
        fixations: ``(F, 2)`` the nominal grid (px).
        max_step: largest step per axis and training step (px).
    """

    def __init__(self, fixations: Tensor, max_step: int = 5):
        if max_step < 0:
            raise ValueError(f"max_step must be >= 0, got {max_step}")
        self.nominal = fixations.detach().clone()
        self.max_step = int(max_step)
        self.offset = self.nominal.new_zeros(0, *self.nominal.shape)  # (slots, F, 2)
        self.steps = 0

    def reset(self) -> None:
        """Back to the nominal grid (epoch start)."""
        self.offset = self.nominal.new_zeros(0, *self.nominal.shape)
        self.steps = 0

    def bound(self, steps_per_epoch: int) -> int:
        """The largest displacement per axis an epoch of ``steps_per_epoch`` steps can reach."""
        return steps_per_epoch * self.max_step

    def step(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Move every fixation of every slot by one step; returns the walked grids of the first
        ``batch_size`` slots ``(batch_size, F, 2)`` (a smaller last batch uses the first slots,
        which keep walking; a larger batch adds slots that start on the grid)."""
        if batch_size > len(self.offset):
            extra = self.nominal.new_zeros(batch_size - len(self.offset), *self.nominal.shape)
            self.offset = torch.cat([self.offset, extra])
        shifts = torch.randint(
            -self.max_step,
            self.max_step + 1,
            tuple(self.offset.shape),
            generator=generator,
            device=self.nominal.device,
        )
        self.offset = self.offset + shifts.to(self.nominal)
        self.steps += 1
        return self.nominal + self.offset[:batch_size]


def walk_offsets(
    shape: tuple[int, ...],
    max_step: int,
    steps_per_epoch: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fixation offsets ``(*shape, F, 2)`` (``shape`` ends with F; float px) drawn from the
    marginal of :class:`FixationWalk`: for each leading index a step count t uniform in
    ``1 .. steps_per_epoch`` (the walk at a random step of an epoch, one t for all F fixations
    of a slot, as they walk together in time), then the sum of t integer steps uniform in
    ``[-max_step, max_step]`` per fixation and axis. What a code bank cuts its views at, so a
    banked localizer sees the reference's jitter without running the encoder each step."""
    if max_step < 0 or steps_per_epoch < 1:
        raise ValueError(f"need max_step >= 0 and steps_per_epoch >= 1, got {max_step}, "
                         f"{steps_per_epoch}")  # fmt: skip
    *lead, fixations = shape
    t = torch.randint(1, steps_per_epoch + 1, tuple(lead), generator=generator)
    steps = torch.randint(
        -max_step, max_step + 1, (*lead, steps_per_epoch, fixations, 2), generator=generator,
        dtype=torch.int16,
    )  # fmt: skip
    taken = torch.arange(steps_per_epoch).view(*([1] * len(lead)), -1) < t[..., None]
    return (steps * taken[..., None, None]).sum(-3).float()


# --------------------------------------------------------------------------------------------
# Contrastive views and PWConLoss


@dataclass(frozen=True)
class ContrastiveViews:
    """Where to look for one PWConLoss batch of B images (2B views).

    Attributes:
        centres: ``(B, 2, 2)``: per image, [anchor view centre, random view centre], (x, y) px.
        landmark: ``(B,)`` long, the landmark k each anchor view is centred on.
        weights: ``(B, 2B)``: weight of view c as a positive of anchor a (0: negative). Columns
            are the B anchor views, then the B random views (image order), i.e. the order of
            ``torch.cat([codes[:, 0], codes[:, 1]])`` for codes ``(B, 2, D)``. The anchor's own
            column is 0.
    """

    centres: Tensor
    landmark: Tensor
    weights: Tensor

    @property
    def positive(self) -> Tensor:
        """``(B, 2B)`` bool: which views are positives of each anchor."""
        return self.weights > 0


def proximity_weights(
    view_centres: Tensor,
    view_points: Tensor,
    anchor_landmark: Tensor,
    radius: float = 53.0,
    decay: float = 0.025,
) -> Tensor:
    """Positive weights of every view for every anchor's landmark: ``(A, M)``.

    View c (centre ``view_centres[c]``, its image's landmarks ``view_points[c]``) is a positive
    of anchor a when landmark ``k = anchor_landmark[a]`` of c's image lies in the square
    ``|dx| <= radius and |dy| <= radius`` around c's centre (the reference's rule: a box, the
    context view's extent, not a disc); its weight is ``1 + exp(-decay * ||d||_2)`` (2 at the
    centre, about 1.15 at 75 px). Non-finite landmarks are never positives.

    Args:
        view_centres: ``(M, 2)``; view_points: ``(M, K, 2)``; anchor_landmark: ``(A,)`` long.
    """
    landmarks = view_points[:, anchor_landmark].transpose(0, 1)  # (A, M, 2): k_a in c's image
    delta = landmarks - view_centres[None]
    inside = (delta.abs() <= radius).all(dim=-1)  # False for NaN
    weight = 1.0 + torch.exp(-decay * delta.norm(dim=-1))
    return torch.where(inside, weight, torch.zeros_like(weight))


def sample_contrastive_views(
    points: Tensor,
    image_size: tuple[int, int],
    generator: torch.Generator | None = None,
    *,
    radius: float = 53.0,
    decay: float = 0.025,
    snap_to_pixel: bool = True,
) -> ContrastiveViews:
    """Draw one PWConLoss batch: an anchor view on a random landmark, one view anywhere.

    Per image b: a landmark k_b uniformly among those inside the image (finite, within
    ``[0, W) x [0, H)``); the anchor view is centred on it; the second view on a uniformly
    random pixel. With ``snap_to_pixel`` the anchor centre is the centre of the pixel that holds
    the landmark (random centres always are), so native views are exact pixel copies, as in the
    reference (integer coordinates). Weights follow :func:`proximity_weights` with the true
    (unsnapped) landmark positions. Draws are made on ``points``' device, so ``generator``
    (default: that device's global RNG) must live there too.

    Args:
        points: ``(B, K, 2)`` landmarks in the pixel frame of the ``image_size=(H, W)`` images.
    Raises:
        ValueError: an image has no landmark inside it.
    """
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"expected points (B, K, 2), got {tuple(points.shape)}")
    height, width = image_size
    batch = points.shape[0]
    x, y = points[..., 0], points[..., 1]
    inside = torch.isfinite(points).all(-1) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
    empty = (~inside.any(dim=1)).nonzero().flatten()
    if len(empty):
        raise ValueError(
            f"images {empty.tolist()} of the batch have no landmark inside the "
            f"{width}x{height} image; cannot centre an anchor view"
        )
    landmark = torch.multinomial(inside.float(), 1, generator=generator).squeeze(1)
    anchor = points[torch.arange(batch, device=points.device), landmark]
    if snap_to_pixel:
        anchor = anchor.floor() + 0.5
    random_pixel = torch.stack(
        [
            torch.randint(0, width, (batch,), generator=generator, device=points.device),
            torch.randint(0, height, (batch,), generator=generator, device=points.device),
        ],
        dim=-1,
    )
    random_centre = random_pixel.to(points.dtype) + 0.5
    view_centres = torch.cat([anchor, random_centre])  # (2B, 2): anchors, then random views
    view_points = torch.cat([points, points])
    weights = proximity_weights(view_centres, view_points, landmark, radius, decay)
    weights[:, :batch].fill_diagonal_(0.0)  # an anchor is not its own positive
    return ContrastiveViews(torch.stack([anchor, random_centre], dim=1), landmark, weights)


class PWConLoss(nn.Module):
    """Proximity-weighted supervised contrastive loss (WorldComp2D).

    For anchor a (the B anchor views) over all 2B views c != a:
    ``log p(a, c) = s(a, c) - log sum_{c' != a} exp(s(a, c'))`` with ``s = <z_a, z_c> / tau``,
    and ``loss_a = -sum_c w(a, c) log p(a, c) / #{c: w(a, c) > 0}`` (weighted positives over
    their *count*, as in the reference). The loss is the mean of ``loss_a`` over anchors with at
    least one positive (the reference averages over all B, counting anchors without positives
    as 0; that only rescales the loss); 0 if no anchor has one.

    Args:
        temperature: tau.
    Shapes: ``codes`` ``(2B, D)`` unit vectors, B anchor views first (column order of
    :class:`ContrastiveViews`), or ``(B, 2, D)`` per image [anchor, random view] as the encoder
    gives them for ``ContrastiveViews.centres``; ``weights`` ``(B, 2B)`` -> scalar.
    """

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, codes: Tensor, weights: Tensor) -> Tensor:
        anchors = weights.shape[0]
        if codes.ndim == 3 and codes.shape[:2] == (anchors, 2):
            codes = torch.cat([codes[:, 0], codes[:, 1]])
        if codes.ndim != 2 or weights.shape != (anchors, codes.shape[0]):
            raise ValueError(
                f"expected codes (2B, D) and weights (B, 2B), got {tuple(codes.shape)} and "
                f"{tuple(weights.shape)}"
            )
        similarity = codes[:anchors] @ codes.T / self.temperature  # (B, 2B)
        is_self = torch.eye(anchors, codes.shape[0], dtype=torch.bool, device=codes.device)
        similarity = similarity.masked_fill(is_self, float("-inf"))
        log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
        log_prob = log_prob.masked_fill(is_self, 0.0)  # avoid 0 * -inf
        weights = weights.to(codes.dtype).masked_fill(is_self, 0.0)
        count = (weights > 0).sum(dim=1)
        per_anchor = -(weights * log_prob).sum(dim=1) / count.clamp(min=1)
        has_positive = count > 0
        if not has_positive.any():
            return codes.sum() * 0.0  # keeps the graph; no signal in this batch
        return per_anchor[has_positive].mean()


# --------------------------------------------------------------------------------------------
# Refiner heatmaps


def _sample_position(offset: Tensor, size: int) -> Tensor:
    """Pixel offset from a native view's centre -> (column, row) sample coordinate."""
    return offset + (size / 2.0 - 0.5)


def heatmap_targets(
    landmarks: Tensor, centres: Tensor, size: int = 27, sigma: float = 1.5
) -> tuple[Tensor, Tensor]:
    """Gaussian targets for native ``size x size`` views centred at ``centres``.

    Sample (row r, col c) of a native view sits at ``centre + (c + 0.5 - size/2, r + 0.5 -
    size/2)`` px; the target is ``exp(-d^2 / (2 sigma^2))`` of its distance d (px) to the
    landmark. A landmark is *valid* when it lies within the outermost samples (sample
    coordinates in [0, size - 1] on both axes); invalid targets are all zero.

    Args:
        landmarks, centres: ``(..., 2)`` px.
    Returns:
        ``(..., size, size)`` targets and ``(...)`` bool valid.
    """
    position = _sample_position(landmarks - centres, size)  # (..., 2) as (col, row)
    valid = ((position >= 0) & (position <= size - 1)).all(dim=-1)
    index = torch.arange(size, dtype=landmarks.dtype, device=landmarks.device)
    dx = index - position[..., 0:1]  # (..., size) over columns
    dy = index - position[..., 1:2]  # (..., size) over rows
    squared = dy[..., :, None] ** 2 + dx[..., None, :] ** 2
    target = torch.exp(-squared / (2 * sigma**2)) * valid[..., None, None]
    return target, valid


def heatmap_loss(heatmaps: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error per landmark, averaged over valid landmarks (0 if none).

    Shapes: heatmaps, targets ``(..., n, n)``; valid ``(...)``.
    """
    per_landmark = (heatmaps - targets).pow(2).mean(dim=(-1, -2))
    valid = valid.to(per_landmark.dtype)
    return (per_landmark * valid).sum() / valid.sum().clamp(min=1.0)


def heatmap_peak_offsets(heatmaps: Tensor, max_step: float = 1.0) -> Tensor:
    """Pixel offset of each heatmap's argmax from the view centre, clamped to +-``max_step``.

    ``(..., n, n)`` native-view heatmaps -> ``(..., 2)`` (dx, dy) px. Ties go to the first
    maximum in row-major order (``torch.argmax``).
    """
    size = heatmaps.shape[-1]
    flat = heatmaps.flatten(-2).argmax(dim=-1).to(heatmaps.dtype)
    row = torch.floor(flat / size)
    col = flat - row * size
    offset = torch.stack([col, row], dim=-1) - (size / 2.0 - 0.5)
    return offset.clamp(-max_step, max_step)
