"""Summaries over seeds and targets: one convention for every results table and report."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable

import numpy as np

__all__ = ["COMPARISONS", "mean_std", "meets"]

COMPARISONS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1) of the finite values among ``values``.

    ``None``, NaN and inf are left out (a seed that produced no number). One value has no
    spread: std 0. No finite value at all: ``(nan, nan)``, which tables print as "-".
    """
    clean = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not clean:
        return math.nan, math.nan
    std = float(np.std(clean, ddof=1)) if len(clean) > 1 else 0.0
    return float(np.mean(clean)), std


def meets(value: float | None, op: str, bound: float) -> bool | None:
    """Whether ``value op bound`` holds (``op`` one of >=, >, <=, <); None when there is no
    finite value to judge."""
    if op not in COMPARISONS:
        raise ValueError(f"op must be one of {sorted(COMPARISONS)}, got {op!r}")
    if value is None or not math.isfinite(float(value)):
        return None
    return bool(COMPARISONS[op](float(value), bound))
