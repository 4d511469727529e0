"""Saliency-driven zoom and its exact inverse (LZU): coarse grids, zoom, unzoom, point/box maps.

Frames (all normalised coordinates use ``grid_sample``'s ``align_corners=False`` convention of
:mod:`wherewhat.geometry.coords`: -1 and +1 are the outer *edges* of an image):

- **original frame**: the input image ``(H, W)``, and the unwarped feature maps of LZU.
- **zoomed frame**: the warped image ``out_size = (h, w)`` and the backbone's features of it.

A **coarse grid** ``(B, gh, gw, 2)`` is a lattice of *vertices*: node ``(a, b)`` sits at the
zoomed-frame normalised point ``(-1 + 2b / (gw - 1), -1 + 2a / (gh - 1))`` (the corner nodes are
the frame's corners, not pixel centres) and holds the original-frame normalised point ``(x, y)``
it samples. Between nodes the map is bilinear, so the whole warp ``T: zoomed -> original`` is
piecewise bilinear on the ``(gh - 1) x (gw - 1)`` tiles; this is what makes the inverse exact.
The identity grid (uniform saliency) holds the node positions themselves.

- :func:`sampling_grid` evaluates ``T`` at the zoomed image's pixel centres (the dense grid of
  :func:`zoom`); :func:`unwarp_points` evaluates ``T`` at any zoomed-frame points.
- :func:`unzoom_grid` evaluates ``T^-1`` at the original-frame pixel centres of a feature map
  (the dense grid of :func:`unzoom`); :func:`warp_points` evaluates ``T^-1`` at any points.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from wherewhat.geometry.coords import normalized_to_pixel, pixel_centers, pixel_to_normalized

__all__ = [
    "InverseMethod",
    "UnzoomGrid",
    "attraction_kernel",
    "identity_grid",
    "invert_marginal",
    "is_separable",
    "node_positions",
    "sampling_grid",
    "saliency_to_grid",
    "unwarp_boxes",
    "unwarp_points",
    "unzoom",
    "unzoom_grid",
    "warp_boxes",
    "warp_points",
    "zoom",
]

InverseMethod = Literal["auto", "separable", "tiles"]

# Tolerance on the tile-local coordinates (s, t) when deciding that a tile claims a point: points
# on a shared edge are claimed by both neighbours, the lower tile index wins.
_CLAIM_EPS = {torch.float32: 1e-4, torch.float64: 1e-9}
# A point is "covered" when its inverse reproduces it to this many pixels.
_COVERAGE_TOL_PX = 1e-3


class UnzoomGrid(NamedTuple):
    """Output of :func:`unzoom_grid`.

    grid: ``(B, Fh, Fw, 2)`` zoomed-frame normalised points, one per original-frame pixel centre.
    coverage: ``(B, Fh, Fw)`` bool, True where the warp really reaches that pixel (the inverse
        maps back onto it within 1e-3 px). Elsewhere the grid holds the closest point of the
        nearest tiles (clamp policy), so features there are border copies, not zeros.
    """

    grid: Tensor
    coverage: Tensor


# --------------------------------------------------------------------------- lattice and kernel


def node_positions(
    grid_shape: tuple[int, int], *, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """Normalised positions ``(gh, gw, 2)`` (x, y) of the lattice vertices, corners at +-1."""
    gh, gw = grid_shape
    if gh < 2 or gw < 2:
        raise ValueError(f"grid_shape needs at least 2x2 nodes, got {grid_shape}")
    ys = torch.linspace(-1.0, 1.0, gh, dtype=dtype, device=device)
    xs = torch.linspace(-1.0, 1.0, gw, dtype=dtype, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def identity_grid(
    grid_shape: tuple[int, int], batch: int = 1, *, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """The coarse grid of no warp: ``(batch, gh, gw, 2)``."""
    return node_positions(grid_shape, dtype=dtype, device=device).expand(batch, -1, -1, -1)


def attraction_kernel(
    padding: int, fwhm: float, *, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """1-D Gaussian of ``2 * padding + 1`` taps with the given FWHM in lattice cells (peak 1)."""
    offsets = torch.arange(-padding, padding + 1, dtype=dtype, device=device)
    return torch.exp(-4.0 * math.log(2.0) * offsets**2 / fwhm**2)


# --------------------------------------------------------------------------- saliency -> grid


def _default_padding(grid_shape: tuple[int, int]) -> int:
    return min(grid_shape) - 1


def _attract_1d(saliency: Tensor, kernel: Tensor, padding: int, pad_mode: str) -> Tensor:
    """Attraction map along the last axis: ``(B, n)`` saliency -> ``(B, n)`` normalised positions.

    Each node goes to the saliency-and-kernel weighted mean of the lattice positions,
    ``conv(P * S, k) / conv(S, k)``, computed as the node's own position plus the weighted mean
    *offset* ``conv(S, k * d) / conv(S, k)``: no cancellation of large positions, and a uniform
    saliency gives a zero offset up to rounding of the offset alone (an exact identity warp).
    P extends linearly into the padding, so reflected saliency pulls a border node outward as much
    as the inside pulls it inward: the borders stay put.
    """
    n = saliency.shape[-1]
    padded = F.pad(saliency.unsqueeze(1), (padding, padding), mode=pad_mode)
    step = 2.0 / (n - 1)
    offsets = torch.arange(-padding, padding + 1, dtype=saliency.dtype, device=saliency.device)
    weights = kernel.view(1, 1, -1)
    mean_offset = F.conv1d(padded, weights * offsets) / F.conv1d(padded, weights)
    nodes = torch.linspace(-1.0, 1.0, n, dtype=saliency.dtype, device=saliency.device)
    return (nodes + step * mean_offset.squeeze(1)).clamp(-1.0, 1.0)


def saliency_to_grid(
    saliency: Tensor,
    *,
    separable: bool = True,
    fwhm: float = 13.0,
    padding: int | None = None,
    anti_crop: bool = True,
) -> Tensor:
    """Recasens attraction-kernel warp: saliency on the lattice -> coarse grid.

    Args:
        saliency: ``(B, 1, gh, gw)`` positive, *sampled at the lattice vertices* (node
            ``(a, b)`` at original-frame normalised ``(-1 + 2b/(gw-1), -1 + 2a/(gh-1))``), which
            is what :mod:`wherewhat.geometry.saliency` produces. Its shape sets the grid shape.
        separable: marginals per axis -> two 1-D maps -> outer product (every tile an
            axis-aligned rectangle, inverse by 1-D search); else the 2-D attraction.
        fwhm: FWHM of the Gaussian attraction kernel in lattice cells.
        padding: lattice nodes added per side (kernel has ``2 * padding + 1`` taps); default
            ``min(gh, gw) - 1``, the largest reflect padding allows.
        anti_crop: reflect-pad the saliency so border nodes stay on the border (full coverage);
            False replicates it as in the original sampler, which crops the image.
    Returns:
        coarse grid ``(B, gh, gw, 2)``, original-frame normalised (x, y) per zoomed-frame node.
    """
    if saliency.dim() != 4 or saliency.shape[1] != 1:
        raise ValueError(f"saliency must be (B, 1, gh, gw), got {tuple(saliency.shape)}")
    gh, gw = saliency.shape[-2:]
    padding = _default_padding((gh, gw)) if padding is None else padding
    pad_mode = "reflect" if anti_crop else "replicate"
    if anti_crop and padding >= min(gh, gw):
        raise ValueError(f"reflect padding {padding} needs a lattice larger than {padding} nodes")
    kernel = attraction_kernel(padding, fwhm, dtype=saliency.dtype, device=saliency.device)
    batch = saliency.shape[0]
    if separable:
        x = _attract_1d(saliency.sum(dim=2).squeeze(1), kernel, padding, pad_mode)  # (B, gw)
        y = _attract_1d(saliency.sum(dim=3).squeeze(1), kernel, padding, pad_mode)  # (B, gh)
        return torch.stack(
            [x[:, None, :].expand(batch, gh, gw), y[:, :, None].expand(batch, gh, gw)], dim=-1
        )
    # The 2-D Gaussian is the product of two 1-D ones, so two 1-D convolutions do each 2-D one:
    # offsets along x use k(dy) k(dx) dx, along y k(dy) dy k(dx), the weights k(dy) k(dx).
    padded = F.pad(saliency, (padding,) * 4, mode=pad_mode)
    offsets = torch.arange(-padding, padding + 1, dtype=saliency.dtype, device=saliency.device)
    plain, signed = kernel, kernel * offsets

    def blur(kernel_y: Tensor, kernel_x: Tensor) -> Tensor:
        along_x = F.conv2d(padded, kernel_x.view(1, 1, 1, -1))
        return F.conv2d(along_x, kernel_y.view(1, 1, -1, 1))

    weight = blur(plain, plain)
    offset_x = blur(plain, signed) / weight
    offset_y = blur(signed, plain) / weight
    nodes = node_positions((gh, gw), dtype=saliency.dtype, device=saliency.device)
    step = torch.tensor(
        [2.0 / (gw - 1), 2.0 / (gh - 1)], dtype=saliency.dtype, device=saliency.device
    )
    offset = torch.cat([offset_x, offset_y], dim=1).permute(0, 2, 3, 1)
    return (nodes + step * offset).clamp(-1.0, 1.0)


def is_separable(coarse_grid: Tensor) -> bool:
    """True when x depends only on the column and y only on the row, in every batch item."""
    x, y = coarse_grid[..., 0], coarse_grid[..., 1]
    return bool((x == x[:, :1, :]).all() and (y == y[:, :, :1]).all())


# --------------------------------------------------------------------------- forward map T


def _evaluate(coarse_grid: Tensor, zoomed_norm: Tensor) -> Tensor:
    """T at zoomed-frame normalised points ``(B, ..., 2)`` -> original-frame normalised.

    The coarse grid is a lattice of vertices spanning [-1, 1] corner to corner, which is exactly
    ``grid_sample``'s ``align_corners=True`` reading of it; beyond the frame it is clamped.
    """
    batch = coarse_grid.shape[0]
    lead = zoomed_norm.shape[1:-1]
    # Evaluated in float64 and rounded once: a float32 uniform warp then matches the affine
    # identity grid to the last bit instead of drifting by a few ulps (1e-5 px at 512 px).
    query = zoomed_norm.reshape(batch, 1, -1, 2).to(torch.float64)
    values = F.grid_sample(
        coarse_grid.permute(0, 3, 1, 2).to(torch.float64),
        query,
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )  # (B, 2, 1, N)
    return values.squeeze(2).transpose(1, 2).reshape(batch, *lead, 2).to(coarse_grid.dtype)


def sampling_grid(coarse_grid: Tensor, out_size: tuple[int, int]) -> Tensor:
    """Dense zoom grid ``(B, h, w, 2)``: T at the zoomed image's pixel centres."""
    centres = pixel_centers(out_size, dtype=torch.float64, device=coarse_grid.device)
    zoomed_norm = pixel_to_normalized(centres, out_size).expand(coarse_grid.shape[0], -1, -1, -1)
    return _evaluate(coarse_grid, zoomed_norm)


def _match_batch(grid: Tensor, batch: int) -> Tensor:
    if grid.shape[0] == batch:
        return grid
    if grid.shape[0] == 1:
        return grid.expand(batch, *grid.shape[1:])
    raise ValueError(f"grid batch {grid.shape[0]} does not match tensor batch {batch}")


def zoom(
    image: Tensor,
    coarse_grid: Tensor,
    out_size: tuple[int, int] | None = None,
    *,
    dense_grid: Tensor | None = None,
    mode: str = "bilinear",
) -> Tensor:
    """Warp ``image (B, C, H, W)`` to ``(B, C, h, w)`` by the coarse grid.

    With the identity grid this equals ``F.interpolate(image, out_size, mode="bilinear",
    align_corners=False)``. Pass a cached ``dense_grid`` (from :func:`sampling_grid`) to skip
    its evaluation; ``coarse_grid`` may then be None. Border padding, like ``interpolate``.
    """
    if dense_grid is None:
        if out_size is None:
            raise ValueError("zoom needs out_size or a dense_grid")
        dense_grid = sampling_grid(coarse_grid, out_size)
    dense_grid = _match_batch(dense_grid.to(image.dtype), image.shape[0])
    return F.grid_sample(image, dense_grid, mode=mode, padding_mode="border", align_corners=False)


# --------------------------------------------------------------------------- inverse: separable


@functools.lru_cache(maxsize=32)
def _normalized_centres_1d(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``grid_sample`` coordinates of the ``size`` pixel centres along one axis: (2i + 1)/size - 1.

    Cached (the unzoom of every forward pass asks for the same few sizes); callers only read it.
    Made outside inference mode so that a tensor cached at evaluation also serves training.
    """
    with torch.inference_mode(False):
        centres = torch.arange(size, dtype=dtype, device=device)
        return centres.mul_(2.0 / size).add_(1.0 / size - 1.0)


def _invert_monotone(values: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of the piecewise-linear map node i -> ``values[:, i]`` (nodes at linspace(-1,1)).

    values: ``(B, n)`` non-decreasing; queries ``(B, Q)``. Returns normalised positions ``(B, Q)``
    and whether each query lies in ``[values[:, 0], values[:, -1]]`` (outside: clamped to the end).
    """
    n = values.shape[-1]
    steps = values[:, 1:] - values[:, :-1]
    if (steps < -1e-6).any():
        raise ValueError(
            "separable inverse needs monotone marginal maps; this grid folds, use method='tiles'"
        )
    index = torch.searchsorted(values.detach().contiguous(), queries.detach().contiguous())
    low = (index - 1).clamp(0, n - 2)
    x0 = values.gather(1, low)
    x1 = values.gather(1, low + 1)
    width = x1 - x0
    positive = width > 0
    safe = torch.where(positive, width, 1.0)
    frac = torch.where(positive, (queries - x0) / safe, 0.0).clamp(0.0, 1.0)
    covered = (queries >= values[:, :1]) & (queries <= values[:, -1:])
    return -1.0 + (low.to(values.dtype) + frac) * (2.0 / (n - 1)), covered


def invert_marginal(values: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of one axis of a separable warp: ``values (B, n)`` are the original-frame
    normalised positions of the coarse nodes along the axis (non-decreasing), ``queries (B, Q)``
    original-frame normalised positions. Returns their zoomed-frame normalised positions
    ``(B, Q)`` and whether each lies inside the warped frame (outside: clamped to its end)."""
    return _invert_monotone(values, queries)


# --------------------------------------------------------------------------- inverse: tiles


def _cross(a: Tensor, b: Tensor) -> Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den with +inf where den == 0 (gradient-safe: the bad branch never sees a 0)."""
    zero = den == 0
    return torch.where(zero, torch.full_like(num, math.inf), num / torch.where(zero, 1.0, den))


def _solve_bilinear(
    p00: Tensor, p01: Tensor, p10: Tensor, p11: Tensor, q: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Local coordinates (s, t) with ``Q(s, t) = q`` in the bilinear tile p00 p01 / p10 p11.

    ``Q(s, t) = p00 + s E + t F + s t G`` (s along the row p00 -> p01, t along p00 -> p10).
    Eliminating s gives ``A t^2 + B t + C = 0``. Both roots come from the cancellation-free pair
    ``t1 = C / q``, ``t2 = q / A`` with ``q = -(B + sign(B) sqrt(B^2 - 4AC)) / 2``; when the tile
    is a parallelogram (A = 0) t1 is the linear root ``-C / B`` and t2 is infinite. All inputs
    broadcast over ``(..., 2)``. Returns s, t and whether a root lies in the tile (+- eps).
    """
    e = p01 - p00
    f = p10 - p00
    g = p00 - p01 - p10 + p11
    d = p00 - q
    a = _cross(g, f)
    b = _cross(e, f) + _cross(g, d)
    c = _cross(e, d)
    disc = b * b - 4.0 * a * c
    real = disc >= 0
    root = torch.sqrt(torch.where(disc > 0, disc, torch.ones_like(disc)))
    root = torch.where(disc > 0, root, torch.zeros_like(root))
    sign = torch.where(b >= 0, torch.ones_like(b), -torch.ones_like(b))
    half = -0.5 * (b + sign * root)
    best_s = best_t = None
    best_inside = torch.zeros_like(real)
    for t in (_safe_div(c, half), _safe_div(half, a)):
        den = e + t.unsqueeze(-1) * g
        num = d + t.unsqueeze(-1) * f
        use_x = den[..., 0].abs() >= den[..., 1].abs()
        s = -_safe_div(
            torch.where(use_x, num[..., 0], num[..., 1]),
            torch.where(use_x, den[..., 0], den[..., 1]),
        )
        inside = real & (s >= -eps) & (s <= 1 + eps) & (t >= -eps) & (t <= 1 + eps)
        if best_s is None:
            best_s, best_t, best_inside = s, t, inside
        else:
            take = inside & ~best_inside
            best_s = torch.where(take, s, best_s)
            best_t = torch.where(take, t, best_t)
            best_inside = best_inside | inside
    return best_s, best_t, best_inside


def _tile_corners(coarse_px: Tensor) -> Tensor:
    """``(B, gh, gw, 2)`` -> ``(B, K, 4, 2)`` tile corners p00, p01, p10, p11, K = (gh-1)(gw-1)."""
    batch = coarse_px.shape[0]
    corners = [
        coarse_px[:, :-1, :-1],
        coarse_px[:, :-1, 1:],
        coarse_px[:, 1:, :-1],
        coarse_px[:, 1:, 1:],
    ]
    return torch.stack([c.reshape(batch, -1, 2) for c in corners], dim=2)


@torch.no_grad()
def _owners_dense(corners: Tensor, size: tuple[int, int], eps: float) -> Tensor:
    """For each pixel centre of an ``(Fh, Fw)`` map, the lowest-index tile claiming it.

    Each tile only tests the pixel centres inside its bounding box (a window of the largest
    box's size), in chunks of tiles to bound memory. Returns ``(B, Fh * Fw)`` long, K = none.
    """
    batch, tiles = corners.shape[:2]
    height, width = size
    lo = corners.amin(dim=2)
    hi = corners.amax(dim=2)
    col0 = torch.ceil(lo[..., 0] - 0.5 - 1e-3).clamp(0, width).long()
    col1 = torch.floor(hi[..., 0] - 0.5 + 1e-3).clamp(-1, width - 1).long()
    row0 = torch.ceil(lo[..., 1] - 0.5 - 1e-3).clamp(0, height).long()
    row1 = torch.floor(hi[..., 1] - 0.5 + 1e-3).clamp(-1, height - 1).long()
    n_cols = (col1 - col0 + 1).clamp_min(0)
    n_rows = (row1 - row0 + 1).clamp_min(0)
    win_w, win_h = int(n_cols.max()), int(n_rows.max())
    trash = height * width
    owner = torch.full((batch, trash + 1), tiles, dtype=torch.long, device=corners.device)
    if win_w == 0 or win_h == 0:
        return owner[:, :trash]
    dy, dx = torch.meshgrid(
        torch.arange(win_h, device=corners.device),
        torch.arange(win_w, device=corners.device),
        indexing="ij",
    )
    dy, dx = dy.reshape(-1), dx.reshape(-1)
    chunk = max(1, 2_000_000 // (batch * win_w * win_h))
    for start in range(0, tiles, chunk):
        sl = slice(start, min(start + chunk, tiles))
        cols = col0[:, sl, None] + dx
        rows = row0[:, sl, None] + dy
        in_box = (dx < n_cols[:, sl, None]) & (dy < n_rows[:, sl, None])
        q = torch.stack([cols, rows], dim=-1).to(corners.dtype) + 0.5
        c = corners[:, sl, None]
        _, _, inside = _solve_bilinear(
            c[..., 0, :], c[..., 1, :], c[..., 2, :], c[..., 3, :], q, eps
        )
        claim = inside & in_box
        pixel = torch.where(claim, rows * width + cols, torch.full_like(cols, trash))
        tile_id = torch.arange(start, sl.stop, device=corners.device)[None, :, None]
        owner.scatter_reduce_(
            1, pixel.reshape(batch, -1), tile_id.expand_as(pixel).reshape(batch, -1), "amin"
        )
    return owner[:, :trash]


@torch.no_grad()
def _owners_bruteforce(corners: Tensor, queries: Tensor, eps: float) -> Tensor:
    """Lowest-index tile claiming each query ``(B, N, 2)`` (testing every tile): ``(B, N)``."""
    tiles = corners.shape[1]
    owners = []
    chunk = max(1, 2_000_000 // max(1, corners.shape[0] * tiles))
    for start in range(0, queries.shape[1], chunk):
        q = queries[:, start : start + chunk, None]  # (B, n, 1, 2)
        c = corners[:, None]  # (B, 1, K, 4, 2)
        _, _, inside = _solve_bilinear(
            c[..., 0, :], c[..., 1, :], c[..., 2, :], c[..., 3, :], q, eps
        )
        index = torch.arange(tiles, device=corners.device)
        owners.append(torch.where(inside, index, tiles).amin(dim=-1))
    return torch.cat(owners, dim=1)


def _closest_in_tile(corner: Tensor, q: Tensor, iterations: int = 12) -> tuple[Tensor, Tensor]:
    """Projected Gauss-Newton for the point of a bilinear tile closest to q (s, t in [0, 1])."""
    p00, p01, p10, p11 = corner.unbind(-2)
    e, f, g = p01 - p00, p10 - p00, p00 - p01 - p10 + p11
    s = torch.full_like(q[..., 0], 0.5)
    t = torch.full_like(q[..., 0], 0.5)
    for _ in range(iterations):
        r = p00 + s[..., None] * e + t[..., None] * f + (s * t)[..., None] * g - q
        js = e + t[..., None] * g
        jt = f + s[..., None] * g
        a11 = (js * js).sum(-1) + 1e-12
        a12 = (js * jt).sum(-1)
        a22 = (jt * jt).sum(-1) + 1e-12
        b1 = (js * r).sum(-1)
        b2 = (jt * r).sum(-1)
        det = a11 * a22 - a12 * a12
        det = torch.where(det.abs() > 0, det, torch.ones_like(det))
        s = (s - (a22 * b1 - a12 * b2) / det).clamp(0.0, 1.0)
        t = (t - (a11 * b2 - a12 * b1) / det).clamp(0.0, 1.0)
    return s, t


def _bilinear_point(corner: Tensor, s: Tensor, t: Tensor) -> Tensor:
    p00, p01, p10, p11 = corner.unbind(-2)
    s, t = s[..., None], t[..., None]
    return p00 + s * (p01 - p00) + t * (p10 - p00) + s * t * (p00 - p01 - p10 + p11)


def _invert_tiles(
    coarse_px: Tensor, queries: Tensor, owner: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """Zoomed-frame normalised points ``(B, N, 2)`` for queries ``(B, N, 2)`` (pixel units).

    Claimed queries are solved in their owner tile (differentiable in the grid). Unclaimed ones
    get the closest point of the 4 tiles with the nearest centres (clamp policy, no gradient).
    Covered = the solution reproduces the query within 1e-3 px.
    """
    batch, n_query = queries.shape[:2]
    gh, gw = coarse_px.shape[1:3]
    corners = _tile_corners(coarse_px)
    tiles = corners.shape[1]
    claimed = owner < tiles
    tile = owner.clamp_max(tiles - 1)
    own = corners.gather(1, tile[..., None, None].expand(batch, n_query, 4, 2))
    s, t, inside = _solve_bilinear(
        own[..., 0, :], own[..., 1, :], own[..., 2, :], own[..., 3, :], queries, eps
    )
    claimed = claimed & inside  # same arithmetic as the claim; guards against any mismatch
    s = torch.where(claimed, s, torch.zeros_like(s))
    t = torch.where(claimed, t, torch.zeros_like(t))
    if not bool(claimed.all()):
        with torch.no_grad():
            b_idx, q_idx = torch.nonzero(~claimed, as_tuple=True)
            q = queries[b_idx, q_idx]
            centres = corners.mean(dim=2)[b_idx]  # (M, K, 2)
            near = (centres - q[:, None]).square().sum(-1).topk(min(4, tiles), largest=False)
            best = None
            for k in range(near.indices.shape[1]):
                cand_tile = near.indices[:, k]
                corner = corners[b_idx, cand_tile]
                cs, ct = _closest_in_tile(corner, q)
                err = (_bilinear_point(corner, cs, ct) - q).norm(dim=-1)
                if best is None:
                    best = (err, cand_tile, cs, ct)
                else:
                    better = err < best[0]
                    best = tuple(
                        torch.where(better, new, old)
                        for new, old in zip((err, cand_tile, cs, ct), best, strict=True)
                    )
            _, fallback_tile, fs, ft = best
        tile = tile.index_put((b_idx, q_idx), fallback_tile)
        s = s.index_put((b_idx, q_idx), fs)
        t = t.index_put((b_idx, q_idx), ft)
        own = corners.gather(1, tile[..., None, None].expand(batch, n_query, 4, 2))
    with torch.no_grad():
        covered = (_bilinear_point(own, s, t) - queries).norm(dim=-1) <= _COVERAGE_TOL_PX
    row = torch.div(tile, gw - 1, rounding_mode="floor").to(s.dtype)
    col = (tile % (gw - 1)).to(s.dtype)
    v = torch.stack([(col + s) * (2.0 / (gw - 1)) - 1.0, (row + t) * (2.0 / (gh - 1)) - 1.0], -1)
    return v, covered


# --------------------------------------------------------------------------- inverse: public


def _resolve_method(coarse_grid: Tensor, method: InverseMethod) -> str:
    if method == "auto":
        return "separable" if is_separable(coarse_grid) else "tiles"
    if method == "separable" and not is_separable(coarse_grid):
        raise ValueError("method='separable' needs a separable coarse grid; use 'tiles' or 'auto'")
    if method not in ("separable", "tiles"):
        raise ValueError(f"method must be 'auto', 'separable' or 'tiles', got {method!r}")
    return method


def unzoom_grid(
    coarse_grid: Tensor, feature_size: tuple[int, int], *, method: InverseMethod = "auto"
) -> UnzoomGrid:
    """Exact inverse of the zoom at the pixel centres of an original-frame ``(Fh, Fw)`` map.

    For each unwarped feature pixel centre u (original frame) returns the zoomed-frame
    normalised v with ``T(v) = u``, so ``unzoom(warped_features, grid)`` puts every feature back
    where it belongs. ``method``: "separable" inverts the two monotone marginal maps by search
    and linear interpolation (exact for separable grids, much cheaper); "tiles" solves the
    bilinear equation of the tile that contains u (any fold-free grid); "auto" picks separable
    when the grid is. Differentiable in the coarse grid (except at unclaimed pixels).

    Returns:
        :class:`UnzoomGrid` with ``grid (B, Fh, Fw, 2)`` and ``coverage (B, Fh, Fw)``.
    """
    method = _resolve_method(coarse_grid, method)
    batch = coarse_grid.shape[0]
    fh, fw = feature_size
    dtype, device = coarse_grid.dtype, coarse_grid.device
    if method == "separable":
        # Pixel-centre coordinates per axis only: the 2-D grid is their outer product, written
        # once at the end (building it first and slicing it costs more than the inversion).
        xs = _normalized_centres_1d(fw, dtype, device)
        ys = _normalized_centres_1d(fh, dtype, device)
        vx, cx = _invert_monotone(coarse_grid[:, 0, :, 0], xs.expand(batch, -1))
        vy, cy = _invert_monotone(coarse_grid[:, :, 0, 1], ys.expand(batch, -1))
        grid = torch.empty(batch, fh, fw, 2, dtype=vx.dtype, device=device)
        grid[..., 0] = vx[:, None, :]  # slice assignment keeps the autograd graph
        grid[..., 1] = vy[:, :, None]
        return UnzoomGrid(grid, cy[:, :, None] & cx[:, None, :])
    eps = _CLAIM_EPS.get(dtype, 1e-4)
    coarse_px = normalized_to_pixel(coarse_grid, feature_size)
    owner = _owners_dense(_tile_corners(coarse_px), feature_size, eps)
    queries = pixel_centers(feature_size, dtype=dtype, device=device).reshape(1, -1, 2)
    v, covered = _invert_tiles(coarse_px, queries.expand(batch, -1, -1), owner, eps)
    return UnzoomGrid(v.reshape(batch, fh, fw, 2), covered.reshape(batch, fh, fw))


def unzoom(
    features: Tensor, inverse_grid: Tensor | UnzoomGrid, *, mode: str = "bilinear"
) -> Tensor:
    """Resample zoomed-frame ``features (B, C, h, w)`` into the original frame ``(B, C, Fh, Fw)``.

    ``inverse_grid`` comes from :func:`unzoom_grid` (its batch may be 1). Uncovered pixels get
    border features (clamp policy); multiply by ``coverage`` to zero them instead.
    """
    if isinstance(inverse_grid, UnzoomGrid):
        inverse_grid = inverse_grid.grid
    grid = _match_batch(inverse_grid.to(features.dtype), features.shape[0])
    return F.grid_sample(features, grid, mode=mode, padding_mode="border", align_corners=False)


# --------------------------------------------------------------------------- points and boxes


def _as_batched_points(points: Tensor, batch: int) -> tuple[Tensor, bool]:
    if points.dim() == 2:
        if batch != 1:
            raise ValueError(f"points (N, 2) need a grid of batch 1, got batch {batch}")
        return points.unsqueeze(0), True
    if points.dim() != 3 or points.shape[-1] != 2 or points.shape[0] != batch:
        raise ValueError(f"points must be (B, N, 2) with B = {batch}, got {tuple(points.shape)}")
    return points, False


def unwarp_points(
    points: Tensor, coarse_grid: Tensor, in_size: tuple[int, int], out_size: tuple[int, int]
) -> Tensor:
    """Zoomed-frame pixel points -> original-frame pixel points (T; detections back to the image).

    Args:
        points: ``(B, N, 2)`` or ``(N, 2)`` (x, y) pixels of the zoomed image of ``out_size``.
        in_size: original image ``(H, W)``; out_size: zoomed image ``(h, w)``.
    """
    batched, squeeze = _as_batched_points(points, coarse_grid.shape[0])
    zoomed_norm = pixel_to_normalized(batched.to(coarse_grid.dtype), out_size)
    result = normalized_to_pixel(_evaluate(coarse_grid, zoomed_norm), in_size)
    return result.squeeze(0) if squeeze else result


def warp_points(
    points: Tensor,
    coarse_grid: Tensor,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    *,
    method: InverseMethod = "auto",
) -> Tensor:
    """Original-frame pixel points -> zoomed-frame pixel points (T^-1; where objects land).

    Same arguments as :func:`unwarp_points`. Points outside the warped domain are clamped to
    its closest point.
    """
    method = _resolve_method(coarse_grid, method)
    batched, squeeze = _as_batched_points(points, coarse_grid.shape[0])
    batched = batched.to(coarse_grid.dtype)
    if method == "separable":
        original_norm = pixel_to_normalized(batched, in_size)
        vx, _ = _invert_monotone(coarse_grid[:, 0, :, 0], original_norm[..., 0])
        vy, _ = _invert_monotone(coarse_grid[:, :, 0, 1], original_norm[..., 1])
        v = torch.stack([vx, vy], dim=-1)
    else:
        eps = _CLAIM_EPS.get(coarse_grid.dtype, 1e-4)
        coarse_px = normalized_to_pixel(coarse_grid, in_size)
        owner = _owners_bruteforce(_tile_corners(coarse_px), batched, eps)
        v, _ = _invert_tiles(coarse_px, batched, owner, eps)
    result = normalized_to_pixel(v, out_size)
    return result.squeeze(0) if squeeze else result


def _box_outline(boxes: Tensor, samples: int) -> Tensor:
    """``(..., N, 4)`` XYXY -> ``(..., N, 4 * samples, 2)`` points along the four edges."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    a = torch.linspace(0.0, 1.0, samples, dtype=boxes.dtype, device=boxes.device)
    xs = x0[..., None] + a * (x1 - x0)[..., None]
    ys = y0[..., None] + a * (y1 - y0)[..., None]
    ones = torch.ones_like(a)
    edges = [
        torch.stack([xs, y0[..., None] * ones], -1),
        torch.stack([xs, y1[..., None] * ones], -1),
        torch.stack([x0[..., None] * ones, ys], -1),
        torch.stack([x1[..., None] * ones, ys], -1),
    ]
    return torch.cat(edges, dim=-2)


def _map_boxes(boxes: Tensor, mapper, samples: int, separable: bool) -> Tensor:
    # A separable warp maps axis-aligned boxes to axis-aligned boxes (corners suffice); otherwise
    # the edges bend, and the result is the tight box around sampled edge points.
    samples = 2 if separable else samples
    outline = _box_outline(boxes, samples)  # (B, N, S, 2)
    lead = outline.shape[:-2]
    flat = outline.reshape(lead[0], -1, 2)
    mapped = mapper(flat).reshape(*lead, -1, 2)
    return torch.cat([mapped.amin(dim=-2), mapped.amax(dim=-2)], dim=-1)


def warp_boxes(
    boxes: Tensor,
    coarse_grid: Tensor,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    *,
    samples: int = 16,
) -> Tensor:
    """Original-frame XYXY boxes ``(B, N, 4)`` or ``(N, 4)`` -> tight boxes in the zoomed frame.

    ``samples`` points per edge for non-separable grids (corners are exact for separable ones).
    """
    return _boxes_through(warp_points, boxes, coarse_grid, in_size, out_size, samples)


def unwarp_boxes(
    boxes: Tensor,
    coarse_grid: Tensor,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    *,
    samples: int = 16,
) -> Tensor:
    """Zoomed-frame XYXY boxes ``(B, N, 4)`` or ``(N, 4)`` -> tight boxes in the original frame."""
    return _boxes_through(unwarp_points, boxes, coarse_grid, in_size, out_size, samples)


def _boxes_through(point_map, boxes, coarse_grid, in_size, out_size, samples) -> Tensor:
    """Apply ``point_map`` to ``(B, N, 4)`` or ``(N, 4)`` boxes via :func:`_map_boxes`."""
    squeeze = boxes.dim() == 2
    batched = boxes.unsqueeze(0) if squeeze else boxes
    out = _map_boxes(
        batched.to(coarse_grid.dtype),
        lambda p: point_map(p, coarse_grid, in_size, out_size),
        samples,
        is_separable(coarse_grid),
    )
    return out.squeeze(0) if squeeze else out
