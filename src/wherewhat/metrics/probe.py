"""Probing latents for class information: SSDIR's Table-2 protocol and a k-NN probe.

Table 2 of SSDIR: every inferred object of a test (and train) scene takes the digit label of the
ground-truth box it overlaps most (:func:`match_objects_to_labels`); a logistic regression fitted
on the train objects' z_what predicts the test objects' labels (:func:`latent_probe`); accuracy
and macro precision / recall / F1 are reported as mean and std over seeds. The reference accepts
any overlap (no minimum IoU): ``min_iou=0`` reproduces that; our default 0.5 labels only objects
that really sit on a digit and reports how many do not.

:func:`knn_probe` is the usual self-supervised-learning k-NN classifier on cosine similarity.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.preprocessing import StandardScaler
from torch import Tensor
from torchvision.ops import box_iou

from wherewhat.metrics.summary import mean_std

__all__ = [
    "UNMATCHED",
    "accuracy_by_group",
    "ObjectMatches",
    "match_objects_to_labels",
    "match_objects_in_scenes",
    "latent_probe",
    "knn_probe",
    "classification_scores",
]

UNMATCHED = -1  # label given to an object that overlaps no ground-truth box enough


def match_objects_to_labels(
    pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, min_iou: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Label each inferred object of one image with the class of its highest-IoU GT box.

    Args:
        pred_boxes: ``(n, 4)`` XYXY px, the inferred objects (after threshold / NMS).
        gt_boxes: ``(m, 4)`` XYXY px; ``gt_labels``: ``(m,)`` int.
        min_iou: an object whose best IoU is below this stays unmatched (``>=`` matches, so
            ``0`` matches every object of an image that has ground truth, as the reference).

    Returns:
        ``labels`` ``(n,)`` int64 (:data:`UNMATCHED` where unmatched) and ``matched_mask``
        ``(n,)`` bool. Several objects may take the same GT box (duplicates are not resolved
        here; each object is a sample of the probe). Objects of an image without ground truth
        are unmatched.
    """
    pred_boxes, gt_boxes = (
        _check_boxes("pred_boxes", pred_boxes),
        _check_boxes("gt_boxes", gt_boxes),
    )
    gt_labels = torch.as_tensor(gt_labels).reshape(-1)
    if len(gt_labels) != len(gt_boxes):
        raise ValueError(f"{len(gt_boxes)} gt_boxes but {len(gt_labels)} gt_labels")
    if not 0 <= min_iou <= 1:
        raise ValueError(f"min_iou must be in [0, 1], got {min_iou}")
    labels, matched, _ = _match(pred_boxes, gt_boxes, gt_labels, min_iou)
    return labels, matched


def _check_boxes(name: str, boxes: Tensor) -> Tensor:
    boxes = torch.as_tensor(boxes)
    if boxes.numel() == 0:
        return boxes.reshape(0, 4).float()
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}: expected (N, 4) XYXY boxes, got {tuple(boxes.shape)}")
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{name}: non-finite box coordinates")
    return boxes.float()


def _match(
    pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, min_iou: float
) -> tuple[Tensor, Tensor, Tensor]:
    n = len(pred_boxes)
    if n == 0 or len(gt_boxes) == 0:
        return (
            torch.full((n,), UNMATCHED, dtype=torch.int64),
            torch.zeros(n, dtype=torch.bool),
            torch.zeros(n),
        )
    best_iou, best = box_iou(pred_boxes, gt_boxes).max(dim=1)
    matched = best_iou >= min_iou
    labels = torch.where(matched, gt_labels.to(torch.int64)[best], UNMATCHED)
    return labels, matched, best_iou


@dataclass(frozen=True)
class ObjectMatches:
    """Labels of all inferred objects of a set of scenes, flattened in scene order.

    ``labels`` ``(N,)`` (:data:`UNMATCHED` where unmatched), ``matched`` ``(N,)`` bool,
    ``best_iou`` ``(N,)``, ``image_index`` ``(N,)`` (scene of each object), and ``min_iou``.
    Select the probe's samples with ``z[matches.matched]`` / ``matches.labels[matches.matched]``.
    """

    labels: Tensor
    matched: Tensor
    best_iou: Tensor
    image_index: Tensor
    min_iou: float

    @property
    def n_objects(self) -> int:
        return len(self.labels)

    @property
    def n_unmatched(self) -> int:
        return int((~self.matched).sum())

    def summary(self) -> dict[str, float | int]:
        """Counts for a report: objects, matched, unmatched (and their fraction), min_iou."""
        n = self.n_objects
        return {
            "n_objects": n,
            "n_matched": n - self.n_unmatched,
            "n_unmatched": self.n_unmatched,
            "unmatched_fraction": self.n_unmatched / n if n else 0.0,
            "min_iou": self.min_iou,
        }


def match_objects_in_scenes(
    pred_boxes: Sequence[Tensor],
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    min_iou: float = 0.5,
) -> ObjectMatches:
    """:func:`match_objects_to_labels` over many scenes (one list entry per scene)."""
    if not len(pred_boxes) == len(gt_boxes) == len(gt_labels):
        raise ValueError(
            f"expected one entry per scene, got {len(pred_boxes)} pred_boxes, "
            f"{len(gt_boxes)} gt_boxes, {len(gt_labels)} gt_labels"
        )
    if not 0 <= min_iou <= 1:
        raise ValueError(f"min_iou must be in [0, 1], got {min_iou}")
    parts = []
    for index, (pred, gt, lab) in enumerate(zip(pred_boxes, gt_boxes, gt_labels, strict=True)):
        try:
            pred, gt = _check_boxes("pred_boxes", pred), _check_boxes("gt_boxes", gt)
            lab = torch.as_tensor(lab).reshape(-1)
            if len(lab) != len(gt):
                raise ValueError(f"{len(gt)} gt_boxes but {len(lab)} gt_labels")
        except ValueError as error:
            raise ValueError(f"scene {index}: {error}") from None
        labels, matched, best_iou = _match(pred, gt, lab, min_iou)
        parts.append((labels, matched, best_iou, torch.full((len(pred),), index)))
    if not parts:
        empty = torch.zeros(0)
        return ObjectMatches(empty.long(), empty.bool(), empty, empty.long(), min_iou)
    labels, matched, best_iou, image_index = (torch.cat(p) for p in zip(*parts, strict=True))
    return ObjectMatches(labels, matched, best_iou, image_index.long(), float(min_iou))


# --------------------------------------------------------------------------- probes


def _as_features(name: str, z) -> np.ndarray:
    array = z.detach().cpu().numpy() if isinstance(z, Tensor) else np.asarray(z)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name}: expected (N, D) features with N >= 1, got {array.shape}")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{name}: {int(bad.sum())} rows hold non-finite values (first {bad.argmax()})"
        )
    return array


def _as_labels(name: str, y, n: int) -> np.ndarray:
    array = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    array = array.reshape(-1)
    if len(array) != n:
        raise ValueError(f"{name}: expected {n} labels (one per feature row), got {len(array)}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected integer class labels, got dtype {array.dtype}")
    if (array < 0).any():
        raise ValueError(
            f"{name}: {int((array < 0).sum())} negative labels; drop unmatched objects "
            "(label -1) with the matched mask first and report their count"
        )
    return array.astype(np.int64)


def classification_scores(
    true: np.ndarray, predicted: np.ndarray, classes: np.ndarray
) -> dict[str, float | np.ndarray]:
    """Accuracy, macro precision / recall / F1 (over ``classes``, 0 for a class never
    predicted) and the confusion matrix ``(C, C)`` (rows true, columns predicted)."""
    precision, recall, f1, _ = precision_recall_fscore_support(
        true, predicted, labels=classes, average="macro", zero_division=0
    )
    return {
        "accuracy": float(np.mean(true == predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "confusion_matrix": confusion_matrix(true, predicted, labels=classes),
    }


_SCORES = ("accuracy", "precision", "recall", "f1")


def _scores_over_seeds(per_seed: list[dict]) -> dict:
    out: dict = {}
    for key in _SCORES:
        out[key], out[f"{key}_std"] = mean_std(s[key] for s in per_seed)
    return out


def latent_probe(
    train_z,
    train_y,
    test_z,
    test_y,
    seeds: Sequence[int] = (0, 1, 2),
    solver: str = "lbfgs",
    C: float = 1.0,
    max_iter: int = 5000,
    train_subsample: int | None = None,
) -> dict:
    """Linear probe: multinomial logistic regression on standardised features, one fit per seed.

    Args:
        train_z, test_z: ``(N, D)`` features (tensor or array); train_y, test_y: ``(N,)`` int
            labels >= 0 (filter unmatched objects first).
        seeds: one fit per seed. The seed sets the solver's ``random_state`` (used by the
            stochastic solvers ``"sag"`` / ``"saga"``) and draws ``train_subsample`` training
            rows when given. With the default deterministic ``"lbfgs"`` and no subsample the
            convex problem has one solution, so the std over seeds is ~0: seed-to-seed spread
            then has to come from training the encoder with several seeds.
        solver, C, max_iter: passed to sklearn ``LogisticRegression`` (L2 penalty strength
            ``1 / C``). A fit that does not converge is flagged in ``converged``, not hidden.
        train_subsample: number of training rows per seed (without replacement), or all.

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1`` (macro; means over seeds) and their
        ``*_std``; ``per_seed`` (list of dicts with the same scores and ``n_iter``);
        ``confusion_matrices`` ``(S, C, C)`` int and ``classes`` ``(C,)``; ``converged``
        (all seeds), ``solver``, ``seeds``, ``n_train``, ``n_test``; ``test_correct``
        ``(N_test,)``: the share of seeds that got each test row right (for
        :func:`accuracy_by_group`).
    """
    train_x = _as_features("train_z", train_z)
    test_x = _as_features("test_z", test_z)
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_z has {train_x.shape[1]} dims, test_z {test_x.shape[1]}")
    train_t = _as_labels("train_y", train_y, len(train_x))
    test_t = _as_labels("test_y", test_y, len(test_x))
    if len(seeds) == 0:
        raise ValueError("seeds: at least one seed is needed")
    if train_subsample is not None and not 0 < train_subsample <= len(train_x):
        raise ValueError(f"train_subsample must be in [1, {len(train_x)}], got {train_subsample}")
    classes = np.union1d(train_t, test_t)

    per_seed, matrices, converged = [], [], True
    correct = np.zeros(len(test_x))  # times each test row was right, over the seeds
    for seed in seeds:
        rows = np.arange(len(train_x))
        if train_subsample is not None:
            rows = np.sort(np.random.default_rng(seed).choice(rows, train_subsample, replace=False))
        if len(np.unique(train_t[rows])) < 2:
            raise ValueError(f"seed {seed}: the training labels hold a single class")
        # Standardise on the (sub)sample the probe is fitted on, never on the test set.
        scaler = StandardScaler().fit(train_x[rows])
        model = LogisticRegression(C=C, solver=solver, max_iter=max_iter, random_state=seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(scaler.transform(train_x[rows]), train_t[rows])
        seed_converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        converged &= seed_converged
        predicted = model.predict(scaler.transform(test_x))
        correct += predicted == test_t
        scores = classification_scores(test_t, predicted, classes)
        matrices.append(scores.pop("confusion_matrix"))
        per_seed.append(
            {"seed": int(seed), **scores, "n_iter": int(np.max(model.n_iter_)),
             "converged": seed_converged}
        )  # fmt: skip
    return {
        **_scores_over_seeds(per_seed),
        "per_seed": per_seed,
        "test_correct": correct / len(seeds),
        "confusion_matrices": np.stack(matrices),
        "classes": classes,
        "converged": converged,
        "solver": solver,
        "seeds": [int(s) for s in seeds],
        "n_train": len(train_x) if train_subsample is None else int(train_subsample),
        "n_test": len(test_x),
    }


def accuracy_by_group(correct, groups) -> dict[Any, dict[str, float | int]]:
    """Accuracy per group: ``correct`` ``(N,)`` (0/1, or the share of seeds right, as
    :func:`latent_probe`'s ``test_correct``), ``groups`` ``(N,)`` a group per row (e.g. an
    object's size bucket or pyramid level) -> group -> ``{"accuracy", "n"}``, groups sorted."""
    correct = np.asarray(correct, dtype=np.float64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if len(groups) != len(correct):
        raise ValueError(f"groups has {len(groups)} entries, correct {len(correct)}")
    return {
        group.item(): {
            "accuracy": float(correct[groups == group].mean()),
            "n": int((groups == group).sum()),
        }
        for group in np.unique(groups)
    }


def knn_probe(
    train_z,
    train_y,
    test_z,
    test_y,
    k: int = 20,
    weighting: Literal["uniform", "exp"] = "exp",
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict:
    """k-nearest-neighbour classifier on cosine similarity (features L2-normalised).

    ``weighting="exp"`` gives each of the ``k`` neighbours the vote ``exp(sim / temperature)``
    (the InstDisc / DINO convention, T = 0.07); ``"uniform"`` counts neighbours, ties going to
    the class with the larger summed similarity. Deterministic; the test set is processed in
    chunks of ``chunk_size`` rows to bound memory.

    Returns ``accuracy``, macro ``precision`` / ``recall`` / ``f1``, ``confusion_matrix``,
    ``classes``, ``k``, ``n_train``, ``n_test``.
    """
    train_x = torch.from_numpy(_as_features("train_z", train_z))
    test_x = torch.from_numpy(_as_features("test_z", test_z))
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_z has {train_x.shape[1]} dims, test_z {test_x.shape[1]}")
    train_t = _as_labels("train_y", train_y, len(train_x))
    test_t = _as_labels("test_y", test_y, len(test_x))
    if not 1 <= k <= len(train_x):
        raise ValueError(f"k must be in [1, {len(train_x)}] (the train size), got {k}")
    if weighting not in ("uniform", "exp"):
        raise ValueError(f"weighting must be 'uniform' or 'exp', got {weighting!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    classes = np.union1d(train_t, test_t)
    # Column of each train label in ``classes``.
    train_col = torch.from_numpy(np.searchsorted(classes, train_t))
    train_x = torch.nn.functional.normalize(train_x, dim=1)
    test_x = torch.nn.functional.normalize(test_x, dim=1)

    predicted = []
    for start in range(0, len(test_x), chunk_size):
        sims, idx = (test_x[start : start + chunk_size] @ train_x.T).topk(k, dim=1)
        cols = train_col[idx]
        votes = torch.zeros(len(sims), len(classes), dtype=torch.float64)
        if weighting == "exp":
            votes.scatter_add_(1, cols, (sims / temperature).exp())
        else:
            sim_sum = torch.zeros_like(votes).scatter_add_(1, cols, sims)
            counts = torch.zeros_like(votes).scatter_add_(1, cols, torch.ones_like(sims))
            # (sim_sum + k) / (2k + 1) lies in [0, 1): it only breaks ties between equal counts.
            votes = counts + (sim_sum + k) / (2 * k + 1)
        predicted.append(votes.argmax(dim=1))
    predicted_labels = classes[torch.cat(predicted).numpy()]
    scores = classification_scores(test_t, predicted_labels, classes)
    return {**scores, "classes": classes, "k": k, "n_train": len(train_x), "n_test": len(test_x)}
