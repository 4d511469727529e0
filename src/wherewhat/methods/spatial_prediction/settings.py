"""What one run of the Spatial Prediction benchmark does: :class:`BenchSettings` and its presets.

Plain data only (it is stored as ``settings`` in the results file); the pipeline that reads it
is :mod:`wherewhat.methods.spatial_prediction.experiment`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ARM_CHOICES",
    "DEFAULT_CIFAR",
    "DEFAULT_FACES",
    "FACE_MERGE_KEYS",
    "MERGE_KEYS",
    "RANDOM_INIT",
    "TARGETS",
    "ArmSpec",
    "BenchSettings",
    "arm_name",
    "parse_arm",
]

DEFAULT_CIFAR = Path("../shared/data/cifar10/cifar10_subset.npz")
DEFAULT_FACES = Path("../shared/data/faces68")
# The targets, shown next to the results: quantity -> (comparison, bound).
TARGETS: dict[str, tuple[str, float]] = {
    "linear_probe_gain_simclr": (">=", 1.0),  # points of accuracy, mean of the seeds
    "landmark_nme_gain_simclr": (">", 0.0),  # NME(SimCLR) - NME(SimCLR+SP)
    "sp_time_overhead": ("<=", 0.25),
}
# The untrained network of a seed, evaluated like a trained arm: the floor of every table.
RANDOM_INIT = "random_init"
# The arms the benchmark script offers (``--arms``); :func:`parse_arm` reads any such name.
ARM_CHOICES = ("simclr", "simclr_sp", "byol", "byol_sp", "simclr_sp_l0.1", "simclr_sp_l1",
               "simclr_sp_s12")  # fmt: skip
# Settings that must agree for two results files to be pooled (``--merge-with``).
MERGE_KEYS = (
    "quick", "epochs", "batch_size", "train_images", "test_images", "corruption_images",
    "task_args", "byol_args", "sp_lambda", "readout_train_images", "readout_test_images",
    "readout_steps", "reorder_images", "valid_margin", "precision",
)  # fmt: skip
# The same for pooling face arms (checked only when both runs have some).
FACE_MERGE_KEYS = ("face_size", "face_side_factor", "face_val_fraction", "face_split_seed",
                   "face_epochs", "face_batch_size", "max_faces", "face_valid_margin")  # fmt: skip
# Scalars and tuples only: ``task_args`` values as the results file stores them.
TaskArg = str | int | float | tuple[float, ...] | None


@dataclass
class BenchSettings:
    """Everything one benchmark run does; :meth:`preset` gives ``full``, ``quick``, ``tour``.

    ``task_args``: what every arm shares, keyed as in the results files. The network keys
    (``backbone``, ``backbone_width``, ``sp_pairs``, ``sp_local_scale``, ``sp_local_size``,
    ``sp_hidden_dim``) build the arm's SimCLR / BYOL (``byol_args`` go to BYOL; the SP weight
    is set per arm), see :func:`~wherewhat.methods.spatial_prediction.arms.build_task`;
    the rest go to :class:`~wherewhat.methods.spatial_prediction.task.SelfSupervisedTask`.
    ``train_images``: a class-balanced subset of the training split drawn with each seed
    (``None``: all 20,000); ``test_images``: a fixed subset of the test split (``None``: all
    10,000); ``corruption_images``: test images used for the corruption probe (a fixed random
    subset). The "where" read-out is fitted on two pairs per image from
    ``readout_train_images`` training images and scored on one pair per image from
    ``readout_test_images`` test images. ``threads``: torch threads of the training process;
    with ``num_workers = 1`` the loader worker (one thread) takes the second core (measured on
    2 cores: 2 threads + a worker burn 2x the CPU per step under load and were no faster).

    Which arms run (:meth:`plan`): ``arms`` (names as :func:`arm_name` makes them, e.g.
    ``simclr_sp_l0.1``, ``simclr_sp_s12``) on every seed of ``seeds``; or, with ``arms = None``,
    SimCLR and SimCLR + SP on ``seeds``, BYOL and BYOL + SP on ``byol_seeds``, and on the
    first seed SimCLR + SP at each other lambda of ``lambda_sweep`` and each other SP local
    view size of ``sp_local_size_sweep``. ``parallel``: arms run that many at a time in plan
    order, each in its own process with ``threads`` torch threads and no loader worker (1: one
    after the other in this process). Validity: an arm counts only when its mean linear probe
    is >= the random-init network's + ``valid_margin``; a face arm only when its landmark NME
    is <= the untrained backbone's - ``face_valid_margin`` (the untrained NMEs of different
    seeds spread over about 0.008).
    """

    quick: bool = False
    cifar_npz: str = str(DEFAULT_CIFAR)
    faces_root: str | None = str(DEFAULT_FACES)
    seeds: tuple[int, ...] = (0, 1, 2)
    byol_seeds: tuple[int, ...] = (0,)
    sp_lambda: float = 0.5
    lambda_sweep: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0)
    epochs: int = 40
    batch_size: int = 256
    train_images: int | None = None
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
            "lr": 4e-3,
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
    precision: str = "bf16-mixed"
    arms: tuple[str, ...] | None = None
    sp_local_size_sweep: tuple[int, ...] = (12,)
    parallel: int = 1
    valid_margin: float = 0.25
    face_valid_margin: float = 0.01

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
                sp_local_size_sweep=(),
            )  # fmt: skip
            settings.task_args = {**settings.task_args, "knn_train_limit": 1000,
                                  "knn_test_limit": 500}  # fmt: skip
        elif name == "tour":
            settings = cls(
                quick=True, seeds=(0,), byol_seeds=(), lambda_sweep=(), epochs=2,
                batch_size=128, train_images=1280, test_images=500, corruption_images=200,
                readout_train_images=1000, readout_test_images=300, readout_steps=200,
                reorder_images=100, faces_root=None, face_seeds=(), num_workers=0,
                sp_local_size_sweep=(),
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
        if self.precision not in ("32-true", "bf16-mixed"):
            raise ValueError(f"precision must be '32-true' or 'bf16-mixed', got {self.precision!r}")
        if self.parallel < 1:
            raise ValueError(f"parallel must be >= 1 (arms run at a time), got {self.parallel}")
        for name in self.arms or ():
            parse_arm(name, self.sp_lambda, self.sp_local_size)

    @property
    def sp_local_size(self) -> int:
        """The SP arms' local view side (``task_args["sp_local_size"]``, default 16)."""
        return int(self.task_args.get("sp_local_size", 16))

    def plan(self) -> list[tuple[str, int]]:
        """``(arm name, seed)`` in run order: the arms of a seed side by side (base, base + SP),
        so that with ``parallel = 2`` a pair runs at the same time."""
        if self.arms is not None:
            return list(dict.fromkeys((name, seed) for seed in self.seeds for name in self.arms))
        plan = [(name, seed) for seed in self.seeds for name in ("simclr", "simclr_sp")]
        plan += [(name, seed) for seed in self.byol_seeds for name in ("byol", "byol_sp")]
        first = self.seeds[0]
        plan += [(arm_name("simclr", lam, self.sp_lambda), first) for lam in self.lambda_sweep
                 if lam not in (0.0, self.sp_lambda)]  # fmt: skip
        size = self.sp_local_size
        plan += [(arm_name("simclr", self.sp_lambda, self.sp_lambda, s, size), first)
                 for s in self.sp_local_size_sweep if s != size]  # fmt: skip
        return plan

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchSettings:
        """The settings a results file stored (``dataclasses.asdict`` through JSON: lists back
        to tuples; keys this version does not know are refused by name)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown BenchSettings keys {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        for key in ("task_args", "byol_args"):
            if key in values:
                values[key] = {k: tuple(v) if isinstance(v, list) else v
                               for k, v in values[key].items()}  # fmt: skip
        return cls(**values)


@dataclass(frozen=True)
class ArmSpec:
    """What an arm name means: base method, SP weight (0: none) and SP local view side
    (``None``: the settings' ``sp_local_size``)."""

    base: str
    sp_lambda: float
    local_size: int | None = None


_ARM_PATTERN = re.compile(r"(simclr|byol)(?:(_sp)(?:_l([0-9]*\.?[0-9]+))?(?:_s([0-9]+))?)?")


def arm_name(
    base: str,
    sp_lambda: float,
    default_lambda: float,
    local_size: int | None = None,
    default_size: int | None = None,
) -> str:
    """``simclr``, ``simclr_sp`` (lambda = the default), ``simclr_sp_l0.1`` (other lambdas),
    ``simclr_sp_s12`` (an SP local view side other than ``default_size``), ``..._l0.1_s12``."""
    if sp_lambda == 0:
        return base
    name = f"{base}_sp" if sp_lambda == default_lambda else f"{base}_sp_l{sp_lambda:g}"
    if local_size is not None and local_size != default_size:
        name += f"_s{local_size}"
    return name


def parse_arm(name: str, default_lambda: float, default_size: int) -> ArmSpec:
    """The :class:`ArmSpec` of ``name``, which must be written as :func:`arm_name` writes it
    (``simclr_sp_l0.5`` with default lambda 0.5 is refused: it is ``simclr_sp``)."""
    match = _ARM_PATTERN.fullmatch(name)
    if match is None:
        raise ValueError(
            f"unknown arm {name!r}: expected <base>[_sp[_l<lambda>][_s<local size>]] with base "
            f"simclr or byol, e.g. {', '.join(ARM_CHOICES)}"
        )
    base, sp, lam, size = match.groups()
    sp_lambda = 0.0 if sp is None else (default_lambda if lam is None else float(lam))
    local_size = None if size is None or int(size) == default_size else int(size)
    if sp is not None and sp_lambda == 0:
        raise ValueError(f"arm {name!r}: an SP arm needs lambda > 0 (lambda 0 is {base!r})")
    canonical = arm_name(base, sp_lambda, default_lambda, local_size, default_size)
    if canonical != name:
        raise ValueError(f"arm {name!r} is written {canonical!r} (default lambda "
                         f"{default_lambda:g}, default local size {default_size})")  # fmt: skip
    return ArmSpec(base, sp_lambda, local_size)
