"""How much a saliency actually magnifies small objects, inside and outside the horizon band.

A zoom can only help small objects it enlarges. For each small ground-truth box (side
``sqrt(w * h) <= max_side`` original px) the warp's box in the zoomed frame is compared with
the same box after a plain resize to the input size: the magnification per axis is
``zoomed side / uniformly scaled side`` and the box's magnification their geometric mean
(1 = no gain, < 1 = the warp squeezes it to pay for magnifying elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from wherewhat.geometry.warp import saliency_to_grid, warp_boxes
from wherewhat.methods.lzu.region_metrics import box_sides, in_band

__all__ = ["small_object_magnification"]


def _mean(values: list[Tensor]) -> float:
    joined = torch.cat(values) if values else torch.empty(0)
    return float(joined.mean()) if joined.numel() else float("nan")


def small_object_magnification(
    saliency_of: Callable[[int, Tensor], Tensor],
    boxes: Sequence[Tensor],
    original_size: tuple[int, int],
    input_size: tuple[int, int],
    band_rows: tuple[float, float],
    *,
    fwhm: float,
    separable: bool = True,
    max_side: float = 24.0,
) -> dict[str, float]:
    """Mean magnification of the small boxes of some scenes, in and out of the band.

    Args:
        saliency_of: ``(scene index, its boxes (n, 4)) -> saliency (1, 1, gh, gw)``.
        boxes: one ``(n, 4)`` XYXY tensor per scene, original px.
        original_size, input_size: ``(H, W)`` of the scenes and of the zoomed input.
        band_rows: ``(y0, y1)`` original rows of the band (box centre decides).
        fwhm, separable: the warp's options (see :func:`~wherewhat.geometry.warp.saliency_to_grid`).

    Returns ``band`` / ``outside`` (geometric mean of the two axes, averaged over boxes),
    ``band_x``, ``band_y``, ``outside_x``, ``outside_y`` and the box counts ``n_band`` /
    ``n_outside``.
    """
    scale = torch.tensor(
        [input_size[1] / original_size[1], input_size[0] / original_size[0]], dtype=torch.float64
    )
    parts: dict[str, list[Tensor]] = {
        f"{region}{axis}": [] for region in ("band", "outside") for axis in ("", "_x", "_y")
    }
    for index, scene_boxes in enumerate(boxes):
        small = scene_boxes[box_sides(scene_boxes) <= max_side].to(torch.float64)
        if small.numel() == 0:
            continue
        coarse = saliency_to_grid(
            saliency_of(index, scene_boxes).double(), separable=separable, fwhm=fwhm
        )
        zoomed = warp_boxes(small, coarse, original_size, input_size)
        sides = small[:, 2:] - small[:, :2]
        per_axis = (zoomed[:, 2:] - zoomed[:, :2]) / (sides.clamp_min(1e-6) * scale)
        overall = per_axis.prod(dim=-1).sqrt()
        inside = in_band(small, band_rows)
        for region, keep in (("band", inside), ("outside", ~inside)):
            parts[region].append(overall[keep])
            parts[f"{region}_x"].append(per_axis[keep, 0])
            parts[f"{region}_y"].append(per_axis[keep, 1])
    out = {name: _mean(values) for name, values in parts.items()}
    out["n_band"] = float(sum(v.numel() for v in parts["band"]))
    out["n_outside"] = float(sum(v.numel() for v in parts["outside"]))
    return out
