"""SSDIR benchmark: arms (detector variant x what-encoder options) x seeds, floors, speed.

An *arm* (``--arms``; ``wherewhat.methods.ssdir.settings.ARMS``) is a detector variant
(class-agnostic, or one class per digit) and SSDIR's options on it: ``class_agnostic`` and
``per_class`` are the paper's per-cell what-encoder, ``per_class_eq4`` adds the paper's presence
(eq. 4), ``glimpse`` / ``glimpse_invariance`` / ``both_invariance`` read z_what from a crop at
each box (label-free), with or without the NT-Xent invariance term. Per seed, each detector
variant is trained once and shared by its arms; SSDIR is trained on it (frozen) and evaluated
on the test scenes: class-agnostic AP50 / AP50:95, reconstruction MSE, the Table-2 probe
(logistic regression on train-scene z_what, objects labelled at IoU >= 0.5, unmatched objects
counted) overall, per size bucket and per pyramid level, the per-class detector's own digit
accuracy, training minutes and validation curves, scenes/s at batch 1 and 32 (2 threads),
parameters and MACs. Floor rows: the probe on raw 16x16 pixels of the ground-truth boxes, and
each arm's untrained encoder (first seed). Optionally the de-duplication ablation.

Two scene settings (``--scenes``): ``default`` (128 px, digits of 12-64 px; configs/ssd/
default.yaml, per_class.yaml, configs/ssdir/default.yaml) and ``regime`` (256 px, digits of
28-112 px, at or above MNIST's resolution as in the paper; configs/ssd/regime.yaml,
configs/ssdir/regime.yaml, with the paper's reconstruction-to-KL ratio).

    .venv/bin/python benchmarks/ssdir.py --arms class_agnostic glimpse glimpse_invariance --seeds 0
    .venv/bin/python benchmarks/ssdir.py --arms glimpse_invariance --seeds 1 2 \
        --no-floors --merge-with benchmarks/results/ssdir.json        # add seeds to that run
    .venv/bin/python benchmarks/ssdir.py --scenes regime --arms per_class_eq4 --seeds 0
    .venv/bin/python benchmarks/ssdir.py --quick                   # < 3 min on 2 quiet cores

Trained detectors and SSDIRs are kept in ``--models-dir`` (runs/ssdir-bench) and reused by any
later command of the same settings, so a command can add arms or seeds without retraining what
exists. ``--merge-with`` pools the new arms with those of an earlier results file of the same
settings (seeds, arms and ablation modes aside) and rewrites the tables; the earlier run's
figures are kept, new arms add theirs. Run it on a quiet machine: timings under contention are
meaningless.

Writes benchmarks/results/ssdir[_regime].json and .md (``--quick``: ssdir_quick.*, so a quick
check never overwrites the full results) and the figures as ssdir[_regime]-<arm>-<name>.png.
The two settings' files are combined: ssdir.json carries the regime run's faithful arm in its
``regime`` block (the headline's ``probe_accuracy_per_class``), refreshed whenever either
setting is written (a regime run rewrites ssdir.json / .md with the new block, nothing else).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wherewhat.bench.tables import write_figures, write_results
from wherewhat.io import png_bytes
from wherewhat.methods.ssdir.experiment import run_ssdir_bench
from wherewhat.methods.ssdir.figures import probe_curves
from wherewhat.methods.ssdir.markdown import floor_warnings, ssdir_markdown
from wherewhat.methods.ssdir.records import (
    SSDIRBenchResult,
    merge_results,
    regime_block,
    settings_blocking_merge,
)
from wherewhat.methods.ssdir.settings import (
    ARMS,
    DEDUP_MODES,
    PRECISIONS,
    SIZE_EDGES,
    SSDIRBenchSettings,
)
from wherewhat.training.config_files import load_layered_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
MODELS_DIR = ROOT / "runs" / "ssdir-bench"
# scene setting -> the configs its settings come from
SCENE_CONFIGS = {
    "default": {
        "detector": ROOT / "configs" / "ssd" / "default.yaml",
        "detector_per_class": ROOT / "configs" / "ssd" / "per_class.yaml",
        "ssdir": ROOT / "configs" / "ssdir" / "default.yaml",
    },
    "regime": {
        "detector": ROOT / "configs" / "ssd" / "regime.yaml",
        "ssdir": ROOT / "configs" / "ssdir" / "regime.yaml",
    },
}
CONFIGS = SCENE_CONFIGS["default"]
# Handled by the benchmark itself (the variant, the frozen detector and its checkpoint).
_NOT_FROM_CONFIG = {"num_classes", "detector", "detector_checkpoint", "detector_args"}
_DATA_FROM_SETTINGS = {"n_train", "n_test", "batch_size", "val_fraction", "num_workers"}


def _init_args(section: Any) -> dict[str, Any]:
    return dict((section or {}).get("init_args") or {})


def _task_arguments(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config's network and task arguments in one flat mapping (the network's first), less
    what the benchmark sets itself."""
    task = _init_args(config.get("model"))
    network = _init_args(task.pop("model", None))
    return {k: v for k, v in {**network, **task}.items() if k not in _NOT_FROM_CONFIG}


def settings_from_configs(
    settings: SSDIRBenchSettings, configs: Mapping[str, Path] = CONFIGS
) -> tuple[SSDIRBenchSettings, list[str]]:
    """Fill detector / SSDIR / data arguments and epochs from the YAML ``configs`` (when
    present); returns the new settings and a line per config used."""
    used, changes = [], {}
    loaded = {k: load_layered_config(p) for k, p in configs.items() if p.is_file()}
    if "detector" in loaded:
        det = loaded["detector"]
        args = _task_arguments(det)
        other = loaded.get("detector_per_class")
        if other is not None and _task_arguments(other) != args:
            raise SystemExit(
                "configs disagree: the two detector configs must differ only in num_classes "
                f"({configs['detector'].name} vs {configs['detector_per_class'].name})"
            )
        data = _init_args(det.get("data"))
        changes.update(
            detector_args=args,
            data_args={k: v for k, v in data.items() if k not in _DATA_FROM_SETTINGS},
            n_train=int(data.get("n_train", settings.n_train)),
            n_test=int(data.get("n_test", settings.n_test)),
            batch_size=int(data.get("batch_size", settings.batch_size)),
            val_fraction=float(data.get("val_fraction", settings.val_fraction)),
            detector_epochs=int((det.get("trainer") or {}).get("max_epochs", 8)),
        )
        used.append(f"detector: {configs['detector'].relative_to(ROOT)}")
    if "ssdir" in loaded:
        cfg = loaded["ssdir"]
        args = _task_arguments(cfg)
        args.pop("dedup", None)  # the arms use nms; the ablation sets each mode
        trainer = cfg.get("trainer") or {}
        patience = None
        for callback in trainer.get("callbacks") or []:
            if str(callback.get("class_path", "")).endswith("EarlyStopping"):
                patience = int(_init_args(callback).get("patience", 3))
        changes.update(
            ssdir_args=args,
            ssdir_epochs=int(trainer.get("max_epochs", settings.ssdir_epochs)),
            early_stopping_patience=patience,
        )
        used.append(f"SSDIR: {configs['ssdir'].relative_to(ROOT)}")
    return dataclasses.replace(settings, **changes), used


def probe_curve_figure(result: SSDIRBenchResult) -> bytes | None:
    """PNG of the probe against SSDIR steps for each arm's first seed, with the raw-pixel
    floor; None when no arm measured the curve."""
    curves: dict[str, list] = {}
    for arm in sorted(result.arms, key=lambda a: a.seed):
        points = arm.metrics.get("ssdir_probe_curve")
        if points and arm.dedup == "nms" and arm.variant not in curves:
            curves[arm.variant] = points
    if not curves:
        return None
    raw = result.floors.get("raw_pixels")
    return png_bytes(probe_curves(curves, {"raw pixels": raw["accuracy"]} if raw else None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (< 3 min, quiet 2 cores)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    parser.add_argument(
        "--scenes",
        choices=list(SCENE_CONFIGS),
        default="default",
        help="default: 128-px scenes; regime: the paper's object sizes (256 px)",
    )
    parser.add_argument(
        "--arms",
        "--variants",
        dest="variants",
        nargs="+",
        choices=list(ARMS),
        default=None,
        help="default: class_agnostic per_class",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=MODELS_DIR,
        help="trained models kept here and reused by later runs of the same "
        "settings (default runs/ssdir-bench)",
    )
    parser.add_argument(
        "--no-floors",
        action="store_true",
        help="skip the floor rows (raw-pixel and untrained-encoder probes)",
    )
    parser.add_argument("--dedup-ablation", nargs="*", choices=list(DEDUP_MODES), default=None,
                        help="modes to compare on the first seed (none given: skip)")  # fmt: skip
    parser.add_argument("--detector-epochs", type=int, default=None)
    parser.add_argument("--ssdir-epochs", type=int, default=None)
    parser.add_argument("--detector-steps", type=int, default=None, help="max steps (overrides)")
    parser.add_argument("--ssdir-steps", type=int, default=None, help="max steps (overrides)")
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--probe-train-scenes", type=int, default=None)
    parser.add_argument("--no-configs", action="store_true", help="ignore configs/*.yaml")
    parser.add_argument("--progress", action="store_true", help="Lightning progress bars")
    parser.add_argument("--digits-root", type=Path, default=None,
                        help="folder of MNIST's four IDX files: scenes from the full MNIST "
                        "(default: the 5,000 embedded digits)")  # fmt: skip
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="training precision (default 32-true; bf16-mixed: autocast, "
                        "losses in float32, about 1.7-1.9x faster on CPUs with AMX)")  # fmt: skip
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--combine", action="store_true",
                        help="train nothing: put ssdir_regime.json's faithful arm into "
                        "ssdir.json (its regime block) and rewrite ssdir.md")  # fmt: skip
    parser.add_argument("--merge-with", type=Path, default=None,
                        help="an earlier results JSON of the same settings to add these seeds to")  # fmt: skip
    args = parser.parse_args(argv)
    if args.combine:
        regime_file = args.results_dir / "ssdir_regime.json"
        regime = _read_result(regime_file, "regime results")
        path = _combine(args.results_dir / "ssdir.json", regime, regime_file.name)
        print(f"rewrote {path} and its markdown with the regime run's faithful arm")
        return 0
    previous = None
    if args.merge_with is not None:
        previous = _read_result(args.merge_with, "--merge-with")

    settings = SSDIRBenchSettings.preset(
        "quick" if args.quick else "full", scenes=args.scenes, size_edges=SIZE_EDGES[args.scenes]
    )
    if not args.quick and not args.no_configs:
        settings, used = settings_from_configs(settings, SCENE_CONFIGS[args.scenes])
        for line in used:
            print(f"settings from {line}")
    overrides = {
        "seeds": tuple(args.seeds) if args.seeds else None,
        "variants": tuple(args.variants) if args.variants else None,
        "dedup_ablation": tuple(args.dedup_ablation or ()),  # not given: no ablation
        "detector_epochs": args.detector_epochs,
        "ssdir_epochs": args.ssdir_epochs,
        "detector_max_steps": args.detector_steps,
        "ssdir_max_steps": args.ssdir_steps,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "probe_train_scenes": args.probe_train_scenes,
        "progress_bar": args.progress or None,
        "precision": args.precision,
    }
    settings = dataclasses.replace(
        settings, **{k: v for k, v in overrides.items() if v is not None}
    )
    if args.digits_root is not None:
        if not args.digits_root.is_dir():
            raise SystemExit(f"--digits-root {args.digits_root}: not a folder (expected MNIST's "
                             "four IDX files in it)")  # fmt: skip
        data_args = {**settings.data_args, "digits_root": str(args.digits_root.resolve())}
        settings = dataclasses.replace(settings, data_args=data_args)
    if previous is not None:  # fail now, not after hours of training
        differing = settings_blocking_merge(previous.settings, settings)
        if differing:
            raise SystemExit(
                f"--merge-with {args.merge_with}: that run used other settings for {differing}"
            )
    result = run_ssdir_bench(
        settings=settings, log=lambda m: print(m, flush=True),
        models_dir=None if settings.quick else args.models_dir, floors=not args.no_floors,
    )  # fmt: skip

    name = "ssdir_quick" if settings.quick else "ssdir"
    if settings.scenes != "default":
        name = f"{name}_{settings.scenes}"
    figures, kept_files = result.figures, []
    if previous is not None:  # an arm's figures: from the first run that had the arm
        old_arms = set(previous.settings.variants)
        figures = {k: v for k, v in figures.items() if k.rsplit("-", 1)[0] not in old_arms}
        result = merge_results(previous, result)
        kept_files = list(previous.figure_files or [])
    curves = probe_curve_figure(result)
    if curves is not None:  # drawn from every arm's first seed, merged runs included
        figures["probe-curves"] = curves
        kept_files = [f for f in kept_files if f != f"{name}-probe-curves.png"]
    result.figure_files = kept_files + (
        write_figures(name, figures, args.results_dir) if figures else []
    )
    regime_file = args.results_dir / "ssdir_regime.json"
    if not settings.quick and settings.scenes == "default" and regime_file.exists():
        result.regime = regime_block(_read_result(regime_file, "regime results"), regime_file.name)
    markdown = ssdir_markdown(result)
    json_path, md_path = write_results(name, result.to_json(), markdown, args.results_dir)
    print(markdown)
    print(f"wrote {json_path}, {md_path} and {len(figures)} figures")
    for line in floor_warnings(result):
        print(line, file=sys.stderr)
    default_file = args.results_dir / "ssdir.json"
    if not settings.quick and settings.scenes == "regime" and default_file.exists():
        _combine(default_file, result, json_path.name)
        print(f"rewrote {default_file} and its markdown with this run's faithful arm")
    return 0


def _combine(default_file: Path, regime: SSDIRBenchResult, regime_name: str) -> Path:
    """Rewrite the default-scene results (JSON and markdown) with the faithful arm of the
    regime run (written as ``regime_name``) as their ``regime`` block; nothing else changes."""
    combined = _read_result(default_file, "default-scene results")
    try:
        block = regime_block(regime, regime_name)
    except ValueError as err:  # not a regime run with a per-class arm: named in the message
        raise SystemExit(str(err)) from err
    combined.regime = block
    write_results(default_file.stem, combined.to_json(), ssdir_markdown(combined),
                  default_file.parent)  # fmt: skip
    return default_file


def _read_result(path: Path, what: str) -> SSDIRBenchResult:
    """An SSDIR results file, or exit naming the file and what it should have been."""
    try:
        return SSDIRBenchResult.from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise SystemExit(f"{what} {path}: not a readable SSDIR results JSON ({err})") from err


if __name__ == "__main__":
    sys.exit(main())
