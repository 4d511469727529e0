"""Area (box-filter) unzoom of a separable warp, one axis at a time.

Each unwarped feature pixel averages the zoomed features over the whole
interval its footprint maps to, instead of reading them at one point.

:func:`~wherewhat.geometry.warp.unzoom` samples the zoomed map bilinearly at the inverse of each
original-frame pixel *centre*. Where the zoom magnified the image by more than 2x, an unwarped
pixel's footprint spans several zoomed pixels and the point sample skips all but two of them:
the detail the zoom bought is thrown away again. The area unzoom weighs every zoomed pixel by
the length of its overlap with the footprint's preimage, per axis (a separable warp maps the
footprint ``[i, i + 1) x [j, j + 1)`` to a rectangle), so

    unzoomed[b, c] = Wy[b] @ zoomed[b, c] @ Wx[b]^T,   each row of Wy, Wx summing to 1.

For a uniform warp whose zoomed and unwarped maps have the same size the weights are the
identity, so the area unzoom is then a no-op, like the bilinear one. Differentiable in the
features and in the coarse grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wherewhat.geometry.warp import invert_marginal, is_separable

__all__ = ["area_unzoom", "area_unzoom_weights"]

# A footprint whose preimage is shorter than this (normalised units) is read at its midpoint.
_MIN_LENGTH = 1e-6


def _edges(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ``size + 1`` pixel edges of one axis in normalised coordinates: -1 ... +1."""
    return torch.linspace(-1.0, 1.0, size + 1, dtype=dtype, device=device)


def _axis_weights(marginal: Tensor, original_size: int, zoomed_size: int) -> Tensor:
    """Overlap weights ``(B, original_size, zoomed_size)`` of one axis.

    ``marginal (B, n)``: original-frame normalised position of each coarse node along the axis
    (non-decreasing). Row i holds, for each zoomed pixel, the fraction of the preimage of
    original pixel i that it covers.
    """
    batch = marginal.shape[0]
    edges = _edges(original_size, marginal.dtype, marginal.device).expand(batch, -1)
    preimage, _ = invert_marginal(marginal, edges.contiguous())  # (B, F + 1) zoomed-frame
    low, high = preimage[:, :-1], preimage[:, 1:]
    middle = 0.5 * (low + high)
    half = torch.clamp(0.5 * (high - low), min=0.5 * _MIN_LENGTH)
    low, high = (middle - half)[..., None], (middle + half)[..., None]  # (B, F, 1)
    zoomed_edges = _edges(zoomed_size, marginal.dtype, marginal.device)
    overlap = torch.minimum(high, zoomed_edges[1:]) - torch.maximum(low, zoomed_edges[:-1])
    return overlap.clamp(min=0.0) / (high - low)


def area_unzoom_weights(
    coarse_grid: Tensor, feature_size: tuple[int, int], zoomed_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Row and column weights ``(Wy (B, Fh, h), Wx (B, Fw, w))`` that take a zoomed-frame map
    of ``zoomed_size (h, w)`` to the original frame at ``feature_size (Fh, Fw)``.

    ``coarse_grid (B, gh, gw, 2)`` must be separable (see
    :func:`~wherewhat.geometry.warp.is_separable`); the non-separable warp has no rectangle
    preimages, use the bilinear :func:`~wherewhat.geometry.warp.unzoom` there.
    """
    if not is_separable(coarse_grid):
        raise ValueError(
            "the area unzoom needs a separable warp (separable=True); use the bilinear unzoom "
            "for a non-separable one"
        )
    wy = _axis_weights(coarse_grid[:, :, 0, 1], int(feature_size[0]), int(zoomed_size[0]))
    wx = _axis_weights(coarse_grid[:, 0, :, 0], int(feature_size[1]), int(zoomed_size[1]))
    return wy, wx


def area_unzoom(features: Tensor, weights: tuple[Tensor, Tensor]) -> Tensor:
    """Zoomed-frame ``features (B, C, h, w)`` -> original frame ``(B, C, Fh, Fw)`` with the
    weights of :func:`area_unzoom_weights` (their batch may be 1)."""
    wy, wx = (w.to(features.dtype) for w in weights)
    if wy.shape[-1] != features.shape[-2] or wx.shape[-1] != features.shape[-1]:
        raise ValueError(
            f"weights for a {wy.shape[-1]} x {wx.shape[-1]} map, got features "
            f"{tuple(features.shape)}"
        )
    if wy.shape[0] == 1:
        # one warp for the whole batch: two matrix products over the stacked maps
        return torch.matmul(torch.matmul(wy[0], features), wx[0].transpose(0, 1))
    return torch.einsum("bih,bchw,bjw->bcij", wy, features, wx)
