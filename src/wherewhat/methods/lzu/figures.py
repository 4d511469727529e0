"""LZU figures: a scene and its saliency, the zoomed image, the warp's grid lines, unzoomed
versus uniform features, and detections / segmentations per arm.

Everything is drawn in the pixel frame of :mod:`wherewhat.report.figures` (``extent=(0, W, H,
0)``), so boxes and grid points need no half-pixel shifts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from wherewhat.geometry.coords import normalized_to_pixel
from wherewhat.report.figures import as_numpy, new_figure, show_image

__all__ = [
    "detections_figure",
    "feature_comparison_figure",
    "grid_lines",
    "learning_curves_figure",
    "segmentation_figure",
    "warp_overview_figure",
]


def grid_lines(
    coarse_grid: torch.Tensor, image_size: tuple[int, int], step: int = 1
) -> list[np.ndarray]:
    """Polylines (original pixels) of every ``step``-th lattice row and column of a coarse grid
    ``(1, gh, gw, 2)`` or ``(gh, gw, 2)``: where the zoomed image's uniform lattice lands."""
    grid = coarse_grid[0] if coarse_grid.dim() == 4 else coarse_grid
    points = as_numpy(normalized_to_pixel(grid.detach().double(), image_size))  # (gh, gw, 2)
    rows = [points[r] for r in range(0, points.shape[0], step)]
    cols = [points[:, c] for c in range(0, points.shape[1], step)]
    return rows + cols


def _boxes(
    ax: Axes, boxes: torch.Tensor | np.ndarray, color: str, linewidth: float = 0.8, style: str = "-"
) -> None:
    for x0, y0, x1, y1 in as_numpy(boxes).reshape(-1, 4).tolist():
        ax.add_patch(
            Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                      linewidth=linewidth, linestyle=style)
        )  # fmt: skip


def warp_overview_figure(
    image: torch.Tensor,
    boxes: torch.Tensor,
    saliency: torch.Tensor,
    coarse_grid: torch.Tensor,
    zoomed: torch.Tensor,
    *,
    title: str = "",
    panel_in: float = 4.0,
    band_rows: tuple[float, float] | None = None,
    small_side: float = 24.0,
) -> Figure:
    """Four panels: the scene with its boxes, the saliency over it, the grid lines of the warp
    on the scene, and the zoomed image the backbone sees. Small boxes (side <= ``small_side``
    px) are drawn in orange, the others in green; ``band_rows`` adds the horizon band as
    dashed lines, so one sees where the lattice lands on the small digits.

    Args: image ``(C, H, W)``; boxes ``(n, 4)`` XYXY px; saliency ``(1, 1, gh, gw)`` at the
    lattice vertices; coarse_grid ``(1, gh, gw, 2)``; zoomed ``(C, h, w)``.
    """
    height, width = image.shape[-2:]
    aspect = height / width
    fig = new_figure(2 * panel_in, 2 * panel_in * aspect + 0.6)
    axes = fig.subplots(2, 2).ravel()
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93, wspace=0.03, hspace=0.12)
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(0).sqrt()
    small = side <= small_side
    show_image(axes[0], image)
    _boxes(axes[0], boxes[~small], "#00e000")
    _boxes(axes[0], boxes[small], "#ff9000", linewidth=1.0)
    axes[0].set_title(f"scene; boxes <= {small_side:g} px in orange", fontsize=8)

    show_image(axes[1], image)
    sal = as_numpy(saliency.reshape(saliency.shape[-2:]))
    gh, gw = sal.shape
    # The lattice vertices sit at the corners and edges: draw each value on its own node cell.
    axes[1].imshow(
        sal, cmap="magma", alpha=0.65, extent=(-width / (2 * (gw - 1)), width + width / (2 * (gw - 1)),
        height + height / (2 * (gh - 1)), -height / (2 * (gh - 1))), interpolation="bilinear",
    )  # fmt: skip
    axes[1].set_xlim(0, width)
    axes[1].set_ylim(height, 0)
    axes[1].set_title(f"saliency ({gh} x {gw} lattice)", fontsize=8)

    show_image(axes[2], image)
    lines = grid_lines(coarse_grid, (height, width))
    axes[2].add_collection(LineCollection(lines, colors="#30c0ff", linewidths=0.5, alpha=0.8))
    _boxes(axes[2], boxes[small], "#ff9000", linewidth=1.0)
    if band_rows is not None:
        for row in band_rows:
            axes[2].axhline(row, color="#ffff00", linewidth=0.8, linestyle="--")
    axes[2].set_title("warp: where the zoomed lattice lands (band dashed)", fontsize=8)

    show_image(axes[3], zoomed)
    zh, zw = zoomed.shape[-2:]
    axes[3].set_title(f"zoomed input {zh} x {zw}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _feature_image(feature: torch.Tensor) -> np.ndarray:
    """``(C, h, w)`` -> ``(h, w)`` in [0, 1]: the channel-wise L2 norm, min-max scaled."""
    energy = as_numpy(feature.detach().float().norm(dim=0))
    lo, hi = float(energy.min()), float(energy.max())
    return (energy - lo) / (hi - lo) if hi > lo else np.zeros_like(energy)


def feature_comparison_figure(
    image: torch.Tensor,
    features: Mapping[str, torch.Tensor],
    *,
    panel_in: float = 3.2,
) -> Figure:
    """The scene, then one panel per named feature map ``(C, h, w)`` (all in the original
    frame: uniform features and LZU's unzoomed ones), shown as channel energy over the scene."""
    height, width = image.shape[-2:]
    n = 1 + len(features)
    fig = new_figure(n * panel_in, panel_in * height / width + 0.35)
    axes = fig.subplots(1, n)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86, wspace=0.03)
    show_image(axes[0], image)
    axes[0].set_title("scene", fontsize=8)
    for ax, (name, feature) in zip(axes[1:], features.items(), strict=True):
        ax.imshow(
            _feature_image(feature), cmap="viridis", extent=(0, width, height, 0),
            interpolation="nearest",
        )  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
        h, w = feature.shape[-2:]
        ax.set_title(f"{name} ({h} x {w})", fontsize=8)
    return fig


def _panel_grid(n: int, image_size: tuple[int, int], panel_in: float) -> tuple[Figure, list[Axes]]:
    """A figure of ``n`` scene-shaped panels in two columns; the axes in reading order (unused
    cells switched off)."""
    height, width = image_size
    ncols = min(2, n)
    nrows = -(-n // ncols)
    fig = new_figure(ncols * panel_in, nrows * (panel_in * height / width + 0.3))
    axes = list(np.atleast_1d(fig.subplots(nrows, ncols)).ravel())
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95, wspace=0.03, hspace=0.12)
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes


def detections_figure(
    image: torch.Tensor,
    gt_boxes: torch.Tensor,
    detections: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    score_threshold: float = 0.5,
    panel_in: float = 4.0,
) -> Figure:
    """One panel per arm: ground truth (dashed white) and detections scoring at least
    ``score_threshold`` (red), on the original scene."""
    fig, axes = _panel_grid(len(detections), image.shape[-2:], panel_in)
    for ax, (arm, det) in zip(axes, detections.items(), strict=False):
        show_image(ax, image)
        _boxes(ax, gt_boxes, "white", 0.7, "--")
        keep = as_numpy(det["scores"]) >= score_threshold
        _boxes(ax, as_numpy(det["boxes"])[keep], "#ff3030", 1.0)
        if "saliency_boxes" in det:
            _boxes(ax, det["saliency_boxes"], "#ffb000", 0.5, ":")
        ax.set_title(f"{arm}: {int(keep.sum())} detections >= {score_threshold}", fontsize=8)
    return fig


def segmentation_figure(
    image: torch.Tensor,
    mask: torch.Tensor,
    predictions: Mapping[str, torch.Tensor],
    *,
    panel_in: float = 4.0,
) -> Figure:
    """The scene, its label mask and each arm's predicted mask (class colours, background
    black)."""
    height, width = image.shape[-2:]
    panels: Sequence[tuple[str, torch.Tensor]] = [
        ("scene", image),
        ("labels", mask),
        *predictions.items(),
    ]
    fig, axes = _panel_grid(len(panels), (height, width), panel_in)
    colours = np.concatenate(
        [[[0.0, 0.0, 0.0]], np.asarray(matplotlib.colormaps["tab10"].colors)[:10]]
    )
    for ax, (name, panel) in zip(axes, panels, strict=False):
        if name == "scene":
            show_image(ax, panel)
        else:
            classes = as_numpy(panel).astype(np.int64)
            ax.imshow(colours[np.clip(classes, 0, 10)], extent=(0, width, height, 0),
                      interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(name, fontsize=8)
    return fig


def learning_curves_figure(
    curves: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    *,
    panel_in: float = 3.4,
) -> Figure:
    """One panel per metric: the metric against training steps, one line per arm.

    ``curves``: metric name -> arm -> ``[(step, value)]`` (e.g. the mean over seeds).
    """
    fig = new_figure(panel_in * max(len(curves), 1), panel_in * 0.8)
    axes = np.atleast_1d(fig.subplots(1, max(len(curves), 1)))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.17, top=0.88, wspace=0.3)
    for ax, (metric, by_arm) in zip(axes, curves.items(), strict=False):
        for arm, points in by_arm.items():
            steps, values = zip(*points, strict=True) if points else ((), ())
            ax.plot(steps, [100 * v for v in values], marker="o", markersize=3, label=arm)
        ax.set_title(metric, fontsize=8)
        ax.set_xlabel("training step", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    return fig
