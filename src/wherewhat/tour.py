"""``wherewhat tour``: every method's page and the core pages, run into one HTML report.

This module sits above the methods (nothing below imports it): importing a page module
registers its section with :func:`wherewhat.report.tour.register_section`; the machinery that
runs them and writes the report is :func:`wherewhat.report.tour.run_tour`. A new method adds
its ``wherewhat.methods.<name>.tour`` to :data:`PAGE_MODULES`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

from wherewhat.errors import ConfigError
from wherewhat.report.tour import TourFailed, run_tour

__all__ = ["PAGE_MODULES", "TourFailed", "load_pages", "main", "run"]

PAGE_MODULES = (
    "wherewhat.report.sections.data",
    "wherewhat.methods.ssdir.tour",
    "wherewhat.methods.worldcomp2d.tour",
    "wherewhat.methods.lzu.tour",
    "wherewhat.methods.spatial_prediction.tour",
    "wherewhat.report.sections.bench",
)


def load_pages() -> None:
    """Import every page module in :data:`PAGE_MODULES` (each registers its section)."""
    for name in PAGE_MODULES:
        import_module(name)


def run(out_dir: str | Path = "runs/tour", **options: Any) -> Path:
    """Register every page and run the tour into ``out_dir``; ``options`` as
    :func:`~wherewhat.report.tour.run_tour` takes them. Returns the report's path."""
    load_pages()
    return run_tour(out_dir, **options)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wherewhat.tour``: run the tour; exit code 1 if a section failed."""
    parser = argparse.ArgumentParser(prog="wherewhat tour", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default="runs/tour", help="output folder")
    parser.add_argument("--faces-root", default=None, help="folder of 68-point .pts faces")
    parser.add_argument("--full", action="store_true", help="longer runs instead of quick ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sections", nargs="+", default=None, help="run only these sections")
    args = parser.parse_args(argv)
    try:
        run(args.out_dir, faces_root=args.faces_root, quick=not args.full, seed=args.seed,
            sections=args.sections)  # fmt: skip
    except TourFailed as failure:
        print(failure, file=sys.stderr)
        return 1
    except ConfigError as error:
        print(f"wherewhat tour: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
