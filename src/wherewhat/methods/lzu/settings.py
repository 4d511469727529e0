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
# The targets, shown next to the results. Gains are LZU-fixed minus uniform: in the
# band on every seed; outside the band and on large objects as the mean over seeds.
TARGETS: dict[str, tuple[str, float]] = {
    "roundtrip_max_err_px": ("<=", 1e-3),
    "coverage": (">=", 1.0),
    "ap50_small_band_gain_fixed_every_seed": (">=", 0.03),
    "ap50_outside_gain_fixed": (">=", -0.01),
    "ap50_large_gain_fixed": (">=", -0.01),
    "small_iou_gain_fixed": (">", 0.0),
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
    / bandwidth, size weighting, unzoom); ``arm_args`` to one arm only.

    One head grid for every arm: ``detection_args["finest_cell_px"]`` fixes the finest SSD cell
    in scene pixels (16: stride 4 at the 1x input, 8 at 2x) and ``segmentation_args
    ["logit_cell_px"]`` the logit cell (4: output stride 1 at 1x, 2 at 2x), so the arms
    differ only in the pixels their backbone sees. ``seeds_2x``: the seeds the (4-5x dearer)
    ``uniform_2x`` upper bound runs on. ``curve_steps``: extra evaluations during training
    (learning curves); the final one is at the last step.
    """

    quick: bool = False
    tasks: tuple[TaskName, ...] = TASKS
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: tuple[int, ...] = (0, 1, 2)
    seeds_2x: tuple[int, ...] = (0,)
    data: Knobs = field(
        default_factory=lambda: {"with_masks": True, "n_train": 1000, "n_test": 250}
    )  # fmt: skip
    n_train: int = 1000
    n_test: int = 250
    input_size: tuple[int, int] = (128, 256)
    batch_size: int = 16
    segmentation_batch_size: int = 8  # its step costs ~2.4x a detection step at equal batch
    eval_batch_size: int = 8
    channels_last: bool = True  # NHWC convolutions: 1.2x (detection) - 1.5x (segmentation)
    detection_steps: int = 720
    segmentation_steps: int = 720
    curve_steps: tuple[int, ...] = (240,)
    steps_2x_fraction: float = 1.0  # uniform_2x trains this fraction of the steps (same data)
    # The paper's saliency: KDE over all boxes alike, amplitude 1, bandwidth 32, FWHM 13.
    warp_args: Knobs = field(
        default_factory=lambda: {"amplitude": 1.0, "bandwidth": 32.0, "fwhm": 13.0}
    )
    # The adaptive arm trains on ground truth made to look like detections: centres moved by
    # up to 40 px, 30 % of the small boxes (<= 24 px) dropped.
    arm_args: dict[str, Knobs] = field(
        default_factory=lambda: {
            "lzu_adaptive": {"jitter": 40.0, "drop": 0.3, "drop_max_side": 24.0}
        }
    )
    # LZU-fixed re-run on the first seed with these (task, argument changes): the ablations.
    # The saliency weighted by inverse box size, the area (box-filter) unzoom, both; for
    # segmentation also the logits unzoomed straight to the label pixels.
    ablations: tuple[tuple[TaskName, Knobs], ...] = (
        ("detection", {"size_power": 1.0}),
        ("detection", {"unzoom": "area"}),
        ("detection", {"size_power": 1.0, "unzoom": "area"}),
        ("segmentation", {"unzoom": "area"}),
        ("segmentation", {"unzoom_to": "labels"}),
    )
    # Anchors from 8 px: a third of the boxes are ink boxes of <= 12 px.
    detection_args: Knobs = field(
        default_factory=lambda: {"finest_cell_px": 16, "anchor_range_px": (8.0, 140.0)}
    )
    segmentation_args: Knobs = field(default_factory=lambda: {"logit_cell_px": 4})
    threads: int = 2
    # (warm-up, repeats) per measured step, also the repeats of the inverse's timing: medians
    # of 20 moved by 10 % between two runs on this machine, hence more.
    latency_timing: tuple[int, int] = (5, 60)
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
                data={"with_masks": True, "n_train": 96, "n_test": 24},
                n_train=96, n_test=24, batch_size=8, segmentation_batch_size=8, eval_batch_size=8,
                detection_steps=12, segmentation_steps=8, curve_steps=(6,), steps_2x_fraction=0.5,
                detection_args={"finest_cell_px": 16, "warmup_steps": 4},
                segmentation_args={"logit_cell_px": 4, "warmup_steps": 4},
                latency_timing=(1, 5), ablations=(),
            )  # fmt: skip
        else:
            raise ValueError(f"unknown preset {name!r}: expected 'full' or 'quick'")
        return dataclasses.replace(settings, **changes)

    def task_args(self, task: TaskName) -> Knobs:
        """``detection_args`` or ``segmentation_args``."""
        return self.detection_args if task == "detection" else self.segmentation_args

    def batch(self, task: TaskName) -> int:
        """Training batch size of ``task`` (the same for every arm)."""
        return self.batch_size if task == "detection" else self.segmentation_batch_size

    def steps(self, task: TaskName) -> int:
        """Training steps of ``task`` at the base input size."""
        return self.detection_steps if task == "detection" else self.segmentation_steps

    def runs_on(self, arm: str, seed: int) -> bool:
        """Whether ``arm`` is trained on ``seed`` (``uniform_2x`` only on ``seeds_2x``)."""
        return ARMS[arm][1] == 1 or seed in self.seeds_2x

    def check(self) -> None:
        bad = [a for a in self.arms if a not in ARMS]
        if bad:
            raise ValueError(f"unknown arm(s) {bad}; choose from {list(ARMS)}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; choose from {list(TASKS)}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        bad = [a for a in self.arm_args if a not in ARMS]
        if bad:
            raise ValueError(f"arm_args for unknown arm(s) {bad}; choose from {list(ARMS)}")
        if self.n_train > self.data.get("n_train", 0) or self.n_test > self.data.get("n_test", 0):
            raise ValueError(
                f"n_train / n_test ({self.n_train}, {self.n_test}) exceed the generated splits "
                f"({self.data.get('n_train')}, {self.data.get('n_test')})"
            )
        if self.n_train < max(self.batch_size, self.segmentation_batch_size):
            raise ValueError(f"n_train={self.n_train} is smaller than a training batch")
