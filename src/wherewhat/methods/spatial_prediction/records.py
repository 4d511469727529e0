"""Typed results of the Spatial Prediction benchmark, from one arm up to the whole run.

The pipeline (:mod:`~wherewhat.methods.spatial_prediction.experiment`) fills them; the tables
(:mod:`~wherewhat.methods.spatial_prediction.markdown`), figures and the tour page read them.
``to_dict()`` gives each one's form in the results file (``benchmarks/results/
spatial_prediction.json``), whose keys these records keep. Means over seeds follow
:func:`wherewhat.metrics.summary.mean_std`: NaN where no seed produced a value.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from wherewhat.methods.spatial_prediction.settings import (
    FACE_MERGE_KEYS,
    MERGE_KEYS,
    TARGETS,
    BenchSettings,
)
from wherewhat.metrics.summary import mean_std

__all__ = [
    "SUMMARY_KEYS",
    "ArmResult",
    "ArmSummary",
    "BenchResult",
    "ClassEvaluation",
    "EarlierRun",
    "FaceArmResult",
    "bench_result",
    "check_mergeable",
    "clears_floor",
    "floor_margins",
    "load_earlier_run",
    "overhead",
    "pool",
    "summarise_arms",
    "valid_arms",
]

_T = TypeVar("_T")

# Per-arm quantities summarised over seeds (mean and std), in the results file's order.
SUMMARY_KEYS = (
    "linear_probe", "knn", "corruption_accuracy", "reorder_accuracy_2x2", "reorder_accuracy_3x3",
    "sp_error_ratio", "epoch_seconds", "epoch_cpu_seconds", "train_minutes", "eval_minutes",
    "step_gflop", "train_tflop", "step_fraction_of_peak",
)  # fmt: skip
# Quantities of an SP arm's own head, summarised by their mean only.
NATIVE_KEYS = ("ratio", "reorder_2x2", "reorder_3x3")


@dataclass
class ClassEvaluation:
    """Probes of one trained CIFAR network (accuracies are fractions).

    ``robustness``: the linear probe per corruption and severity (``clean``, ``mean`` and
    ``<kind>_<severity>``, see :func:`~wherewhat.methods.spatial_prediction.probes.corruption_accuracy`);
    ``where``: ``readout`` (a head fitted on frozen features) and, for SP arms, ``native`` (the
    arm's own head), each :func:`~wherewhat.methods.spatial_prediction.probes.sp_pair_error`
    plus ``reorder_<g>x<g>`` / ``reorder_<g>x<g>_exact``. The last three fields repeat the
    read-out's re-ordering and loss ratio for the tables.
    """

    linear_probe: float
    linear_probe_converged: bool | None
    knn: float
    robustness: dict[str, float]
    corruption_accuracy: float
    where: dict[str, dict[str, float]]
    reorder_accuracy_2x2: float
    reorder_accuracy_3x3: float
    sp_error_ratio: float


@dataclass
class ArmResult:
    """One CIFAR arm (base method, lambda, seed): probes, timing and learning curves.

    ``epoch_seconds`` / ``epoch_cpu_seconds``: median over the epochs after the first (which
    also starts the loader worker); ``*_minutes``: wall / CPU time of pre-training (this
    process, and loader workers) and of the evaluation. ``history``: the task's per-epoch
    records; ``step_losses``: per-step losses averaged over windows (``step`` = window mean).
    Compute: ``step_gflop`` (forward + backward of one training batch, counted by
    ``torch.utils.flop_counter``), ``train_tflop`` (that times ``steps``) and
    ``step_fraction_of_peak`` (step FLOPs / step seconds / ``peak_gflops``, this machine's
    measured matmul peak with ``torch_threads`` in the arm's ``precision``: float32 for
    ``32-true``, bfloat16 for ``bf16-mixed``; step seconds = epoch seconds / steps per epoch).
    The random-init row (``arm = "random_init"``) has NaN timing and compute, 0 epochs.
    """

    arm: str
    base: str
    sp_lambda: float
    seed: int
    linear_probe: float
    linear_probe_converged: bool | None
    knn: float
    corruption_accuracy: float
    reorder_accuracy_2x2: float
    reorder_accuracy_3x3: float
    sp_error_ratio: float
    robustness: dict[str, float]
    where: dict[str, dict[str, float]]
    epoch_seconds: float
    epoch_cpu_seconds: float
    train_minutes: float
    train_cpu_minutes: float
    worker_cpu_minutes: float
    eval_minutes: float
    eval_cpu_minutes: float
    history: list[dict[str, float]]
    step_losses: dict[str, list[float]]
    epochs: int = 0
    steps: int = 0
    sp_local_size: int | None = None
    step_gflop: float = math.nan
    train_tflop: float = math.nan
    step_fraction_of_peak: float = math.nan
    peak_gflops: float = math.nan
    torch_threads: int | None = None
    precision: str = "32-true"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmResult:
        """The arm a results file stored (fields added since then take their defaults)."""
        return _from_dict(cls, data)


def _from_dict(cls: type[_T], data: Mapping[str, Any]) -> _T:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown} in the stored record")
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # fmt: skip
    if missing:
        raise ValueError(f"{cls.__name__}: the stored record lacks {missing}")
    return cls(**data)


@dataclass
class FaceArmResult:
    """SimCLR (+SP) pre-trained on face crops, then the landmark probe (NME, a fraction).

    ``landmark_nme`` / ``landmark_nme_map``: ridge regression from pooled features / the
    flattened last feature map; ``*_random_init``: the same on the untrained network of the
    seed; ``landmark_nme_mean_shape``: predicting the training mean shape for every face.
    """

    arm: str
    sp_lambda: float
    seed: int
    landmark_nme: float
    landmark_nme_map: float
    landmark_nme_mean_shape: float
    landmark_nme_random_init: float
    landmark_nme_map_random_init: float
    alpha: float
    n_train_faces: int
    n_test_faces: int
    train_minutes: float
    history: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaceArmResult:
        return _from_dict(cls, data)


@dataclass
class ArmSummary:
    """One arm name over its seeds: ``means`` / ``stds`` of :data:`SUMMARY_KEYS` (std 0 for
    one seed), ``native_<key>`` means of the arm's own SP head (SP arms only, no std), and
    the mean linear-probe accuracy per corruption (``robustness``)."""

    arm: str
    seeds: list[int]
    means: dict[str, float]
    stds: dict[str, float]
    robustness: dict[str, float]

    def mean(self, key: str) -> float:
        """Mean of ``key`` over the seeds; NaN when there is none."""
        return self.means.get(key, math.nan)

    def std(self, key: str) -> float:
        return self.stds.get(key, math.nan)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"arm": self.arm, "seeds": list(self.seeds)}
        for key, value in self.means.items():
            out[key] = value
            if key in self.stds:
                out[f"{key}_std"] = self.stds[key]
        out["robustness"] = dict(self.robustness)
        return out


def summarise_arms(arms: Sequence[ArmResult]) -> dict[str, ArmSummary]:
    """Per arm name (in order of first appearance): mean and std over its seeds of
    :data:`SUMMARY_KEYS`, means only for the arm's own SP head and the corruptions."""
    out: dict[str, ArmSummary] = {}
    for name in dict.fromkeys(a.arm for a in arms):
        mine = [a for a in arms if a.arm == name]
        means, stds = {}, {}
        for key in SUMMARY_KEYS:
            means[key], stds[key] = mean_std([getattr(a, key) for a in mine])
        native = [a.where["native"] for a in mine if a.where.get("native")]
        for key in NATIVE_KEYS if native else ():
            means[f"native_{key}"], _ = mean_std([n[key] for n in native])
        corruption_keys = [k for k in mine[0].robustness if k != "mean"]
        robustness = {k: mean_std([a.robustness[k] for a in mine])[0] for k in corruption_keys}
        out[name] = ArmSummary(name, [a.seed for a in mine], means, stds, robustness)
    return out


def overhead(summary: Mapping[str, ArmSummary], base: str, key: str) -> float | None:
    """``key`` of ``<base>_sp`` relative to ``<base>``, minus 1 (0.1 = SP costs 10 % more);
    ``None`` when either arm is missing or has no value."""
    plain, with_sp = summary.get(base), summary.get(f"{base}_sp")
    if plain is None or with_sp is None:
        return None
    before, after = plain.mean(key), with_sp.mean(key)
    if not math.isfinite(before) or before == 0 or not math.isfinite(after):
        return None
    return after / before - 1.0


# -- validity: judge an arm only where its base method has learned ----------------------------


def clears_floor(
    value: float | None, floor: float | None, margin: float, higher_is_better: bool = True
) -> bool:
    """Whether ``value`` is at least ``margin`` better than ``floor`` (``>= floor + margin``,
    or ``<= floor - margin`` when lower is better); False when either is missing or NaN."""
    if value is None or floor is None or not math.isfinite(value) or not math.isfinite(floor):
        return False
    return value >= floor + margin if higher_is_better else value <= floor - margin


def floor_margins(
    values: Mapping[str, float | None], floor: float, margin: float, higher_is_better: bool = True
) -> dict[str, float]:
    """Per arm, how far it is past the bar ``floor ± margin`` (>= 0: cleared; in the units of
    the values; NaN without a value)."""
    out = {}
    for name, value in values.items():
        if value is None or not math.isfinite(value):
            out[name] = math.nan
        elif higher_is_better:
            out[name] = value - (floor + margin)
        else:
            out[name] = (floor - margin) - value
    return out


def valid_arms(
    values: Mapping[str, float | None], floor: float, margin: float, higher_is_better: bool = True
) -> list[str]:
    """The arms of ``values`` (arm -> mean linear probe, or NME with ``higher_is_better =
    False``) that clear ``floor`` by ``margin`` (see :func:`clears_floor`), in order."""
    return [name for name, value in values.items()
            if clears_floor(value, floor, margin, higher_is_better)]  # fmt: skip


# -- pooling runs -----------------------------------------------------------------------------


def pool(earlier: Iterable[_T], later: Iterable[_T], key: Callable[[_T], Hashable]) -> list[_T]:
    """``earlier`` and ``later`` records keyed by ``key``; a later record replaces an earlier one
    of the same key (in its place), new keys follow in their order."""
    out = {key(r): r for r in earlier}
    for record in later:
        out[key(record)] = record
    return list(out.values())


@dataclass
class EarlierRun:
    """What an earlier results file contributes to a merged run."""

    path: str
    settings: dict[str, Any]
    arms: list[ArmResult]
    random_init: list[ArmResult]
    face_arms: list[FaceArmResult]
    figure_files: list[str]
    seconds: float
    merged_from: list[str]


def load_earlier_run(path: str | Path) -> EarlierRun:
    """Read a results file of this benchmark for ``--merge-with``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results file to merge with")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "arms" not in data or "settings" not in data:
        raise ValueError(f"{path}: not a Spatial Prediction results file (no 'arms' / 'settings')")
    return EarlierRun(
        path=str(path),
        settings=data["settings"],
        arms=[ArmResult.from_dict(a) for a in data["arms"]],
        random_init=[ArmResult.from_dict(a) for a in data.get("random_init_arms", [])],
        face_arms=[FaceArmResult.from_dict(a) for a in data.get("face_arms", [])],
        figure_files=list(data.get("figure_files", [])),
        seconds=float(data.get("total_seconds", data.get("seconds", 0.0))),
        merged_from=list(data.get("merged_from", [])),
    )


def check_mergeable(earlier: EarlierRun, settings: BenchSettings, faces: bool) -> None:
    """Refuse (ValueError naming every difference) to pool ``earlier`` with a run of
    ``settings`` unless the settings agree on :data:`MERGE_KEYS` (and on the face settings
    when both runs have face arms, ``faces``: this run has)."""
    current = json.loads(json.dumps(dataclasses.asdict(settings)))
    keys = list(MERGE_KEYS) + (list(FACE_MERGE_KEYS) if faces and earlier.face_arms else [])
    missing = object()
    differ = [
        f"{key}: {earlier.settings.get(key, '(absent)')!r} there, {current[key]!r} here"
        for key in keys
        if earlier.settings.get(key, missing) != current[key]
    ]
    if differ:
        raise ValueError(
            f"cannot merge with {earlier.path}: it was made with other settings ("
            + "; ".join(differ)
            + "). Only seeds and arms may differ between merged runs."
        )


@dataclass
class BenchResult:
    """The whole benchmark run: the issue's headline numbers, then the details.

    ``linear_probe`` / ``knn``: arm name (``random_init``, ``simclr``, ``simclr_sp``, ``byol``,
    ``byol_sp``) -> mean over seeds, with ``<arm>_std`` beside it for several seeds (``None``:
    arm not run); ``landmark_probe_nme`` and ``reorder_accuracy_2x2`` likewise for ``simclr`` /
    ``simclr_sp``; ``sp_*_overhead``: see :func:`overhead`; ``lambda_sweep`` /
    ``sp_local_size_sweep``: one row per lambda / SP local view size of SimCLR on one seed.

    Validity: ``random_init`` holds the untrained network of each seed, evaluated like an arm;
    ``valid_arms``: the arms whose mean linear probe is >= the random-init mean +
    ``settings.valid_margin``; ``linear_probe_above_random``: arm -> points above the
    random-init mean. A gain (``linear_probe_gain_*``, ``landmark_nme_gain_simclr``, the sweeps'
    deltas) is reported only when its base arm is valid; otherwise it is None and
    ``gain_notes`` says why. ``valid_face_arms``: face arms whose mean NME is <= their
    untrained backbone's - ``settings.face_valid_margin``.

    Compute per arm (means over seeds): ``epoch_seconds``, ``step_fraction_of_peak``,
    ``step_gflop``, ``train_tflop``. ``merged_from``: earlier results files pooled into this
    one (``seconds``: this command; ``total_seconds``: with the pooled runs). ``figures``:
    ``{name: PNG bytes}`` (not part of the JSON; ``figure_files`` names them once written).
    """

    linear_probe: dict[str, float | None]
    knn: dict[str, float | None]
    landmark_probe_nme: dict[str, float]
    reorder_accuracy_2x2: dict[str, float | None]
    sp_time_overhead: float | None
    sp_time_overhead_byol: float | None
    sp_cpu_overhead: float | None
    lambda_sweep: list[dict[str, float | None]]
    epochs: int
    seeds: list[int]
    byol_seeds: list[int]
    quick: bool
    summary: dict[str, ArmSummary]
    arms: list[ArmResult]
    face_arms: list[FaceArmResult]
    settings: BenchSettings
    machine: dict[str, Any]
    torch_threads: int
    seconds: float
    random_init: list[ArmResult] = field(default_factory=list)
    valid_arms: list[str] = field(default_factory=list)
    linear_probe_above_random: dict[str, float] = field(default_factory=dict)
    valid_face_arms: list[str] = field(default_factory=list)
    epoch_seconds: dict[str, float] = field(default_factory=dict)
    step_fraction_of_peak: dict[str, float] = field(default_factory=dict)
    step_gflop: dict[str, float] = field(default_factory=dict)
    train_tflop: dict[str, float] = field(default_factory=dict)
    sp_local_size_sweep: list[dict[str, float | None]] = field(default_factory=list)
    gain_notes: dict[str, str] = field(default_factory=dict)
    merged_from: list[str] = field(default_factory=list)
    total_seconds: float | None = None
    linear_probe_gain_simclr: float | None = None
    linear_probe_gain_byol: float | None = None
    landmark_nme_gain_simclr: float | None = None
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)
    figure_files: list[str] | None = None

    @property
    def targets(self) -> dict[str, dict[str, str | float]]:
        return {k: {"op": op, "value": v} for k, (op, v) in TARGETS.items()}

    @property
    def random_init_linear(self) -> float:
        """Mean linear probe of the untrained networks (NaN without any)."""
        return mean_std([a.linear_probe for a in self.random_init])[0]

    def to_dict(self) -> dict[str, Any]:
        """The results file's JSON (gains and ``figure_files`` only when present)."""
        out: dict[str, Any] = {
            "linear_probe": self.linear_probe,
            "knn": self.knn,
            "valid_arms": self.valid_arms,
            "linear_probe_above_random": self.linear_probe_above_random,
            "valid_face_arms": self.valid_face_arms,
            "gain_notes": self.gain_notes,
            "landmark_probe_nme": self.landmark_probe_nme,
            "reorder_accuracy_2x2": self.reorder_accuracy_2x2,
            "sp_time_overhead": self.sp_time_overhead,
            "sp_time_overhead_byol": self.sp_time_overhead_byol,
            "sp_cpu_overhead": self.sp_cpu_overhead,
            "epoch_seconds": self.epoch_seconds,
            "step_fraction_of_peak": self.step_fraction_of_peak,
            "step_gflop": self.step_gflop,
            "train_tflop": self.train_tflop,
            "lambda_sweep": self.lambda_sweep,
            "sp_local_size_sweep": self.sp_local_size_sweep,
            "epochs": self.epochs,
            "seeds": self.seeds,
            "byol_seeds": self.byol_seeds,
            "quick": self.quick,
            "summary": {name: row.to_dict() for name, row in self.summary.items()},
            "random_init_arms": [arm.to_dict() for arm in self.random_init],
            "arms": [arm.to_dict() for arm in self.arms],
            "face_arms": [arm.to_dict() for arm in self.face_arms],
            "settings": dataclasses.asdict(self.settings),
            "targets": self.targets,
            "machine": self.machine,
            "torch_threads": self.torch_threads,
            "seconds": self.seconds,
            "total_seconds": self.seconds if self.total_seconds is None else self.total_seconds,
            "merged_from": self.merged_from,
        }
        gains = ("linear_probe_gain_simclr", "linear_probe_gain_byol", "landmark_nme_gain_simclr")
        for key in (*gains, "figure_files"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


# -- assembling the run -----------------------------------------------------------------------

# The headline arms, first in every table (after the random init), then the others in order.
MAIN_ARMS = ("simclr", "simclr_sp", "byol", "byol_sp")


def _in_table_order(arms: Sequence[ArmResult]) -> list[ArmResult]:
    names = list(MAIN_ARMS) + [a.arm for a in arms if a.arm not in MAIN_ARMS]
    rank = {name: i for i, name in reversed(list(enumerate(names)))}
    return sorted(arms, key=lambda a: (rank[a.arm], a.seed))


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


def _means(summary: Mapping[str, ArmSummary], key: str) -> dict[str, float]:
    return {name: row.mean(key) for name, row in summary.items() if name != "random_init"}


class _Gains:
    """Differences read only where the base arm is valid; otherwise None and a note why."""

    def __init__(self, valid: Sequence[str], floor_text: str):
        self.valid, self.floor_text, self.notes = set(valid), floor_text, {}

    def points(self, key: str, base: str, base_value: float | None, value: float | None,
               scale: float = 100.0) -> float | None:  # fmt: skip
        if base_value is None or value is None:
            return None
        if not (math.isfinite(base_value) and math.isfinite(value)):
            return None
        if base not in self.valid:
            self.notes[key] = f"not read: {base} is below the validity bar ({self.floor_text})"
            return None
        return scale * (value - base_value)


def _sweep_seed(arms: Sequence[ArmResult], s: BenchSettings) -> int | None:
    """The seed of the sweeps: the first with a SimCLR arm off the default lambda / view size,
    else the first SimCLR seed."""
    simclr = [a for a in arms if a.base == "simclr"]
    other = [a.seed for a in simclr if a.sp_lambda not in (0.0, s.sp_lambda)
             or a.sp_local_size not in (None, s.sp_local_size)]  # fmt: skip
    seeds = other or [a.seed for a in simclr]
    return min(seeds) if seeds else None


def _sweeps(
    arms: Sequence[ArmResult], s: BenchSettings, gains: _Gains
) -> tuple[list[dict[str, float | None]], list[dict[str, float | None]]]:
    """Lambda sweep (default local size) and SP local-size sweep (default lambda) of SimCLR on
    one seed, each row with its linear-probe difference to SimCLR alone (points) and its time
    overhead."""
    seed = _sweep_seed(arms, s)
    mine = [a for a in arms if a.base == "simclr" and a.seed == seed]
    base = next((a for a in mine if a.sp_lambda == 0), None)

    def row(a: ArmResult, key: str) -> dict[str, float | None]:
        return {
            key: getattr(a, key), "seed": a.seed, "linear_probe": a.linear_probe, "knn": a.knn,
            "linear_probe_delta": gains.points(
                f"{key}_sweep", "simclr", base.linear_probe if base else None, a.linear_probe),
            "reorder_accuracy_2x2": a.reorder_accuracy_2x2, "sp_error_ratio": a.sp_error_ratio,
            "corruption_accuracy": a.corruption_accuracy, "epoch_seconds": a.epoch_seconds,
            "time_overhead": a.epoch_seconds / base.epoch_seconds - 1 if base else None,
        }  # fmt: skip

    # A sweep needs two points (else no table, and no note about its deltas).
    by_lambda = [a for a in mine if a.sp_local_size in (None, s.sp_local_size)]
    by_lambda = sorted(by_lambda, key=lambda a: a.sp_lambda) if len(by_lambda) > 1 else []
    by_size = [a for a in mine if a.sp_lambda == s.sp_lambda]
    by_size = sorted(by_size, key=lambda a: a.sp_local_size or 0) if len(by_size) > 1 else []
    return [row(a, "sp_lambda") for a in by_lambda], [row(a, "sp_local_size") for a in by_size]


def _face_validity(
    face_arms: Sequence[FaceArmResult], margin: float
) -> tuple[dict[str, float], list[str]]:
    """Mean landmark NME per face arm (with ``<arm>_std``) and the arms whose NME is at least
    ``margin`` below their untrained backbones' (mean over the same seeds)."""
    nme: dict[str, float] = {}
    valid = []
    for name in dict.fromkeys(a.arm for a in face_arms):
        mine = [a for a in face_arms if a.arm == name]
        nme[name], std = mean_std([a.landmark_nme for a in mine])
        if len(mine) > 1:
            nme[f"{name}_std"] = std
        floor = mean_std([a.landmark_nme_random_init for a in mine])[0]
        if clears_floor(nme[name], floor, margin, higher_is_better=False):
            valid.append(name)
    return nme, valid


def bench_result(
    arms: Sequence[ArmResult],
    random_init: Sequence[ArmResult],
    face_arms: Sequence[FaceArmResult],
    s: BenchSettings,
    machine: dict[str, Any],
    seconds: float,
) -> BenchResult:
    """The :class:`BenchResult` of trained ``arms``, the untrained networks ``random_init`` (one
    per seed) and ``face_arms``: summaries, validity, the gains of valid bases, the sweeps and
    compute per arm (no figures)."""
    arms = _in_table_order(arms)
    summary = summarise_arms([*random_init, *arms])
    floor = mean_std([a.linear_probe for a in random_init])[0]
    linear = _means(summary, "linear_probe")
    valid = valid_arms(linear, floor, s.valid_margin)
    gains = _Gains(valid, f"linear probe >= random init {100 * floor:.1f} % + "
                          f"{100 * s.valid_margin:.0f} points")  # fmt: skip
    landmark, valid_faces = _face_validity(face_arms, s.face_valid_margin)
    face_gains = _Gains(valid_faces, f"landmark NME <= untrained backbone's - "
                                     f"{s.face_valid_margin:g}")  # fmt: skip
    lambda_sweep, size_sweep = _sweeps(arms, s, gains)
    names = ("random_init", *MAIN_ARMS)
    result = BenchResult(
        linear_probe=_by_arm(summary, "linear_probe", names),
        knn=_by_arm(summary, "knn", names),
        landmark_probe_nme=landmark,
        reorder_accuracy_2x2=_by_arm(
            summary, "reorder_accuracy_2x2", ("random_init", *MAIN_ARMS[:2])
        ),
        sp_time_overhead=overhead(summary, "simclr", "epoch_seconds"),
        sp_time_overhead_byol=overhead(summary, "byol", "epoch_seconds"),
        sp_cpu_overhead=overhead(summary, "simclr", "epoch_cpu_seconds"),
        lambda_sweep=lambda_sweep,
        epochs=s.epochs,
        seeds=sorted({a.seed for a in arms if a.base == "simclr"}),
        byol_seeds=sorted({a.seed for a in arms if a.base == "byol"}),
        quick=s.quick,
        summary=summary,
        arms=arms,
        face_arms=list(face_arms),
        settings=s,
        machine=machine,
        torch_threads=s.threads,
        seconds=seconds,
        random_init=list(random_init),
        valid_arms=valid,
        linear_probe_above_random={k: 100 * (v - floor) for k, v in linear.items()},
        valid_face_arms=valid_faces,
        epoch_seconds=_means(summary, "epoch_seconds"),
        step_fraction_of_peak=_means(summary, "step_fraction_of_peak"),
        step_gflop=_means(summary, "step_gflop"),
        train_tflop=_means(summary, "train_tflop"),
        sp_local_size_sweep=size_sweep,
    )
    for base in ("simclr", "byol"):
        key = f"linear_probe_gain_{base}"
        setattr(result, key, gains.points(key, base, linear.get(base), linear.get(f"{base}_sp")))
    # Lower NME is better: the gain is NME(SimCLR) - NME(SimCLR + SP).
    result.landmark_nme_gain_simclr = face_gains.points(
        "landmark_nme_gain_simclr", "simclr", landmark.get("simclr_sp"), landmark.get("simclr"), 1.0
    )
    result.gain_notes = {**gains.notes, **face_gains.notes}
    return result
