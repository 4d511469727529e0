"""Spatial Prediction benchmark: SimCLR / BYOL with and without SP at equal budget, on CPU.

Arms (each pre-trains from scratch, then probes the frozen backbone; see
:mod:`wherewhat.methods.spatial_prediction.experiment` for the pipeline):

* SimCLR and SimCLR + SP (lambda 0.5), seeds 0 1 2;
* BYOL and BYOL + SP, seed 0;
* lambda sweep on SimCLR seed 0: 0 (the base method), 0.1, 0.5, 1.0;
* landmark probe: SimCLR and SimCLR + SP pre-trained on 68-point face crops (no labels), ridge
  regression from frozen features to the landmarks, NME on held-out photos, seeds 0 1 2.

Every arm reports linear-probe and k-NN accuracy, accuracy under corruptions, the "where"
read-out (SP error on held-out view pairs, 2x2 / 3x3 patch re-ordering) and time per epoch.

    .venv/bin/python benchmarks/spatial_prediction.py           # full (~1 h on 2 quiet cores)
    .venv/bin/python benchmarks/spatial_prediction.py --quick   # every part, tiny (~3 min)
    .venv/bin/python benchmarks/spatial_prediction.py --seeds 0 --lambda-sweep --no-faces

Run it on a quiet machine: the time-per-epoch overhead of SP is measured here, and timings
under contention are meaningless. Writes benchmarks/results/spatial_prediction.json and .md
(``--quick``: spatial_prediction_quick.*, so a quick check never overwrites the full results)
and the figures as spatial_prediction[_quick]-<name>.png (``--results-dir`` for elsewhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from wherewhat.bench.tables import write_figures, write_results
from wherewhat.methods.spatial_prediction.experiment import run_bench
from wherewhat.methods.spatial_prediction.markdown import bench_markdown
from wherewhat.methods.spatial_prediction.settings import BenchSettings

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run of every part")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="SimCLR seeds (0 1 2)")
    parser.add_argument("--byol-seeds", type=int, nargs="*", default=None, help="default 0")
    parser.add_argument("--face-seeds", type=int, nargs="*", default=None, help="default 0 1 2")
    parser.add_argument("--lambda-sweep", type=float, nargs="*", default=None,
                        help="SimCLR lambdas on the first seed (default 0 0.1 0.5 1)")  # fmt: skip
    parser.add_argument("--sp-lambda", type=float, default=None, help="the SP arms' lambda")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--face-epochs", type=int, default=None)
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--width", type=int, default=None, help="backbone width (default 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default 1)")
    parser.add_argument("--no-faces", action="store_true", help="skip the landmark probe")
    parser.add_argument("--cifar", type=Path, default=SHARED / "cifar10" / "cifar10_subset.npz")
    parser.add_argument("--faces", type=Path, default=SHARED / "faces68")
    parser.add_argument("--progress", action="store_true", help="Lightning progress bars")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    settings = BenchSettings.preset("quick" if args.quick else "full")
    overrides = {
        "cifar_npz": str(args.cifar),
        "faces_root": None if args.no_faces else str(args.faces),
        "seeds": tuple(args.seeds) if args.seeds else None,
        "byol_seeds": None if args.byol_seeds is None else tuple(args.byol_seeds),
        "face_seeds": ()
        if args.no_faces
        else (None if args.face_seeds is None else tuple(args.face_seeds)),
        "lambda_sweep": None if args.lambda_sweep is None else tuple(args.lambda_sweep),
        "sp_lambda": args.sp_lambda,
        "epochs": args.epochs,
        "face_epochs": args.face_epochs,
        "train_images": args.train_images,
        "threads": args.threads,
        "num_workers": args.workers,
        "progress_bar": args.progress or None,
    }
    settings = dataclasses.replace(
        settings, **{k: v for k, v in overrides.items() if v is not None}
    )
    if args.width is not None:
        settings.task_args = {**settings.task_args, "backbone_width": args.width}
    result = run_bench(settings=settings, log=lambda m: print(m, flush=True))

    name = "spatial_prediction_quick" if settings.quick else "spatial_prediction"
    if result.figures:
        result.figure_files = write_figures(name, result.figures, args.results_dir)
    markdown = bench_markdown(result)
    json_path, md_path = write_results(name, result.to_dict(), markdown, args.results_dir)
    print(markdown)
    print(f"wrote {json_path}, {md_path} and {len(result.figures)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
