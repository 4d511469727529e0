"""The tour: run every registered report section and write one HTML report plus a JSON summary.

A *section* is a function ``fn(ctx: TourContext) -> Section`` registered with a name and an
order::

    from wherewhat.report.html import Section
    from wherewhat.report.tour import TourContext, register_section

    @register_section("ssdir", order=30, title="SSDIR")
    def ssdir_section(ctx: TourContext) -> Section:
        section = Section("SSDIR")
        with ctx.step("train"):          # timed into summary.json
            ...                          # short training run, sized by ctx.quick
        section.table(rows).figure(fig, "Reconstructions", name="recon")
        section.record(map50=0.71)       # key numbers -> summary.json
        return section

This module is the machinery only and knows no method. The pages are a method's
``wherewhat/methods/<name>/tour.py`` and the core's ``wherewhat/report/sections/{data,bench}.py``;
:mod:`wherewhat.tour` (above the methods) imports them, which registers them. Orders in use:
data 10, methods 20-80, bench 90.

A section that raises does not stop the tour: the report shows it as FAILED with its traceback,
the other sections still run, and at the end :func:`run_tour` raises :class:`TourFailed` (the
command line turns that into a non-zero exit), so a user sees everything and CI notices.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import random
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

import wherewhat
from wherewhat.errors import ConfigError
from wherewhat.io import write_atomic
from wherewhat.report.figures import curve_panels
from wherewhat.report.html import Report, Section
from wherewhat.training.fit import FitRecord, recording_fits

__all__ = [
    "TourContext",
    "TourFailed",
    "RegisteredSection",
    "SectionRegistry",
    "SECTIONS",
    "register_section",
    "run_tour",
]


@dataclass
class TourContext:
    """What a section gets: where to write, how long to take, and how to report progress.

    Attributes:
        out_dir: the tour's output folder (sections may write files under it).
        quick: True for the few-minutes tour; False for longer, more faithful runs.
        faces_root: a folder of 68-point ``.pts`` faces, or None (sections may auto-detect).
        seed: seed for everything stochastic; global RNGs are re-seeded before each section.
        log: prints one progress line (under the progress bar).
        timings: seconds per section and per :meth:`step` (``"section/step"``).
        section: name of the section now running.
        results_dir: the benchmark results a section shows beside its quick run
            (:meth:`benchmark_result`); default ``benchmarks/results`` under the working folder,
            i.e. the repository's when the tour runs from a checkout.
    """

    out_dir: Path
    quick: bool = True
    faces_root: Path | None = None
    seed: int = 0
    log: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)
    section: str = ""
    results_dir: Path = Path("benchmarks/results")

    def benchmark_result(self, name: str) -> dict[str, Any] | None:
        """``<results_dir>/<name>.json`` (a method's benchmark results), or None when absent
        (e.g. an installed package run away from the repository) or unreadable."""
        path = self.results_dir / f"{name}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a part of a section into ``timings["<section>/<name>"]`` and log it."""
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.timings[f"{self.section}/{name}"] = seconds
            self.log(f"{name}: {seconds:.1f} s")


@dataclass(frozen=True)
class RegisteredSection:
    name: str
    order: float
    title: str
    fn: Callable[[TourContext], Section]


class SectionRegistry:
    """Named, ordered section functions. :data:`SECTIONS` is the one the tour uses."""

    def __init__(self) -> None:
        self._sections: dict[str, RegisteredSection] = {}

    def register(
        self, name: str, order: float, title: str | None = None
    ) -> Callable[[Callable[[TourContext], Section]], Callable[[TourContext], Section]]:
        """Decorator registering ``fn`` as section ``name``; lower ``order`` runs first."""

        def decorate(fn: Callable[[TourContext], Section]) -> Callable[[TourContext], Section]:
            existing = self._sections.get(name)
            same = existing is not None and (
                f"{existing.fn.__module__}.{existing.fn.__qualname__}"
                == f"{fn.__module__}.{fn.__qualname__}"
            )
            if existing is not None and not same:
                raise ValueError(
                    f"tour section {name!r} is already registered by "
                    f"{existing.fn.__module__}.{existing.fn.__qualname__}"
                )
            self._sections[name] = RegisteredSection(name, order, title or name, fn)
            return fn

        return decorate

    def names(self) -> list[str]:
        return [s.name for s in self.ordered()]

    def ordered(self, names: Sequence[str] | None = None) -> list[RegisteredSection]:
        """Sections sorted by (order, name), optionally only those in ``names``."""
        if names is not None:
            unknown = [n for n in names if n not in self._sections]
            if unknown:
                raise ConfigError(
                    f"unknown tour section(s) {unknown}; available: {sorted(self._sections)}"
                )
        chosen = [s for s in self._sections.values() if names is None or s.name in names]
        return sorted(chosen, key=lambda s: (s.order, s.name))

    def __len__(self) -> int:
        return len(self._sections)

    def __contains__(self, name: object) -> bool:
        return name in self._sections


SECTIONS = SectionRegistry()


def register_section(
    name: str, order: float, title: str | None = None
) -> Callable[[Callable[[TourContext], Section]], Callable[[TourContext], Section]]:
    """Register a tour section in :data:`SECTIONS` (see the module docstring)."""
    return SECTIONS.register(name, order, title)


class TourFailed(RuntimeError):
    """Raised by :func:`run_tour` after the report is written when some section failed."""

    def __init__(self, report_path: Path, failed: list[str]):
        self.report_path = report_path
        self.failed = failed
        super().__init__(
            f"tour: {len(failed)} section(s) failed: {', '.join(failed)} "
            f"(tracebacks in {report_path})"
        )


def _seed_everything(seed: int) -> None:
    """Same global RNG state before every section, so a section's result does not depend on
    which sections ran before it."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _jsonable(value: Any) -> Any:
    """Plain-JSON version of section numbers (numpy/torch scalars, paths, NaN -> null)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy / torch
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool | int | str) or value is None:
        return value
    return str(value)


def add_training_curves(section: Section, fits: Sequence[FitRecord]) -> None:
    """A figure with the loss curve of every training run the section made (none: nothing)."""
    curves = {
        f"{index}. {record.task} ({record.steps} steps)": tuple(
            zip(*record.loss_curve, strict=True)
        )
        for index, record in enumerate(fits, start=1)
        if len(record.loss_curve) > 1
    }
    if curves:
        section.figure(
            curve_panels(curves),
            "Training loss against step of each training run of this section (the quick run's "
            "own curves: a short run, not the benchmark's).",
            name="training-curves",
        )


def run_tour(
    out_dir: str | Path = "runs/tour",
    faces_root: str | Path | None = None,
    quick: bool = True,
    seed: int = 0,
    sections: Sequence[str] | None = None,
    *,
    registry: SectionRegistry | None = None,
    show_progress: bool = True,
) -> Path:
    """Run the registered sections in order and write ``out_dir/report.html``,
    ``out_dir/summary.json`` and ``out_dir/figures/<section>-<figure>.png``.

    Args:
        out_dir: output folder (created).
        faces_root: folder of ``.pts`` faces for face sections (None: sections auto-detect).
        quick: the short tour (default) or longer runs.
        seed: seed for all sections.
        sections: names of the sections to run (default: all).
        registry: the sections to draw from (default: :data:`SECTIONS`, whatever has been
            registered; :mod:`wherewhat.tour` registers the built-in pages).
        show_progress: show a progress bar and log lines on stderr.

    Returns:
        The path of ``report.html``.

    Raises:
        TourFailed: after writing everything, if any section raised.
        ConfigError: for an unknown section name.
    """
    if registry is None:
        registry = SECTIONS
    chosen = registry.ordered(sections)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    faces = Path(faces_root) if faces_root is not None else None

    started = _dt.datetime.now().astimezone()
    mode = "quick" if quick else "full"
    report = Report(
        "wherewhat tour",
        subtitle=(
            f"wherewhat {wherewhat.__version__}, {mode} mode, seed {seed}, "
            f"{started:%Y-%m-%d %H:%M %Z}, Python {platform.python_version()}"
        ),
    )
    console = Console(stderr=True, quiet=not show_progress)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    ctx = TourContext(out_dir=out_dir, quick=quick, faces_root=faces, seed=seed)
    summary_sections: dict[str, Any] = {}
    tour_start = time.perf_counter()
    with progress:
        task = progress.add_task("tour", total=len(chosen))
        for entry in chosen:
            progress.update(task, description=entry.title)
            ctx.section = entry.name
            # soft_wrap: a long line (a checkpoint path) stays one line in logs, not re-wrapped
            # at rich's 80-column default when stderr is not a terminal.
            ctx.log = lambda msg, name=entry.name: progress.console.print(
                f"  {name}: {msg}", markup=False, highlight=False, soft_wrap=True
            )
            _seed_everything(seed)
            start = time.perf_counter()
            error = None
            try:
                with recording_fits() as fits:
                    section = entry.fn(ctx)
                if not isinstance(section, Section):
                    raise TypeError(
                        f"tour section {entry.name!r} returned {type(section).__name__}, "
                        "expected a wherewhat.report.html.Section"
                    )
                add_training_curves(section, fits)
            except Exception as exc:  # shown in the report, then re-signalled via TourFailed
                error = f"{type(exc).__name__}: {exc}"
                section = Section(entry.title).fail(traceback.format_exc())
            seconds = time.perf_counter() - start
            section.name, section.seconds = entry.name, seconds
            ctx.timings[entry.name] = seconds
            report.add(section)
            status = "FAILED: " + error if error else "ok"
            if section.flags:
                status += f", {len(section.flags)} flagged"
            progress.console.print(
                f"{entry.name}: {status} ({seconds:.1f} s)", markup=False, highlight=False
            )
            summary_sections[entry.name] = {
                "title": section.title,
                "status": section.status,
                "seconds": seconds,
                "numbers": section.numbers,
                "flags": section.flags,
                "error": error,
            }
            progress.advance(task)

    report_path = report.write(out_dir / "report.html", figures_dir=out_dir / "figures")
    failed = [s.name for s in report.failed]
    summary = {
        "title": report.title,
        "version": wherewhat.__version__,
        "started": started.isoformat(timespec="seconds"),
        "quick": quick,
        "seed": seed,
        "faces_root": None if faces is None else str(faces),
        "ok": not failed,
        "failed": failed,
        "flagged": {s.name: len(s.flags) for s in report.sections if s.flags},
        "total_seconds": time.perf_counter() - tour_start,
        "sections": summary_sections,
        "timings": ctx.timings,
    }
    write_atomic(out_dir / "summary.json", json.dumps(_jsonable(summary), indent=2) + "\n")
    console.print(f"report: {report_path}", markup=False, highlight=False)
    if failed:
        raise TourFailed(report_path, failed)
    return report_path
