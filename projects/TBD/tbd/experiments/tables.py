"""
Numbers as the reports show them: formatting (``n/a`` for an unknown value), means and sample
standard deviations over seeds that skip unknown values, markdown tables, and JSON without NaN.
"""

import math
import statistics
from typing import Iterable, Optional, Sequence


def missing(value) -> bool:
    """None or NaN: a number a run did not produce."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value, spec: str = ".1f") -> str:
    """``value`` formatted with ``spec``, or ``n/a`` when it is unknown."""
    return "n/a" if missing(value) else format(value, spec)


def mean(values: Iterable[Optional[float]]) -> float:
    """Mean of the known values; NaN when there is none."""
    values = [v for v in values if not missing(v)]
    return statistics.mean(values) if values else float("nan")


def std(values: Iterable[Optional[float]]) -> float:
    """Sample standard deviation (n - 1) of the known values; NaN with fewer than 2 (unknown,
    not 0)."""
    values = [v for v in values if not missing(v)]
    return statistics.stdev(values) if len(values) >= 2 else float("nan")


def nan_to_none(value):
    """``value`` (nested dicts and lists) with every NaN replaced by None (strict JSON)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align=None) -> list:
    """The lines of a markdown table. ``align``: one of ``---``, ``---:`` per column (default
    ``---``)."""
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines
