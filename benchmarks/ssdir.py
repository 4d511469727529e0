"""SSDIR benchmark: detector variant (class-agnostic, per class) x seeds, every metric, speed.

Each arm trains the SSD detector, then SSDIR on it (detector frozen), and evaluates on the
test scenes: class-agnostic AP50 / AP50:95, reconstruction MSE, the Table-2 probe (logistic
regression on train-scene z_what, objects labelled at IoU >= 0.5, unmatched objects counted),
training minutes, inference scenes/s at batch 1 and 32 (SSDIR forward, torch, 2 threads),
parameters and MACs. Then the de-duplication ablation (nms / soft / none) on the first seed.
The pipeline is :func:`wherewhat.methods.ssdir.experiment.run_ssdir_bench` (the tour runs its
quick version); it returns typed records, written here with ``to_json()``.

    .venv/bin/python benchmarks/ssdir.py                  # full: 2 variants x 3 seeds + ablation
    .venv/bin/python benchmarks/ssdir.py --seeds 0        # one seed
    .venv/bin/python benchmarks/ssdir.py --quick          # < 3 min on 2 quiet cores
    .venv/bin/python benchmarks/ssdir.py --seeds 1 2 --dedup-ablation \
        --merge-with benchmarks/results/ssdir.json        # add seeds to an earlier run

Full settings take the model, data and epoch settings from configs/ssd/default.yaml,
configs/ssd/per_class.yaml (must agree except num_classes) and configs/ssdir/default.yaml when
they exist (``--no-configs`` to use the built-in defaults). Run it on a quiet machine: timings under contention are meaningless.

``--merge-with`` pools the new arms with those of an earlier results file of the same settings
(seeds and ablation modes aside) and rewrites the tables; the earlier run's figures are kept.

Writes benchmarks/results/ssdir.json and .md (``--quick``: ssdir_quick.*, so a quick check
never overwrites the full results) and the figures as ssdir[_quick]-<variant>-<name>.png.
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
from wherewhat.methods.ssdir.experiment import run_ssdir_bench
from wherewhat.methods.ssdir.markdown import ssdir_markdown
from wherewhat.methods.ssdir.records import (
    SSDIRBenchResult,
    merge_results,
    settings_blocking_merge,
)
from wherewhat.methods.ssdir.settings import DEDUP_MODES, VARIANTS, SSDIRBenchSettings
from wherewhat.training.config_files import load_layered_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
CONFIGS = {
    "detector": ROOT / "configs" / "ssd" / "default.yaml",
    "detector_per_class": ROOT / "configs" / "ssd" / "per_class.yaml",
    "ssdir": ROOT / "configs" / "ssdir" / "default.yaml",
}
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


def settings_from_configs(settings: SSDIRBenchSettings) -> tuple[SSDIRBenchSettings, list[str]]:
    """Fill detector / SSDIR / data arguments and epochs from the YAML configs (when present);
    returns the new settings and a line per config used."""
    used, changes = [], {}
    loaded = {k: load_layered_config(p) for k, p in CONFIGS.items() if p.is_file()}
    if "detector" in loaded:
        det = loaded["detector"]
        args = _task_arguments(det)
        other = loaded.get("detector_per_class")
        if other is not None and _task_arguments(other) != args:
            raise SystemExit(
                "configs disagree: the two detector configs must differ only in num_classes "
                f"({CONFIGS['detector'].name} vs {CONFIGS['detector_per_class'].name})"
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
        used.append(f"detector: {CONFIGS['detector'].relative_to(ROOT)}")
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
        used.append(f"SSDIR: {CONFIGS['ssdir'].relative_to(ROOT)}")
    return dataclasses.replace(settings, **changes), used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (< 3 min, quiet 2 cores)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None)
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
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--merge-with", type=Path, default=None,
                        help="an earlier results JSON of the same settings to add these seeds to")  # fmt: skip
    args = parser.parse_args(argv)
    previous = None
    if args.merge_with is not None:
        try:
            previous = SSDIRBenchResult.from_json(json.loads(args.merge_with.read_text()))
        except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
            raise SystemExit(
                f"--merge-with {args.merge_with}: not a readable results JSON ({err})"
            ) from err

    settings = SSDIRBenchSettings.preset("quick" if args.quick else "full")
    if not args.quick and not args.no_configs:
        settings, used = settings_from_configs(settings)
        for line in used:
            print(f"settings from {line}")
    overrides = {
        "seeds": tuple(args.seeds) if args.seeds else None,
        "variants": tuple(args.variants) if args.variants else None,
        "dedup_ablation": None if args.dedup_ablation is None else tuple(args.dedup_ablation),
        "detector_epochs": args.detector_epochs,
        "ssdir_epochs": args.ssdir_epochs,
        "detector_max_steps": args.detector_steps,
        "ssdir_max_steps": args.ssdir_steps,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "probe_train_scenes": args.probe_train_scenes,
        "progress_bar": args.progress or None,
    }
    settings = dataclasses.replace(
        settings, **{k: v for k, v in overrides.items() if v is not None}
    )
    if previous is not None:  # fail now, not after hours of training
        differing = settings_blocking_merge(previous.settings, settings)
        if differing:
            raise SystemExit(
                f"--merge-with {args.merge_with}: that run used other settings for {differing}"
            )
    result = run_ssdir_bench(settings=settings, log=lambda m: print(m, flush=True))

    name = "ssdir_quick" if settings.quick else "ssdir"
    figures = result.figures
    if previous is not None:
        result = merge_results(previous, result)  # figures: the earlier run's first seed
        result.figure_files = previous.figure_files or []
        figures = {}
    if figures:
        result.figure_files = write_figures(name, figures, args.results_dir)
    markdown = ssdir_markdown(result)
    json_path, md_path = write_results(name, result.to_json(), markdown, args.results_dir)
    print(markdown)
    print(f"wrote {json_path}, {md_path} and {len(figures)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
