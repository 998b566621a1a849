"""Fixed log-scale histograms: one integer column per bucket on every roll-up row, so that rows merge by summing
columns (in SQL) and percentiles come out of the merged counts. Pure functions, no Django.

A scale with ``per_decade`` buckets per power of ten has edges ``low x 10^(k/per_decade)``; a percentile is
reported at the geometric middle of its bucket, so it is off by at most half a bucket's ratio (±12% at 10 per
decade, ±7.5% at 16). Values below ``low`` count in the first bucket, values past the top in the last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LogScale:
    prefix: str  # column names are prefix + two-digit index: d00, d01, …
    low: float
    per_decade: int
    count: int

    @property
    def columns(self) -> list[str]:
        return [f"{self.prefix}{index:02d}" for index in range(self.count)]

    def index(self, value: float) -> int:
        if value <= self.low:
            return 0
        position = math.floor(math.log10(value / self.low) * self.per_decade + 1e-9)
        return min(position, self.count - 1)

    def column(self, value: float) -> str:
        return f"{self.prefix}{self.index(value):02d}"

    def lower_edge(self, index: int) -> float:
        return self.low * 10 ** (index / self.per_decade)

    def upper_edge(self, index: int) -> float:
        return self.lower_edge(index + 1)

    def middle(self, index: int) -> float:
        return self.low * 10 ** ((index + 0.5) / self.per_decade)

    @property
    def relative_error(self) -> float:
        """The most a reported percentile can be off, as a fraction of the true value."""
        return 10 ** (0.5 / self.per_decade) - 1


# Run duration: 0.1 ms … 1,000 s (the longest timeout is 900 s).
DURATION = LogScale("d", 0.1, 10, 70)
# Cold-start init: 0.1 ms … 100 s (the init phase is capped at 10 s, with headroom).
INIT = LogScale("i", 0.1, 10, 60)
# Peak memory: 1 MB … 13 GB, finer because right-sizing compares it with 90% of a memory size.
MEMORY = LogScale("m", 1.0, 16, 66)
SCALES = (DURATION, INIT, MEMORY)


def percentile(scale: LogScale, counts: Sequence[int], q: float) -> float | None:
    """The q-th percentile (0 < q ≤ 100) of merged bucket counts, at its bucket's geometric middle."""
    index = percentile_index(counts, q)
    return None if index is None else scale.middle(index)


def percentile_upper(scale: LogScale, counts: Sequence[int], q: float) -> float | None:
    """The upper edge of the q-th percentile's bucket: a bound that errs on the safe side (memory, OOM risk)."""
    index = percentile_index(counts, q)
    return None if index is None else scale.upper_edge(index)


def percentile_index(counts: Sequence[int], q: float) -> int | None:
    total = sum(counts)
    if total <= 0:
        return None
    rank = math.ceil(total * q / 100)
    running = 0
    for index, count in enumerate(counts):
        running += count
        if running >= max(rank, 1):
            return index
    return len(counts) - 1


def cumulative(scale: LogScale, counts: Sequence[int], every: int) -> list[tuple[float, int]]:
    """(upper edge, count at or below it) at every ``every``-th bucket edge: Prometheus's ``le`` buckets."""
    running, out = 0, []
    for index, count in enumerate(counts):
        running += count
        if (index + 1) % every == 0 and index < len(counts) - 1:
            out.append((scale.upper_edge(index), running))
    return out
