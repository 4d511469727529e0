"""One arm of the Spatial Prediction benchmark on CIFAR-10: build it, pre-train it, probe it.

An *arm* is a base method (SimCLR / BYOL), an SP weight lambda (0: the base method), an SP local
view size and a seed: :func:`run_arm` pre-trains
:class:`~wherewhat.methods.spatial_prediction.task.SelfSupervisedTask` on the CIFAR-10 images
(labels unused), then probes the frozen backbone (:func:`evaluate_classes`): linear probe and
k-NN on the test split, the linear probe under corruptions, the "where" read-out and patch
re-ordering. :func:`run_random_init` puts the untrained network of a seed through the same
probes (the floor row). Timing per epoch comes from the task's ``history``; one training step's
FLOPs are counted on the first batch and read against this machine's measured matmul peak.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, seed_everything
from torch import Tensor

from wherewhat.bench.counting import training_step_flops
from wherewhat.bench.machine import peak_matmul_gflops
from wherewhat.data.images import SelfSupervisedDataModule
from wherewhat.methods.spatial_prediction.backbones import build_backbone
from wherewhat.methods.spatial_prediction.bases import SSLMethod, build_ssl_method
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
    sample_view_pairs,
    sp_pair_error,
)
from wherewhat.methods.spatial_prediction.records import ArmResult, ClassEvaluation
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
    "Log",
    "build_task",
    "evaluate_classes",
    "model_step_flops",
    "run_arm",
    "run_named_arm",
    "run_random_init",
]

# ``BenchSettings.task_args`` keys that describe the network (the rest go to the task).
MODEL_KEYS = ("backbone", "backbone_width", "sp_pairs", "sp_local_scale", "sp_local_size",
              "sp_hidden_dim")  # fmt: skip
Log = Callable[[str], None]
# A training batch as ``training_step`` receives it: the view sampler's dict, or (views, labels).
ViewBatch = Mapping[str, Tensor] | Sequence[Any]


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


def evaluate_classes(
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
    evaluation = evaluate_classes(task.model, data, s, seed)
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
    evaluation = evaluate_classes(task.model, data, s, seed)
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
