"""The SSDIR benchmark pipeline, shared by ``benchmarks/ssdir.py`` and the tour's "ssdir" section.

One *arm* = a detector variant (class-agnostic "object" or one class per digit) and a seed:
train the SSD detector, train SSDIR on it (detector frozen), evaluate every number of the
issue (:func:`~wherewhat.methods.ssdir.evaluation.evaluate_ssdir`: class-agnostic AP50 / AP50:95,
reconstruction MSE, the Table-2 probe at IoU >= 0.5 with unmatched counts), time the training,
and measure inference speed (SSDIR forward = detector + encoders + decoder + merge, eval mode,
torch, 2 threads, batch 1 and 32), parameters and MACs. Plus the de-duplication ablation
(SSDIR trained with ``nms`` / ``soft`` / ``none`` on the first seed's class-agnostic detector).

:func:`run_ssdir_bench` runs it: ``quick=True`` is the tour's few-minute version (tiny scene
counts, a few hundred steps, one seed, the class-agnostic variant, no ablation); the default
full settings follow ``configs/ssd_scatter_mnist*.yaml`` and ``configs/ssdir_scatter_mnist.yaml``
(keep :class:`SSDIRBenchSettings` in step with them). Training uses ``lightning.Trainer``
directly (no run directories); the full mode validates every epoch, keeps the best checkpoint
(detector: val AP50; SSDIR: val loss, with early stopping) and evaluates that.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wherewhat.training.quiet import quiet_lightning

__all__ = [
    "VARIANTS",
    "SSDIRBenchSettings",
    "assemble_result",
    "merge_results",
    "settings_blocking_merge",
    "run_ssdir_bench",
    "ssdir_markdown",
    "summary_rows",
]

# detector variant -> SSDDetector.num_classes
VARIANTS: dict[str, int] = {"class_agnostic": 1, "per_class": 10}
DEDUP_MODES = ("nms", "soft", "none")
# Per-arm numbers averaged over seeds in the summary.
SUMMARY_KEYS = (
    "ap50", "ap", "recon_mse", "probe_accuracy", "probe_precision", "probe_recall", "probe_f1",
    "test_unmatched_fraction", "test_gt_missed", "test_duplicates", "detector_minutes",
    "ssdir_minutes", "train_minutes", "scenes_per_s_batch1", "scenes_per_s_batch32",
    "detector_label_accuracy",
)  # fmt: skip
# The targets (default 128-px scenes), shown next to the results.
TARGETS = {
    "ap50_class_agnostic": (">=", 0.95),
    "probe_accuracy_per_class": (">=", 0.979),
    "probe_accuracy_class_agnostic": (">=", 0.95),
    "recon_mse": ("<=", 0.0121),
    "scenes_per_s_batch32": (">=", 100.0),
    "train_minutes_one_seed": ("<=", 45.0),
}


@dataclass
class SSDIRBenchSettings:
    """Everything one benchmark run does; :meth:`preset` gives ``full``, ``quick`` and the full
    tour's ``medium``.

    Steps: ``*_epochs`` bound training unless ``*_max_steps`` > 0 (then steps rule). With
    ``validate`` the best checkpoint by the monitored value is evaluated (detector: val AP50,
    SSDIR: val loss with early stopping after ``early_stopping_patience`` epochs); without, the
    last weights. ``detector_args`` / ``ssdir_args`` / ``data_args`` override the task / data
    module constructor arguments (``SSDTask``, ``SSDIRTask``, ``ScatterMNISTDataModule``).
    """

    quick: bool = False
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

    @classmethod
    def preset(cls, name: str, **changes: Any) -> SSDIRBenchSettings:
        """``full`` (the benchmark), ``quick`` (the tour, well under 3 minutes on 2 quiet cores)
        or ``medium`` (``wherewhat tour --full``: both variants, one seed, ~20 minutes; untested
        at the time of writing)."""
        if name == "full":
            settings = cls()
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

    def check(self) -> None:
        unknown = [v for v in (*self.variants, self.ablation_variant) if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown detector variant(s) {unknown}; choose from {list(VARIANTS)}")
        bad = [m for m in self.dedup_ablation if m not in DEDUP_MODES]
        if bad:
            raise ValueError(f"unknown dedup mode(s) {bad}; choose from {list(DEDUP_MODES)}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if self.n_train < self.batch_size or self.n_test < 1:
            raise ValueError(
                f"need n_train >= batch_size and n_test >= 1, got {self.n_train}, "
                f"{self.batch_size}, {self.n_test}"
            )
        if self.validate and self.val_fraction <= 0:
            raise ValueError("validate=True needs val_fraction > 0 (validation scenes)")


# -- training ---------------------------------------------------------------------------------


# SSDIR's frozen detector is in eval mode on purpose; Lightning warns about such modules.
_EXPECTED_WARNINGS = (r"Found \d+ module\(s\) in eval mode",)


def _fit(
    task: Any,
    data: Any,
    *,
    epochs: int,
    max_steps: int,
    validate: bool,
    monitor: str,
    mode: str,
    patience: int | None,
    progress: bool,
    root: Path,
) -> dict[str, Any]:
    """Train ``task`` on ``data``; with ``validate`` load the best checkpoint by ``monitor``.
    Returns ``seconds`` (wall time of ``fit``, validation included), ``cpu_seconds`` (this
    process, all threads: a busy machine inflates wall time, not this), ``steps``, ``epochs``,
    ``best`` (monitored value or None)."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from wherewhat.training.callbacks import NonFiniteLossGuard

    callbacks: list[Any] = [NonFiniteLossGuard()]
    checkpoint = None
    if validate:
        checkpoint = ModelCheckpoint(
            dirpath=root, monitor=monitor, mode=mode, save_top_k=1, filename="best"
        )
        callbacks.append(checkpoint)
        if patience:
            callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=patience))
    steps = max_steps if max_steps and max_steps > 0 else -1
    with quiet_lightning(_EXPECTED_WARNINGS):
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_epochs=None if steps > 0 else epochs,
            max_steps=steps, logger=False, enable_checkpointing=validate, callbacks=callbacks,
            enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
            limit_val_batches=1.0 if validate else 0, default_root_dir=root,
        )  # fmt: skip
        start, cpu = time.perf_counter(), time.process_time()
        trainer.fit(task, datamodule=data)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    best = None
    if checkpoint is not None and checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)
        task.load_state_dict(state["state_dict"])
        score = checkpoint.best_model_score
        best = None if score is None else float(score)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "best": best,
    }


def _datamodule(settings: SSDIRBenchSettings) -> Any:
    from wherewhat.data.scatter import ScatterMNISTDataModule

    data = ScatterMNISTDataModule(
        n_train=settings.n_train, n_test=settings.n_test, batch_size=settings.batch_size,
        val_fraction=settings.val_fraction, **settings.data_args,
    )  # fmt: skip
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    return data


def _train_detector(variant: str, seed: int, data: Any, s: SSDIRBenchSettings, root: Path):
    from lightning.pytorch import seed_everything

    from wherewhat.tasks.ssd import SSDTask

    seed_everything(seed, verbose=False)
    args = {"image_size": data.config.image_size, "in_channels": data.config.channels}
    task = SSDTask(**{**args, **s.detector_args, "num_classes": VARIANTS[variant]})
    info = _fit(
        task, data, epochs=s.detector_epochs, max_steps=s.detector_max_steps,
        validate=s.validate, monitor="val/map_50", mode="max", patience=None,
        progress=s.progress_bar, root=root / f"detector-{variant}-{seed}",
    )  # fmt: skip
    return task.model.eval(), info


def _train_ssdir(detector: Any, dedup: str, seed: int, data: Any, s: SSDIRBenchSettings, root):
    from lightning.pytorch import seed_everything

    from wherewhat.methods.ssdir.task import SSDIRTask

    seed_everything(seed, verbose=False)
    task = SSDIRTask(detector=detector, **{**s.ssdir_args, "dedup": dedup})
    info = _fit(
        task, data, epochs=s.ssdir_epochs, max_steps=s.ssdir_max_steps, validate=s.validate,
        monitor="val/loss", mode="min", patience=s.early_stopping_patience,
        progress=s.progress_bar, root=root / f"ssdir-{dedup}-{seed}-{id(detector)}",
    )  # fmt: skip
    return task.model.eval(), info


# -- measuring --------------------------------------------------------------------------------


def _test_batch(data: Any, count: int) -> dict[str, Any]:
    from wherewhat.data.scatter import collate_scenes

    count = min(count, len(data.test_set))
    return collate_scenes([data.test_set[i] for i in range(count)])


def _speed_and_size(model: Any, images: Any, s: SSDIRBenchSettings) -> dict[str, Any]:
    """Scenes/s at batch 1 and 32 (eval forward, torch, ``s.threads`` threads), parameters,
    MACs per scene on these scenes, and objects rendered per scene."""
    import torch

    from wherewhat.bench import count_macs, count_parameters, measure_latency_torch

    batch1 = measure_latency_torch(model, images[:1], s.threads, *s.latency_timing)
    batch32 = measure_latency_torch(model, images, s.threads, *s.throughput_timing)
    with torch.no_grad():
        rendered = len(model(images)["image_index"]) / len(images)
    # MACs depend on the number of rendered objects: count them on a few real scenes.
    few = images[: min(8, len(images))]
    macs = count_macs(model, few)["macs"] / len(few)
    detector_macs = count_macs(model.detector, images[:1])["macs"]
    return {
        "threads": s.threads,
        "speed_batch_size": len(images),
        "scenes_per_s_batch1": batch1.items_per_s,
        "scenes_per_s_batch32": batch32.items_per_s,
        "latency_ms_batch1": batch1.median_ms,
        "latency_ms_batch32": batch32.median_ms,
        "params": count_parameters(model),
        "params_trainable": sum(p.numel() for p in model.trainable_parameters()),
        "params_detector": count_parameters(model.detector),
        "macs_per_scene": macs,
        "macs_detector_per_scene": detector_macs,
        "rendered_per_scene": rendered,
    }


def _evaluate(model: Any, data: Any, seed: int, s: SSDIRBenchSettings):
    from torch.utils.data import Subset

    from wherewhat.methods.ssdir.evaluation import evaluate_ssdir

    train = data.train_set
    if s.probe_train_scenes is not None and s.probe_train_scenes < len(train):
        train = Subset(train, range(s.probe_train_scenes))
    return evaluate_ssdir(
        model, train, data.test_set, min_iou=s.min_iou, probe_seeds=(seed,),
        batch_size=s.batch_size, keep_images=s.figure_scenes,
    )  # fmt: skip


def _figures(model: Any, evaluation: Any, data: Any, s: SSDIRBenchSettings, seed: int) -> dict:
    from wherewhat.io import png_bytes
    from wherewhat.methods.ssdir.figures import ssdir_figures

    count = min(s.figure_scenes, len(data.test_set))
    batch = _test_batch(data, count)
    figures = ssdir_figures(
        model, batch["image"], batch["boxes"], batch["labels"],
        z_what=evaluation.test_objects.flat_z_what(), labels=evaluation.test_matches.labels,
        glimpse_count=s.glimpses_shown, seed=seed, tsne_points=s.tsne_points,
    )  # fmt: skip
    return {name: png_bytes(fig) for name, fig in figures.items()}


def _arm(
    variant: str,
    seed: int,
    detector: Any,
    detector_info: dict,
    dedup: str,
    data: Any,
    s: SSDIRBenchSettings,
    root: Path,
    images: Any,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], Any, Any]:
    model, ssdir_info = _train_ssdir(detector, dedup, seed, data, s, root)
    log(f"{variant} seed {seed} dedup {dedup}: SSDIR trained in {ssdir_info['seconds']:.0f} s")
    start = time.perf_counter()
    evaluation = _evaluate(model, data, seed, s)
    eval_seconds = time.perf_counter() - start
    speed = _speed_and_size(model, images, s)
    m = evaluation.metrics
    log(
        f"{variant} seed {seed} dedup {dedup}: AP50 {m['ap50']:.3f}, probe "
        f"{m['probe_accuracy']:.3f}, recon MSE {m['recon_mse']:.4f}, "
        f"{speed['scenes_per_s_batch32']:.0f} scenes/s at batch {speed['speed_batch_size']}"
    )
    arm = {
        "variant": variant,
        "seed": seed,
        "dedup": dedup,
        **m,
        **speed,
        "detector_minutes": detector_info["seconds"] / 60,
        "ssdir_minutes": ssdir_info["seconds"] / 60,
        "train_minutes": (detector_info["seconds"] + ssdir_info["seconds"]) / 60,
        "train_cpu_minutes": (detector_info["cpu_seconds"] + ssdir_info["cpu_seconds"]) / 60,
        "eval_seconds": eval_seconds,
        "detector_steps": detector_info["steps"],
        "detector_best_val_map50": detector_info["best"],
        "ssdir_steps": ssdir_info["steps"],
        "ssdir_best_val_loss": ssdir_info["best"],
    }
    return arm, model, evaluation


# -- the run ----------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    clean = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not clean:
        return math.nan, math.nan
    std = float(np.std(clean, ddof=1)) if len(clean) > 1 else 0.0
    return float(np.mean(clean)), std


def _summaries(arms: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> dict[str, dict]:
    out = {}
    for variant in variants:
        mine = [a for a in arms if a["variant"] == variant and a["dedup"] == "nms"]
        row: dict[str, Any] = {"variant": variant, "seeds": [a["seed"] for a in mine]}
        for key in SUMMARY_KEYS:
            if any(key in a for a in mine):
                row[key], row[f"{key}_std"] = _mean_std([a.get(key) for a in mine])
        for key in ("params", "params_trainable", "params_detector", "macs_per_scene",
                    "macs_detector_per_scene"):  # fmt: skip
            row[key] = mine[0][key]
        out[variant] = row
    return out


def run_ssdir_bench(
    quick: bool = False,
    settings: SSDIRBenchSettings | None = None,
    log: Callable[[str], None] = print,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the SSDIR benchmark (module docstring); returns a JSON-able dict plus ``figures``
    (``{"<variant>-<name>": PNG bytes}`` for the first seed of every variant).

    Top-level keys (the issue's): ``probe_accuracy_per_class``, ``probe_accuracy_class_agnostic``
    (means over seeds) and their ``_std``, ``ap50_class_agnostic``, ``recon_mse`` (class-agnostic
    arm), ``scenes_per_s_batch32`` (class-agnostic arm), ``train_minutes_one_seed`` (detector +
    SSDIR, mean over all arms), ``seeds``; a variant not run gives None. Details: ``summary``
    (per variant, mean and std over seeds), ``arms`` (every arm), ``dedup_ablation``,
    ``settings``, ``targets``, ``machine``, ``seconds``.
    """
    import torch

    s = settings or SSDIRBenchSettings.preset("quick" if quick else "full")
    s.check()
    start = time.perf_counter()
    arms: list[dict[str, Any]] = []
    figures: dict[str, bytes] = {}
    ablation: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ssdir-bench-", dir=work_dir) as tmp:
        root = Path(tmp)
        data = _datamodule(s)
        log(f"data: {len(data.train_set)} train / {len(data.test_set)} test scenes")
        images = _test_batch(data, 32)["image"]
        kept_detector = None
        for variant in s.variants:
            for seed in s.seeds:
                detector, det_info = _train_detector(variant, seed, data, s, root)
                log(f"{variant} seed {seed}: detector trained in {det_info['seconds']:.0f} s")
                arm, model, evaluation = _arm(
                    variant, seed, detector, det_info, "nms", data, s, root, images, log
                )
                arms.append(arm)
                if seed == s.seeds[0]:
                    for name, png in _figures(model, evaluation, data, s, seed).items():
                        figures[f"{variant}-{name}"] = png
                    if variant == s.ablation_variant:
                        kept_detector = (detector, det_info, arm)
                del model, evaluation
        if s.dedup_ablation:
            if kept_detector is None:  # the ablation variant was not among the arms
                detector, det_info = _train_detector(s.ablation_variant, s.seeds[0], data, s, root)
                kept_detector = (detector, det_info, None)
            detector, det_info, nms_arm = kept_detector
            for dedup in s.dedup_ablation:
                if dedup == "nms" and nms_arm is not None:
                    ablation.append(nms_arm)
                    continue
                arm, _, _ = _arm(
                    s.ablation_variant, s.seeds[0], detector, det_info, dedup, data, s, root,
                    images, log,
                )  # fmt: skip
                ablation.append(arm)
    result = assemble_result(
        arms,
        ablation,
        dataclasses.asdict(s),
        seconds=time.perf_counter() - start,
        threads=torch.get_num_threads(),
    )
    result["figures"] = figures
    return result


# Arm keys kept in the de-duplication ablation table.
_ABLATION_KEYS = (
    "dedup", "ap50", "ap", "recon_mse", "probe_accuracy", "test_unmatched_fraction",
    "test_duplicates", "rendered_per_scene", "ssdir_minutes",
)  # fmt: skip
# Settings that may differ between runs whose arms are merged (they do not change an arm).
_MERGEABLE_SETTINGS = {"seeds", "dedup_ablation", "progress_bar"}


def assemble_result(
    arms: Sequence[Mapping[str, Any]],
    ablation: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    seconds: float,
    threads: int,
) -> dict[str, Any]:
    """The results dict of :func:`run_ssdir_bench` (without ``figures``) from its arms, the
    ablation arms and the settings (``dataclasses.asdict`` of :class:`SSDIRBenchSettings`)."""
    from wherewhat.bench.machine import machine_info

    variants = list(settings["variants"])
    summary = _summaries(arms, variants)

    def top(variant: str, key: str) -> float | None:
        value = summary.get(variant, {}).get(key)
        return None if value is None or not math.isfinite(value) else value

    return {
        "probe_accuracy_per_class": top("per_class", "probe_accuracy"),
        "probe_accuracy_per_class_std": top("per_class", "probe_accuracy_std"),
        "probe_accuracy_class_agnostic": top("class_agnostic", "probe_accuracy"),
        "probe_accuracy_class_agnostic_std": top("class_agnostic", "probe_accuracy_std"),
        "ap50_class_agnostic": top("class_agnostic", "ap50"),
        "recon_mse": top("class_agnostic", "recon_mse"),
        "scenes_per_s_batch32": top("class_agnostic", "scenes_per_s_batch32"),
        "train_minutes_one_seed": _mean_std([a["train_minutes"] for a in arms])[0],
        "seeds": sorted({int(a["seed"]) for a in arms}),
        "quick": bool(settings["quick"]),
        "summary": summary,
        "arms": list(arms),
        "dedup_ablation": [{k: a[k] for k in _ABLATION_KEYS} for a in ablation],
        "targets": {k: {"op": op, "value": v} for k, (op, v) in TARGETS.items()},
        "settings": dict(settings),
        "machine": machine_info(),
        "torch_threads_training": threads,
        "seconds": seconds,
    }


def settings_blocking_merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Names of the settings (``dataclasses.asdict`` or as stored in a results file) that differ
    between two runs and so forbid merging them: all but the seeds and the ablation modes."""
    import json

    def comparable(settings: Mapping[str, Any]) -> dict[str, Any]:
        plain = json.loads(json.dumps(dict(settings)))  # tuples -> lists, as stored
        return {k: v for k, v in plain.items() if k not in _MERGEABLE_SETTINGS}

    first, second = comparable(a), comparable(b)
    return sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))


def merge_results(previous: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """One results dict from two runs of the same settings on different seeds (e.g. seed 0
    first, then seeds 1 2): arms pooled, summaries recomputed, the ablation kept from whichever
    run has one, ``seconds`` summed. Raises ``ValueError`` if a setting other than the seeds /
    ablation modes differs, or if both runs have an arm of the same variant and seed."""
    differing = settings_blocking_merge(previous["settings"], new["settings"])
    if differing:
        raise ValueError(f"cannot merge SSDIR results run with different settings: {differing}")
    seen = {(a["variant"], a["seed"]) for a in previous["arms"]}
    clash = sorted({(a["variant"], a["seed"]) for a in new["arms"]} & seen)
    if clash:
        raise ValueError(f"both runs have arms of (variant, seed) {clash}")
    arms = sorted([*previous["arms"], *new["arms"]], key=lambda a: (a["variant"], a["seed"]))
    if previous["dedup_ablation"] and new["dedup_ablation"]:
        raise ValueError("both runs have a dedup ablation; merge runs where only one has it")
    settings = dict(new["settings"])
    settings["seeds"] = sorted({*previous["settings"]["seeds"], *new["settings"]["seeds"]})
    settings["dedup_ablation"] = (
        previous["settings"]["dedup_ablation"] or new["settings"]["dedup_ablation"]
    )
    merged = assemble_result(
        arms, [], settings, previous["seconds"] + new["seconds"], new["torch_threads_training"]
    )
    merged["dedup_ablation"] = list(previous["dedup_ablation"] or new["dedup_ablation"])
    return merged


# -- presentation -----------------------------------------------------------------------------

_ARM_COLUMNS = [
    ("variant", "detector"), ("seed", "seed"), ("ap50", "AP50"), ("ap", "AP50:95"),
    ("probe_accuracy", "probe acc"), ("probe_f1", "probe F1"),
    ("test_unmatched", "unmatched obj"), ("test_gt_missed", "missed digits"),
    ("recon_mse", "recon MSE"), ("train_minutes", "train min"),
    ("scenes_per_s_batch1", "scenes/s b1"), ("scenes_per_s_batch32", "scenes/s b32"),
    ("params", "params"), ("macs_per_scene", "MACs/scene"),
]  # fmt: skip


def summary_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for variant, row in result["summary"].items():

        def pm(key: str, row=row) -> str:
            mean, std = row.get(key), row.get(f"{key}_std")
            if mean is None or not math.isfinite(mean):
                return "-"
            return f"{mean:.4g} ± {std:.2g}" if len(row["seeds"]) > 1 else f"{mean:.4g}"

        rows.append({
            "detector": variant, "seeds": len(row["seeds"]), "AP50": pm("ap50"),
            "AP50:95": pm("ap"), "probe accuracy": pm("probe_accuracy"),
            "probe precision": pm("probe_precision"), "probe recall": pm("probe_recall"),
            "probe F1": pm("probe_f1"), "unmatched (test)": pm("test_unmatched_fraction"),
            "recon MSE": pm("recon_mse"), "train min": pm("train_minutes"),
            "scenes/s b1": pm("scenes_per_s_batch1"), "scenes/s b32": pm("scenes_per_s_batch32"),
            "params (M)": row["params"] / 1e6, "MMACs / scene": row["macs_per_scene"] / 1e6,
        })  # fmt: skip
    return rows


def ssdir_markdown(result: Mapping[str, Any]) -> str:
    """The benchmark's markdown: summary per variant, targets, every arm, dedup ablation."""
    from wherewhat.bench.tables import format_markdown_table, target_rows

    s = result["settings"]
    machine = result.get("machine", {})
    lines = [
        f"# SSDIR on scattered MNIST ({'quick' if result['quick'] else 'full'} run)",
        "",
        f"{s['n_train']:,} train / {s['n_test']:,} test scenes (128 px, 1-9 digits of 12-64 px), "
        f"seeds {result['seeds']}. AP is class-agnostic COCO AP of SSDIR's objects; the probe is "
        f"a logistic regression on train-scene z_what, objects labelled by their best "
        f"ground-truth IoU >= {s['min_iou']} (unmatched objects left out and counted); "
        "reconstruction MSE per pixel on [0, 1]; speed = SSDIR forward (detector + encoders + "
        f"decoder + merge), torch, {s['threads']} threads. Training minutes: detector + SSDIR "
        "(validation included). Mean ± sample std over seeds.",
        "",
    ]
    summary = summary_rows(result)
    lines.append(format_markdown_table(summary, list(summary[0])))
    targets = target_rows(result["targets"], result)
    lines += ["", format_markdown_table(targets, ["quantity", "target", "measured", "met"])]
    lines += ["", "Every arm:", "", format_markdown_table(result["arms"], _ARM_COLUMNS)]
    if result["dedup_ablation"]:
        lines += [
            "",
            "De-duplication ablation (SSDIR trained and rendered with each mode; probe and AP "
            "always on threshold + NMS objects):",
            "",
            format_markdown_table(result["dedup_ablation"], list(result["dedup_ablation"][0])),
        ]
    lines += [
        "",
        f"Machine: {machine.get('cpu', '?')}, load average "
        f"{machine.get('load_average_1_5_15min', '?')}. "
        f"Run time {result['seconds'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)
