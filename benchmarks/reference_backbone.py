"""Speed of torchvision reference backbones on this CPU: the yardstick for our own models.

ResNet-18 and MobileNetV2 (random weights, nothing downloaded) at 1x3x128x128 and 32 images
per call, with 1 and 2 threads, in torch and ONNX Runtime: parameters, MACs, latency,
images/s, achieved GFLOP/s and fraction of the machine's measured matmul peak.

    .venv/bin/python benchmarks/reference_backbone.py           # full run, a few minutes
    .venv/bin/python benchmarks/reference_backbone.py --quick   # ~20 s, no batch-32 rows

Writes benchmarks/results/reference_backbone.json and .md (or --results-dir).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from wherewhat.bench.suite import reference_backbone_markdown, run_reference_backbone_bench

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, no batch-32 rows")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    data = run_reference_backbone_bench(
        quick=args.quick, results_dir=args.results_dir, threads=tuple(args.threads)
    )
    print(reference_backbone_markdown(data))
    print(
        f"wrote {args.results_dir / 'reference_backbone.json'} and .md in {data['seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
