"""What one SSDIR benchmark run does: :class:`SSDIRBenchSettings` and its presets.

The full preset follows ``configs/ssd/default.yaml`` (and ``per_class.yaml``) and
``configs/ssdir/default.yaml``; ``benchmarks/ssdir.py`` fills it from them, so keep the
defaults here in step with those files.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ARMS", "DEDUP_MODES", "DETECTORS", "INVARIANCE_WEIGHT", "PRECISIONS", "SIZE_EDGES",
    "SSDIRBenchSettings",
]  # fmt: skip

# detector variant -> SSDDetector.num_classes
DETECTORS: dict[str, int] = {"class_agnostic": 1, "per_class": 10}
# Weight of the NT-Xent term in the invariance arms. The loss is -ELBO + weight x NT-Xent, and
# the -ELBO of a 128-px scene is ~1e4, so a weight of order 1 leaves the term unheard. A
# 400-step pilot on one detector (probe / recon MSE) gave 0.879 / 0.0041 without the term,
# 0.886 / 0.0049 at 100, 0.929 / 0.0047 at 1,000 and 0.927 / 0.0059 at 10,000.
INVARIANCE_WEIGHT = 1000.0
# arm -> (detector variant, SSDIR arguments over the run's ``ssdir_args``). ``class_agnostic``
# and ``per_class`` are the paper's encoder (``cells``) on either detector; ``per_class_eq4``
# adds the paper's presence (eq. 4); the ``glimpse`` / ``both`` arms read z_what from a crop of
# the image at each box (label-free: class-agnostic detector), with or without the invariance
# term.
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "class_agnostic": ("class_agnostic", {}),
    "per_class": ("per_class", {}),
    "per_class_eq4": ("per_class", {"present_from": "max_object"}),
    "glimpse": ("class_agnostic", {"what_input": "glimpse"}),
    "glimpse_invariance": (
        "class_agnostic", {"what_input": "glimpse", "invariance_weight": INVARIANCE_WEIGHT}
    ),
    "both_invariance": (
        "class_agnostic", {"what_input": "both", "invariance_weight": INVARIANCE_WEIGHT}
    ),
}  # fmt: skip
DEDUP_MODES = ("nms", "soft", "none")
PRECISIONS = ("32-true", "bf16-mixed")
# Fields that are tuples here and lists in a results file.
_TUPLE_FIELDS = (
    "variants", "seeds", "dedup_ablation", "latency_timing", "throughput_timing", "size_edges",
    "probe_curve_scenes",
)  # fmt: skip
# Probe size buckets (edges of the matched digit's longer box side, px) per scene setting: the
# default scenes' digits have 8-45-px boxes, the regime's 20-84 px.
SIZE_EDGES: dict[str, tuple[float, ...]] = {
    "default": (12.0, 20.0, 30.0, 45.0),
    "regime": (30.0, 45.0, 60.0, 75.0),
}


@dataclass
class SSDIRBenchSettings:
    """Everything one benchmark run does; :meth:`preset` gives ``full``, ``quick`` and the full
    tour's ``medium``.

    ``variants`` are the arms (:data:`ARMS`: a detector variant and SSDIR arguments); arms
    with the same detector variant share its detector per seed. ``scenes`` names the data
    setting (``default``: 128-px scenes; ``regime``: the paper's object sizes) in tables.

    Steps: ``*_epochs`` bound training unless ``*_max_steps`` > 0 (then steps rule). With
    ``validate`` the best checkpoint by the monitored value is evaluated (detector: val AP50,
    SSDIR: val loss with early stopping after ``early_stopping_patience`` epochs); without, the
    last weights. ``detector_args`` (``SSDDetector`` and ``SSDTask`` arguments in one mapping),
    ``ssdir_args`` (``SSDIR`` and ``SSDIRTask`` arguments) and ``data_args``
    (``ScatterMNISTDataModule``) override the defaults of what the pipeline builds.
    """

    quick: bool = False
    scenes: str = "default"
    variants: tuple[str, ...] = ("class_agnostic", "per_class")
    seeds: tuple[int, ...] = (0, 1, 2)
    dedup_ablation: tuple[str, ...] = DEDUP_MODES
    ablation_variant: str = "class_agnostic"
    n_train: int = 10000
    n_test: int = 1000
    val_fraction: float = 0.1
    batch_size: int = 32
    detector_epochs: int = 8
    detector_max_steps: int = -1
    ssdir_epochs: int = 10
    ssdir_max_steps: int = -1
    validate: bool = True
    early_stopping_patience: int | None = 3
    probe_train_scenes: int | None = None
    min_iou: float = 0.5
    size_edges: tuple[float, ...] = SIZE_EDGES["default"]
    # (train, test) scenes of the probe measured after every SSDIR epoch; None: no curve
    probe_curve_scenes: tuple[int, int] | None = None
    detector_args: dict[str, Any] = field(default_factory=dict)
    ssdir_args: dict[str, Any] = field(default_factory=dict)
    data_args: dict[str, Any] = field(default_factory=dict)
    threads: int = 2
    latency_timing: tuple[int, int] = (3, 20)  # (warmup, repeats) at batch 1
    throughput_timing: tuple[int, int] = (2, 8)  # at batch 32
    figure_scenes: int = 4
    glimpses_shown: int = 24
    tsne_points: int = 2000
    progress_bar: bool = False
    # training precision: "32-true" or "bf16-mixed" (autocast; losses stay float32)
    precision: str = "32-true"

    @classmethod
    def preset(cls, name: str, **changes: Any) -> SSDIRBenchSettings:
        """``full`` (the benchmark), ``quick`` (the tour, well under 3 minutes on 2 quiet cores)
        or ``medium`` (``wherewhat tour --full``: both variants, one seed, ~20 minutes; untested
        at the time of writing)."""
        if name == "full":
            settings = cls(probe_curve_scenes=(1000, 300))
        elif name == "quick":
            settings = cls(
                quick=True, variants=("class_agnostic",), seeds=(0,), dedup_ablation=(),
                n_train=480, n_test=64, val_fraction=0.0, batch_size=16,
                detector_max_steps=120, ssdir_max_steps=50, validate=False,
                detector_args={"warmup_steps": 20, "lr": 3e-3}, ssdir_args={"lr": 2e-3},
                latency_timing=(1, 5), throughput_timing=(1, 2), tsne_points=400,
            )  # fmt: skip
        elif name == "medium":
            settings = cls(
                variants=("class_agnostic", "per_class"), seeds=(0,), dedup_ablation=(),
                n_train=3000, n_test=300, val_fraction=0.0, batch_size=32,
                detector_max_steps=500, ssdir_max_steps=200, validate=False,
                detector_args={"warmup_steps": 50}, ssdir_args={"lr": 1e-3},
                latency_timing=(2, 10), throughput_timing=(1, 4), tsne_points=1000,
            )  # fmt: skip
        else:
            raise ValueError(f"unknown preset {name!r}: expected 'full', 'quick' or 'medium'")
        return dataclasses.replace(settings, **changes)

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> SSDIRBenchSettings:
        """The settings as a results file stores them (``dataclasses.asdict``, lists for
        tuples)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"SSDIR settings: unknown field(s) {unknown}")
        return cls(
            **{
                k: tuple(v) if k in _TUPLE_FIELDS and v is not None else v
                for k, v in values.items()
            }
        )

    def to_json(self) -> dict[str, Any]:
        """The settings as a results file stores them: plain JSON data (tuples -> lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def arm_detector(self, arm: str) -> str:
        """The detector variant ``arm`` trains on."""
        return ARMS[arm][0]

    def arm_ssdir_args(self, arm: str) -> dict[str, Any]:
        """SSDIR (and task) arguments of ``arm``: the run's, then the arm's own."""
        return {**self.ssdir_args, **ARMS[arm][1]}

    def check(self) -> None:
        unknown = [v for v in (*self.variants, self.ablation_variant) if v not in ARMS]
        if unknown:
            raise ValueError(f"unknown SSDIR arm(s) {unknown}; choose from {list(ARMS)}")
        bad = [m for m in self.dedup_ablation if m not in DEDUP_MODES]
        if bad:
            raise ValueError(f"unknown dedup mode(s) {bad}; choose from {list(DEDUP_MODES)}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.n_train < self.batch_size or self.n_test < 1:
            raise ValueError(
                f"need n_train >= batch_size and n_test >= 1, got {self.n_train}, "
                f"{self.batch_size}, {self.n_test}"
            )
        if self.validate and self.val_fraction <= 0:
            raise ValueError("validate=True needs val_fraction > 0 (validation scenes)")
