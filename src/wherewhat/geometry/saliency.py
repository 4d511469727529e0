"""Saliency maps for the LZU zoom: where to spend pixels, sampled on the warp lattice.

Every map here is ``(B, 1, gh, gw)``, positive, summing to 1 per image, and *sampled at the
lattice vertices* that :func:`wherewhat.geometry.warp.saliency_to_grid` expects: node ``(a, b)``
sits at original-image pixel ``(b / (gw - 1) * W, a / (gh - 1) * H)`` (corners included).

Box KDE (FOVEA's "KDE" saliency; per image, or over a whole training set): each box
``(cx, cy, w, h)`` adds ``amplitude * N(u; centre, diag(w * bandwidth, h * bandwidth))``
normalised to sum 1 over the nodes, plus a floor ``1 / (2p + 1)^2`` (p = warp padding,
``min(gh, gw) - 1`` by default); the sum over boxes is normalised to 1. No boxes -> uniform
saliency -> identity warp.

Units: the covariance is ``w * bandwidth`` px^2, so ``bandwidth`` is in pixels of the frame the
boxes are given in and the per-axis standard deviation is ``sqrt(w * bandwidth)`` (a 32 px box
at the default 64 spreads with sigma ~ 45 px). The default 64 is the reference's value at its
(Argoverse-HD) resolution; scale it with the image size. ``amplitude`` is relative to the floor.

Size weighting (``size_power`` p, default 0 = every box alike, as the paper): a box of side
``s = sqrt(w * h)`` px has its Gaussian's amplitude multiplied by ``(SIZE_REFERENCE_PX / s)^p``,
so with p = 1 an 8 px box draws 4x the pixels of a 32 px one and a 128 px box a quarter: the
pixels go where objects are small, which is what a zoom is for.

Jitter (training the adaptive variant on ground truth): box centres move by independent
uniform offsets in ``[-jitter, +jitter]`` px per axis, sizes unchanged. Unbiased on purpose:
the FOVEA code writes ``2 * j * (randn - 0.5)``, a formula for ``rand``, which shifts every box
by -j on average (-50 px at its setting) with a standard deviation of 2j.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from wherewhat.errors import DataFormatError
from wherewhat.geometry.coords import boxes_xyxy_to_cxcywh, normalized_to_pixel
from wherewhat.geometry.warp import node_positions
from wherewhat.io import atomic_torch_save

__all__ = [
    "AdaptiveSaliency",
    "FixedSaliency",
    "LearnedSaliency",
    "SaliencySource",
    "UniformSaliency",
    "boxes_saliency",
    "dataset_saliency",
    "default_floor",
    "jitter_boxes",
    "lattice_points",
    "load_saliency",
    "save_saliency",
    "uniform_saliency",
]

_SALIENCY_FILE_VERSION = 1
SIZE_REFERENCE_PX = 32.0  # box side whose weight is 1 under size weighting


def default_floor(grid_shape: tuple[int, int], padding: int | None = None) -> float:
    """Per-box floor ``1 / (2p + 1)^2``, p = ``min(gh, gw) - 1`` unless given."""
    p = min(grid_shape) - 1 if padding is None else padding
    return 1.0 / (2 * p + 1) ** 2


def lattice_points(
    image_size: tuple[int, int],
    grid_shape: tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> Tensor:
    """Original-frame pixel positions ``(gh, gw, 2)`` (x, y) of the lattice vertices."""
    return normalized_to_pixel(node_positions(grid_shape, dtype=dtype, device=device), image_size)


def uniform_saliency(
    grid_shape: tuple[int, int], batch: int = 1, *, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """``(batch, 1, gh, gw)`` constant saliency summing to 1: the identity warp."""
    gh, gw = grid_shape
    return torch.full((batch, 1, gh, gw), 1.0 / (gh * gw), dtype=dtype, device=device)


def _box_mass(
    boxes: Tensor,
    points: Tensor,
    amplitude: Tensor | float,
    bandwidth: Tensor | float,
    floor: float,
    size_power: float = 0.0,
) -> Tensor:
    """Summed, un-normalised per-box contributions ``(gh, gw)`` of boxes ``(N, 4)`` XYXY."""
    cx, cy, w, h = boxes_xyxy_to_cxcywh(boxes).unbind(-1)
    if size_power:
        side = (w * h).clamp_min(1.0).sqrt()
        amplitude = amplitude * ((SIZE_REFERENCE_PX / side) ** size_power)[:, None]
    # A zero-size box would give a zero variance; 1e-3 px^2 keeps it a (very sharp) bump.
    var_x = (w * bandwidth).clamp_min(1e-3)[:, None]
    var_y = (h * bandwidth).clamp_min(1e-3)[:, None]
    px, py = points[..., 0].reshape(1, -1), points[..., 1].reshape(1, -1)
    log_density = -0.5 * ((px - cx[:, None]) ** 2 / var_x + (py - cy[:, None]) ** 2 / var_y)
    # Softmax = the Gaussian normalised to sum 1 over the nodes, without underflow for boxes far
    # from every node (the reference divides by sum + 1e-5 instead).
    per_box = amplitude * torch.softmax(log_density, dim=-1) + floor
    return per_box.sum(dim=0).reshape(points.shape[:-1])


def boxes_saliency(
    boxes: Sequence[Tensor],
    image_size: tuple[int, int],
    grid_shape: tuple[int, int],
    *,
    amplitude: Tensor | float = 1.0,
    bandwidth: Tensor | float = 64.0,
    floor: float | None = None,
    size_power: float = 0.0,
) -> Tensor:
    """Per-image box KDE: ``boxes[i] (n_i, 4)`` XYXY px -> ``(B, 1, gh, gw)`` summing to 1.

    ``amplitude`` and ``bandwidth`` may be tensors (learned); images without boxes get the
    uniform map; ``size_power``: size weighting (module docstring).
    """
    floor = default_floor(grid_shape) if floor is None else floor
    maps = []
    for image_boxes in boxes:
        if image_boxes.dim() != 2 or image_boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be (n, 4) XYXY per image, got {tuple(image_boxes.shape)}")
        dtype = image_boxes.dtype if image_boxes.is_floating_point() else torch.float32
        if image_boxes.shape[0] == 0:
            maps.append(uniform_saliency(grid_shape, dtype=dtype, device=image_boxes.device)[0])
            continue
        points = lattice_points(image_size, grid_shape, dtype=dtype, device=image_boxes.device)
        mass = _box_mass(image_boxes.to(dtype), points, amplitude, bandwidth, floor, size_power)
        maps.append((mass / mass.sum()).unsqueeze(0))
    if not maps:
        raise ValueError("boxes_saliency needs at least one image (an empty list was given)")
    return torch.stack(maps)


def jitter_boxes(
    boxes: Tensor, jitter: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """Shift box centres ``(n, 4)`` XYXY by independent U[-jitter, jitter] px per axis."""
    if jitter == 0 or boxes.shape[0] == 0:
        return boxes
    noise = torch.rand(
        boxes.shape[0], 2, generator=generator, dtype=boxes.dtype, device=boxes.device
    )
    shift = (2.0 * noise - 1.0) * jitter
    return boxes + shift.repeat(1, 2)


def _drop_boxes(
    boxes: Tensor, rate: float, max_side: float, generator: torch.Generator | None
) -> Tensor:
    """Boxes ``(n, 4)`` XYXY with each one of side <= ``max_side`` px dropped at ``rate``."""
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(0).sqrt()
    lucky = torch.rand(boxes.shape[0], generator=generator, device=boxes.device) >= rate
    return boxes[lucky | (side > max_side)]


def dataset_saliency(
    boxes: Tensor | Iterable[Tensor],
    image_size: tuple[int, int],
    grid_shape: tuple[int, int],
    *,
    amplitude: float = 1.0,
    bandwidth: float = 64.0,
    floor: float | None = None,
    chunk: int = 4096,
    size_power: float = 0.0,
) -> Tensor:
    """Fixed saliency ``(1, 1, gh, gw)``: the box KDE over all training boxes of a data set.

    ``boxes``: one ``(N, 4)`` XYXY tensor or an iterable of per-image ``(n_i, 4)`` tensors, all
    in pixels of ``image_size``. Accumulated in chunks (float64), so any number of boxes fits.
    """
    floor = default_floor(grid_shape) if floor is None else floor
    points = lattice_points(image_size, grid_shape, dtype=torch.float64)
    total = torch.zeros(grid_shape, dtype=torch.float64)
    count = 0
    parts = [boxes] if isinstance(boxes, Tensor) else boxes
    for part in parts:
        part = part.reshape(-1, 4).to(torch.float64).cpu()
        for start in range(0, part.shape[0], chunk):
            piece = part[start : start + chunk]
            total += _box_mass(piece, points, amplitude, bandwidth, floor, size_power)
            count += piece.shape[0]
    if count == 0:
        return uniform_saliency(grid_shape)
    return (total / total.sum()).to(torch.float32)[None, None]


def save_saliency(path: str | Path, saliency: Tensor, **meta) -> None:
    """Write a saliency map ``(1, 1, gh, gw)`` and its provenance (any keyword) atomically."""
    if saliency.dim() != 4 or saliency.shape[:2] != (1, 1):
        raise ValueError(f"saliency must be (1, 1, gh, gw), got {tuple(saliency.shape)}")
    payload = {"version": _SALIENCY_FILE_VERSION, "saliency": saliency.detach().cpu(), "meta": meta}
    atomic_torch_save(payload, path)


def load_saliency(path: str | Path) -> tuple[Tensor, dict]:
    """Read a file written by :func:`save_saliency`: ``(saliency (1, 1, gh, gw), meta)``."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "saliency file not found (write it with save_saliency)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise DataFormatError(
            path, f"not a saliency file written by torch.save ({error})"
        ) from None
    if not isinstance(payload, dict) or payload.get("version") != _SALIENCY_FILE_VERSION:
        raise DataFormatError(path, f"expected a saliency file of version {_SALIENCY_FILE_VERSION}")
    saliency = payload.get("saliency")
    if not isinstance(saliency, Tensor) or saliency.dim() != 4 or saliency.shape[:2] != (1, 1):
        raise DataFormatError(path, "expected a 'saliency' tensor of shape (1, 1, gh, gw)")
    if not torch.isfinite(saliency).all() or (saliency <= 0).any():
        raise DataFormatError(path, "saliency must be finite and positive everywhere")
    return saliency, dict(payload.get("meta", {}))


# --------------------------------------------------------------------------- modules


class SaliencySource(nn.Module):
    """A saliency map per batch: ``forward(images (B, C, H, W), boxes=None) -> (B, 1, gh, gw)``.

    ``fixed`` is True when the map never changes (no boxes, no parameters), so a wrapper may cache
    the grids computed from it.
    """

    fixed: bool = False

    def __init__(self, grid_shape: tuple[int, int]):
        super().__init__()
        self.grid_shape = tuple(grid_shape)


class UniformSaliency(SaliencySource):
    """Constant saliency: the identity warp (LZU degenerates to uniform resizing)."""

    fixed = True

    def forward(self, images: Tensor, boxes: Sequence[Tensor] | None = None) -> Tensor:
        return uniform_saliency(
            self.grid_shape, images.shape[0], dtype=images.dtype, device=images.device
        )


class FixedSaliency(SaliencySource):
    """One map for every image, e.g. the training-set KDE (:func:`dataset_saliency`)."""

    fixed = True

    def __init__(self, saliency: Tensor):
        if saliency.dim() != 4 or saliency.shape[:2] != (1, 1):
            raise ValueError(f"saliency must be (1, 1, gh, gw), got {tuple(saliency.shape)}")
        super().__init__(tuple(saliency.shape[-2:]))
        self.register_buffer("saliency", saliency.detach().clone())

    @classmethod
    def from_file(cls, path: str | Path) -> FixedSaliency:
        return cls(load_saliency(path)[0])

    def forward(self, images: Tensor, boxes: Sequence[Tensor] | None = None) -> Tensor:
        return self.saliency.to(images.dtype).expand(images.shape[0], -1, -1, -1)


class AdaptiveSaliency(SaliencySource):
    """Per-image box KDE from ``boxes`` in pixels of ``images`` (detections, or jittered GT).

    In training mode the boxes are jittered by U[-jitter, jitter] px (see the module notes) and
    each box of side ``sqrt(w * h) <= drop_max_side`` px is left out with probability ``drop``
    (a detector misses small objects more often than large ones).
    """

    def __init__(
        self,
        grid_shape: tuple[int, int] = (31, 51),
        *,
        amplitude: float = 1.0,
        bandwidth: float = 64.0,
        jitter: float = 0.0,
        floor: float | None = None,
        generator: torch.Generator | None = None,
        size_power: float = 0.0,
        drop: float = 0.0,
        drop_max_side: float = float("inf"),
    ):
        super().__init__(grid_shape)
        if amplitude <= 0 or bandwidth <= 0 or jitter < 0 or not 0 <= drop < 1:
            raise ValueError(
                "need amplitude > 0, bandwidth > 0, jitter >= 0, 0 <= drop < 1; got "
                f"{amplitude}, {bandwidth}, {jitter}, {drop}"
            )
        self.size_power = float(size_power)
        self.drop = float(drop)
        self.drop_max_side = float(drop_max_side)
        self.amplitude_init = float(amplitude)
        self.bandwidth_init = float(bandwidth)
        self.jitter = float(jitter)
        self.floor = default_floor(self.grid_shape) if floor is None else floor
        self.generator = generator

    def amplitude(self) -> Tensor | float:
        return self.amplitude_init

    def bandwidth(self) -> Tensor | float:
        return self.bandwidth_init

    def forward(self, images: Tensor, boxes: Sequence[Tensor] | None = None) -> Tensor:
        if boxes is None:
            raise ValueError(f"{type(self).__name__} needs boxes (one (n, 4) tensor per image)")
        if len(boxes) != images.shape[0]:
            raise ValueError(f"{len(boxes)} box tensors for a batch of {images.shape[0]} images")
        if self.training and self.drop > 0:
            boxes = [_drop_boxes(b, self.drop, self.drop_max_side, self.generator) for b in boxes]
        if self.training and self.jitter > 0:
            boxes = [jitter_boxes(b, self.jitter, generator=self.generator) for b in boxes]
        boxes = [b.to(images.dtype) for b in boxes]
        return boxes_saliency(
            boxes,
            tuple(images.shape[-2:]),
            self.grid_shape,
            amplitude=self.amplitude(),
            bandwidth=self.bandwidth(),
            floor=self.floor,
            size_power=self.size_power,
        ).to(images.dtype)


class LearnedSaliency(AdaptiveSaliency):
    """Adaptive KDE whose amplitude and bandwidth are trained through the warp.

    Parametrised as ``init * exp(theta)`` (theta starts at 0): always positive, scale-free
    steps. The reference uses ``|1 + theta| * init + 0.1`` instead.
    """

    def __init__(self, grid_shape: tuple[int, int] = (31, 51), **kwargs):
        super().__init__(grid_shape, **kwargs)
        self.log_amplitude = nn.Parameter(torch.zeros(()))
        self.log_bandwidth = nn.Parameter(torch.zeros(()))

    def amplitude(self) -> Tensor:
        return self.amplitude_init * torch.exp(self.log_amplitude)

    def bandwidth(self) -> Tensor:
        return self.bandwidth_init * torch.exp(self.log_bandwidth)

    def extra_repr(self) -> str:
        return (
            f"amplitude={float(self.amplitude()):.4g}, bandwidth={float(self.bandwidth()):.4g}, "
            f"jitter={self.jitter}"
        )
