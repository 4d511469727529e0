"""LZU benchmark: uniform vs LZU-fixed vs LZU-adaptive vs 2x input, detection and segmentation.

The street experiment of issue 5 (see :mod:`wherewhat.methods.lzu.experiment` for what each arm
does): 512 x 1024 scattered-MNIST scenes, models trained at 128 x 256, AP50 / AP by object size
(original pixels) and mIoU per arm over seeds; round-trip error and coverage of the exact
inverse; 1-D inverse vs tile solver at 152 x 240; per-step CPU latency and the zoom + unzoom
overhead.

    .venv/bin/python benchmarks/lzu.py                        # full: 2 tasks x 4 arms x 3 seeds
                                                              # + the LZU-fixed ablations
    .venv/bin/python benchmarks/lzu.py --quick --results-dir /tmp/lzu   # < 3 min, pipeline check

The full benchmark is longer than one 90-minute command; it runs as three whose results
merge (``--merge-with`` pools the runs of an earlier results file made with the same
settings; a run redone replaces the earlier one):

    .venv/bin/python benchmarks/lzu.py --tasks detection --seeds 0
    .venv/bin/python benchmarks/lzu.py --tasks detection --seeds 1 2 \\
        --merge-with benchmarks/results/lzu.json
    .venv/bin/python benchmarks/lzu.py --tasks segmentation \\
        --merge-with benchmarks/results/lzu.json

Scenes are generated once and cached (``$WHEREWHAT_CACHE``); the fixed saliency is saved next
to them. Run it on a quiet machine: timings under contention are meaningless.

Writes ``<results-dir>/lzu.json`` and ``lzu.md`` (``--quick``: ``lzu_quick.*``, so a quick
check never overwrites the full results) and the figures as ``lzu[_quick]-<name>.png``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from wherewhat.bench.tables import write_figures, write_results
from wherewhat.methods.lzu.experiment import merge_results, run_lzu_bench
from wherewhat.methods.lzu.markdown import lzu_markdown
from wherewhat.methods.lzu.settings import ARMS, TASKS, LZUBenchSettings

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (< 3 min, quiet 2 cores)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=None)
    parser.add_argument("--detection-steps", type=int, default=None)
    parser.add_argument("--segmentation-steps", type=int, default=None)
    parser.add_argument("--n-train", type=int, default=None, help="<= the generated split")
    parser.add_argument("--n-test", type=int, default=None, help="<= the generated split")
    parser.add_argument("--no-ablations", action="store_true",
                        help="skip the LZU-fixed ablations (see LZUBenchSettings.ablations)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    parser.add_argument("--progress", action="store_true", help="Lightning progress bars")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--merge-with", type=Path, default=None,
                        help="an earlier lzu.json of the same settings: pool its runs with these")  # fmt: skip
    args = parser.parse_args(argv)
    previous = None
    if args.merge_with is not None:
        try:
            previous = json.loads(args.merge_with.read_text())
        except (OSError, ValueError) as err:
            parser.error(f"--merge-with {args.merge_with}: not a readable results JSON ({err})")

    overrides = {
        "seeds": tuple(args.seeds) if args.seeds else None,
        "tasks": tuple(args.tasks) if args.tasks else None,
        "arms": tuple(args.arms) if args.arms else None,
        "detection_steps": args.detection_steps,
        "segmentation_steps": args.segmentation_steps,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "threads": args.threads,
        "progress_bar": args.progress or None,
        "ablations": () if args.no_ablations else None,
    }
    settings = LZUBenchSettings.preset(
        "quick" if args.quick else "full", **{k: v for k, v in overrides.items() if v is not None}
    )
    result = run_lzu_bench(settings=settings, log=lambda m: print(m, flush=True))
    result.commands = [shlex.join(["benchmarks/lzu.py", *(sys.argv[1:] if argv is None else argv)])]
    if previous is not None:
        try:
            result = merge_results(previous, result)
        except ValueError as err:
            parser.error(f"--merge-with {args.merge_with}: {err}")

    name = "lzu_quick" if settings.quick else "lzu"
    if result.figures:
        result.figure_files = write_figures(name, result.figures, args.results_dir)
    markdown = lzu_markdown(result)
    json_path, md_path = write_results(name, result.to_dict(), markdown, args.results_dir)
    print(markdown)
    print(f"wrote {json_path}, {md_path} and {len(result.figures)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
