"""Face-landmark accuracy: NME, failure rate, cumulative error curve and its AUC.

NME of one face = mean over its K landmarks of the Euclidean error, divided by a normalising
distance of the ground truth (inter-ocular by default). Values here are fractions (0.034, not
3.4 %). Compute them in original-image pixels (map predictions back with ``uncrop_points``);
the ratio is scale-invariant, so crop pixels give the same value only for similarity crops.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "NORMALIZATION_MODES",
    "normalizing_distance",
    "nme",
    "failure_rate",
    "auc",
    "cumulative_error_curve",
    "LandmarkNME",
]

NORMALIZATION_MODES = ("inter_ocular", "inter_pupil", "box", "diagonal")

# Outer eye corners: 300-W 68-point (36, 45), WFLW 98-point (60, 72), COFW 29-point (8, 9).
_OUTER_EYE_CORNERS = {68: (36, 45), 98: (60, 72), 29: (8, 9)}
# Eye centres: mean of each eye's contour (68, 98); COFW annotates the pupils (16, 17), which
# is the normaliser of its original benchmark.
_EYE_CONTOURS = {
    68: (tuple(range(36, 42)), tuple(range(42, 48))),
    98: (tuple(range(60, 68)), tuple(range(68, 76))),
    29: ((16,), (17,)),
}


def _check_points(name: str, points: Tensor) -> None:
    if points.ndim != 3 or points.shape[-1] != 2 or points.shape[1] == 0:
        raise ValueError(
            f"{name}: expected landmarks of shape (B, K, 2), got {tuple(points.shape)}"
        )


def normalizing_distance(target: Tensor, mode: str = "inter_ocular") -> Tensor:
    """Per-face normalising distance of ground-truth landmarks ``(B, K, 2)`` -> ``(B,)``.

    Modes: ``"inter_ocular"`` (outer eye corners), ``"inter_pupil"`` (eye centres),
    ``"box"`` (sqrt(w * h) of the landmarks' tight box), ``"diagonal"`` (that box's diagonal).
    The first two need the 68-, 98- or 29-point scheme. A zero distance raises ``ValueError``.
    """
    _check_points("target", target)
    num_points = target.shape[1]
    if mode in ("inter_ocular", "inter_pupil"):
        table = _OUTER_EYE_CORNERS if mode == "inter_ocular" else _EYE_CONTOURS
        if num_points not in table:
            raise ValueError(
                f"mode {mode!r} needs the 68-, 98- or 29-point scheme, got {num_points} points; "
                "use 'box' or 'diagonal'"
            )
        first, second = table[num_points]
        if mode == "inter_ocular":
            left, right = target[:, first], target[:, second]
        else:
            left = target[:, list(first)].mean(dim=1)
            right = target[:, list(second)].mean(dim=1)
        distance = torch.linalg.vector_norm(left - right, dim=-1)
    elif mode in ("box", "diagonal"):
        size = target.amax(dim=1) - target.amin(dim=1)
        width, height = size[:, 0], size[:, 1]
        distance = (width * height).sqrt() if mode == "box" else torch.hypot(width, height)
    else:
        raise ValueError(f"unknown normalisation {mode!r}; choose from {NORMALIZATION_MODES}")
    if not (distance > 0).all():
        faces = torch.nonzero(~(distance > 0)).flatten().tolist()
        raise ValueError(f"normalising distance ({mode}) is zero or undefined for faces {faces}")
    return distance


def nme(pred: Tensor, target: Tensor, mode: str = "inter_ocular") -> Tensor:
    """Normalised mean error per face, ``(B,)``, from ``pred`` and ``target`` ``(B, K, 2)``."""
    _check_points("pred", pred)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    errors = torch.linalg.vector_norm(pred.to(target.dtype) - target, dim=-1).mean(dim=1)
    return errors / normalizing_distance(target, mode)


def _check_nmes(nmes: Tensor, threshold: float) -> Tensor:
    nmes = torch.as_tensor(nmes).flatten()
    if nmes.numel() == 0:
        raise ValueError("no NME values: at least one face is needed")
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    # Compare in the values' own precision: float32 0.1 must not count as a failure at 0.10.
    return nmes if nmes.is_floating_point() else nmes.float()


def failure_rate(nmes: Tensor, threshold: float = 0.10) -> Tensor:
    """Fraction of faces whose NME exceeds ``threshold`` (FR@10 for 0.10)."""
    nmes = _check_nmes(nmes, threshold)
    return (nmes > threshold).double().mean().float()


def cumulative_error_curve(
    nmes: Tensor, threshold: float = 0.10, steps: int = 1000
) -> tuple[Tensor, Tensor]:
    """CED curve: ``(errors, fraction)``, both ``(steps + 1,)``; fraction of faces with NME <= e,
    for e evenly spaced from 0 to ``threshold``."""
    nmes = _check_nmes(nmes, threshold)
    errors = torch.linspace(0.0, threshold, steps + 1, dtype=nmes.dtype, device=nmes.device)
    fraction = (nmes.unsqueeze(0) <= errors.unsqueeze(1)).double().mean(dim=1)
    return errors.float(), fraction.float()


def auc(nmes: Tensor, threshold: float = 0.10, steps: int | None = None) -> Tensor:
    """Area under the CED curve from 0 to ``threshold``, divided by ``threshold`` (in [0, 1]).

    ``steps=None`` integrates the step-function curve exactly: the mean over faces of
    ``max(0, threshold - nme) / threshold``. An integer samples the curve at ``steps + 1``
    points and uses the trapezoid rule, as many published evaluation scripts do.
    """
    nmes = _check_nmes(nmes, threshold)
    if steps is None:
        return ((threshold - nmes).clamp(min=0.0).double().mean() / threshold).float()
    errors, fraction = cumulative_error_curve(nmes, threshold, steps)
    return (torch.trapezoid(fraction.double(), errors.double()) / threshold).float()


class LandmarkNME(Metric):
    """Accumulates per-face NMEs over batches (and processes) and reports NME, FR and AUC.

    Every face is kept (a concatenated state, gathered across processes), so the result equals
    a one-shot computation on all faces. ``compute()`` returns ``{"nme", "fr", "auc"}``
    (fractions); :meth:`per_face` returns the ``(N,)`` NMEs, e.g. for a CED plot.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        mode: str = "inter_ocular",
        threshold: float = 0.10,
        auc_steps: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in NORMALIZATION_MODES:
            raise ValueError(f"unknown normalisation {mode!r}; choose from {NORMALIZATION_MODES}")
        self.mode = mode
        self.threshold = threshold
        self.auc_steps = auc_steps
        self.add_state("nmes", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` ``(B, K, 2)`` in the same (original) frame."""
        self.nmes.append(nme(pred.detach(), target.detach(), self.mode).float())

    def per_face(self) -> Tensor:
        """All accumulated per-face NMEs ``(N,)`` in update order (after sync when distributed)."""
        return dim_zero_cat(self.nmes)

    def compute(self) -> dict[str, Tensor]:
        values = dim_zero_cat(self.nmes)
        return {
            "nme": values.double().mean().float(),
            "fr": failure_rate(values, self.threshold),
            "auc": auc(values, self.threshold, self.auc_steps),
        }
