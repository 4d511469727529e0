"""Spatial Prediction benchmark: SimCLR / BYOL with and without SP at equal budget, on CPU.

Arms (each pre-trains from scratch, then probes the frozen backbone; see
:mod:`wherewhat.methods.spatial_prediction.experiment` for the pipeline):

* SimCLR and SimCLR + SP (lambda 0.5), seeds 0 1 2;
* BYOL and BYOL + SP, seed 0;
* on SimCLR seed 0: SP at lambda 0.1 and 1 (``simclr_sp_l0.1``, ``simclr_sp_l1``) and with
  12-px instead of 16-px local views (``simclr_sp_s12``);
* random init: the untrained network of every seed present, through the same probes: the
  floor of every table. An arm is *valid* only if its linear probe is >= random init + 25
  points; a gain over a base arm below that bar is not reported (a banner says so);
* landmark probe (``--faces``, off by default): SimCLR and SimCLR + SP pre-trained on
  68-point face crops (no labels), ridge regression from frozen features to the landmarks, NME
  on held-out photos, valid only when it beats the untrained backbone's NME.

Every arm reports linear-probe and k-NN accuracy, accuracy under corruptions, the "where"
read-out (SP error on held-out view pairs, 2x2 / 3x3 patch re-ordering), time per epoch, FLOPs
per step and the fraction of the machine's peak, and its k-NN learning curve.

The arms run ``--parallel`` at a time (default 2: a pair base / base + SP side by side, one
process and one torch thread per core, no loader workers, same seed and data order). Long
benchmarks run as several commands whose results merge (same settings, other arms / seeds)::

    .venv/bin/python benchmarks/spatial_prediction.py --quick            # every part, tiny
    .venv/bin/python benchmarks/spatial_prediction.py --arms simclr simclr_sp --seeds 0 1 2
    .venv/bin/python benchmarks/spatial_prediction.py --arms byol byol_sp --seeds 0 \
        --merge-with benchmarks/results/spatial_prediction.json
    .venv/bin/python benchmarks/spatial_prediction.py --arms simclr_sp_l0.1 simclr_sp_l1 \
        simclr_sp_s12 --seeds 0 --merge-with benchmarks/results/spatial_prediction.json

Run it on a quiet machine: the time-per-epoch overhead of SP is measured here, and timings
under contention are meaningless. Writes benchmarks/results/spatial_prediction.json and .md
(``--quick``: spatial_prediction_quick.*, so a quick check never overwrites the full results)
and the figures as spatial_prediction[_quick]-<name>.png (``--results-dir`` for elsewhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from wherewhat.bench.tables import write_figures, write_results
from wherewhat.methods.spatial_prediction.experiment import run_bench
from wherewhat.methods.spatial_prediction.markdown import bench_markdown, validity_banner
from wherewhat.methods.spatial_prediction.settings import ARM_CHOICES, BenchSettings

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run of every part")
    parser.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                        help=f"run these arms on every --seeds seed (choices: "
                        f"{' '.join(ARM_CHOICES)}; other lambdas / sizes as simclr_sp_l<lambda>"
                        "_s<size>); default: the plan in the docstring")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="SimCLR seeds (0 1 2)")
    parser.add_argument("--byol-seeds", type=int, nargs="*", default=None, help="default 0")
    parser.add_argument("--lambda-sweep", type=float, nargs="*", default=None,
                        help="SimCLR lambdas on the first seed (default 0 0.1 0.5 1)")  # fmt: skip
    parser.add_argument("--local-size-sweep", type=int, nargs="*", default=None,
                        help="SimCLR + SP local view sizes on the first seed (default 12)")  # fmt: skip
    parser.add_argument("--sp-lambda", type=float, default=None, help="the SP arms' lambda")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--width", type=int, default=None, help="backbone width (default 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default=None,
                        help="training precision (default: the preset's)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=None,
                        help="loader workers (default 1; 0 when --parallel > 1)")  # fmt: skip
    parser.add_argument("--parallel", type=int, default=2,
                        help="arms at a time, one process each (default 2; 1: in this process)")  # fmt: skip
    parser.add_argument("--merge-with", type=Path, default=None, metavar="RESULTS_JSON",
                        help="pool with an earlier results file of the same settings (other "
                        "seeds / arms); keyed by (arm, seed), this run wins")  # fmt: skip
    parser.add_argument("--faces", action="store_true",
                        help="also run the landmark probe (face arms, after the CIFAR arms)")  # fmt: skip
    parser.add_argument("--face-seeds", type=int, nargs="*", default=None, help="default 0 1 2")
    parser.add_argument("--face-epochs", type=int, default=None)
    parser.add_argument("--cifar", type=Path, default=SHARED / "cifar10" / "cifar10_subset.npz")
    parser.add_argument("--faces-root", type=Path, default=SHARED / "faces68")
    parser.add_argument("--progress", action="store_true", help="Lightning progress bars")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    settings = BenchSettings.preset("quick" if args.quick else "full")
    overrides = {
        "cifar_npz": str(args.cifar),
        "faces_root": str(args.faces_root) if args.faces else None,
        "arms": tuple(args.arms) if args.arms else None,
        "seeds": tuple(args.seeds) if args.seeds else None,
        "byol_seeds": None if args.byol_seeds is None else tuple(args.byol_seeds),
        "face_seeds": None if args.face_seeds is None else tuple(args.face_seeds),
        "lambda_sweep": None if args.lambda_sweep is None else tuple(args.lambda_sweep),
        "sp_local_size_sweep": None
        if args.local_size_sweep is None
        else tuple(args.local_size_sweep),
        "sp_lambda": args.sp_lambda,
        "epochs": args.epochs,
        "face_epochs": args.face_epochs,
        "train_images": args.train_images,
        "threads": args.threads,
        "precision": args.precision,
        "num_workers": args.workers
        if args.workers is not None
        else (0 if args.parallel > 1 else None),
        "parallel": args.parallel,
        "progress_bar": args.progress or None,
    }
    settings = dataclasses.replace(
        settings, **{k: v for k, v in overrides.items() if v is not None}
    )
    if not args.faces:
        settings = dataclasses.replace(settings, faces_root=None, face_seeds=())
    if args.width is not None:
        settings.task_args = {**settings.task_args, "backbone_width": args.width}
    try:
        result = run_bench(
            settings=settings, log=lambda m: print(m, flush=True), merge_with=args.merge_with
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    name = "spatial_prediction_quick" if settings.quick else "spatial_prediction"
    files = write_figures(name, result.figures, args.results_dir) if result.figures else []
    if args.merge_with is not None:
        # Figures only an earlier run drew (e.g. its SimCLR + SP pairs) stay listed.
        earlier = json.loads(args.merge_with.read_text()).get("figure_files", [])
        files += [f for f in earlier if f not in files and (args.results_dir / f).is_file()]
    result.figure_files = files or None
    markdown = bench_markdown(result)
    json_path, md_path = write_results(name, result.to_dict(), markdown, args.results_dir)
    print(markdown)
    print(f"wrote {json_path}, {md_path} and {len(result.figures)} figures")
    banner = validity_banner(result)
    if banner:
        print(banner, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
