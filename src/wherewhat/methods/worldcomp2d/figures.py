"""Figures for face-landmark models: predictions on faces, cumulative error curves, latent maps.

- :func:`prediction_panels`: validation crops, one row per face and one column per model, the
  annotation (green dots) and the model's landmarks (red crosses), each titled with its NME;
- :func:`ced_figure`: cumulative error distribution (fraction of faces with NME <= e) up to
  FR@10's threshold, one line per model, AUC@10 in the legend;
- :func:`nme_curve_figure`: validation NME during training against epochs and minutes;
- :func:`latent_codes_by_nearest_landmark` + :func:`latent_embedding_figure`: WorldComp2D's
  codes of views centred anywhere on validation faces, embedded in 2-D (PCA and t-SNE) and
  coloured by the facial part of the landmark nearest to each view's centre: if PWConLoss
  worked, the parts form separate regions although the encoder never sees a coordinate.

Matplotlib on Agg canvases only (see :mod:`wherewhat.report.figures`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import ScalarFormatter
from sklearn.decomposition import PCA
from torch import Tensor

from wherewhat.methods.worldcomp2d.model import WorldComp2D
from wherewhat.metrics.landmarks import auc, cumulative_error_curve
from wherewhat.report.figures import (
    GT_COLOR,
    PRED_COLOR,
    as_numpy,
    line_chart,
    new_figure,
    show_image,
    tsne_embedding,
)

# Tensors or arrays: the figures take either (as_numpy converts).
ArrayLike = Tensor | np.ndarray

__all__ = [
    "FACE_PARTS_68",
    "face_part_of",
    "prediction_panels",
    "ced_figure",
    "nme_curve_figure",
    "latent_codes_by_nearest_landmark",
    "latent_embedding_figure",
]

# 68-point scheme, split by where the part appears in the image (left / right as seen).
FACE_PARTS_68: dict[str, tuple[int, ...]] = {
    "jaw, left": tuple(range(0, 6)),
    "chin": tuple(range(6, 11)),
    "jaw, right": tuple(range(11, 17)),
    "brow, left": tuple(range(17, 22)),
    "brow, right": tuple(range(22, 27)),
    "nose": tuple(range(27, 36)),
    "eye, left": tuple(range(36, 42)),
    "eye, right": tuple(range(42, 48)),
    "mouth": tuple(range(48, 68)),
}


def face_part_of(landmark: Tensor | np.ndarray, parts: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Index into ``list(parts)`` of each landmark index in ``landmark`` (``-1``: in no part)."""
    lookup = np.full(1 + max(max(v) for v in parts.values()), -1, dtype=np.int64)
    for number, members in enumerate(parts.values()):
        lookup[list(members)] = number
    index = as_numpy(landmark).astype(np.int64)
    inside = (index >= 0) & (index < len(lookup))
    return np.where(inside, lookup[np.clip(index, 0, len(lookup) - 1)], -1)


def prediction_panels(
    crops: ArrayLike,
    truth: ArrayLike,
    predictions: Mapping[str, ArrayLike],
    nmes: Mapping[str, ArrayLike] | None = None,
    *,
    panel_in: float = 1.6,
    marker_size: float = 3.0,
) -> Figure:
    """Faces (rows) x models (columns): crops ``(N, C, S, S)`` with ``truth`` ``(N, K, 2)`` and
    each model's ``predictions[name]`` ``(N, K, 2)`` in crop pixels; ``nmes[name]`` ``(N,)``
    (fractions) titles the panels."""
    names = list(predictions)
    count = len(crops)
    if count == 0 or not names:
        raise ValueError("prediction_panels: need at least one face and one model")
    fig = new_figure(len(names) * panel_in, count * (panel_in + 0.22))
    axes = fig.subplots(count, len(names), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.05, top=0.97, wspace=0.04, hspace=0.2)
    gt_all = as_numpy(truth)
    for row in range(count):
        for column, name in enumerate(names):
            ax = axes[row, column]
            show_image(ax, crops[row])
            gt = gt_all[row]
            pr = as_numpy(predictions[name])[row]
            ax.scatter(gt[:, 0], gt[:, 1], s=marker_size, c=GT_COLOR, linewidths=0)
            ax.scatter(pr[:, 0], pr[:, 1], s=marker_size * 2, c=PRED_COLOR, marker="x",
                       linewidths=0.6)  # fmt: skip
            title = name
            if nmes is not None and name in nmes:
                title += f" {100 * float(as_numpy(nmes[name])[row]):.1f}%"
            ax.set_title(title, fontsize=6, pad=2)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=GT_COLOR, markersize=3, label="annotation"),
        Line2D([], [], marker="x", linestyle="", color=PRED_COLOR, markersize=3, label="model"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=6, frameon=False)
    return fig


def ced_figure(nmes: Mapping[str, ArrayLike], threshold: float = 0.10) -> Figure:
    """Cumulative error distribution per model (NME in %, fraction of faces), AUC in legend."""
    series = {}
    for name, values in nmes.items():
        values = torch.as_tensor(as_numpy(values), dtype=torch.float32)
        errors, fraction = cumulative_error_curve(values, threshold)
        area = float(auc(values, threshold))
        series[f"{name} (AUC@{100 * threshold:.0f} {area:.3f})"] = (100 * errors, fraction)
    figure = line_chart(
        series,
        title="Cumulative error distribution (validation faces)",
        xlabel="NME, inter-ocular (%)",
        ylabel="fraction of faces",
        size=(4.8, 3.0),
    )
    figure.axes[0].set_ylim(0.0, 1.0)  # a fraction: a curve at 0 must look like one
    return figure


def nme_curve_figure(curves: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """Validation NME (%) per training run against its epochs (left) and its training minutes
    (right); ``curves``: run -> rows ``{"epoch", "minutes", "nme"}``."""
    fig = new_figure(8.0, 3.0)
    axes = fig.subplots(1, 2, sharey=True)
    for run, rows in curves.items():
        nmes = [100 * row["nme"] for row in rows]
        axes[0].plot([row["epoch"] for row in rows], nmes, marker=".", linewidth=1.2, label=run)
        axes[1].plot([row["minutes"] for row in rows], nmes, marker=".", linewidth=1.2)
    for ax, label in zip(axes, ("epoch", "training minutes"), strict=True):
        ax.set_xlabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation NME (%)", fontsize=8)
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(ScalarFormatter())  # 4, 6, 10: not 4 x 10^0
    axes[0].yaxis.set_minor_formatter(ScalarFormatter())
    axes[0].legend(fontsize=7)
    fig.suptitle("Validation NME while training", fontsize=9)
    fig.tight_layout()
    return fig


@torch.no_grad()
def latent_codes_by_nearest_landmark(
    model: WorldComp2D,
    crops: Tensor,
    points: Tensor,
    views_per_face: int = 32,
    margin: float = 0.1,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Codes of views at random centres on faces, with the landmark nearest to each centre.

    Args:
        model: a :class:`~wherewhat.methods.worldcomp2d.model.WorldComp2D` (eval mode is set here).
        crops: ``(N, C, S, S)`` in [0, 1]; points: ``(N, K, 2)`` their landmarks, crop px.
        views_per_face: centres per face, uniform in the landmark box grown by ``margin`` of
            its size on every side.
    Returns:
        codes ``(N * V, D)``, nearest landmark ``(N * V,)`` long and its distance ``(N * V,)`` px.
    """
    generator = torch.Generator().manual_seed(seed)
    low, high = points.amin(dim=1), points.amax(dim=1)  # (N, 2)
    grow = (high - low) * margin
    low, high = low - grow, high + grow
    unit = torch.rand(len(crops), views_per_face, 2, generator=generator)
    centres = low[:, None] + unit * (high - low)[:, None]  # (N, V, 2)
    model.eval()
    codes = model.encode(model.observe(model.normalize(crops), centres))  # (N, V, D)
    distance = torch.cdist(centres, points)  # (N, V, K)
    nearest, index = distance.min(dim=2)
    return codes.flatten(0, 1), index.flatten(), nearest.flatten()


def latent_embedding_figure(
    codes: ArrayLike,
    nearest: ArrayLike,
    parts: Mapping[str, Sequence[int]] = FACE_PARTS_68,
    *,
    tsne: bool = True,
    seed: int = 0,
    size: tuple[float, float] | None = None,
) -> Figure:
    """2-D PCA (and t-SNE) of ``codes`` ``(M, D)``, coloured by the face part of ``nearest``
    ``(M,)`` (landmark indices; see :data:`FACE_PARTS_68`)."""
    x = as_numpy(codes).astype(np.float64)
    part = face_part_of(nearest, parts)
    if x.ndim != 2 or len(x) != len(part) or len(x) < 3:
        raise ValueError(
            f"need codes (M >= 3, D) and M landmark indices, got {x.shape}, {part.shape}"
        )
    panels = [("PCA", PCA(n_components=2, random_state=seed).fit_transform(x))]
    if tsne:
        panels.append(("t-SNE", tsne_embedding(x, seed=seed)))
    width = 3.2 * len(panels) + 1.4  # room for the legend
    fig = new_figure(*(size or (width, 3.4)))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    cmap = matplotlib.colormaps["tab10"]
    names = list(parts)
    for ax, (title, embedded) in zip(axes, panels, strict=True):
        for number, name in enumerate(names):
            mine = part == number
            if mine.any():
                ax.scatter(*embedded[mine].T, s=4, color=cmap(number % 10), linewidths=0,
                           alpha=0.8, label=name)  # fmt: skip
        ax.set_title(f"{title} of {len(x)} view codes", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                    markerscale=2, title="nearest landmark", title_fontsize=6)  # fmt: skip
    fig.subplots_adjust(left=0.02, right=1 - 1.4 / fig.get_figwidth(), bottom=0.03, top=0.9,
                        wspace=0.05)  # fmt: skip
    return fig
