"""What one run of the Spatial Prediction benchmark does: :class:`BenchSettings` and its presets.

Plain data only (it is stored as ``settings`` in the results file); the pipeline that reads it
is :mod:`wherewhat.methods.spatial_prediction.experiment`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["DEFAULT_CIFAR", "DEFAULT_FACES", "TARGETS", "BenchSettings", "arm_name"]

DEFAULT_CIFAR = Path("../shared/data/cifar10/cifar10_subset.npz")
DEFAULT_FACES = Path("../shared/data/faces68")
# The targets, shown next to the results: quantity -> (comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "linear_probe_gain_simclr": (">=", 1.0),  # points of accuracy, mean of the seeds
    "landmark_nme_gain_simclr": (">", 0.0),  # NME(SimCLR) - NME(SimCLR+SP)
    "sp_time_overhead": ("<=", 0.25),
}
# Scalars and tuples only: ``task_args`` values as the results file stores them.
TaskArg = str | int | float | tuple[float, ...] | None


@dataclass
class BenchSettings:
    """Everything one benchmark run does; :meth:`preset` gives ``full``, ``quick``, ``tour``.

    ``task_args``: what every arm shares, keyed as in the results files. The network keys
    (``backbone``, ``backbone_width``, ``sp_pairs``, ``sp_local_scale``, ``sp_local_size``,
    ``sp_hidden_dim``) build the arm's SimCLR / BYOL (``byol_args`` go to BYOL; the SP weight
    is set per arm), see :func:`~wherewhat.methods.spatial_prediction.experiment.build_task`;
    the rest go to :class:`~wherewhat.methods.spatial_prediction.task.SelfSupervisedTask`.
    ``train_images``: a class-balanced subset of the training split drawn with each seed
    (``None``: all 20,000); ``test_images``: a fixed subset of the test split (``None``: all
    10,000); ``corruption_images``: test images used for the corruption probe (a fixed random
    subset). The "where" read-out is fitted on two pairs per image from
    ``readout_train_images`` training images and scored on one pair per image from
    ``readout_test_images`` test images. ``threads``: torch threads of the training process;
    with ``num_workers = 1`` the loader worker (one thread) takes the second core (measured on
    2 cores: 2 threads + a worker burn 2x the CPU per step under load and were no faster).
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
    task_args: dict[str, TaskArg] = field(
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
    byol_args: dict[str, int | float] = field(
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
    def preset(cls, name: Literal["full", "quick", "tour"], **changes: Any) -> BenchSettings:
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
