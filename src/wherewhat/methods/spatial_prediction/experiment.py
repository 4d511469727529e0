"""The SSL benchmark pipeline, shared by ``benchmarks/spatial_prediction.py`` and the tour
section "spatial_prediction".

One *arm* = a base method (SimCLR / BYOL), an SP weight lambda (0: the base method) and a seed:
pre-train :class:`~wherewhat.methods.spatial_prediction.task.SelfSupervisedTask` on CIFAR-10 images (labels unused),
then probe the frozen backbone (:mod:`wherewhat.methods.spatial_prediction.probes`):

* linear probe (logistic regression, fixed C) and k-NN (cosine, k = 20, exp weights) on the
  test split, fitted on the training images' labels;
* robustness: the same linear probe on test images with Gaussian noise / blur / low contrast
  at three severities;
* "where": an SP read-out head fitted on frozen features of training-image view pairs (the same
  protocol for every arm, SP-trained or not), scored on held-out test-image pairs (loss ratio to
  predicting zero) and by 2x2 / 3x3 patch re-ordering; SP arms also report their own head;
* landmark probe (SimCLR vs SimCLR+SP): pre-train on 68-point face crops without labels, then a
  ridge regression from frozen features to the landmarks, NME on faces of held-out photos.

All arms of one seed see the same images in the same order; only lambda differs. Timing per
epoch (wall and this process's CPU) comes from the task's ``history``. :func:`run_ssl_bench`
runs everything; ``quick`` is the few-minute version (the tour runs an even smaller one).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wherewhat.training.quiet import quiet_lightning

__all__ = [
    "SSLBenchSettings",
    "arm_name",
    "relative_position_figure",
    "relative_position_png",
    "run_ssl_arm",
    "run_ssl_bench",
    "ssl_markdown",
    "summarise_arms",
    "summary_rows",
]

DEFAULT_CIFAR = Path("../shared/data/cifar10/cifar10_subset.npz")
DEFAULT_FACES = Path("../shared/data/faces68")
# The targets, shown next to the results.
TARGETS = {
    "linear_probe_gain_simclr": (">=", 1.0),  # points of accuracy, mean of the seeds
    "landmark_nme_gain_simclr": (">", 0.0),  # NME(SimCLR) - NME(SimCLR+SP)
    "sp_time_overhead": ("<=", 0.25),
}


@dataclass
class SSLBenchSettings:
    """Everything one benchmark run does; :meth:`preset` gives ``full``, ``quick``, ``tour``.

    ``task_args`` go to :class:`~wherewhat.methods.spatial_prediction.task.SelfSupervisedTask` for every arm
    (``base`` and ``sp_lambda`` are set per arm). ``train_images``: a class-balanced subset of
    the training split drawn with each seed (``None``: all 20,000); ``test_images``: a fixed
    subset of the test split (``None``: all 10,000); ``corruption_images``: test images used for
    the corruption probe (a fixed random subset). The "where" read-out is fitted on two pairs
    per image from ``readout_train_images`` training images and scored on one pair per image
    from ``readout_test_images`` test images. ``threads``: torch threads of the training
    process; with ``num_workers = 1`` the loader worker (one thread) takes the second core
    (measured on 2 cores: 2 threads + a worker burn 2x the CPU per step under load and were
    no faster).
    """

    quick: bool = False
    cifar_npz: str = str(DEFAULT_CIFAR)
    faces_root: str | None = str(DEFAULT_FACES)
    seeds: tuple[int, ...] = (0, 1, 2)
    byol_seeds: tuple[int, ...] = (0,)
    sp_lambda: float = 0.5
    lambda_sweep: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0)
    epochs: int = 4
    batch_size: int = 256
    train_images: int | None = 10000
    test_images: int | None = None
    corruption_images: int = 2000
    num_workers: int = 1
    threads: int = 1
    task_args: dict[str, Any] = field(
        default_factory=lambda: {
            "backbone": "resnet18_cifar",
            "backbone_width": 8,
            "sp_pairs": 1,
            "sp_local_size": 16,
            "sp_hidden_dim": 256,
            "optimizer": "adamw",
            "lr": 2e-3,
            "weight_decay": 1e-4,
            "knn_every_n_epochs": 1,
            "knn_train_limit": 5000,
            "knn_test_limit": 2000,
        }
    )
    byol_args: dict[str, Any] = field(
        default_factory=lambda: {"projection_hidden_dim": 512, "prediction_hidden_dim": 512}
    )
    readout_train_images: int = 5000
    readout_test_images: int = 2000
    readout_steps: int = 400
    reorder_images: int = 500
    face_seeds: tuple[int, ...] = (0, 1, 2)
    face_size: int = 32
    face_side_factor: float = 1.25
    face_val_fraction: float = 0.2
    face_split_seed: int = 0
    face_epochs: int = 20
    face_batch_size: int = 128
    max_faces: int | None = None
    progress_bar: bool = False

    @classmethod
    def preset(cls, name: str, **changes: Any) -> SSLBenchSettings:
        """``full`` (the benchmark), ``quick`` (every part, tiny: a few minutes on 2 quiet
        cores) or ``tour`` (one SimCLR+SP arm, no faces: well under a minute)."""
        if name == "full":
            settings = cls()
        elif name == "quick":
            settings = cls(
                quick=True, seeds=(0,), byol_seeds=(0,), lambda_sweep=(0.0, 0.5), epochs=1,
                batch_size=128, train_images=1280, test_images=1000, corruption_images=300,
                readout_train_images=1000, readout_test_images=300, readout_steps=200,
                reorder_images=100, face_seeds=(0,), face_epochs=2, max_faces=300,
            )  # fmt: skip
            settings.task_args = {**settings.task_args, "knn_train_limit": 1000,
                                  "knn_test_limit": 500}  # fmt: skip
        elif name == "tour":
            settings = cls(
                quick=True, seeds=(0,), byol_seeds=(), lambda_sweep=(), epochs=2,
                batch_size=128, train_images=1280, test_images=500, corruption_images=200,
                readout_train_images=1000, readout_test_images=300, readout_steps=200,
                reorder_images=100, faces_root=None, face_seeds=(), num_workers=0,
            )  # fmt: skip
            settings.task_args = {**settings.task_args, "knn_train_limit": 1000,
                                  "knn_test_limit": 500}  # fmt: skip
        else:
            raise ValueError(f"unknown preset {name!r}: expected 'full', 'quick' or 'tour'")
        return dataclasses.replace(settings, **changes)

    def check(self) -> None:
        if not self.seeds:
            raise ValueError("at least one SimCLR seed is needed")
        if self.sp_lambda <= 0:
            raise ValueError(f"sp_lambda (the SP arms' weight) must be > 0, got {self.sp_lambda}")
        if not Path(self.cifar_npz).is_file():
            raise FileNotFoundError(f"{self.cifar_npz}: CIFAR-style .npz not found")
        if self.face_seeds and self.faces_root and not Path(self.faces_root).is_dir():
            raise FileNotFoundError(f"{self.faces_root}: faces folder not found")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("need epochs >= 1 and batch_size >= 2")


def arm_name(base: str, sp_lambda: float, default_lambda: float) -> str:
    """``simclr``, ``simclr_sp`` (lambda = the default), ``simclr_sp_l0.1`` (other lambdas)."""
    if sp_lambda == 0:
        return base
    return f"{base}_sp" if sp_lambda == default_lambda else f"{base}_sp_l{sp_lambda:g}"


# -- training ---------------------------------------------------------------------------------


def _fit(task: Any, data: Any, epochs: int, s: SSLBenchSettings) -> dict[str, float]:
    import lightning.pytorch as pl

    from wherewhat.training.callbacks import NonFiniteLossGuard

    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
            enable_checkpointing=False, enable_progress_bar=s.progress_bar,
            enable_model_summary=False, callbacks=[NonFiniteLossGuard()],
        )  # fmt: skip
        start, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
        trainer.fit(task, datamodule=data)
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        # Loader workers, counted once they have exited (at the end of fit).
        "worker_cpu_seconds": _children_cpu() - children,
    }


def _children_cpu() -> float:
    import os

    times = os.times()
    return times.children_user + times.children_system


def _cifar_data(s: SSLBenchSettings, seed: int) -> Any:
    from wherewhat.data.images import SelfSupervisedDataModule

    data = SelfSupervisedDataModule(
        npz_path=s.cifar_npz, batch_size=s.batch_size, train_limit=s.train_images,
        test_limit=s.test_images, num_workers=s.num_workers, seed=seed,
    )  # fmt: skip
    data.setup()
    return data


def _readout_config(task_args: Mapping[str, Any]) -> Any:
    """The SP configuration of every read-out and evaluation pair (the SP arms' views)."""
    from wherewhat.methods.spatial_prediction import SpatialPredictionConfig

    size = int(task_args.get("sp_local_size", 16))
    return SpatialPredictionConfig(
        weight=1.0,
        num_pairs=1,
        local_scale=tuple(task_args.get("sp_local_scale", (0.05, 0.4))),
        local_size=(size, size),
        hidden_dim=int(task_args.get("sp_hidden_dim", 256)),
    )


def _subset(total: int, count: int, seed: int) -> Any:
    """Sorted indices of ``min(count, total)`` items drawn without replacement with ``seed``."""
    import torch

    chosen = np.random.default_rng(seed).permutation(total)[: min(count, total)]
    return torch.from_numpy(np.sort(chosen))


def _evaluate_classes(model: Any, data: Any, s: SSLBenchSettings, seed: int) -> dict[str, Any]:
    """Linear probe, k-NN, corruptions, SP read-out and re-ordering of a trained method."""
    import torch

    from wherewhat.methods.spatial_prediction import patch_reorder_accuracy
    from wherewhat.methods.spatial_prediction.probes import (
        LinearProbe,
        corruption_accuracy,
        encode_images,
        fit_sp_readout,
        sample_view_pairs,
        sp_pair_error,
    )
    from wherewhat.metrics.probe import knn_probe

    train, test = data.probe_train_dataset(), data.test_dataset()
    train_f = encode_images(model.encode, train.images)
    test_f = encode_images(model.encode, test.images)
    probe = LinearProbe().fit(train_f, train.labels)
    out: dict[str, Any] = {
        "linear_probe": probe.accuracy(test_f, test.labels),
        "linear_probe_converged": probe.converged,
        "knn": float(knn_probe(train_f, train.labels, test_f, test.labels, k=20)["accuracy"]),
    }
    # Fixed random subsets (the splits may be sorted by class): the same images for every arm.
    corrupt_idx = _subset(len(test), s.corruption_images, seed=10)
    robustness = corruption_accuracy(
        probe, model.encode, test.images[corrupt_idx], test.labels[corrupt_idx], seed=0
    )
    out["robustness"] = robustness
    out["corruption_accuracy"] = robustness["mean"]

    config = _readout_config(s.task_args)
    # Fixed evaluation pairs (seeds 100 / 200): every arm is scored on the same views.
    train_idx = _subset(len(train), s.readout_train_images, seed=11)
    test_idx = _subset(len(test), s.readout_test_images, seed=12)
    train_pairs = sample_view_pairs(train.images[train_idx], config, 2, seed=100)
    test_pairs = sample_view_pairs(test.images[test_idx], config, seed=200)
    readout = fit_sp_readout(
        model.backbone, train_pairs, config, model.feature_dim, steps=s.readout_steps, seed=seed
    )
    reorder_images = test.images[_subset(len(test), s.reorder_images, seed=13)].float() / 255.0
    where = {"readout": sp_pair_error(readout, test_pairs)}
    for grid in (2, 3):
        acc = patch_reorder_accuracy(
            readout, reorder_images, grid, config.local_size, torch.Generator().manual_seed(300)
        )
        where["readout"][f"reorder_{grid}x{grid}"] = acc.patch
        where["readout"][f"reorder_{grid}x{grid}_exact"] = acc.exact
    sp = model.spatial_prediction
    if sp is not None and sp.enabled:
        where["native"] = sp_pair_error(model, test_pairs)
        for grid in (2, 3):
            acc = patch_reorder_accuracy(
                model, reorder_images, grid, sp.config.local_size,
                torch.Generator().manual_seed(300),
            )  # fmt: skip
            where["native"][f"reorder_{grid}x{grid}"] = acc.patch
            where["native"][f"reorder_{grid}x{grid}_exact"] = acc.exact
    out["where"] = where
    out["reorder_accuracy_2x2"] = where["readout"]["reorder_2x2"]
    out["reorder_accuracy_3x3"] = where["readout"]["reorder_3x3"]
    out["sp_error_ratio"] = where["readout"]["ratio"]
    return out


def run_ssl_arm(
    base: str, sp_lambda: float, seed: int, s: SSLBenchSettings, log: Callable[[str], None]
) -> tuple[dict[str, Any], Any]:
    """Pre-train one CIFAR arm and probe it; returns (JSON-able result, the trained task)."""
    from lightning.pytorch import seed_everything

    from wherewhat.methods.spatial_prediction.task import SelfSupervisedTask

    name = arm_name(base, sp_lambda, s.sp_lambda)
    seed_everything(seed, verbose=False)
    method_args = s.byol_args if base == "byol" else None
    task = SelfSupervisedTask(
        base=base, sp_lambda=sp_lambda, method_args=method_args, **s.task_args
    )
    data = _cifar_data(s, seed)
    fit = _fit(task, data, s.epochs, s)
    start, cpu = time.perf_counter(), time.process_time()
    evaluation = _evaluate_classes(task.model, data, s, seed)
    eval_seconds, eval_cpu = time.perf_counter() - start, time.process_time() - cpu
    history = [dict(h) for h in task.history]
    # Epoch 0 also starts the loader worker: the median of the later epochs is the rate.
    later = history[1:] or history
    arm = {
        "arm": name,
        "base": base,
        "sp_lambda": sp_lambda,
        "seed": seed,
        **{k: v for k, v in evaluation.items() if k not in ("robustness", "where")},
        "robustness": evaluation["robustness"],
        "where": evaluation["where"],
        "epoch_seconds": float(np.median([h["seconds"] for h in later])),
        "epoch_cpu_seconds": float(np.median([h["cpu_seconds"] for h in later])),
        "train_minutes": fit["seconds"] / 60,
        "train_cpu_minutes": fit["cpu_seconds"] / 60,
        "worker_cpu_minutes": fit["worker_cpu_seconds"] / 60,
        "eval_minutes": eval_seconds / 60,
        "eval_cpu_minutes": eval_cpu / 60,
        "history": history,
        "step_losses": _smoothed_steps(task.step_losses),
    }
    log(
        f"{name} seed {seed}: linear {arm['linear_probe']:.3f}, k-NN {arm['knn']:.3f}, "
        f"reorder 2x2 {arm['reorder_accuracy_2x2']:.3f}, SP ratio {arm['sp_error_ratio']:.2f}, "
        f"{arm['epoch_seconds']:.0f} s/epoch, train {arm['train_minutes']:.1f} min, "
        f"eval {arm['eval_minutes']:.1f} min"
    )
    return arm, task


# -- faces ------------------------------------------------------------------------------------


def face_crop_arrays(s: SSLBenchSettings) -> dict[str, Any]:
    """Face crops of ``s.faces_root`` split by photo: ``train_images`` / ``test_images``
    ``(N, S, S, 3)`` uint8, ``train_points`` / ``test_points`` ``(N, 68, 2)`` crop pixels."""
    import torch

    from wherewhat.data.face_crops import FaceLandmarkDataset
    from wherewhat.data.faces import load_pts_folder, split_by_name

    records = load_pts_folder(s.faces_root, 68)
    if s.max_faces is not None and s.max_faces < len(records):
        chosen = np.random.default_rng(s.face_split_seed).permutation(len(records))
        records = [records[i] for i in sorted(chosen[: s.max_faces].tolist())]
    train, test = split_by_name(records, s.face_val_fraction, s.face_split_seed)
    out: dict[str, Any] = {}
    for split, subset in (("train", train), ("test", test)):
        faces = FaceLandmarkDataset(subset, out_size=s.face_size, side_factor=s.face_side_factor)
        items = [faces[i] for i in range(len(faces))]
        images = torch.stack([item["image"] for item in items])
        out[f"{split}_images"] = (
            (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        )
        out[f"{split}_points"] = torch.stack([item["points"] for item in items])
    return out


def _face_probe(model: Any, faces: Mapping[str, Any]) -> dict[str, float]:
    import torch

    from wherewhat.methods.spatial_prediction.probes import encode_images, landmark_probe

    train = torch.from_numpy(faces["train_images"]).permute(0, 3, 1, 2)
    test = torch.from_numpy(faces["test_images"]).permute(0, 3, 1, 2)
    out = {}
    for kind, feature_map in (("pooled", False), ("map", True)):
        train_f = encode_images(model.backbone, train, feature_map=feature_map)
        test_f = encode_images(model.backbone, test, feature_map=feature_map)
        result = landmark_probe(train_f, faces["train_points"], test_f, faces["test_points"])
        out[f"nme_{kind}"] = result["nme"]
        out["nme_mean_shape"] = result["nme_mean_shape"]
        out[f"alpha_{kind}"] = result["alpha"]
    out["n_train"], out["n_test"] = result["n_train"], result["n_test"]
    return out


def run_face_arm(
    sp_lambda: float,
    seed: int,
    faces: Mapping[str, Any],
    npz_path: Path,
    s: SSLBenchSettings,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """SimCLR (+SP) pre-training on face crops (no labels), then the landmark probe; the
    untrained backbone of the same seed is probed too (``random_init``)."""
    from lightning.pytorch import seed_everything

    from wherewhat.data.images import SelfSupervisedDataModule
    from wherewhat.methods.spatial_prediction.task import SelfSupervisedTask

    name = arm_name("simclr", sp_lambda, s.sp_lambda)
    seed_everything(seed, verbose=False)
    args = {**s.task_args, "knn_every_n_epochs": 0, "global_size": s.face_size}
    task = SelfSupervisedTask(base="simclr", sp_lambda=sp_lambda, **args)
    untrained = _face_probe(task.model, faces)
    data = SelfSupervisedDataModule(
        npz_path=str(npz_path), batch_size=s.face_batch_size, num_workers=s.num_workers, seed=seed
    )
    fit = _fit(task, data, s.face_epochs, s)
    probe = _face_probe(task.model, faces)
    arm = {
        "arm": name,
        "sp_lambda": sp_lambda,
        "seed": seed,
        "landmark_nme": probe["nme_pooled"],
        "landmark_nme_map": probe["nme_map"],
        "landmark_nme_mean_shape": probe["nme_mean_shape"],
        "landmark_nme_random_init": untrained["nme_pooled"],
        "landmark_nme_map_random_init": untrained["nme_map"],
        "alpha": probe["alpha_pooled"],
        "n_train_faces": probe["n_train"],
        "n_test_faces": probe["n_test"],
        "train_minutes": fit["seconds"] / 60,
        "history": [dict(h) for h in task.history],
    }
    log(
        f"faces {name} seed {seed}: NME pooled {arm['landmark_nme']:.4f} (random init "
        f"{arm['landmark_nme_random_init']:.4f}, mean shape {arm['landmark_nme_mean_shape']:.4f}),"
        f" map {arm['landmark_nme_map']:.4f}, {arm['train_minutes']:.1f} min"
    )
    return arm


# -- the run ----------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    clean = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not clean:
        return None, None
    return float(np.mean(clean)), float(np.std(clean, ddof=1)) if len(clean) > 1 else 0.0


_SUMMARY_KEYS = (
    "linear_probe", "knn", "corruption_accuracy", "reorder_accuracy_2x2", "reorder_accuracy_3x3",
    "sp_error_ratio", "epoch_seconds", "epoch_cpu_seconds", "train_minutes", "eval_minutes",
)  # fmt: skip


def summarise_arms(arms: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm name: mean and std over its seeds of the summary keys (means only for the
    arm's own SP head and the corruptions)."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(a["arm"] for a in arms):
        mine = [a for a in arms if a["arm"] == name]
        row: dict[str, Any] = {"arm": name, "seeds": [a["seed"] for a in mine]}
        for key in _SUMMARY_KEYS:
            row[key], row[f"{key}_std"] = _mean_std([a[key] for a in mine])
        native = [a["where"].get("native") for a in mine if a["where"].get("native")]
        if native:
            for key in ("ratio", "reorder_2x2", "reorder_3x3"):
                row[f"native_{key}"], _ = _mean_std([n[key] for n in native])
        corruption_keys = [k for k in mine[0]["robustness"] if k not in ("mean",)]
        row["robustness"] = {
            k: _mean_std([a["robustness"][k] for a in mine])[0] for k in corruption_keys
        }
        out[name] = row
    return out


def _overhead(summary: Mapping[str, Mapping[str, Any]], base: str, key: str) -> float | None:
    plain, with_sp = summary.get(base), summary.get(f"{base}_sp")
    if not plain or not with_sp or not plain.get(key) or with_sp.get(key) is None:
        return None
    return with_sp[key] / plain[key] - 1.0


def _curves(arms: Sequence[Mapping[str, Any]], names: Sequence[str], key: str) -> dict:
    """Mean over seeds of ``history[key]`` per epoch, for the arms in ``names``."""
    out = {}
    for name in names:
        runs = [a["history"] for a in arms if a["arm"] == name]
        if not runs or not all(key in h for h in runs[0]):
            continue
        length = min(len(r) for r in runs)
        values = np.array([[r[i][key] for i in range(length)] for r in runs]).mean(0)
        out[name] = (np.arange(1, length + 1), values)
    return out


def _smoothed_steps(steps: Sequence[Mapping[str, float]], points: int = 50) -> dict[str, list]:
    """Per-step losses averaged over consecutive windows: at most ``points`` values per loss,
    plus the mean step of each window (``step``)."""
    if not steps:
        return {}
    window = max(1, math.ceil(len(steps) / points))
    out: dict[str, list] = {}
    for key in steps[0]:
        values = np.array([row[key] for row in steps], dtype=np.float64)
        chunks = [values[i : i + window] for i in range(0, len(values), window)]
        out[key] = [float(chunk.mean()) for chunk in chunks]
    return out


def _step_curves(arms: Sequence[Mapping[str, Any]], names: Sequence[str], key: str) -> dict:
    """Mean over seeds of the smoothed per-step ``key`` for the arms in ``names``."""
    out = {}
    for name in names:
        runs = [a["step_losses"] for a in arms if a["arm"] == name and key in a["step_losses"]]
        if not runs:
            continue
        length = min(len(r[key]) for r in runs)
        steps = np.array(runs[0]["step"][:length]) + 1
        out[name] = (steps, np.array([r[key][:length] for r in runs]).mean(0))
    return out


def _figures(arms: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
    from wherewhat.io import png_bytes
    from wherewhat.report.figures import line_chart

    figures = {}
    for base in ("simclr", "byol"):
        names = [base, f"{base}_sp"]
        knn = _curves(arms, names, "knn_acc")
        if knn:
            fig = line_chart(knn, title=f"{base}: k-NN accuracy (test subset) per epoch",
                             xlabel="epoch", ylabel="k-NN accuracy")  # fmt: skip
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


def run_ssl_bench(
    quick: bool = False,
    settings: SSLBenchSettings | None = None,
    log: Callable[[str], None] = print,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the benchmark (module docstring); returns a JSON-able dict plus ``figures``
    (``{name: PNG bytes}``).

    Top-level keys (the issue's): ``linear_probe`` and ``knn`` -> ``simclr``, ``simclr_sp``,
    ``byol``, ``byol_sp`` (means over seeds, ``<arm>_std`` beside them), ``landmark_probe_nme``
    and ``reorder_accuracy_2x2`` -> ``simclr``, ``simclr_sp`` (read-out protocol),
    ``sp_time_overhead`` (fraction, SimCLR; ``sp_time_overhead_byol`` too), ``lambda_sweep``
    (list of rows), ``epochs``, ``seeds``. Details: ``summary`` (per arm), ``arms`` (every run),
    ``face_arms``, ``settings``, ``targets``, ``machine``, ``seconds``.
    """

    from wherewhat.bench.machine import machine_info
    from wherewhat.bench.runtime import torch_num_threads

    s = settings or SSLBenchSettings.preset("quick" if quick else "full")
    s.check()
    start = time.perf_counter()
    arms: list[dict[str, Any]] = []
    face_arms: list[dict[str, Any]] = []
    kept_task = None
    with torch_num_threads(s.threads), tempfile.TemporaryDirectory(prefix="ssl-bench-",
                                                                     dir=work_dir) as tmp:  # fmt: skip
        plan = [("simclr", lam, seed) for seed in s.seeds for lam in (0.0, s.sp_lambda)]
        plan += [("byol", lam, seed) for seed in s.byol_seeds for lam in (0.0, s.sp_lambda)]
        plan += [
            ("simclr", lam, s.seeds[0]) for lam in s.lambda_sweep if lam not in (0.0, s.sp_lambda)
        ]
        for base, lam, seed in plan:
            arm, task = run_ssl_arm(base, lam, seed, s, log)
            arms.append(arm)
            if kept_task is None and base == "simclr" and lam > 0:
                kept_task = task
        if s.faces_root and s.face_seeds:
            faces = face_crop_arrays(s)
            npz = Path(tmp) / "faces.npz"
            np.savez(
                npz, x_train=faces["train_images"], x_test=faces["test_images"],
                y_train=np.zeros(len(faces["train_images"]), np.int64),
                y_test=np.zeros(len(faces["test_images"]), np.int64),
            )  # fmt: skip
            log(f"faces: {len(faces['train_images'])} train / {len(faces['test_images'])} test")
            for seed in s.face_seeds:
                for lam in (0.0, s.sp_lambda):
                    face_arms.append(run_face_arm(lam, seed, faces, npz, s, log))
    summary = summarise_arms(arms)

    def by_arm(key: str, names: Sequence[str]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in names:
            row = summary.get(name, {})
            out[name] = row.get(key)
            if len(row.get("seeds", [])) > 1:
                out[f"{name}_std"] = row.get(f"{key}_std")
        return out

    main = ("simclr", "simclr_sp", "byol", "byol_sp")
    landmark: dict[str, Any] = {}
    for name in ("simclr", "simclr_sp"):
        mine = [a for a in face_arms if a["arm"] == name]
        if mine:
            landmark[name], std = _mean_std([a["landmark_nme"] for a in mine])
            if len(mine) > 1:
                landmark[f"{name}_std"] = std
    sweep_arms = [a for a in arms if a["base"] == "simclr" and a["seed"] == s.seeds[0]]
    lambda_sweep = [
        {k: a[k] for k in ("sp_lambda", "linear_probe", "knn", "reorder_accuracy_2x2",
                           "sp_error_ratio", "corruption_accuracy", "epoch_seconds")}
        for a in sorted(sweep_arms, key=lambda a: a["sp_lambda"])
        if a["sp_lambda"] in s.lambda_sweep or a["sp_lambda"] in (0.0, s.sp_lambda)
    ]  # fmt: skip
    result: dict[str, Any] = {
        "linear_probe": by_arm("linear_probe", main),
        "knn": by_arm("knn", main),
        "landmark_probe_nme": landmark,
        "reorder_accuracy_2x2": by_arm("reorder_accuracy_2x2", ("simclr", "simclr_sp")),
        "sp_time_overhead": _overhead(summary, "simclr", "epoch_seconds"),
        "sp_time_overhead_byol": _overhead(summary, "byol", "epoch_seconds"),
        "sp_cpu_overhead": _overhead(summary, "simclr", "epoch_cpu_seconds"),
        "lambda_sweep": lambda_sweep,
        "epochs": s.epochs,
        "seeds": list(s.seeds),
        "byol_seeds": list(s.byol_seeds),
        "quick": s.quick,
        "summary": summary,
        "arms": arms,
        "face_arms": face_arms,
        "settings": dataclasses.asdict(s),
        "targets": {k: {"op": op, "value": v} for k, (op, v) in TARGETS.items()},
        "machine": machine_info(),
        "torch_threads": s.threads,
        "seconds": time.perf_counter() - start,
    }
    gains = result["linear_probe"]
    if gains.get("simclr") is not None and gains.get("simclr_sp") is not None:
        result["linear_probe_gain_simclr"] = 100 * (gains["simclr_sp"] - gains["simclr"])
    if landmark.get("simclr") is not None and landmark.get("simclr_sp") is not None:
        result["landmark_nme_gain_simclr"] = landmark["simclr"] - landmark["simclr_sp"]
    figures = _figures(arms)
    if kept_task is not None:
        figures["relative-positions"] = relative_position_png(kept_task, s)
    result["figures"] = figures
    return result


# -- presentation -----------------------------------------------------------------------------


def _pm(row: Mapping[str, Any], key: str, scale: float = 1.0, digits: int = 1) -> str:
    mean, std = row.get(key), row.get(f"{key}_std")
    if mean is None:
        return "-"
    if len(row.get("seeds", [])) > 1 and std is not None:
        return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"
    return f"{scale * mean:.{digits}f}"


def summary_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per arm: probes (accuracy in %), "where" read-out, timing."""
    rows = []
    for name, row in result["summary"].items():
        rows.append({
            "arm": name, "seeds": len(row["seeds"]),
            "linear probe %": _pm(row, "linear_probe", 100), "k-NN %": _pm(row, "knn", 100),
            "corrupted %": _pm(row, "corruption_accuracy", 100),
            "reorder 2x2 %": _pm(row, "reorder_accuracy_2x2", 100),
            "reorder 3x3 %": _pm(row, "reorder_accuracy_3x3", 100),
            "SP loss / zero": _pm(row, "sp_error_ratio", 1, 3),
            "own head: SP loss / zero": _pm(row, "native_ratio", 1, 3),
            "own head: reorder 2x2 %": _pm(row, "native_reorder_2x2", 100),
            "s / epoch": _pm(row, "epoch_seconds", 1, 0),
        })  # fmt: skip
    return rows


def _robustness_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, row in result["summary"].items():
        rows.append({"arm": name, **{k: 100 * v for k, v in row["robustness"].items()
                                     if v is not None}})  # fmt: skip
    return rows


def ssl_markdown(result: Mapping[str, Any]) -> str:
    """The benchmark's markdown: per-arm table, targets, lambda sweep, robustness, faces."""
    from wherewhat.bench.tables import format_markdown_table, target_rows

    s = result["settings"]
    t = s["task_args"]
    machine = result.get("machine", {})
    lines = [
        f"# Spatial Prediction on CIFAR-10 ({'quick' if result['quick'] else 'full'} run)",
        "",
        f"Pre-training: {t['backbone']} width {t['backbone_width']}, {result['epochs']} epochs "
        f"of {s['train_images'] or 20000:,} training images (batch {s['batch_size']}), "
        f"{t['optimizer']} lr {t['lr']:g}, same images, order and epochs for every arm of a seed; "
        f"SP: lambda {s['sp_lambda']:g}, {t['sp_pairs']} pair(s) of {t['sp_local_size']} px "
        f"local views per image. SimCLR seeds {result['seeds']}, BYOL seeds "
        f"{result['byol_seeds']}. Probes on frozen pooled features: logistic regression "
        "(C = 1, standardised) and k-NN (cosine, k = 20, exp weights) on "
        f"{s['test_images'] or 10000:,} test images; corrupted = the same linear probe on "
        f"{s['corruption_images']:,} test images, mean over noise / blur / contrast at 3 "
        "severities; 'where' = an SP head fitted on frozen features of training-image view pairs "
        "(same protocol for every arm), scored on held-out test pairs (loss relative to "
        "predicting zero: 1 = no position information) and by patch re-ordering (chance 25 % / "
        "11 %). Mean ± sample std over seeds.",
        "",
    ]
    rows = summary_rows(result)
    lines.append(format_markdown_table(rows, list(rows[0])))
    lines += ["", format_markdown_table(target_rows(result["targets"], result),
                                        ["quantity", "target", "measured", "met"])]  # fmt: skip
    if result["lambda_sweep"]:
        lines += [
            "",
            f"Lambda sweep (SimCLR, seed {result['seeds'][0]}):",
            "",
            format_markdown_table(result["lambda_sweep"], list(result["lambda_sweep"][0])),
        ]
    robustness = _robustness_rows(result)
    if robustness:
        lines += ["", "Linear-probe accuracy (%) per corruption and severity:", "",
                  format_markdown_table(robustness, list(robustness[0]))]  # fmt: skip
    if result["face_arms"]:
        columns = ["arm", "seed", "landmark_nme", "landmark_nme_map", "landmark_nme_random_init",
                   "landmark_nme_map_random_init", "landmark_nme_mean_shape", "n_train_faces",
                   "n_test_faces", "train_minutes"]  # fmt: skip
        lines += [
            "",
            f"Landmark probe: SimCLR (+SP) pre-trained on {s['face_size']} px 68-point face "
            f"crops ({s['face_epochs']} epochs, no labels), then ridge regression from frozen "
            "features (pooled, or the flattened last feature map) to the landmarks; "
            "inter-ocular NME on faces of held-out photos (split by photo name, seed "
            f"{s['face_split_seed']}). Mean over seeds: {result['landmark_probe_nme']}.",
            "",
            format_markdown_table(result["face_arms"], columns),
        ]
    lines += [
        "",
        f"Machine: {machine.get('cpu', '?')}, load average "
        f"{machine.get('load_average_1_5_15min', '?')}; torch threads {result['torch_threads']}, "
        f"{s['num_workers']} loader worker(s). Run time {result['seconds'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


# -- relative-position figure -----------------------------------------------------------------


def relative_position_figure(model: Any, images: Any, config: Any, count: int = 8, seed: int = 0):
    """Held-out view pairs of ``images`` ``(N, C, H, W)`` (uint8 or float): each panel shows
    the image as the network saw it (mirrored when flipped), box A (blue), box B (orange), the
    true offset A -> B (green arrow) and the predicted one (red dashed), plus a last panel of
    predicted vs true dx, dy over the pairs. ``model`` has ``encode`` and ``spatial_prediction``
    (a trained SP method or an :class:`~wherewhat.methods.spatial_prediction.probes.SPReadout`)."""
    import torch
    from matplotlib.patches import Rectangle

    from wherewhat.methods.spatial_prediction import mirror_boxes, spatial_targets
    from wherewhat.methods.spatial_prediction.probes import sample_view_pairs
    from wherewhat.report.figures import new_figure, show_image

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


def relative_position_png(task: Any, s: SSLBenchSettings, count: int = 9) -> bytes:
    import torch

    from wherewhat.data.images import load_cifar_npz
    from wherewhat.io import png_bytes

    arrays = load_cifar_npz(s.cifar_npz)
    pick = np.random.default_rng(0).permutation(len(arrays.y_test))[:300]  # mixed classes
    images = torch.from_numpy(arrays.x_test[pick]).permute(0, 3, 1, 2)
    config = task.model.spatial_prediction.config
    return png_bytes(relative_position_figure(task.model, images, config, count))
