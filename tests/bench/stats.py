"""Percentiles, the same way everywhere: nearest rank on the sorted samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank percentile of samples already sorted ascending."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p99, mean and max of latencies given in seconds, in milliseconds
    (None without samples: JSON has no NaN)."""
    ordered = sorted(seconds)
    if not ordered:
        return {"samples": 0, "p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    return {
        "samples": len(ordered),
        "p50_ms": percentile(ordered, 50) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "mean_ms": sum(ordered) / len(ordered) * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base
