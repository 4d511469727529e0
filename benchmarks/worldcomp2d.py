"""Face-landmark benchmark: WorldComp2D (with and without refiner) against two baselines.

On the same faces, photo-disjoint split, 256 px crops, augmentation and data path (every photo
decoded once, crops and views cut on tensors), each model trains from scratch: WorldComp2D's
three stages run the reference's schedule (configs: 2,000 / 1,000 / 1,000 epochs), each capped
by its share of ``--budget-minutes`` (default 68; 66 / 12 / 22 %, what a stage leaves goes to
the next); each baseline then gets WorldComp2D's recorded training minutes (or
``--baseline-minutes``). Then: parameters, MACs, NME / FR@10 / AUC@10 (inter-ocular, original
pixels, every validation face), batch-1 faces/s from a face crop to landmarks in ONNX Runtime
(1 and 2 threads) and PyTorch (1 thread), training minutes and TFLOP, each run's step time as a
fraction of the measured peak, whether the refiner earns its place on the default path, ratios
to each baseline, the issue's targets, and figures (predictions on validation faces, cumulative
error curves, validation NME while training, a 2-D embedding of WorldComp2D's view codes). The
pipeline is :func:`wherewhat.methods.worldcomp2d.experiment.run_landmark_bench`.

Trained models are kept in ``--trained-dir`` (default runs/worldcomp2d-bench, ``--quick``:
runs/worldcomp2d-bench-quick): one checkpoint + JSON per training run (WorldComp2D: per stage),
with the settings that decided the training and their fingerprint. A later invocation loads a
saved model trained with the same settings instead of training it; one saved with other
settings stops the run with the file and the differences (``--retrain`` replaces it). So the
benchmark runs as commands of at most 90 minutes, and the final one evaluates and times every
model in one process:

    .venv/bin/python benchmarks/worldcomp2d.py --models worldcomp2d --train-only       # <= 68 min
    .venv/bin/python benchmarks/worldcomp2d.py --models heatmap_baseline --train-only  # same time
    .venv/bin/python benchmarks/worldcomp2d.py --models pfld_baseline --train-only     # same time
    .venv/bin/python benchmarks/worldcomp2d.py --models worldcomp2d --train-only \
        --ablations jitter_iid pairs_4 box_noise                                       # ablations
    .venv/bin/python benchmarks/worldcomp2d.py --ablations jitter_iid pairs_4 box_noise \
        --encoder-curve

The last reuses every model, fits the encoder-curve probes, evaluates, writes the results and
the release files (``--release-dir``, default artifacts/landmarks: the shipped WorldComp2D and
the baselines and the ablation variants, weights only, with their fingerprints; the
``box_noise`` variant is the one for photos, see benchmarks/landmarks_on_photos.py).
``--quick``: a few steps per run on 40
faces, everything else the same.

Every invocation must get the same training options (``--budget-minutes``, ``--max-steps``,
``--max-epochs``, ``--threads``, ``--faces-root``, configs), else the fingerprints differ. An
interrupted WorldComp2D resumes at its first unsaved stage. The fingerprint does not cover the
code: after changing a model or task, pass ``--retrain``. Model, data and optimiser settings
come from configs/worldcomp2d/{default,localizer,refiner}.yaml and
configs/landmark_baselines/{default,pfld}.yaml (a delta merged over the file its ``base:``
names, as ``wherewhat fit`` does; of their trainer sections only WorldComp2D's ``max_epochs``,
the schedule, is used). Run it on a quiet machine: timings under contention are meaningless.

Writes benchmarks/results/worldcomp2d.json and .md (``--quick``: worldcomp2d_quick.*, so a quick
check never overwrites the full results) and the figures as worldcomp2d[_quick]-<name>.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from wherewhat.bench.tables import write_figures, write_results
from wherewhat.errors import ConfigError
from wherewhat.methods.worldcomp2d.experiment import run_landmark_bench
from wherewhat.methods.worldcomp2d.markdown import landmark_markdown, training_markdown
from wherewhat.methods.worldcomp2d.settings import (
    ABLATIONS,
    BASELINES,
    STAGES,
    LandmarkBenchSettings,
)
from wherewhat.training.config_files import load_layered_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
CONFIGS = {
    "encoder": ROOT / "configs" / "worldcomp2d" / "default.yaml",
    "localizer": ROOT / "configs" / "worldcomp2d" / "localizer.yaml",
    "refiner": ROOT / "configs" / "worldcomp2d" / "refiner.yaml",
    "heatmap_baseline": ROOT / "configs" / "landmark_baselines" / "default.yaml",
    "pfld_baseline": ROOT / "configs" / "landmark_baselines" / "pfld.yaml",
}
# Set by the benchmark itself: the stage and the chaining of stages.
_NOT_FROM_CONFIG = {"stage", "init_from"}


def _init_args(section: Any) -> dict[str, Any]:
    return dict((section or {}).get("init_args") or {})


def runs_from_configs() -> tuple[dict[str, dict[str, dict[str, Any]]], str]:
    """Task and data init arguments per training run, from the configs (the task's hold the
    network's spec); and the faces root (which all configs must share, as they must share the
    split)."""
    runs, roots, splits = {}, set(), set()
    for run, path in CONFIGS.items():
        config = load_layered_config(path)
        model = {k: v for k, v in _init_args(config.get("model")).items()
                 if k not in _NOT_FROM_CONFIG}  # fmt: skip
        data = _init_args(config.get("data"))
        roots.add(str(data.pop("root", "../shared/data/faces68")))
        splits.add((data.get("val_fraction"), data.get("split_seed"), data.get("max_faces")))
        runs[run] = {"model": model, "data": data}
        if run in STAGES:  # WorldComp2D's schedule; the baselines fill their budget
            runs[run]["epochs"] = int((config.get("trainer") or {})["max_epochs"])
    if len(roots) != 1 or len(splits) != 1:
        raise SystemExit(
            f"configs disagree on the faces or the split (root {sorted(roots)}, "
            f"val_fraction / split_seed / max_faces {sorted(map(str, splits))}); every model "
            "must see the same faces"
        )
    return runs, roots.pop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 steps per run on 40 faces")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="WorldComp2D's time cap (default 68), shared by its 3 stages, each "
                        "running the configs' schedule if it fits")  # fmt: skip
    parser.add_argument("--baseline-minutes", type=float, default=None,
                        help="each baseline's budget (default: WorldComp2D's recorded training "
                        "minutes, so it must be trained first)")  # fmt: skip
    parser.add_argument("--ablations", nargs="*", choices=sorted(ABLATIONS), default=None,
                        help="WorldComp2D variants to train and score (they need the "
                        "benchmarked WorldComp2D trained)")  # fmt: skip
    parser.add_argument(
        "--encoder-curve",
        action="store_true",
        help="fit a short localizer probe on each encoder snapshot",
    )
    parser.add_argument("--release-dir", type=Path, default=None,
                        help="write release files of the evaluated models here (default "
                        "artifacts/landmarks for a full run, none for --quick)")  # fmt: skip
    parser.add_argument("--models", nargs="+", choices=["worldcomp2d", *BASELINES], default=None)
    parser.add_argument("--faces-root", default=None, help="default: the configs' data.root")
    parser.add_argument("--max-steps", type=int, default=None, help="steps per run (no budget)")
    parser.add_argument("--max-epochs", type=int, default=None, help="epochs per run (overrides "
                        "the calibrated ones; the budget still caps the time)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training")
    parser.add_argument("--progress", action="store_true", help="Lightning progress bars")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--trained-dir", type=Path, default=None,
                        help="saved trained models, reused when their settings match (default "
                        "runs/worldcomp2d-bench, --quick: runs/worldcomp2d-bench-quick)")  # fmt: skip
    parser.add_argument("--retrain", action="store_true",
                        help="train the selected --models again, replacing their saved runs")  # fmt: skip
    parser.add_argument("--train-only", action="store_true",
                        help="train (or find) and save the selected --models; no evaluation")  # fmt: skip
    args = parser.parse_args(argv)

    runs, root = runs_from_configs()
    settings = LandmarkBenchSettings.preset(
        "quick" if args.quick else "full", runs=runs, faces_root=root
    )
    if not Path(settings.faces_root).is_absolute():
        settings.faces_root = str((ROOT / settings.faces_root).resolve())
    overrides = {
        "budget_minutes": args.budget_minutes,
        "models": tuple(args.models) if args.models else None,
        "faces_root": args.faces_root,
        "max_steps": args.max_steps,
        "max_epochs": args.max_epochs,
        "threads": args.threads,
        "progress_bar": args.progress or None,
        "baseline_minutes": args.baseline_minutes,
        "ablations": tuple(args.ablations) if args.ablations else None,
        "encoder_curve": args.encoder_curve or None,
    }
    settings = LandmarkBenchSettings(
        **{**settings.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
    )
    for run, path in CONFIGS.items():
        print(f"settings of {run} from {path.relative_to(ROOT)}")
    name = "worldcomp2d_quick" if settings.quick else "worldcomp2d"
    default_dir = "worldcomp2d-bench-quick" if settings.quick else "worldcomp2d-bench"
    trained_dir = args.trained_dir or ROOT / "runs" / default_dir
    command = "python benchmarks/worldcomp2d.py " + " ".join(argv or sys.argv[1:])
    release_dir = args.release_dir
    if release_dir is None and not settings.quick:
        release_dir = ROOT / "artifacts" / "landmarks"
    try:
        result = run_landmark_bench(
            settings,
            log=lambda m: print(m, flush=True),
            trained_dir=trained_dir,
            retrain=args.retrain,
            train_only=args.train_only,
            release_dir=release_dir,
            command=command.strip(),
        )
    except ConfigError as error:  # e.g. a saved model trained with other settings
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.train_only:
        print(training_markdown(result.training))
        print(f"saved in {trained_dir}; {result.seconds / 60:.1f} min")
        return 0

    data = result.to_dict()
    if result.figures:
        data["figure_files"] = write_figures(name, result.figures, args.results_dir)
    markdown = landmark_markdown(result, command=command.strip())
    json_path, md_path = write_results(name, data, markdown, args.results_dir)
    print(markdown)
    print(f"wrote {json_path}, {md_path} and {len(result.figures)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
