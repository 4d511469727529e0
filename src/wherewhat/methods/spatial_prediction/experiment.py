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

All arms of one seed see the same images in the same order; only lambda (or the SP local view
size) differs. Timing per epoch (wall and this process's CPU) comes from the task's
``history``; FLOPs of one training step are counted on the first training batch and read
against this machine's measured matmul peak.

Every run also evaluates the *untrained* network of each seed (:func:`run_random_init`, the
``random_init`` row): an arm is valid only when its linear probe clears that floor by
``valid_margin``, and no gain is read from a base arm that does not
(:func:`~wherewhat.methods.spatial_prediction.records.bench_result`). The arms run in this
process one after the other, or ``parallel`` at a time in child processes
(:func:`arm_child_main`); runs with the same settings merge (``merge_with``).
:func:`run_bench` runs everything and returns a
:class:`~wherewhat.methods.spatial_prediction.records.BenchResult`; the ``quick`` preset is the
few-minute version (the tour runs an even smaller one).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, seed_everything
from torch import Tensor

from wherewhat.bench.counting import training_step_flops
from wherewhat.bench.machine import machine_info, peak_matmul_gflops
from wherewhat.bench.runtime import torch_num_threads
from wherewhat.data.face_crops import FaceLandmarkDataset
from wherewhat.data.faces import load_pts_folder, split_by_name
from wherewhat.data.images import SelfSupervisedDataModule
from wherewhat.io import write_atomic
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
    BenchResult,
    ClassEvaluation,
    FaceArmResult,
    bench_result,
    check_mergeable,
    load_earlier_run,
    pool,
)
from wherewhat.methods.spatial_prediction.settings import (
    RANDOM_INIT,
    BenchSettings,
    TaskArg,
    arm_name,
    parse_arm,
)
from wherewhat.methods.spatial_prediction.task import SelfSupervisedTask
from wherewhat.metrics.probe import knn_probe
from wherewhat.training.fit import fit

__all__ = [
    "FaceCrops",
    "arm_child_main",
    "build_task",
    "face_crop_arrays",
    "model_step_flops",
    "run_arm",
    "run_bench",
    "run_face_arm",
    "run_named_arm",
    "run_random_init",
]

# ``BenchSettings.task_args`` keys that describe the network (the rest go to the task).
MODEL_KEYS = ("backbone", "backbone_width", "sp_pairs", "sp_local_scale", "sp_local_size",
              "sp_hidden_dim")  # fmt: skip
Log = Callable[[str], None]
# A training batch as ``training_step`` receives it: the view sampler's dict, or (views, labels).
ViewBatch = Mapping[str, Tensor] | Sequence[Any]


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
        # The arm's own head on the views it trained on (another local size: its own pairs).
        own_pairs = test_pairs
        if tuple(sp.config.local_size) != tuple(config.local_size):
            own_pairs = sample_view_pairs(test.images[test_idx], sp.config, seed=200)
        where["native"] = {
            **sp_pair_error(model, own_pairs),
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


class _FirstBatch(Callback):
    """Keeps the first training batch exactly as ``training_step`` receives it."""

    def __init__(self) -> None:
        self.batch: Any = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.batch is None:
            self.batch = batch


def model_step_flops(model: SSLMethod, batch: ViewBatch) -> float:
    """FLOPs of one training step of ``model``: forward and backward of ``model.loss`` on a
    training ``batch`` (the sampler's views dict, or ``(views, labels)``), counted by
    :func:`wherewhat.bench.counting.training_step_flops` on a copy (the model's weights,
    batch-norm statistics and gradients are left as they were; no optimizer step)."""
    views = batch[0] if isinstance(batch, list | tuple) else batch
    if not isinstance(views, Mapping) or "global_views" not in views:
        raise ValueError(
            "model_step_flops expects a training batch of view-sampler output (a dict with "
            f"'global_views'), got {type(views).__name__}"
        )
    clone = copy.deepcopy(model)
    return training_step_flops(clone, views, step=lambda v: clone.loss(v)["loss"])


def run_arm(
    base: str,
    sp_lambda: float,
    seed: int,
    s: BenchSettings,
    log: Log,
    local_size: int | None = None,
) -> tuple[ArmResult, SelfSupervisedTask]:
    """Pre-train one CIFAR arm and probe it; returns the result and the trained task.
    ``local_size``: SP local view side (``None``: the settings' ``sp_local_size``)."""
    size = s.sp_local_size if local_size is None else local_size
    name = arm_name(base, sp_lambda, s.sp_lambda, size, s.sp_local_size)
    seed_everything(seed, verbose=False)
    task = build_task(base, sp_lambda, s, sp_local_size=size)
    data = _cifar_data(s, seed)
    first = _FirstBatch()
    record = fit(
        task, data, max_epochs=s.epochs, progress=s.progress_bar, callbacks=[first],
        precision=s.precision,
    )  # fmt: skip
    start, cpu = time.perf_counter(), time.process_time()
    evaluation = _evaluate_classes(task.model, data, s, seed)
    eval_seconds, eval_cpu = time.perf_counter() - start, time.process_time() - cpu
    history = [dict(h) for h in task.history]
    # Epoch 0 also starts the loader worker: the median of the later epochs is the rate.
    later = history[1:] or history
    epoch_seconds = float(np.median([h["seconds"] for h in later]))
    step_flops = model_step_flops(task.model, first.batch)
    steps_per_epoch = record.steps / max(1, len(history))
    dtype = torch.bfloat16 if s.precision == "bf16-mixed" else torch.float32
    peak = peak_matmul_gflops(torch.get_num_threads(), dtype=dtype)
    arm = ArmResult(
        arm=name,
        base=base,
        sp_lambda=sp_lambda,
        seed=seed,
        **vars(evaluation),  # ClassEvaluation's fields are ArmResult's probe fields
        epoch_seconds=epoch_seconds,
        epoch_cpu_seconds=float(np.median([h["cpu_seconds"] for h in later])),
        train_minutes=record.seconds / 60,
        train_cpu_minutes=record.cpu_seconds / 60,
        # Loader workers, counted once they have exited (at the end of fit).
        worker_cpu_minutes=record.worker_cpu_seconds / 60,
        eval_minutes=eval_seconds / 60,
        eval_cpu_minutes=eval_cpu / 60,
        history=history,
        step_losses=_smoothed_steps(task.step_losses),
        epochs=len(history),
        steps=record.steps,
        sp_local_size=size if sp_lambda > 0 else None,
        step_gflop=step_flops / 1e9,
        train_tflop=step_flops * record.steps / 1e12,
        step_fraction_of_peak=step_flops / 1e9 / (epoch_seconds / steps_per_epoch) / peak,
        peak_gflops=peak,
        torch_threads=torch.get_num_threads(),
        precision=s.precision,
    )
    log(
        f"{name} seed {seed}: linear {arm.linear_probe:.3f}, k-NN {arm.knn:.3f}, "
        f"reorder 2x2 {arm.reorder_accuracy_2x2:.3f}, SP ratio {arm.sp_error_ratio:.2f}, "
        f"{arm.epoch_seconds:.0f} s/epoch, {arm.step_gflop:.1f} GFLOP/step at "
        f"{arm.step_fraction_of_peak:.0%} of peak, train {arm.train_minutes:.1f} min, "
        f"eval {arm.eval_minutes:.1f} min"
    )
    return arm, task


def run_named_arm(
    name: str, seed: int, s: BenchSettings, log: Log
) -> tuple[ArmResult, SelfSupervisedTask]:
    """:func:`run_arm` for an arm name (``simclr_sp_l0.1``, ``simclr_sp_s12``, ...)."""
    spec = parse_arm(name, s.sp_lambda, s.sp_local_size)
    return run_arm(spec.base, spec.sp_lambda, seed, s, log, local_size=spec.local_size)


def run_random_init(seed: int, s: BenchSettings, log: Log) -> ArmResult:
    """The untrained SimCLR network of ``seed`` (same architecture and initialisation as the
    trained arms of that seed) through the same evaluation: the floor of every table. No
    training, so timing and compute are NaN and ``epochs`` 0."""
    seed_everything(seed, verbose=False)
    task = build_task("simclr", 0.0, s)
    data = _cifar_data(s, seed)
    start, cpu = time.perf_counter(), time.process_time()
    evaluation = _evaluate_classes(task.model, data, s, seed)
    nan = math.nan
    arm = ArmResult(
        arm=RANDOM_INIT, base="simclr", sp_lambda=0.0, seed=seed, **vars(evaluation),
        epoch_seconds=nan, epoch_cpu_seconds=nan, train_minutes=0.0, train_cpu_minutes=0.0,
        worker_cpu_minutes=0.0, eval_minutes=(time.perf_counter() - start) / 60,
        eval_cpu_minutes=(time.process_time() - cpu) / 60, history=[], step_losses={},
        train_tflop=0.0, torch_threads=torch.get_num_threads(),
    )  # fmt: skip
    log(f"random init seed {seed}: linear {arm.linear_probe:.3f}, k-NN {arm.knn:.3f}, "
        f"reorder 2x2 {arm.reorder_accuracy_2x2:.3f}, eval {arm.eval_minutes:.1f} min")  # fmt: skip
    return arm


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


# -- running the arms: in this process, or side by side in child processes -------------------


def _figure_arm(plan: Sequence[tuple[str, int]]) -> tuple[str, int] | None:
    """The plan's first SimCLR + SP arm (default lambda and views): it draws the held-out pairs
    figure."""
    return next(((name, seed) for name, seed in plan if name == "simclr_sp"), None)


def _run_in_process(
    plan: Sequence[tuple[str, int]], s: BenchSettings, log: Log, tmp: Path
) -> tuple[list[ArmResult], bytes | None]:
    """Every arm of ``plan`` one after the other here; the trained figure arm's pairs PNG."""
    arms, positions = [], None
    figure_arm = _figure_arm(plan)
    for name, seed in plan:
        arm, task = run_named_arm(name, seed, s, log)
        arms.append(arm)
        if (name, seed) == figure_arm:
            positions = relative_position_png(task.model, s.cifar_npz)
    return arms, positions


_CHILD = (
    "from wherewhat.methods.spatial_prediction.experiment import arm_child_main; arm_child_main()"
)


def arm_child_main(argv: Sequence[str] | None = None) -> None:
    """Child process of a parallel run: ``SETTINGS_JSON ARM SEED OUT_JSON [FIGURE_PNG]``.

    Runs one arm with the settings' torch threads and writes its
    :class:`~wherewhat.methods.spatial_prediction.records.ArmResult` JSON to ``OUT_JSON`` (and
    the held-out pairs figure to ``FIGURE_PNG`` when given)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (4, 5):
        raise SystemExit("usage: SETTINGS_JSON ARM SEED OUT_JSON [FIGURE_PNG]")
    s = BenchSettings.from_dict(json.loads(Path(args[0]).read_text()))
    log = lambda message: print(message, flush=True)  # noqa: E731
    with torch_num_threads(s.threads):
        arm, task = run_named_arm(args[1], int(args[2]), s, log)
        if len(args) == 5:
            write_atomic(args[4], relative_position_png(task.model, s.cifar_npz))
    write_atomic(args[3], json.dumps(arm.to_dict(), allow_nan=True))


def _run_in_subprocesses(
    plan: Sequence[tuple[str, int]], s: BenchSettings, log: Log, tmp: Path
) -> tuple[list[ArmResult], bytes | None]:
    """The arms of ``plan`` in child processes (:func:`arm_child_main`), ``s.parallel`` at a
    time, started in plan order (a pair base / base + SP side by side, one core each). Each
    child has ``s.threads`` torch threads; a failed child stops the run once the running ones
    have finished (their results are lost with it: rerun and merge)."""
    settings_path = tmp / "settings.json"
    settings_path.write_text(json.dumps(dataclasses.asdict(s)))
    env = {**os.environ, "OMP_NUM_THREADS": str(s.threads), "MKL_NUM_THREADS": str(s.threads)}
    figure_arm = _figure_arm(plan)
    figure = tmp / "relative-positions.png"
    pending = list(enumerate(plan))
    running: dict[int, subprocess.Popen] = {}
    failed: list[str] = []
    try:
        while pending or running:
            while pending and len(running) < s.parallel and not failed:
                index, (name, seed) = pending.pop(0)
                command = [sys.executable, "-c", _CHILD, str(settings_path), name, str(seed),
                           str(tmp / f"arm-{index}.json")]  # fmt: skip
                if (name, seed) == figure_arm:
                    command.append(str(figure))
                log(f"start {name} seed {seed} (process {index + 1} of {len(plan)})")
                running[index] = subprocess.Popen(command, env=env)
            if failed:
                pending.clear()
            time.sleep(0.5)
            for index, child in list(running.items()):
                code = child.poll()
                if code is None:
                    continue
                del running[index]
                if code != 0:
                    name, seed = plan[index]
                    failed.append(f"{name} seed {seed} (exit code {code})")
    finally:
        for child in running.values():  # only on an interrupt: stop our own children
            child.terminate()
            child.wait()
    if failed:
        raise RuntimeError(
            f"arm(s) failed: {', '.join(failed)}; their errors are printed above. The arms that "
            "finished are not kept: rerun the failed ones with --arms / --seeds and --merge-with."
        )
    arms = [ArmResult.from_dict(json.loads((tmp / f"arm-{i}.json").read_text()))
            for i in range(len(plan))]  # fmt: skip
    return arms, figure.read_bytes() if figure.is_file() else None


# -- the run ----------------------------------------------------------------------------------


def run_bench(
    settings: BenchSettings | None = None,
    log: Log = print,
    work_dir: str | Path | None = None,
    merge_with: str | Path | None = None,
) -> BenchResult:
    """Run the benchmark (module docstring) with ``settings`` (default: the ``full`` preset).

    The arms of ``settings.plan()`` run ``settings.parallel`` at a time (1: here, in order;
    more: one child process each, without loader workers); then the random-init network of
    every seed present and, when asked (``face_seeds`` and ``faces_root``), the face arms,
    here. ``merge_with``: an earlier results file made with the same settings except seeds and
    arms (refused otherwise); its arms are pooled with this run's, keyed by (arm, seed), this
    run winning. See :class:`~wherewhat.methods.spatial_prediction.records.BenchResult` for
    what comes back.
    """
    s = settings or BenchSettings.preset("full")
    s.check()
    if s.parallel > 1 and s.num_workers:
        log(f"parallel {s.parallel}: each arm runs in its own process, without loader workers")
        s = dataclasses.replace(s, num_workers=0)
    with_faces = bool(s.faces_root and s.face_seeds)
    earlier = None
    if merge_with is not None:
        earlier = load_earlier_run(merge_with)
        check_mergeable(earlier, s, with_faces)
    start = time.perf_counter()
    plan = s.plan()
    with (
        torch_num_threads(s.threads),
        tempfile.TemporaryDirectory(prefix="spatial-prediction-bench-", dir=work_dir) as tmp,
    ):
        log(f"{len(plan)} arm(s), {s.parallel} at a time: "
            + ", ".join(f"{name}/{seed}" for name, seed in plan))  # fmt: skip
        run = _run_in_subprocesses if s.parallel > 1 else _run_in_process
        arms, positions = run(plan, s, log, Path(tmp))
        random_init = earlier.random_init if earlier else []
        seeds = sorted({a.seed for a in arms} | {a.seed for a in (earlier.arms if earlier else [])})
        have = {a.seed for a in random_init}
        random_init = random_init + [run_random_init(seed, s, log) for seed in seeds
                                     if seed not in have]  # fmt: skip
        face_arms = _face_arms(s, Path(tmp), log) if with_faces else []
    seconds = time.perf_counter() - start
    total = seconds
    merged_from: list[str] = []
    if earlier is not None:
        arms = pool(earlier.arms, arms, key=lambda a: (a.arm, a.seed))
        face_arms = pool(earlier.face_arms, face_arms, key=lambda a: (a.arm, a.seed))
        merged_from = [*earlier.merged_from, earlier.path]
        total += earlier.seconds
    result = bench_result(
        arms, sorted(random_init, key=lambda a: a.seed), face_arms, s, machine_info(), seconds
    )
    result.total_seconds, result.merged_from = total, merged_from
    result.figures = bench_figures(result.arms, result.random_init, s.valid_margin)
    if positions is not None:
        result.figures["relative-positions"] = positions
    return result
