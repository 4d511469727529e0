"""Figures of the Spatial Prediction benchmark: learning curves and held-out view pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from wherewhat.data.images import load_cifar_npz
from wherewhat.io import png_bytes
from wherewhat.methods.spatial_prediction.bases import SSLMethod
from wherewhat.methods.spatial_prediction.head import SpatialPredictionConfig, spatial_targets
from wherewhat.methods.spatial_prediction.probes import SPReadout, sample_view_pairs
from wherewhat.methods.spatial_prediction.records import ArmResult
from wherewhat.methods.spatial_prediction.views import mirror_boxes
from wherewhat.report.figures import line_chart, new_figure, show_image

__all__ = [
    "bench_figures",
    "knn_curves_figure",
    "relative_position_figure",
    "relative_position_png",
]

# name -> (x, y) of one line.
Curves = dict[str, tuple[np.ndarray, np.ndarray]]


def _curves(arms: Sequence[ArmResult], names: Sequence[str], key: str) -> Curves:
    """Mean over seeds of ``history[key]`` per epoch, for the arms in ``names``."""
    out = {}
    for name in names:
        runs = [a.history for a in arms if a.arm == name]
        if not runs or not all(key in h for h in runs[0]):
            continue
        length = min(len(r) for r in runs)
        values = np.array([[r[i][key] for i in range(length)] for r in runs]).mean(0)
        out[name] = (np.arange(1, length + 1), values)
    return out


def _step_curves(arms: Sequence[ArmResult], names: Sequence[str], key: str) -> Curves:
    """Mean over seeds of the smoothed per-step ``key`` for the arms in ``names``."""
    out = {}
    for name in names:
        runs = [a.step_losses for a in arms if a.arm == name and key in a.step_losses]
        if not runs:
            continue
        length = min(len(r[key]) for r in runs)
        steps = np.array(runs[0]["step"][:length]) + 1
        out[name] = (steps, np.array([r[key][:length] for r in runs]).mean(0))
    return out


def knn_curves_figure(
    curves: Curves, random_knn: float | None, margin: float, title: str
) -> Figure:
    """k-NN accuracy per epoch (``{arm: (epochs, accuracy)}``) with the random-init level
    ``random_knn`` as a dashed line and ``random_knn + margin`` (the validity bar's distance,
    drawn on the k-NN scale) as a dotted one."""
    fig = new_figure(5.2, 3.2)
    ax = fig.add_subplot()
    for name, (x, y) in curves.items():
        ax.plot(x, y, label=name, linewidth=1.2, marker="." if len(x) < 30 else None)
    if random_knn is not None and math.isfinite(random_knn):
        ax.axhline(random_knn, color="grey", linestyle="--", linewidth=1, label="random init")
        ax.axhline(random_knn + margin, color="grey", linestyle=":", linewidth=1.2,
                   label=f"random init + {100 * margin:.0f} points")  # fmt: skip
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("epoch", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("k-NN accuracy", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


def bench_figures(
    arms: Sequence[ArmResult], random_init: Sequence[ArmResult] = (), margin: float = 0.25
) -> dict[str, bytes]:
    """PNG bytes of the run's figures, for the arms that ran: ``knn-curves`` (k-NN accuracy per
    epoch of every arm, mean over seeds, with the random-init level of ``random_init`` dashed
    and that + ``margin`` dotted; the level is the final k-NN probe of the untrained network,
    on the whole test split, while the curves use the task's per-epoch test subset), then per
    base method ``<base>-knn`` (the same for base and base + SP), ``<base>-loss`` and
    ``<base>-sp-loss`` (window means over steps)."""
    figures = {}
    random_knn = float(np.mean([a.knn for a in random_init])) if random_init else None
    everything = _curves(arms, list(dict.fromkeys(a.arm for a in arms)), "knn_acc")
    if everything:
        fig = knn_curves_figure(everything, random_knn, margin,
                                "k-NN accuracy (test subset) per epoch, mean over seeds")  # fmt: skip
        figures["knn-curves"] = png_bytes(fig)
    for base in ("simclr", "byol"):
        names = [base, f"{base}_sp"]
        knn = _curves(arms, names, "knn_acc")
        if knn:
            fig = knn_curves_figure(knn, random_knn, margin,
                                    f"{base}: k-NN accuracy (test subset) per epoch")  # fmt: skip
            figures[f"{base}-knn"] = png_bytes(fig)
        losses = _step_curves(arms, names, "base_loss")
        if losses:
            fig = line_chart(losses, title=f"{base}: base loss (window means over steps)",
                             xlabel="step", ylabel="loss")  # fmt: skip
            figures[f"{base}-loss"] = png_bytes(fig)
        sp_losses = _step_curves(arms, names[1:], "sp_loss")
        if sp_losses:
            fig = line_chart(sp_losses, title=f"{base} + SP: SP loss (smooth-L1, window means)",
                             xlabel="step", ylabel="SP loss")  # fmt: skip
            figures[f"{base}-sp-loss"] = png_bytes(fig)
    return figures


def relative_position_figure(
    model: SSLMethod | SPReadout,
    images: Tensor,
    config: SpatialPredictionConfig,
    count: int = 8,
    seed: int = 0,
) -> Figure:
    """Held-out view pairs of ``images`` ``(N, C, H, W)`` (uint8 or float): each panel shows
    the image as the network saw it (mirrored when flipped), box A (blue), box B (orange), the
    true offset A -> B (green arrow) and the predicted one (red dashed), plus a last panel of
    predicted vs true dx, dy over the pairs. ``model`` has ``encode`` and ``spatial_prediction``
    (a trained SP method or an :class:`~wherewhat.methods.spatial_prediction.probes.SPReadout`)."""
    pairs = sample_view_pairs(images, config, seed=seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = model.encode(pairs.views.flatten(0, 1)).view(len(pairs), 2, -1)
            predicted = model.spatial_prediction.head(features[:, 0], features[:, 1])
    finally:
        model.train(was_training)
    sp = model.spatial_prediction
    target = spatial_targets(
        pairs.boxes[:, 0], pairs.boxes[:, 1], pairs.image_size, sp.max_ratio, pairs.flipped
    )
    count = min(count, len(pairs))
    ncols = min(count, 5)
    nrows = math.ceil((count + 1) / ncols)
    fig = new_figure(1.8 * ncols, 1.9 * nrows)
    float_images = images.float() / 255.0 if images.dtype == torch.uint8 else images
    for i in range(count):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        height, width = (int(v) for v in pairs.image_size[i])
        image = float_images[int(pairs.image_index[i])]
        boxes = pairs.boxes[i]
        if bool(pairs.flipped[i]):
            image, boxes = image.flip(-1), mirror_boxes(boxes, float(width))
        show_image(ax, image)
        for box, color in zip(boxes, ("#3070ff", "#ff9020"), strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=color, lw=1.2))
        cx, cy = float(boxes[0, [0, 2]].mean()), float(boxes[0, [1, 3]].mean())
        for offset, color, style in ((target[i], "#00e000", "-"), (predicted[i], "#ff3030", "--")):
            ax.annotate(
                "", xy=(cx + float(offset[0]) * width, cy + float(offset[1]) * height),
                xytext=(cx, cy),
                arrowprops={"arrowstyle": "->", "color": color, "lw": 1.4, "linestyle": style},
            )  # fmt: skip
        ax.set_title(f"pair {i}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(nrows, ncols, count + 1)
    for k, (label, color) in enumerate((("dx", "#3070ff"), ("dy", "#ff9020"))):
        ax.scatter(target[:, k], predicted[:, k], s=3, alpha=0.5, color=color, label=label)
    ax.plot([-1, 1], [-1, 1], color="grey", lw=0.8)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_xlabel("true", fontsize=7)
    ax.set_ylabel("predicted", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def relative_position_png(model: SSLMethod, cifar_npz: str, count: int = 9) -> bytes:
    """:func:`relative_position_figure` of a trained SP ``model`` on 300 test images of
    ``cifar_npz`` (a fixed random pick, so classes mix), with the model's own SP views."""
    arrays = load_cifar_npz(cifar_npz)
    pick = np.random.default_rng(0).permutation(len(arrays.y_test))[:300]  # mixed classes
    images = torch.from_numpy(arrays.x_test[pick]).permute(0, 3, 1, 2)
    config = model.spatial_prediction.config
    return png_bytes(relative_position_figure(model, images, config, count))
