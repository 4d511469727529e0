"""The Spatial Prediction benchmark pipeline, shared by ``benchmarks/spatial_prediction.py`` and
the tour section "spatial_prediction".

One *arm* = a base method (SimCLR / BYOL), an SP weight lambda (0: the base method) and a seed:
pre-train :class:`~wherewhat.methods.spatial_prediction.task.SelfSupervisedTask` on CIFAR-10
images (labels unused), then probe the frozen backbone
(:mod:`wherewhat.methods.spatial_prediction.probes`):

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
epoch (wall and this process's CPU) comes from the task's ``history``. :func:`run_bench` runs
everything and returns a :class:`~wherewhat.methods.spatial_prediction.records.BenchResult`;
the ``quick`` preset is the few-minute version (the tour runs an even smaller one).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import seed_everything
from torch import Tensor

from wherewhat.bench.machine import machine_info
from wherewhat.bench.runtime import torch_num_threads
from wherewhat.data.face_crops import FaceLandmarkDataset
from wherewhat.data.faces import load_pts_folder, split_by_name
from wherewhat.data.images import SelfSupervisedDataModule
from wherewhat.methods.spatial_prediction.backbones import build_backbone
from wherewhat.methods.spatial_prediction.bases import SSLMethod, build_ssl_method
from wherewhat.methods.spatial_prediction.figures import bench_figures, relative_position_png
from wherewhat.methods.spatial_prediction.head import (
    SpatialPredictionConfig,
    patch_reorder_accuracy,
)
from wherewhat.methods.spatial_prediction.probes import (
    LinearProbe,
    SPReadout,
    corruption_accuracy,
    encode_images,
    fit_sp_readout,
    landmark_probe,
    sample_view_pairs,
    sp_pair_error,
)
from wherewhat.methods.spatial_prediction.records import (
    ArmResult,
    ArmSummary,
    BenchResult,
    ClassEvaluation,
    FaceArmResult,
    overhead,
    summarise_arms,
)
from wherewhat.methods.spatial_prediction.settings import BenchSettings, TaskArg, arm_name
from wherewhat.methods.spatial_prediction.task import SelfSupervisedTask
from wherewhat.metrics.probe import knn_probe
from wherewhat.metrics.summary import mean_std
from wherewhat.training.fit import fit

__all__ = ["FaceCrops", "build_task", "face_crop_arrays", "run_arm", "run_bench", "run_face_arm"]

# ``BenchSettings.task_args`` keys that describe the network (the rest go to the task).
MODEL_KEYS = ("backbone", "backbone_width", "sp_pairs", "sp_local_scale", "sp_local_size",
              "sp_hidden_dim")  # fmt: skip
Log = Callable[[str], None]


# -- networks and data ------------------------------------------------------------------------


def _sp_config(
    task_args: Mapping[str, TaskArg], weight: float, num_pairs: int
) -> SpatialPredictionConfig:
    """The SP plug-in the settings describe, with ``weight`` (lambda) and ``num_pairs``."""
    size = int(task_args.get("sp_local_size", 16))
    return SpatialPredictionConfig(
        weight=weight,
        num_pairs=num_pairs,
        local_scale=tuple(task_args.get("sp_local_scale", (0.05, 0.4))),
        local_size=(size, size),
        hidden_dim=int(task_args.get("sp_hidden_dim", 256)),
    )


def _readout_config(task_args: Mapping[str, TaskArg]) -> SpatialPredictionConfig:
    """The SP configuration of every read-out and evaluation pair (the SP arms' views)."""
    return _sp_config(task_args, weight=1.0, num_pairs=1)


def build_task(
    base: str, sp_lambda: float, s: BenchSettings, **task_changes: TaskArg
) -> SelfSupervisedTask:
    """The arm's task: ``base`` (``simclr`` / ``byol``, with ``s.byol_args``) on the settings'
    backbone with SP attached at weight ``sp_lambda`` (0 too: the module is created last, so
    the base method's initialisation is the same with and without SP; with weight 0 it is
    never called). ``task_changes`` override the task's arguments among ``s.task_args``."""
    args = {**s.task_args, **task_changes}
    backbone = build_backbone(
        str(args.get("backbone", "resnet18_cifar")), width=int(args.get("backbone_width", 16))
    )
    sp = _sp_config(args, sp_lambda, int(args.get("sp_pairs", 1)))
    method_args = s.byol_args if base == "byol" else {}
    model = build_ssl_method(base, backbone, spatial_prediction=sp, **method_args)
    task_args = {k: v for k, v in args.items() if k not in MODEL_KEYS}
    return SelfSupervisedTask(model, **task_args)


def _cifar_data(s: BenchSettings, seed: int) -> SelfSupervisedDataModule:
    data = SelfSupervisedDataModule(
        npz_path=s.cifar_npz, batch_size=s.batch_size, train_limit=s.train_images,
        test_limit=s.test_images, num_workers=s.num_workers, seed=seed,
    )  # fmt: skip
    data.setup()
    return data


def _subset(total: int, count: int, seed: int) -> Tensor:
    """Sorted indices of ``min(count, total)`` items drawn without replacement with ``seed``."""
    chosen = np.random.default_rng(seed).permutation(total)[: min(count, total)]
    return torch.from_numpy(np.sort(chosen))


def _smoothed_steps(
    steps: Sequence[Mapping[str, float]], points: int = 50
) -> dict[str, list[float]]:
    """Per-step losses averaged over consecutive windows: at most ``points`` values per loss,
    plus the mean step of each window (``step``)."""
    if not steps:
        return {}
    window = max(1, math.ceil(len(steps) / points))
    out: dict[str, list[float]] = {}
    for key in steps[0]:
        values = np.array([row[key] for row in steps], dtype=np.float64)
        chunks = [values[i : i + window] for i in range(0, len(values), window)]
        out[key] = [float(chunk.mean()) for chunk in chunks]
    return out


# -- CIFAR arms -------------------------------------------------------------------------------


def _reorder_scores(
    model: SSLMethod | SPReadout, images: Tensor, patch_size: tuple[int, int]
) -> dict[str, float]:
    """2x2 and 3x3 patch re-ordering (fraction of patches, of whole images), fixed shuffles."""
    out = {}
    for grid in (2, 3):
        acc = patch_reorder_accuracy(
            model, images, grid, patch_size, torch.Generator().manual_seed(300)
        )
        out[f"reorder_{grid}x{grid}"] = acc.patch
        out[f"reorder_{grid}x{grid}_exact"] = acc.exact
    return out


def _evaluate_classes(
    model: SSLMethod, data: SelfSupervisedDataModule, s: BenchSettings, seed: int
) -> ClassEvaluation:
    """Linear probe, k-NN, corruptions, SP read-out and re-ordering of a trained method."""
    train, test = data.probe_train_dataset(), data.test_dataset()
    train_f = encode_images(model.encode, train.images)
    test_f = encode_images(model.encode, test.images)
    probe = LinearProbe().fit(train_f, train.labels)
    linear = probe.accuracy(test_f, test.labels)
    knn = float(knn_probe(train_f, train.labels, test_f, test.labels, k=20)["accuracy"])
    # Fixed random subsets (the splits may be sorted by class): the same images for every arm.
    corrupt_idx = _subset(len(test), s.corruption_images, seed=10)
    robustness = corruption_accuracy(
        probe, model.encode, test.images[corrupt_idx], test.labels[corrupt_idx], seed=0
    )
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
    where = {
        "readout": {
            **sp_pair_error(readout, test_pairs),
            **_reorder_scores(readout, reorder_images, config.local_size),
        }
    }
    sp = model.spatial_prediction
    if sp is not None and sp.enabled:
        where["native"] = {
            **sp_pair_error(model, test_pairs),
            **_reorder_scores(model, reorder_images, sp.config.local_size),
        }
    return ClassEvaluation(
        linear_probe=linear,
        linear_probe_converged=probe.converged,
        knn=knn,
        robustness=robustness,
        corruption_accuracy=robustness["mean"],
        where=where,
        reorder_accuracy_2x2=where["readout"]["reorder_2x2"],
        reorder_accuracy_3x3=where["readout"]["reorder_3x3"],
        sp_error_ratio=where["readout"]["ratio"],
    )


def run_arm(
    base: str, sp_lambda: float, seed: int, s: BenchSettings, log: Log
) -> tuple[ArmResult, SelfSupervisedTask]:
    """Pre-train one CIFAR arm and probe it; returns the result and the trained task."""
    name = arm_name(base, sp_lambda, s.sp_lambda)
    seed_everything(seed, verbose=False)
    task = build_task(base, sp_lambda, s)
    data = _cifar_data(s, seed)
    record = fit(task, data, max_epochs=s.epochs, progress=s.progress_bar)
    start, cpu = time.perf_counter(), time.process_time()
    evaluation = _evaluate_classes(task.model, data, s, seed)
    eval_seconds, eval_cpu = time.perf_counter() - start, time.process_time() - cpu
    history = [dict(h) for h in task.history]
    # Epoch 0 also starts the loader worker: the median of the later epochs is the rate.
    later = history[1:] or history
    arm = ArmResult(
        arm=name,
        base=base,
        sp_lambda=sp_lambda,
        seed=seed,
        **vars(evaluation),  # ClassEvaluation's fields are ArmResult's probe fields
        epoch_seconds=float(np.median([h["seconds"] for h in later])),
        epoch_cpu_seconds=float(np.median([h["cpu_seconds"] for h in later])),
        train_minutes=record.seconds / 60,
        train_cpu_minutes=record.cpu_seconds / 60,
        # Loader workers, counted once they have exited (at the end of fit).
        worker_cpu_minutes=record.worker_cpu_seconds / 60,
        eval_minutes=eval_seconds / 60,
        eval_cpu_minutes=eval_cpu / 60,
        history=history,
        step_losses=_smoothed_steps(task.step_losses),
    )
    log(
        f"{name} seed {seed}: linear {arm.linear_probe:.3f}, k-NN {arm.knn:.3f}, "
        f"reorder 2x2 {arm.reorder_accuracy_2x2:.3f}, SP ratio {arm.sp_error_ratio:.2f}, "
        f"{arm.epoch_seconds:.0f} s/epoch, train {arm.train_minutes:.1f} min, "
        f"eval {arm.eval_minutes:.1f} min"
    )
    return arm, task


# -- faces ------------------------------------------------------------------------------------


@dataclass
class FaceCrops:
    """Face crops split by photo: images ``(N, S, S, 3)`` uint8, points ``(N, 68, 2)`` in crop
    pixels."""

    train_images: np.ndarray
    test_images: np.ndarray
    train_points: Tensor
    test_points: Tensor


def face_crop_arrays(s: BenchSettings) -> FaceCrops:
    """Face crops of ``s.faces_root`` (at most ``s.max_faces``), split by photo name."""
    records = load_pts_folder(s.faces_root, 68)
    if s.max_faces is not None and s.max_faces < len(records):
        chosen = np.random.default_rng(s.face_split_seed).permutation(len(records))
        records = [records[i] for i in sorted(chosen[: s.max_faces].tolist())]
    train, test = split_by_name(records, s.face_val_fraction, s.face_split_seed)
    splits = []
    for subset in (train, test):
        faces = FaceLandmarkDataset(subset, out_size=s.face_size, side_factor=s.face_side_factor)
        items = [faces[i] for i in range(len(faces))]
        images = torch.stack([item["image"] for item in items])
        pixels = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        splits.append((pixels.numpy(), torch.stack([item["points"] for item in items])))
    (train_images, train_points), (test_images, test_points) = splits
    return FaceCrops(train_images, test_images, train_points, test_points)


@dataclass
class _FaceProbe:
    nme_pooled: float
    nme_map: float
    nme_mean_shape: float
    alpha_pooled: float
    n_train: int
    n_test: int


def _face_probe(model: SSLMethod, faces: FaceCrops) -> _FaceProbe:
    """Landmark probe from pooled features and from the flattened last feature map."""
    train = torch.from_numpy(faces.train_images).permute(0, 3, 1, 2)
    test = torch.from_numpy(faces.test_images).permute(0, 3, 1, 2)
    results = {}
    for kind, feature_map in (("pooled", False), ("map", True)):
        train_f = encode_images(model.backbone, train, feature_map=feature_map)
        test_f = encode_images(model.backbone, test, feature_map=feature_map)
        results[kind] = landmark_probe(train_f, faces.train_points, test_f, faces.test_points)
    pooled, flat = results["pooled"], results["map"]
    return _FaceProbe(
        nme_pooled=pooled["nme"],
        nme_map=flat["nme"],
        nme_mean_shape=flat["nme_mean_shape"],
        alpha_pooled=pooled["alpha"],
        n_train=int(flat["n_train"]),
        n_test=int(flat["n_test"]),
    )


def run_face_arm(
    sp_lambda: float, seed: int, faces: FaceCrops, npz_path: Path, s: BenchSettings, log: Log
) -> FaceArmResult:
    """SimCLR (+SP) pre-training on face crops (no labels), then the landmark probe; the
    untrained backbone of the same seed is probed too (``random_init``)."""
    name = arm_name("simclr", sp_lambda, s.sp_lambda)
    seed_everything(seed, verbose=False)
    task = build_task("simclr", sp_lambda, s, knn_every_n_epochs=0, global_size=s.face_size)
    untrained = _face_probe(task.model, faces)
    data = SelfSupervisedDataModule(
        npz_path=str(npz_path), batch_size=s.face_batch_size, num_workers=s.num_workers, seed=seed
    )
    record = fit(task, data, max_epochs=s.face_epochs, progress=s.progress_bar)
    probe = _face_probe(task.model, faces)
    arm = FaceArmResult(
        arm=name,
        sp_lambda=sp_lambda,
        seed=seed,
        landmark_nme=probe.nme_pooled,
        landmark_nme_map=probe.nme_map,
        landmark_nme_mean_shape=probe.nme_mean_shape,
        landmark_nme_random_init=untrained.nme_pooled,
        landmark_nme_map_random_init=untrained.nme_map,
        alpha=probe.alpha_pooled,
        n_train_faces=probe.n_train,
        n_test_faces=probe.n_test,
        train_minutes=record.seconds / 60,
        history=[dict(h) for h in task.history],
    )
    log(
        f"faces {name} seed {seed}: NME pooled {arm.landmark_nme:.4f} (random init "
        f"{arm.landmark_nme_random_init:.4f}, mean shape {arm.landmark_nme_mean_shape:.4f}),"
        f" map {arm.landmark_nme_map:.4f}, {arm.train_minutes:.1f} min"
    )
    return arm


def _face_arms(s: BenchSettings, work_dir: Path, log: Log) -> list[FaceArmResult]:
    """Every face arm: SimCLR and SimCLR + SP for each face seed."""
    faces = face_crop_arrays(s)
    npz = work_dir / "faces.npz"
    np.savez(
        npz, x_train=faces.train_images, x_test=faces.test_images,
        y_train=np.zeros(len(faces.train_images), np.int64),
        y_test=np.zeros(len(faces.test_images), np.int64),
    )  # fmt: skip
    log(f"faces: {len(faces.train_images)} train / {len(faces.test_images)} test")
    return [
        run_face_arm(lam, seed, faces, npz, s, log)
        for seed in s.face_seeds
        for lam in (0.0, s.sp_lambda)
    ]


# -- the run ----------------------------------------------------------------------------------


def _by_arm(
    summary: Mapping[str, ArmSummary], key: str, names: Sequence[str]
) -> dict[str, float | None]:
    """``{arm: mean of key}`` (``None``: arm not run) with ``<arm>_std`` for several seeds."""
    out: dict[str, float | None] = {}
    for name in names:
        row = summary.get(name)
        out[name] = None if row is None else row.mean(key)
        if row is not None and len(row.seeds) > 1:
            out[f"{name}_std"] = row.std(key)
    return out


def _measured(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def run_bench(
    settings: BenchSettings | None = None,
    log: Log = print,
    work_dir: str | Path | None = None,
) -> BenchResult:
    """Run the benchmark (module docstring) with ``settings`` (default: the ``full`` preset).

    The headline numbers (the issue's) are ``linear_probe`` and ``knn`` for ``simclr``,
    ``simclr_sp``, ``byol``, ``byol_sp``, ``landmark_probe_nme`` and ``reorder_accuracy_2x2``
    for ``simclr`` / ``simclr_sp``, ``sp_time_overhead`` and the ``lambda_sweep``; see
    :class:`~wherewhat.methods.spatial_prediction.records.BenchResult` for the rest.
    """
    s = settings or BenchSettings.preset("full")
    s.check()
    start = time.perf_counter()
    arms: list[ArmResult] = []
    face_arms: list[FaceArmResult] = []
    kept_task = None
    with (
        torch_num_threads(s.threads),
        tempfile.TemporaryDirectory(prefix="spatial-prediction-bench-", dir=work_dir) as tmp,
    ):
        plan = [("simclr", lam, seed) for seed in s.seeds for lam in (0.0, s.sp_lambda)]
        plan += [("byol", lam, seed) for seed in s.byol_seeds for lam in (0.0, s.sp_lambda)]
        plan += [
            ("simclr", lam, s.seeds[0]) for lam in s.lambda_sweep if lam not in (0.0, s.sp_lambda)
        ]
        for base, lam, seed in plan:
            arm, task = run_arm(base, lam, seed, s, log)
            arms.append(arm)
            if kept_task is None and base == "simclr" and lam > 0:
                kept_task = task
        if s.faces_root and s.face_seeds:
            face_arms = _face_arms(s, Path(tmp), log)
    summary = summarise_arms(arms)
    main = ("simclr", "simclr_sp", "byol", "byol_sp")
    landmark: dict[str, float] = {}
    for name in ("simclr", "simclr_sp"):
        mine = [a for a in face_arms if a.arm == name]
        if mine:
            landmark[name], std = mean_std([a.landmark_nme for a in mine])
            if len(mine) > 1:
                landmark[f"{name}_std"] = std
    sweep_arms = [a for a in arms if a.base == "simclr" and a.seed == s.seeds[0]]
    lambda_sweep = [
        {"sp_lambda": a.sp_lambda, "linear_probe": a.linear_probe, "knn": a.knn,
         "reorder_accuracy_2x2": a.reorder_accuracy_2x2, "sp_error_ratio": a.sp_error_ratio,
         "corruption_accuracy": a.corruption_accuracy, "epoch_seconds": a.epoch_seconds}
        for a in sorted(sweep_arms, key=lambda a: a.sp_lambda)
        if a.sp_lambda in s.lambda_sweep or a.sp_lambda in (0.0, s.sp_lambda)
    ]  # fmt: skip
    result = BenchResult(
        linear_probe=_by_arm(summary, "linear_probe", main),
        knn=_by_arm(summary, "knn", main),
        landmark_probe_nme=landmark,
        reorder_accuracy_2x2=_by_arm(summary, "reorder_accuracy_2x2", ("simclr", "simclr_sp")),
        sp_time_overhead=overhead(summary, "simclr", "epoch_seconds"),
        sp_time_overhead_byol=overhead(summary, "byol", "epoch_seconds"),
        sp_cpu_overhead=overhead(summary, "simclr", "epoch_cpu_seconds"),
        lambda_sweep=lambda_sweep,
        epochs=s.epochs,
        seeds=list(s.seeds),
        byol_seeds=list(s.byol_seeds),
        quick=s.quick,
        summary=summary,
        arms=arms,
        face_arms=face_arms,
        settings=s,
        machine=machine_info(),
        torch_threads=s.threads,
        seconds=time.perf_counter() - start,
    )
    gains = result.linear_probe
    if _measured(gains.get("simclr")) and _measured(gains.get("simclr_sp")):
        result.linear_probe_gain_simclr = 100 * (gains["simclr_sp"] - gains["simclr"])
    if _measured(landmark.get("simclr")) and _measured(landmark.get("simclr_sp")):
        result.landmark_nme_gain_simclr = landmark["simclr"] - landmark["simclr_sp"]
    result.figures = bench_figures(arms)
    if kept_task is not None:
        result.figures["relative-positions"] = relative_position_png(kept_task.model, s.cifar_npz)
    return result
