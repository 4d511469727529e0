"""Markdown tables and result files shared by every benchmark script."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wherewhat.io import write_atomic
from wherewhat.metrics.summary import COMPARISONS, meets

__all__ = [
    "format_markdown_table",
    "format_value",
    "target_rows",
    "write_figures",
    "write_results",
]

Column = str | tuple[str, str]


def format_value(value: Any) -> str:
    """Readable cell text: ints with thousands separators, floats to 3 significant digits
    (no exponent below 1e6), missing values as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        value = float(value)
        if math.isnan(value):
            return "-"
        if math.isinf(value) or value == 0.0:
            return str(value)
        if abs(value) >= 1e6 or abs(value) < 1e-3:
            return f"{value:.3g}"
        digits = max(0, 2 - math.floor(math.log10(abs(value))))
        return f"{value:,.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A GitHub markdown table of ``rows`` (dicts).

    ``columns``: keys, or ``(key, header)`` pairs to give a column a readable header.
    Numeric columns are right-aligned; a missing key shows as "-".
    """
    if not columns:
        raise ValueError("need at least one column")
    keys = [c if isinstance(c, str) else c[0] for c in columns]
    headers = [c if isinstance(c, str) else c[1] for c in columns]
    numeric = [
        any(isinstance(r.get(k), int | float | np.number) for r in rows)
        and all(r.get(k) is None or isinstance(r.get(k), int | float | np.number) for r in rows)
        for k in keys
    ]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def target_rows(
    targets: Mapping[str, Mapping[str, Any]], measured: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """One row per target: ``quantity``, ``target`` (e.g. ">= 0.95"), ``measured``, ``met``.

    ``targets``: quantity -> ``{"op": one of >=, >, <=, <, "value": bound}``; ``measured``:
    quantity -> value (``None`` or absent: not measured, so ``met`` is ``None``).
    """
    rows = []
    for key, target in targets.items():
        op, bound = target["op"], target["value"]
        if op not in COMPARISONS:
            raise ValueError(f"target {key!r}: op must be one of {sorted(COMPARISONS)}, got {op!r}")
        value = measured.get(key)
        met = None if value is None else meets(value, op, bound)
        rows.append({"quantity": key, "target": f"{op} {bound:g}", "measured": value, "met": met})
    return rows


def _to_json(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"cannot store {type(value).__name__} in a JSON result file")


def write_results(
    name: str,
    data: Any,
    markdown: str,
    results_dir: str | os.PathLike = "benchmarks/results",
) -> tuple[Path, Path]:
    """Write ``<results_dir>/<name>.json`` (``data``) and ``<name>.md`` (``markdown``) atomically.

    Returns the two paths. ``data`` may hold numpy scalars, paths and objects with
    ``to_dict()`` (e.g. :class:`~wherewhat.bench.latency.LatencyResult`).
    """
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"result name must be a plain file stem, got {name!r}")
    directory = Path(results_dir)
    text = json.dumps(data, indent=2, default=_to_json, allow_nan=True) + "\n"
    json_path = write_atomic(directory / f"{name}.json", text)
    md_path = write_atomic(directory / f"{name}.md", markdown)
    return json_path, md_path


def write_figures(
    name: str, figures: Mapping[str, bytes], results_dir: str | os.PathLike
) -> list[str]:
    """Write each PNG of ``figures`` (``{figure name: bytes}``) atomically as
    ``<results_dir>/<name>-<figure name>.png``; returns the file names, in order."""
    directory = Path(results_dir)
    return [write_atomic(directory / f"{name}-{figure}.png", png).name
            for figure, png in figures.items()]  # fmt: skip
