"""Figures for reports and previews (matplotlib, Agg, no pyplot state).

Every function returns a :class:`matplotlib.figure.Figure` attached to its own Agg canvas, never
through pyplot (so the global backend of, say, a notebook is left alone): nothing opens a window,
nothing needs closing, and ``fig.canvas.buffer_rgba()`` works after
``fig.canvas.draw()``. Figures default to dpi 100 and small panels so that an HTML report with
many of them stays light.

Geometry is drawn in our pixel frame (origin at the top-left corner of the top-left pixel, pixel
(i, j) centred at (j + 0.5, i + 0.5)): images are shown with ``extent=(0, W, H, 0)``, which makes
matplotlib's data coordinates *be* that frame, so boxes and points need no half-pixel shifts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.manifold import TSNE

from wherewhat.io import png_bytes, write_atomic

__all__ = [
    "show_image",
    "as_numpy",
    "new_figure",
    "scene_grid",
    "faces_with_landmarks",
    "bar_chart",
    "line_chart",
    "save_png",
    "to_display_image",
    "tsne_embedding",
    "curve_panels",
]

DPI = 100
GT_COLOR = "#00e000"
PRED_COLOR = "#ff3030"


def new_figure(width_in: float, height_in: float, dpi: int = DPI) -> Figure:
    """A figure on its own Agg canvas (independent of pyplot's global state)."""
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as a PNG at its own dpi (atomically), creating parent folders."""
    return write_atomic(path, png_bytes(fig))


def as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def to_display_image(image: Any) -> tuple[np.ndarray, str | None]:
    """A ``(C, H, W)`` or ``(H, W)`` image (uint8 in [0, 255] or float in [0, 1]) -> an
    ``(H, W)`` or ``(H, W, 3)`` float array in [0, 1] for ``imshow``, plus the colormap."""
    arr = as_numpy(image)
    if arr.ndim == 3:
        if arr.shape[0] not in (1, 3):
            raise ValueError(f"expected a (C, H, W) image with C in (1, 3), got {arr.shape}")
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    elif arr.ndim != 2:
        raise ValueError(f"expected a (C, H, W) or (H, W) image, got shape {arr.shape}")
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    arr = np.clip(arr, 0.0, 1.0)
    return arr, ("gray" if arr.ndim == 2 else None)


def _grid(n: int, ncols: int, panel_in: float, aspect: float, title_in: float) -> tuple:
    """Figure and a flat list of ``n`` axes in a ``ceil(n/ncols) x ncols`` grid; unused cells off.

    ``aspect`` is H / W of one image; ``title_in`` is the vertical room per row for a title.
    """
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = new_figure(ncols * panel_in, nrows * (panel_in * aspect + title_in))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    top_margin = title_in / (panel_in * aspect + title_in)
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=1 - top_margin / nrows, wspace=0.04,
        hspace=top_margin * 1.1,
    )  # fmt: skip
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, list(axes[:n])


def show_image(ax, image: Any) -> tuple[int, int]:
    """Draw an image so that data coordinates are our pixel frame; returns (H, W)."""
    arr, cmap = to_display_image(image)
    height, width = arr.shape[:2]
    ax.imshow(
        arr, cmap=cmap, vmin=0.0, vmax=1.0, extent=(0, width, height, 0), interpolation="nearest"
    )
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    return height, width


def _class_color(label: int) -> Any:
    return matplotlib.colormaps["tab10"](int(label) % 10)


def scene_grid(
    images: Any,
    boxes: Sequence[Any],
    labels: Sequence[Any] | None,
    ncols: int = 4,
    scores: Sequence[Any] | None = None,
    *,
    gt_boxes: Sequence[Any] | None = None,
    class_names: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    edgecolor: Any = None,
    panel_in: float = 2.0,
    linewidth: float = 1.2,
) -> Figure:
    """Scenes with their boxes and class labels.

    Args:
        images: ``(N, C, H, W)`` tensor/array or a sequence of ``(C, H, W)``; uint8 or [0, 1].
        boxes: per scene, ``(n_i, 4)`` XYXY boxes in the pixel frame.
        labels: per scene, ``(n_i,)`` class ids, or None for boxes without text.
        ncols: panels per row.
        scores: per scene ``(n_i,)`` confidences shown after the label (predictions).
        gt_boxes: per scene ``(m_i, 4)`` ground-truth boxes drawn thin and dashed in white under
            ``boxes`` (to compare predictions with the truth).
        class_names: text for each class id (default: the id).
        titles: one title per panel.
        edgecolor: one colour for all boxes (default: a colour per class).
    """
    n = len(images)
    if n == 0:
        raise ValueError("scene_grid: no images")
    first, _ = to_display_image(images[0])
    aspect = first.shape[0] / first.shape[1]
    fig, axes = _grid(n, ncols, panel_in, aspect, 0.25 if titles else 0.0)
    for k, ax in enumerate(axes):
        height, _ = show_image(ax, images[k])
        if titles:
            ax.set_title(str(titles[k]), fontsize=8)
        if gt_boxes is not None:
            for x0, y0, x1, y1 in as_numpy(gt_boxes[k]).reshape(-1, 4).tolist():
                ax.add_patch(
                    Rectangle(
                        (x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white",
                        linewidth=0.8, linestyle="--",
                    )
                )  # fmt: skip
        box_arr = as_numpy(boxes[k]).reshape(-1, 4)
        label_arr = None if labels is None else as_numpy(labels[k]).reshape(-1)
        score_arr = None if scores is None else as_numpy(scores[k]).reshape(-1)
        for b, (x0, y0, x1, y1) in enumerate(box_arr.tolist()):
            label = None if label_arr is None else int(label_arr[b])
            color = edgecolor if edgecolor is not None else _class_color(label or 0)
            ax.add_patch(
                Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                          linewidth=linewidth)
            )  # fmt: skip
            if label is None:
                continue
            text = class_names[label] if class_names is not None else str(label)
            if score_arr is not None:
                text += f" {float(score_arr[b]):.2f}"
            # Above the box, or just inside it when the box touches the image's top edge.
            inside = y0 < 0.06 * height
            ax.text(
                x0, y0, text, fontsize=6, color="white", va="top" if inside else "bottom",
                ha="left", clip_on=True,
                bbox={"facecolor": color, "edgecolor": "none", "pad": 0.5, "alpha": 0.85},
            )  # fmt: skip
    return fig


def faces_with_landmarks(
    images: Any,
    points: Sequence[Any],
    ncols: int = 4,
    pred: Sequence[Any] | None = None,
    *,
    titles: Sequence[str] | None = None,
    panel_in: float = 2.0,
    marker_size: float = 4.0,
) -> Figure:
    """Faces with ground-truth landmarks (green dots) and optional predictions (red crosses).

    Args:
        images: ``(N, C, H, W)`` or a sequence of ``(C, H, W)`` images (sizes may differ).
        points: per image ``(K, 2)`` (x, y) landmarks in the pixel frame.
        pred: per image ``(K, 2)`` predicted landmarks, same frame.
    """
    n = len(images)
    if n == 0:
        raise ValueError("faces_with_landmarks: no images")
    first, _ = to_display_image(images[0])
    fig, axes = _grid(n, ncols, panel_in, first.shape[0] / first.shape[1], 0.25 if titles else 0)
    for k, ax in enumerate(axes):
        show_image(ax, images[k])
        if titles:
            ax.set_title(str(titles[k]), fontsize=8)
        gt = as_numpy(points[k]).reshape(-1, 2)
        ax.scatter(gt[:, 0], gt[:, 1], s=marker_size, c=GT_COLOR, linewidths=0, label="truth")
        if pred is not None:
            pr = as_numpy(pred[k]).reshape(-1, 2)
            ax.scatter(
                pr[:, 0], pr[:, 1], s=marker_size * 2, c=PRED_COLOR, marker="x", linewidths=0.7,
                label="prediction",
            )  # fmt: skip
    if pred is not None:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=7)
    return fig


def bar_chart(
    values: Mapping[str, float] | Mapping[str, Sequence[float]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[float, float] = (4.5, 2.8),
) -> Figure:
    """Bars from ``{category: value}``, or grouped bars from ``{series: values per category}``
    where all series share the categories ``0..n-1`` (or pass a dict of dicts)."""
    fig = new_figure(*size)
    ax = fig.add_subplot()
    items = list(values.items())
    if items and isinstance(items[0][1], Mapping):  # {series: {category: value}}
        categories = list(dict.fromkeys(c for _, d in items for c in d))
        series = {name: [d.get(c, 0.0) for c in categories] for name, d in items}
    elif items and isinstance(items[0][1], Sequence | np.ndarray):
        categories = [str(i) for i in range(len(items[0][1]))]
        series = {name: list(v) for name, v in items}
    else:
        categories = [str(k) for k, _ in items]
        series = {"": [float(v) for _, v in items]}
    x = np.arange(len(categories))
    width = 0.8 / max(1, len(series))
    for s, (name, heights) in enumerate(series.items()):
        offset = (s - (len(series) - 1) / 2) * width
        ax.bar(x + offset, heights, width=width, label=name or None)
    ax.set_xticks(x, [str(c) for c in categories], fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]] | Sequence[float]],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    logy: bool = False,
    size: tuple[float, float] = (4.5, 2.8),
) -> Figure:
    """Lines from ``{name: (x, y)}`` or ``{name: y}`` (x = 0..n-1): learning curves,
    cumulative error distributions and the like."""
    fig = new_figure(*size)
    ax = fig.add_subplot()
    for name, data in series.items():
        if isinstance(data, tuple) and len(data) == 2:
            x, y = as_numpy(data[0]), as_numpy(data[1])
        else:
            y = as_numpy(data)
            x = np.arange(len(y))
        ax.plot(x, y, label=name, linewidth=1.2)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if any(series):  # some line has a name
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def curve_panels(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str = "step",
    ylabel: str = "training loss",
    ncols: int = 3,
    panel_size: tuple[float, float] = (3.0, 2.1),
) -> Figure:
    """One small panel per ``{title: (x, y)}`` curve, each on its own y scale (losses of
    different tasks differ by orders of magnitude); a log y-axis where a curve spans more than
    two decades of positive values."""
    if not series:
        raise ValueError("curve_panels: no curves")
    ncols = max(1, min(ncols, len(series)))
    nrows = -(-len(series) // ncols)
    fig = new_figure(panel_size[0] * ncols, panel_size[1] * nrows)
    for index, (title, (x, y)) in enumerate(series.items()):
        ax = fig.add_subplot(nrows, ncols, index + 1)
        x, y = as_numpy(x), as_numpy(y)
        ax.plot(x, y, linewidth=1.0, marker="." if len(y) < 20 else None)
        positive = y[np.isfinite(y) & (y > 0)]
        if len(positive) == len(y) and len(y) and positive.max() > 100 * positive.min():
            ax.set_yscale("log")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def tsne_embedding(
    z: Any, *, seed: int = 0, perplexity: float = 30.0, max_iter: int = 1000
) -> np.ndarray:
    """2-D t-SNE (sklearn, PCA initialisation) of ``(N, D)`` features; ``(N, 2)``.

    The perplexity is lowered to ``(N - 1) / 3`` for small N (sklearn needs it below N)."""
    x = as_numpy(z).astype(np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise ValueError(f"tsne_embedding: expected (N, D) features with N >= 3, got {x.shape}")
    perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3)))
    tsne = TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=max_iter
    )
    return tsne.fit_transform(x)
