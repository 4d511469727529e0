"""Typed results of the SSDIR benchmark: one record per trained arm, per-variant summaries over
seeds, the de-duplication ablation, and the whole run, each with ``to_json()`` giving exactly
the keys of the results file (``benchmarks/results/ssdir.json``).

The pipeline (:mod:`wherewhat.methods.ssdir.experiment`) builds them, the markdown
(:mod:`wherewhat.methods.ssdir.markdown`) and the tour page read them, ``benchmarks/ssdir.py``
writes ``to_json()`` and reads an earlier file back with :meth:`SSDIRBenchResult.from_json` to
pool seeds (:func:`merge_results`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from wherewhat.bench.machine import machine_info
from wherewhat.methods.ssdir.settings import ARMS, SSDIRBenchSettings
from wherewhat.metrics.summary import mean_std

__all__ = [
    "SUMMARY_KEYS",
    "TARGETS",
    "AblationRow",
    "Headline",
    "SSDIRArm",
    "SSDIRBenchResult",
    "SpeedAndSize",
    "VariantSummary",
    "assemble_result",
    "merge_results",
    "regime_block",
    "settings_blocking_merge",
    "summarize",
]

# One number of evaluate_ssdir's flat metrics (probe_skipped is the one string).
MetricValue: TypeAlias = float | int | bool | str | None

# Per-arm numbers averaged over seeds in the summary.
SUMMARY_KEYS = (
    "ap50", "ap", "recon_mse", "probe_accuracy", "probe_precision", "probe_recall", "probe_f1",
    "test_unmatched_fraction", "test_gt_missed", "test_duplicates", "detector_minutes",
    "ssdir_minutes", "train_minutes", "scenes_per_s_batch1", "scenes_per_s_batch32",
    "detector_label_accuracy", "detector_label_accuracy_train", "train_tflop",
    "detector_loop_fraction_of_peak", "ssdir_loop_fraction_of_peak",
)  # fmt: skip
# Probe per size bucket and per pyramid level (and their counts), averaged the same way.
_BREAKDOWN_PREFIXES = ("probe_accuracy_size_", "probe_n_size_", "probe_accuracy_level_",
                       "probe_n_level_")  # fmt: skip
# Sizes copied from a variant's first arm into its summary (equal over seeds).
_SIZE_KEYS = (
    "params", "params_trainable", "params_detector", "macs_per_scene", "macs_detector_per_scene",
)  # fmt: skip
# The targets, shown next to the results: the faithful (per-class, eq. 4) arm in the
# paper's regime, the best label-free arm on the default scenes and its margin over the
# raw-pixel floor.
TARGETS = {
    "ap50_class_agnostic": (">=", 0.95),
    "probe_accuracy_per_class": (">=", 0.97),
    "recon_mse_per_class": ("<=", 0.0121),
    "probe_accuracy_class_agnostic": (">=", 0.93),
    "label_free_margin_over_raw_pixels": (">=", 0.05),
    "recon_mse": ("<=", 0.0121),
    "scenes_per_s_batch32": (">=", 100.0),
    "train_minutes_one_seed": ("<=", 45.0),
}
# The faithful arm first; a per-class run without it reports the plain per-class arm. Only an
# arm in the paper's regime (``scenes="regime"``) is faithful.
_FAITHFUL_ARMS = ("per_class_eq4", "per_class")
_FAITHFUL_SCENES = "regime"
# Settings that may differ between runs whose arms are merged (they do not change an arm).
_MERGEABLE_SETTINGS = {"seeds", "variants", "dedup_ablation", "progress_bar"}


@dataclass(frozen=True)
class SpeedAndSize:
    """Inference speed (eval forward, torch, ``threads`` threads) and size of a trained SSDIR.

    ``speed_batch_size`` is the batch of the throughput measurement (32, or fewer test
    scenes); MACs per scene depend on the objects rendered, so they are counted on real scenes.
    """

    threads: int
    speed_batch_size: int
    scenes_per_s_batch1: float
    scenes_per_s_batch32: float
    latency_ms_batch1: float
    latency_ms_batch32: float
    params: int
    params_trainable: int
    params_detector: int
    macs_per_scene: float
    macs_detector_per_scene: float
    rendered_per_scene: float


_SPEED_KEYS = tuple(f.name for f in dataclasses.fields(SpeedAndSize))
_IDENTITY_KEYS = ("variant", "seed", "dedup")


@dataclass
class SSDIRArm:
    """One arm: a detector variant and seed, SSDIR trained on it with one ``dedup`` mode.

    ``metrics``: :func:`~wherewhat.methods.ssdir.evaluation.evaluate_ssdir`'s flat numbers
    (their names vary: size buckets, ``detector_label_accuracy`` for a per-class detector,
    ``probe_skipped``). Minutes are wall time of training, validation included;
    ``train_cpu_minutes`` is the CPU time of both trainings; ``*_best_*`` are the monitored
    values of the kept checkpoints (None without validation).
    """

    variant: str
    seed: int
    dedup: str
    metrics: dict[str, MetricValue]
    speed: SpeedAndSize
    detector_minutes: float
    ssdir_minutes: float
    train_minutes: float
    train_cpu_minutes: float
    eval_seconds: float
    detector_steps: int
    detector_best_val_map50: float | None
    ssdir_steps: int
    ssdir_best_val_loss: float | None

    def to_json(self) -> dict[str, MetricValue]:
        """The arm as one flat row of the results file (identity, metrics, speed, training)."""
        return {
            "variant": self.variant,
            "seed": self.seed,
            "dedup": self.dedup,
            **self.metrics,
            **dataclasses.asdict(self.speed),
            **{key: getattr(self, key) for key in _TRAINING_KEYS},
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> SSDIRArm:
        """An arm from a results file's row (:meth:`to_json`); every key not of the identity,
        speed or training is a metric."""
        missing = [k for k in (*_IDENTITY_KEYS, *_SPEED_KEYS, *_TRAINING_KEYS) if k not in row]
        if missing:
            raise ValueError(f"SSDIR arm: the results row lacks {missing}")
        own = {*_IDENTITY_KEYS, *_SPEED_KEYS, *_TRAINING_KEYS}
        return cls(
            variant=str(row["variant"]),
            seed=int(row["seed"]),
            dedup=str(row["dedup"]),
            metrics={k: v for k, v in row.items() if k not in own},
            speed=SpeedAndSize(**{k: row[k] for k in _SPEED_KEYS}),
            **{k: row[k] for k in _TRAINING_KEYS},
        )


# SSDIRArm's training fields, stored after the metrics and speed in a results file.
_TRAINING_KEYS = tuple(
    f.name
    for f in dataclasses.fields(SSDIRArm)
    if f.name not in (*_IDENTITY_KEYS, "metrics", "speed")
)


@dataclass(frozen=True)
class AblationRow:
    """One row of the de-duplication ablation: an arm's headline numbers."""

    dedup: str
    ap50: float
    ap: float
    recon_mse: float
    probe_accuracy: float
    test_unmatched_fraction: float
    test_duplicates: int
    rendered_per_scene: float
    ssdir_minutes: float

    @classmethod
    def of(cls, arm: SSDIRArm) -> AblationRow:
        row = arm.to_json()
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    def to_json(self) -> dict[str, MetricValue]:
        return dataclasses.asdict(self)


@dataclass
class VariantSummary:
    """A detector variant's ``nms`` arms over seeds: ``stats[key] = (mean, sample std)`` for
    each of :data:`SUMMARY_KEYS` the arms have, and the model size (equal over seeds)."""

    variant: str
    seeds: list[int]
    stats: dict[str, tuple[float, float]]
    params: int
    params_trainable: int
    params_detector: int
    macs_per_scene: float
    macs_detector_per_scene: float

    def mean(self, key: str) -> float:
        """Mean over seeds; NaN when the arms lack ``key`` or have no finite value."""
        return self.stats.get(key, (math.nan, math.nan))[0]

    def std(self, key: str) -> float:
        return self.stats.get(key, (math.nan, math.nan))[1]

    def to_json(self) -> dict[str, Any]:
        """``variant``, ``seeds``, then ``<key>`` and ``<key>_std`` per statistic, then sizes."""
        row: dict[str, Any] = {"variant": self.variant, "seeds": list(self.seeds)}
        for key, (mean, std) in self.stats.items():
            row[key], row[f"{key}_std"] = mean, std
        row.update({key: getattr(self, key) for key in _SIZE_KEYS})
        return row


def summarize(arms: Sequence[SSDIRArm], variants: Sequence[str]) -> dict[str, VariantSummary]:
    """Per arm (``variants``), the mean and std over seeds of its ``nms`` arms (the ablation's
    other modes are left out): :data:`SUMMARY_KEYS` and the probe per size bucket and level.
    Every arm needs at least one such record."""
    out = {}
    for variant in variants:
        mine = [a for a in arms if a.variant == variant and a.dedup == "nms"]
        rows = [a.to_json() for a in mine]
        breakdown = sorted({k for row in rows for k in row if k.startswith(_BREAKDOWN_PREFIXES)})
        stats = {
            key: mean_std([row.get(key) for row in rows])
            for key in (*SUMMARY_KEYS, *breakdown)
            if any(key in row for row in rows)
        }
        first = mine[0].speed
        out[variant] = VariantSummary(
            variant=variant,
            seeds=[a.seed for a in mine],
            stats=stats,
            **{key: getattr(first, key) for key in _SIZE_KEYS},
        )
    return out


@dataclass(frozen=True)
class Headline:
    """The issue's numbers. ``probe_accuracy_per_class`` and ``recon_mse_per_class``: the
    faithful arm (``per_class_eq4``, else ``per_class``, in the paper's regime: a regime run's
    own arm, or a default-scene run's ``regime`` block); ``probe_accuracy_class_agnostic``:
    the best label-free arm (highest mean probe among the arms on the class-agnostic
    detector), named in ``best_label_free_arm``, whose AP50, reconstruction MSE and scenes/s at
    batch 32 follow, and its margin over the raw-pixel floor. Training minutes of one seed: detector + SSDIR, mean over all arms. None:
    not run (or no finite value)."""

    probe_accuracy_per_class: float | None
    probe_accuracy_per_class_std: float | None
    recon_mse_per_class: float | None
    probe_accuracy_class_agnostic: float | None
    probe_accuracy_class_agnostic_std: float | None
    best_label_free_arm: str | None
    label_free_margin_over_raw_pixels: float | None
    ap50_class_agnostic: float | None
    recon_mse: float | None
    scenes_per_s_batch32: float | None
    train_minutes_one_seed: float


def _finite(summary: VariantSummary | None, key: str, std: bool = False) -> float | None:
    """A summary's mean (or std) of ``key``; None when the variant was not run or the value is
    not finite."""
    if summary is None:
        return None
    value = summary.std(key) if std else summary.mean(key)
    return value if math.isfinite(value) else None


@dataclass
class SSDIRBenchResult:
    """One benchmark run (or several pooled by :func:`merge_results`).

    ``figures``: ``{"<variant>-<name>": PNG bytes}`` for the first seed of every variant (not
    part of the results file); ``figure_files``: the PNG files written for them, once written.
    ``regime``: in a default-scene run, the faithful arm of the regime run
    (:func:`regime_block`), which the headline reports.
    """

    settings: SSDIRBenchSettings
    arms: list[SSDIRArm]
    dedup_ablation: list[AblationRow]
    machine: dict[str, Any]
    torch_threads_training: int
    seconds: float
    floors: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    figure_files: list[str] | None = None
    regime: dict[str, Any] | None = None

    @property
    def seeds(self) -> list[int]:
        return sorted({arm.seed for arm in self.arms})

    @property
    def summary(self) -> dict[str, VariantSummary]:
        return summarize(self.arms, self.settings.variants)

    @property
    def faithful(self) -> VariantSummary | None:
        """The faithful arm's summary: in a regime run, ``per_class_eq4`` else ``per_class``;
        None in other scenes (their per-class arms are not the paper's setting) or without."""
        if self.settings.scenes != _FAITHFUL_SCENES:
            return None
        summary = self.summary
        return next((summary[a] for a in _FAITHFUL_ARMS if a in summary), None)

    @property
    def headline(self) -> Headline:
        summary = self.summary
        faithful = self.faithful
        if faithful is not None:
            faithful_numbers = (
                _finite(faithful, "probe_accuracy"),
                _finite(faithful, "probe_accuracy", std=True),
                _finite(faithful, "recon_mse"),
            )
        else:
            block = self.regime or {}
            faithful_numbers = tuple(
                block.get(k) for k in ("probe_accuracy", "probe_accuracy_std", "recon_mse")
            )
        label_free = [
            v for name, v in summary.items()
            if ARMS[name][0] == "class_agnostic" and math.isfinite(v.mean("probe_accuracy"))
        ]  # fmt: skip
        best = max(label_free, key=lambda v: v.mean("probe_accuracy"), default=None)
        raw = (self.floors.get("raw_pixels") or {}).get("accuracy")
        best_probe = _finite(best, "probe_accuracy")
        return Headline(
            *faithful_numbers,
            probe_accuracy_class_agnostic=best_probe,
            probe_accuracy_class_agnostic_std=_finite(best, "probe_accuracy", std=True),
            best_label_free_arm=None if best is None else best.variant,
            label_free_margin_over_raw_pixels=(
                None if best_probe is None or raw is None else best_probe - raw
            ),
            ap50_class_agnostic=_finite(best, "ap50"),
            recon_mse=_finite(best, "recon_mse"),
            scenes_per_s_batch32=_finite(best, "scenes_per_s_batch32"),
            train_minutes_one_seed=mean_std([a.train_minutes for a in self.arms])[0],
        )

    def to_json(self) -> dict[str, Any]:
        """The results file: the headline's keys, ``seeds``, ``quick``, ``summary`` (per
        variant), ``arms``, ``dedup_ablation``, ``targets``, ``settings``, ``machine``,
        ``torch_threads_training``, ``seconds``, ``regime`` (None but in a default-scene run
        combined with a regime run) and, once written, ``figure_files``."""
        document = {
            **dataclasses.asdict(self.headline),
            "seeds": self.seeds,
            "quick": bool(self.settings.quick),
            "summary": {name: s.to_json() for name, s in self.summary.items()},
            "arms": [arm.to_json() for arm in self.arms],
            "dedup_ablation": [row.to_json() for row in self.dedup_ablation],
            "floors": self.floors,
            "arm_settings": {
                name: {
                    "detector": self.settings.arm_detector(name),
                    "ssdir_args": self.settings.arm_ssdir_args(name),
                }
                for name in self.summary
            },  # fmt: skip
            "targets": {k: {"op": op, "value": v} for k, (op, v) in TARGETS.items()},
            "settings": self.settings.to_json(),
            "machine": self.machine,
            "torch_threads_training": self.torch_threads_training,
            "seconds": self.seconds,
            "regime": self.regime,
        }
        if self.figure_files is not None:
            document["figure_files"] = list(self.figure_files)
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> SSDIRBenchResult:
        """A run from its results file (:meth:`to_json`); summaries and the headline are
        recomputed from the arms."""
        try:
            return cls(
                settings=SSDIRBenchSettings.from_json(document["settings"]),
                arms=[SSDIRArm.from_json(row) for row in document["arms"]],
                dedup_ablation=[AblationRow(**row) for row in document["dedup_ablation"]],
                machine=dict(document.get("machine") or {}),
                torch_threads_training=int(document["torch_threads_training"]),
                seconds=float(document["seconds"]),
                floors=dict(document.get("floors") or {}),
                figure_files=document.get("figure_files"),
                regime=document.get("regime"),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not an SSDIR results document: {err!r}") from err


def assemble_result(
    arms: Sequence[SSDIRArm],
    ablation: Sequence[SSDIRArm],
    settings: SSDIRBenchSettings,
    seconds: float,
    threads: int,
) -> SSDIRBenchResult:
    """The result of a run from its arms, the ablation's arms and its settings, on this
    machine."""
    return SSDIRBenchResult(
        settings=settings,
        arms=list(arms),
        dedup_ablation=[AblationRow.of(arm) for arm in ablation],
        machine=machine_info(),
        torch_threads_training=threads,
        seconds=seconds,
    )


def settings_blocking_merge(a: SSDIRBenchSettings, b: SSDIRBenchSettings) -> list[str]:
    """Names of the settings that differ between two runs and so forbid merging them: all but
    the seeds and the ablation modes."""

    def comparable(settings: SSDIRBenchSettings) -> dict[str, Any]:
        return {k: v for k, v in settings.to_json().items() if k not in _MERGEABLE_SETTINGS}

    first, second = comparable(a), comparable(b)
    return sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))


def merge_results(previous: SSDIRBenchResult, new: SSDIRBenchResult) -> SSDIRBenchResult:
    """One result from two runs of the same settings on different seeds (e.g. seed 0 first,
    then seeds 1 2): arms pooled, summaries recomputed, the ablation kept from whichever run
    has one, ``seconds`` summed. Raises ``ValueError`` if a setting other than the seeds /
    ablation modes differs, or if both runs have an arm of the same variant and seed."""
    differing = settings_blocking_merge(previous.settings, new.settings)
    if differing:
        raise ValueError(f"cannot merge SSDIR results run with different settings: {differing}")
    seen = {(a.variant, a.seed) for a in previous.arms}
    clash = sorted({(a.variant, a.seed) for a in new.arms} & seen)
    if clash:
        raise ValueError(f"both runs have arms of (variant, seed) {clash}")
    arms = sorted([*previous.arms, *new.arms], key=lambda a: (a.variant, a.seed))
    if previous.dedup_ablation and new.dedup_ablation:
        raise ValueError("both runs have a dedup ablation; merge runs where only one has it")
    settings = dataclasses.replace(
        new.settings,
        seeds=tuple(sorted({*previous.settings.seeds, *new.settings.seeds})),
        variants=tuple(dict.fromkeys([*previous.settings.variants, *new.settings.variants])),
        dedup_ablation=previous.settings.dedup_ablation or new.settings.dedup_ablation,
    )
    merged = assemble_result(
        arms, [], settings, previous.seconds + new.seconds, new.torch_threads_training
    )
    merged.dedup_ablation = list(previous.dedup_ablation or new.dedup_ablation)
    merged.floors = _merge_floors(previous.floors, new.floors)
    merged.regime = new.regime or previous.regime
    return merged


def regime_block(regime: SSDIRBenchResult, results_file: str) -> dict[str, Any]:
    """The faithful arm of a regime run, as a default-scene results file carries it (its
    ``regime`` key): ``results_file`` (where the whole run is), ``arm``, ``seeds``, the mean
    and std over seeds of the probe and reconstruction MSE, its detector's digit accuracy and
    AP50, training minutes, and the regime's floors (raw pixels, the arm's untrained encoder).
    Raises ``ValueError`` when ``regime`` is not a regime run with a per-class arm."""
    faithful = regime.faithful
    if faithful is None:
        raise ValueError(
            f"{results_file}: expected a regime run with a per-class arm {list(_FAITHFUL_ARMS)}, "
            f"got scenes {regime.settings.scenes!r} with arms {list(regime.summary)}"
        )
    floors = regime.floors
    untrained = (floors.get("untrained_encoder") or {}).get(faithful.variant) or {}
    block: dict[str, Any] = {
        "results_file": results_file, "arm": faithful.variant, "seeds": list(faithful.seeds),
    }  # fmt: skip
    for key in ("probe_accuracy", "recon_mse"):
        block[key] = _finite(faithful, key)
        block[f"{key}_std"] = _finite(faithful, key, std=True)
    for key in ("detector_label_accuracy", "detector_label_accuracy_train", "ap50",
                "train_minutes"):  # fmt: skip
        block[key] = _finite(faithful, key)
    block["raw_pixel_floor"] = (floors.get("raw_pixels") or {}).get("accuracy")
    block["untrained_encoder_floor"] = untrained.get("probe_accuracy")
    return block


def _merge_floors(previous: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Both runs' floors: the earlier raw-pixel probe (same scenes), untrained encoders of
    either run's arms."""
    merged = {**new, **previous}
    untrained = {
        **(new.get("untrained_encoder") or {}),
        **(previous.get("untrained_encoder") or {}),
    }
    if untrained:
        merged["untrained_encoder"] = untrained
    return merged
