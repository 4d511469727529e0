"""SSDIR figures: input / reconstruction / boxes side by side, per-object glimpses, and a 2-D
t-SNE of z_what coloured by the matched digit.

Drawing functions take plain tensors / arrays and return a :class:`matplotlib.figure.Figure` on
its own Agg canvas (see :mod:`wherewhat.report.figures`); :func:`ssdir_figures` runs a trained
SSDIR on a few scenes and draws all three. Boxes are drawn in our pixel frame (images shown
with ``extent=(0, W, H, 0)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.typing import ColorType
from torch import Tensor

from wherewhat.geometry import extract
from wherewhat.metrics.probe import match_objects_in_scenes
from wherewhat.report.figures import (
    GT_COLOR,
    PRED_COLOR,
    as_numpy,
    new_figure,
    show_image,
    to_display_image,
    tsne_embedding,
)

__all__ = [
    "probe_curves",
    "reconstruction_panels",
    "glimpse_panels",
    "tsne_embedding",
    "zwhat_tsne",
    "ssdir_figures",
]

if TYPE_CHECKING:
    from wherewhat.methods.ssdir.model import SSDIR

TITLE_IN = 0.22  # vertical room for a row of titles, inches
UNMATCHED_COLOR = "#9a9a9a"
# A tensor or an array (figures draw both).
Array: TypeAlias = Tensor | np.ndarray


def _boxes(
    ax: Axes, boxes: Array, color: ColorType, linewidth: float, linestyle: str = "-"
) -> None:
    for x0, y0, x1, y1 in as_numpy(boxes).reshape(-1, 4).tolist():
        ax.add_patch(
            Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                      linewidth=linewidth, linestyle=linestyle)
        )  # fmt: skip


def reconstruction_panels(
    images: Array | Sequence[Array],
    reconstructions: Array | Sequence[Array],
    boxes: Sequence[Array],
    *,
    scores: Sequence[Array] | None = None,
    gt_boxes: Sequence[Array] | None = None,
    panel_in: float = 1.8,
) -> Figure:
    """One row per scene: the input, SSDIR's reconstruction, and the input with the inferred
    boxes (red, with scores when given) over the ground truth (dashed green).

    Args:
        images, reconstructions: ``(N, C, H, W)`` (or sequences of ``(C, H, W)``) in [0, 1].
        boxes: per scene ``(n_i, 4)`` XYXY px; scores: per scene ``(n_i,)``;
            gt_boxes: per scene ``(m_i, 4)``.
        panel_in: side of one panel in inches.

    Size: ``3 * panel_in`` x ``N * (panel_in * H / W + TITLE_IN)`` inches at dpi 100.
    """
    n = len(images)
    if n == 0 or len(reconstructions) != n or len(boxes) != n:
        raise ValueError(
            f"reconstruction_panels: need N >= 1 images with one reconstruction and one box set "
            f"each, got {n}, {len(reconstructions)}, {len(boxes)}"
        )
    first, _ = to_display_image(images[0])
    aspect = first.shape[0] / first.shape[1]
    fig = new_figure(3 * panel_in, n * (panel_in * aspect + TITLE_IN))
    axes = fig.subplots(n, 3, squeeze=False)
    top = TITLE_IN / (panel_in * aspect + TITLE_IN)
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=1 - top / n, wspace=0.04, hspace=top * 1.1
    )
    for row in range(n):
        ax_in, ax_rec, ax_box = axes[row]
        show_image(ax_in, images[row])
        show_image(ax_rec, reconstructions[row])
        height, _ = show_image(ax_box, images[row])
        if gt_boxes is not None:
            _boxes(ax_box, gt_boxes[row], GT_COLOR, 0.8, "--")
        _boxes(ax_box, boxes[row], PRED_COLOR, 1.1)
        if scores is not None:
            for (x0, y0, _, _), s in zip(
                as_numpy(boxes[row]).reshape(-1, 4).tolist(), as_numpy(scores[row]).reshape(-1),
                strict=True,
            ):  # fmt: skip
                inside = y0 < 0.06 * height
                ax_box.text(
                    x0, y0, f"{float(s):.2f}", fontsize=5, color="white", clip_on=True,
                    va="top" if inside else "bottom", ha="left",
                    bbox={"facecolor": PRED_COLOR, "edgecolor": "none", "pad": 0.3, "alpha": 0.8},
                )  # fmt: skip
        ax_in.set_title("input", fontsize=7)
        ax_rec.set_title("reconstruction", fontsize=7)
        ax_box.set_title("objects", fontsize=7)
    return fig


def glimpse_panels(
    crops: Array,
    glimpses: Array,
    *,
    labels: Sequence[int] | None = None,
    scores: Sequence[float] | None = None,
    ncols: int = 8,
    panel_in: float = 0.8,
) -> Figure:
    """Per object: the input cut to its box (upper panel) above SSDIR's decoded glimpse (lower
    panel), ``ncols`` objects per row; titled with the matched digit and / or score.

    Args:
        crops, glimpses: ``(N, C, g, g)`` in [0, 1], same N.
        labels: per object matched digit (-1: unmatched, shown as "?").
        scores: per object presence probability.

    Size: ``min(N, ncols) * panel_in`` x ``rows * (2 * panel_in + TITLE_IN)`` inches at dpi 100.
    """
    n = len(crops)
    if n == 0 or len(glimpses) != n:
        raise ValueError(f"glimpse_panels: need N >= 1 crops and as many glimpses, got {n}, "
                         f"{len(glimpses)}")  # fmt: skip
    cols = max(1, min(ncols, n))
    rows = -(-n // cols)
    fig = new_figure(cols * panel_in, rows * (2 * panel_in + TITLE_IN))
    axes = fig.subplots(2 * rows, cols, squeeze=False)
    top = TITLE_IN / (2 * panel_in + TITLE_IN)
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=1 - top / rows, wspace=0.06, hspace=0.06
    )
    for k in range(rows * cols):
        row, col = divmod(k, cols)
        ax_crop, ax_glimpse = axes[2 * row, col], axes[2 * row + 1, col]
        if k >= n:
            ax_crop.set_axis_off()
            ax_glimpse.set_axis_off()
            continue
        show_image(ax_crop, crops[k])
        show_image(ax_glimpse, glimpses[k])
        parts = []
        if labels is not None:
            parts.append("?" if int(labels[k]) < 0 else str(int(labels[k])))
        if scores is not None:
            parts.append(f"{float(scores[k]):.2f}")
        if parts:
            ax_crop.set_title(" ".join(parts), fontsize=6, pad=2)
    return fig


def zwhat_tsne(
    z_what: Array,
    labels: Array | Sequence[int],
    *,
    seed: int = 0,
    perplexity: float = 30.0,
    max_points: int = 2000,
    title: str = "t-SNE of z_what",
    size: tuple[float, float] = (4.6, 4.0),
    embedding: np.ndarray | None = None,
) -> Figure:
    """Scatter of a 2-D t-SNE of ``z_what (N, D)``, one colour per matched digit ``labels (N,)``
    (-1 = unmatched, grey). At most ``max_points`` objects (a seeded random subset) are
    embedded; ``embedding (N, 2)`` skips t-SNE (already computed)."""
    z = as_numpy(z_what)
    y = as_numpy(labels).reshape(-1).astype(np.int64)
    if len(z) != len(y):
        raise ValueError(f"zwhat_tsne: {len(z)} z_what rows but {len(y)} labels")
    if embedding is None:
        if len(z) > max_points:
            rows = np.sort(np.random.default_rng(seed).choice(len(z), max_points, replace=False))
            z, y = z[rows], y[rows]
        embedding = tsne_embedding(z, seed=seed, perplexity=perplexity)
    points = np.asarray(embedding)
    if points.shape != (len(y), 2):
        raise ValueError(f"zwhat_tsne: embedding {points.shape} does not match {len(y)} labels")

    fig = new_figure(*size)
    ax = fig.add_subplot()
    cmap = colormaps["tab10"]
    handles = []
    unmatched = y < 0
    if unmatched.any():
        ax.scatter(*points[unmatched].T, s=4, c=UNMATCHED_COLOR, linewidths=0, alpha=0.6)
        handles.append(_legend_dot(UNMATCHED_COLOR, f"unmatched ({int(unmatched.sum())})"))
    for digit in np.unique(y[~unmatched]):
        mine = y == digit
        color = cmap(int(digit) % 10)
        ax.scatter(*points[mine].T, s=5, color=color, linewidths=0, alpha=0.85)
        handles.append(_legend_dot(color, str(int(digit))))
    ax.set_title(f"{title} ({len(y)} objects)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(handles=handles, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5),
              frameon=False, handletextpad=0.2)  # fmt: skip
    fig.subplots_adjust(left=0.03, right=0.78, bottom=0.03, top=0.92)
    return fig


def _legend_dot(color: ColorType, label: str) -> Line2D:
    return Line2D([], [], marker="o", linestyle="", markersize=4, color=color, label=label)


@torch.no_grad()
def ssdir_figures(
    model: SSDIR,
    images: Tensor,
    gt_boxes: Sequence[Tensor] | None = None,
    gt_labels: Sequence[Tensor] | None = None,
    *,
    z_what: Array | None = None,
    labels: Array | None = None,
    glimpse_count: int = 24,
    seed: int = 0,
    tsne_points: int = 2000,
) -> dict[str, Figure]:
    """Run SSDIR (eval mode, posterior means) on ``images (N, C, H, W)`` and draw
    ``"reconstructions"`` (input / reconstruction / objects per scene) and ``"glimpses"`` (the
    first ``glimpse_count`` rendered objects: input crop above decoded glimpse, titled with the
    digit matched at IoU >= 0.5 when ``gt_boxes`` and ``gt_labels`` are given); with
    ``z_what (M, D)`` and matched ``labels (M,)`` also ``"tsne"``."""
    was_training = model.training
    model.train(False)
    try:
        out = model(images)
    finally:
        model.train(was_training)
    image_index = out["image_index"]
    boxes = [out["object_boxes"][image_index == b] for b in range(len(images))]
    scores = [out["object_scores"][image_index == b] for b in range(len(images))]
    figures = {
        "reconstructions": reconstruction_panels(
            images, out["reconstruction"], boxes, scores=scores, gt_boxes=gt_boxes
        )
    }
    count = min(glimpse_count, len(image_index))
    if count:
        size = out["glimpses"].shape[-2:]
        crops = extract(
            images, out["object_boxes"][:count], tuple(size), batch_index=image_index[:count]
        )
        matched = None
        if gt_boxes is not None and gt_labels is not None:
            matched = match_objects_in_scenes(boxes, gt_boxes, gt_labels, 0.5).labels[:count]
        figures["glimpses"] = glimpse_panels(
            crops.clamp(0, 1), out["glimpses"][:count], labels=matched,
            scores=out["object_scores"][:count],
        )  # fmt: skip
    if z_what is not None and labels is not None and len(z_what) >= 3:
        figures["tsne"] = zwhat_tsne(z_what, labels, seed=seed, max_points=tsne_points)
    return figures


def probe_curves(
    curves: dict[str, Sequence[Sequence[float]]], floors: dict[str, float] | None = None
) -> Figure:
    """The probe's accuracy against SSDIR training steps, a line per arm (``curves``: arm ->
    ``[(step, accuracy), ...]``), with the floors as dashed horizontal lines."""
    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for arm, points in curves.items():
        if len(points):
            steps, accuracy = zip(*points, strict=True)
            ax.plot(steps, accuracy, marker="o", label=arm)
    for index, (name, value) in enumerate((floors or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{7 + index % 3}", label=f"floor: {name}")
    ax.set_xlabel("SSDIR training step")
    ax.set_ylabel("z_what probe accuracy (subset)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
