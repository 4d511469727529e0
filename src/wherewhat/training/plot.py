"""Training curves of a run: its ``csv/metrics.csv`` read into series and drawn against step.

``wherewhat plot RUN_DIR`` and the end of every ``wherewhat fit`` write ``RUN_DIR/curves.png``:
one panel per metric family (every loss together; ``train/acc`` beside ``val/acc``; ``val/map``
on its own), the optimizer step on the x axis.

Lightning's CSV logger writes one row per logging call with a column for every metric ever
logged, so a metric logged on other steps (validation every epoch, training every N steps)
leaves empty cells: :func:`read_metrics_csv` keeps, per metric, only the rows that hold a value.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from wherewhat.errors import DataFormatError
from wherewhat.io import png_bytes, write_atomic

__all__ = [
    "CURVES_PNG",
    "METRICS_CSV",
    "Series",
    "group_by_family",
    "metric_family",
    "plot_curves",
    "read_metrics_csv",
    "write_curves",
]

METRICS_CSV = Path("csv") / "metrics.csv"
CURVES_PNG = "curves.png"
STEP_COLUMN = "step"
_NOT_METRICS = {STEP_COLUMN, "epoch"}
_STAGES = ("train", "training", "val", "valid", "validation", "test", "predict")
_STAGE_PREFIX = re.compile(rf"^(?:{'|'.join(_STAGES)})[/_.-]", re.IGNORECASE)
_LIGHTNING_SUFFIX = re.compile(r"_(?:step|epoch)$")
_PANEL_SIZE_IN = (4.4, 3.0)
_MAX_COLUMNS = 3


@dataclass(frozen=True)
class Series:
    """One metric: its values and the optimizer steps they were logged at (sorted by step)."""

    name: str
    steps: np.ndarray  # int64
    values: np.ndarray  # float64, finite


def read_metrics_csv(path: str | Path) -> dict[str, Series]:
    """``{metric: Series}`` from a Lightning ``metrics.csv`` (columns ``epoch``, ``step`` and
    one per metric), in the CSV's column order.

    Empty and ``nan`` cells are gaps (the metric was logged on other steps) and ``inf`` cells
    are left out too; a metric with no value at all is omitted. Rows are sorted by step (stable),
    so a file continued after a resume still draws left to right.

    Raises:
        DataFormatError: the file cannot be read, has no ``step`` column, or a cell that is not
            a number (naming the line and column).
    """
    path = Path(path)
    try:
        handle = open(path, newline="")
    except OSError as error:
        raise DataFormatError(
            path, f"cannot read the metrics CSV ({error.strerror}); expected the "
            "csv/metrics.csv Lightning's CSVLogger writes in a run directory"
        ) from None  # fmt: skip
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or STEP_COLUMN not in header:
            raise DataFormatError(
                path, f"expected a header with a '{STEP_COLUMN}' column, got {header!r}", line=1
            )
        step_index = header.index(STEP_COLUMN)
        metrics = [(i, name) for i, name in enumerate(header) if name not in _NOT_METRICS]
        points: dict[str, list[tuple[int, float]]] = {name: [] for _, name in metrics}
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            step = _number(
                path, line, STEP_COLUMN, row[step_index] if step_index < len(row) else ""
            )
            if step is None or not math.isfinite(step):
                raise DataFormatError(path, f"column '{STEP_COLUMN}' is empty", line=line)
            for index, name in metrics:
                value = _number(path, line, name, row[index] if index < len(row) else "")
                if value is not None and math.isfinite(value):
                    points[name].append((int(step), value))
    series: dict[str, Series] = {}
    for name, pairs in points.items():
        if not pairs:
            continue
        pairs.sort(key=lambda pair: pair[0])  # stable: equal steps keep their file order
        steps, values = zip(*pairs, strict=True)
        series[name] = Series(name, np.asarray(steps, np.int64), np.asarray(values, np.float64))
    return series


def _number(path: Path, line: int, column: str, cell: str) -> float | None:
    cell = cell.strip()
    if not cell:
        return None
    try:
        return float(cell)
    except ValueError:
        raise DataFormatError(
            path, f"column '{column}': expected a number, got {cell!r}", line=line
        ) from None


def metric_family(name: str) -> str:
    """The panel a metric is drawn in: its name without the stage prefix (``train/``,
    ``val_``...) and Lightning's ``_step`` / ``_epoch`` suffix; every loss (``loss``,
    ``loss_cls``, ``loss/what``) is ``loss``.

    >>> [metric_family(n) for n in ("train/loss_step", "val/loss", "train/acc", "val_map_50")]
    ['loss', 'loss', 'acc', 'map_50']
    """
    base = _LIGHTNING_SUFFIX.sub("", _STAGE_PREFIX.sub("", name, count=1)) or name
    return "loss" if base.lower().startswith("loss") else base


def group_by_family(series: Mapping[str, Series]) -> dict[str, list[Series]]:
    """Series grouped by :func:`metric_family`: ``loss`` first, then in the order given."""
    families: dict[str, list[Series]] = {}
    for item in series.values():
        families.setdefault(metric_family(item.name), []).append(item)
    if "loss" in families:
        families = {"loss": families.pop("loss"), **families}
    return families


def plot_curves(series: Mapping[str, Series], *, title: str = "") -> Figure:
    """One panel per metric family, each metric a line against step (sparse metrics, such as
    validation once an epoch, with markers); a loss spanning more than two decades on a log
    scale."""
    families = group_by_family(series)
    if not families:
        raise ValueError("no metric has a value to plot")
    columns = min(_MAX_COLUMNS, len(families))
    rows = math.ceil(len(families) / columns)
    width, height = _PANEL_SIZE_IN
    fig = Figure(figsize=(width * columns, height * rows + (0.4 if title else 0.0)), dpi=100)
    FigureCanvasAgg(fig)
    for number, (family, members) in enumerate(families.items(), start=1):
        ax = fig.add_subplot(rows, columns, number)
        for item in members:
            sparse = len(item.steps) <= 30
            ax.plot(
                item.steps,
                item.values,
                label=item.name,
                linewidth=1.3,
                marker="o" if sparse else None,
                markersize=3,
            )
        values = np.concatenate([item.values for item in members])
        if family == "loss" and values.min() > 0 and values.max() / values.min() > 100:
            ax.set_yscale("log")
        ax.set_title(family, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.set_ylabel(family, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def write_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plot ``run_dir``'s ``csv/metrics.csv`` into ``out`` (default ``run_dir/curves.png``),
    atomically; returns the PNG's path. ``run_dir`` may also be the CSV file itself.

    Raises:
        DataFormatError: no metrics CSV there, or one that cannot be read or has no values.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        csv_path = run_dir
        run_dir = csv_path.parent.parent if csv_path.parent.name == "csv" else csv_path.parent
    else:
        csv_path = run_dir / METRICS_CSV
        if not csv_path.is_file():
            raise DataFormatError(
                csv_path, "not found; expected a run directory written by `wherewhat fit` "
                "(it logs to RUN_DIR/csv/metrics.csv) or a metrics.csv file"
            )  # fmt: skip
    series = read_metrics_csv(csv_path)
    if not series:
        raise DataFormatError(
            csv_path, "holds no metric values yet (log more often with "
            "--trainer.log_every_n_steps N, or train longer)"
        )  # fmt: skip
    target = Path(out) if out is not None else run_dir / CURVES_PNG
    figure = plot_curves(series, title=f"{run_dir.parent.name}/{run_dir.name}")
    return write_atomic(target, png_bytes(figure))
