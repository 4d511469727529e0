"""What one run of the LZU benchmark does: its arms, tasks, targets and
:class:`LZUBenchSettings` (presets ``full`` and ``quick``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from wherewhat.methods.lzu.zoomed import SaliencyKind

__all__ = ["ARMS", "TARGETS", "TASKS", "Knobs", "LZUBenchSettings", "TaskName"]

TaskName = Literal["detection", "segmentation"]
# Keyword arguments for the constructors of an arm's network and task (mixed value types).
Knobs = dict[str, Any]

# arm -> (saliency kind, input scale relative to settings.input_size)
ARMS: dict[str, tuple[SaliencyKind, int]] = {
    "uniform": ("uniform", 1),
    "lzu_fixed": ("fixed", 1),
    "lzu_adaptive": ("adaptive", 1),
    "uniform_2x": ("uniform", 2),
}
TASKS: tuple[TaskName, ...] = ("detection", "segmentation")
# The targets, shown next to the results.
TARGETS: dict[str, tuple[str, float]] = {
    "roundtrip_max_err_px": ("<=", 1e-3),
    "coverage": (">=", 1.0),
    "ap50_small_gain_fixed": (">=", 0.03),
    "miou_gain_fixed": (">", 0.0),
    "inverse_speedup_1d_vs_tile": (">=", 20.0),
    "overhead_fraction": ("<=", 0.10),
}


@dataclass
class LZUBenchSettings:
    """Everything one benchmark run does; :meth:`preset` gives ``full`` and ``quick``.

    ``data`` overrides :func:`~wherewhat.methods.lzu.street.street_scene_config` (``n_train`` /
    ``n_test`` there are the cached split sizes; ``n_train`` / ``n_test`` here take the first
    scenes of them). ``detection_args`` / ``segmentation_args`` override any constructor
    argument of that task's network or LightningModule (each goes where it is declared, see
    :mod:`wherewhat.methods.lzu.arms`); ``warp_args`` apply to both (grid, FWHM, KDE amplitude
    / bandwidth, jitter).
    """

    quick: bool = False
    tasks: tuple[TaskName, ...] = TASKS
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: tuple[int, ...] = (0, 1, 2)
    data: Knobs = field(
        default_factory=lambda: {
            "min_digit_size": 8, "max_digit_size": 128, "with_masks": True,
            "n_train": 1000, "n_test": 250,
        }
    )  # fmt: skip
    n_train: int = 1000
    n_test: int = 250
    input_size: tuple[int, int] = (128, 256)
    batch_size: int = 16
    eval_batch_size: int = 8
    detection_steps: int = 240
    segmentation_steps: int = 160
    steps_2x_fraction: float = 1.0  # uniform_2x trains this fraction of the steps (same data)
    warp_args: Knobs = field(default_factory=dict)
    # LZU-fixed re-run on the first seed with these (task, argument changes): the note's
    # ablations. Detection: a stronger zoom (amplitude 4), the non-separable warp;
    # segmentation: logits unzoomed straight to the label pixels.
    ablations: tuple[tuple[TaskName, Knobs], ...] = (
        ("detection", {"amplitude": 4.0}),
        ("detection", {"separable": False}),
        ("segmentation", {"unzoom_to": "labels"}),
    )
    detection_args: Knobs = field(default_factory=dict)
    segmentation_args: Knobs = field(default_factory=dict)
    threads: int = 2
    latency_timing: tuple[int, int] = (3, 20)  # (warm-up, repeats) per measured step
    inverse_map_size: tuple[int, int] = (152, 240)
    figure_scene: int = 0
    progress_bar: bool = False
    cache_root: str | None = None

    @classmethod
    def preset(cls, name: str, **changes: Any) -> LZUBenchSettings:
        """``full`` (the benchmark) or ``quick`` (< 3 minutes on 2 quiet cores)."""
        if name == "full":
            settings = cls()
        elif name == "quick":
            settings = cls(
                quick=True, seeds=(0,),
                data={"min_digit_size": 8, "max_digit_size": 128, "with_masks": True,
                      "n_train": 96, "n_test": 24},
                n_train=96, n_test=24, batch_size=8, eval_batch_size=8,
                detection_steps=12, segmentation_steps=8, steps_2x_fraction=0.5,
                detection_args={"warmup_steps": 4}, segmentation_args={"warmup_steps": 4},
                latency_timing=(1, 5), ablations=(),
            )  # fmt: skip
        else:
            raise ValueError(f"unknown preset {name!r}: expected 'full' or 'quick'")
        return dataclasses.replace(settings, **changes)

    def task_args(self, task: TaskName) -> Knobs:
        """``detection_args`` or ``segmentation_args``."""
        return self.detection_args if task == "detection" else self.segmentation_args

    def steps(self, task: TaskName) -> int:
        """Training steps of ``task`` at the base input size."""
        return self.detection_steps if task == "detection" else self.segmentation_steps

    def check(self) -> None:
        bad = [a for a in self.arms if a not in ARMS]
        if bad:
            raise ValueError(f"unknown arm(s) {bad}; choose from {list(ARMS)}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; choose from {list(TASKS)}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if self.n_train > self.data.get("n_train", 0) or self.n_test > self.data.get("n_test", 0):
            raise ValueError(
                f"n_train / n_test ({self.n_train}, {self.n_test}) exceed the generated splits "
                f"({self.data.get('n_train')}, {self.data.get('n_test')})"
            )
        if self.n_train < self.batch_size:
            raise ValueError(f"n_train={self.n_train} < batch_size={self.batch_size}")
