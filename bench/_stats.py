"""Small statistics and table helpers shared by every benchmark.

Benchmarks run on shared, noisy 2-core machines, so each figure is the median of
several runs and every result is reported as a ratio against a baseline measured in
the same process run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of ``values``."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def p99(values: Sequence[float]) -> float:
    return percentile(values, 99)


def fmt(value: float, digits: int = 1) -> str:
    """Format a number for a table: thousands separators, fixed digits."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x" if baseline else "n/a"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def section(title: str, command: str, body: str, notes: str = "") -> str:
    """One markdown section as printed by each ``bench.bench_*`` module."""
    parts = [f"### {title}", "", f"Command: `{command}`", "", body]
    if notes:
        parts += ["", notes]
    return "\n".join(parts) + "\n"


def timed_runs(fn: Callable[[], float], runs: int) -> list[float]:
    """Call ``fn`` ``runs`` times; each call returns one measurement."""
    return [fn() for _ in range(runs)]


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.elapsed`` in seconds (perf_counter)."""

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        self.elapsed = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self._start
