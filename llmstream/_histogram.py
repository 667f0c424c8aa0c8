"""A small log-bucketed histogram: percentiles of a stream of values in bounded memory.

Strategy: a value ``v > 0`` falls in bucket ``floor(log(v) / log(GROWTH))``,
so every bucket spans 2% of its value (HdrHistogram's idea with a fixed
relative precision). Counts live in a dict keyed by bucket, so a stream of
five million inter-token gaps costs a few hundred entries, not five million
floats. Exact ``count``, ``total``, ``min`` and ``max`` are kept beside it.

Invariants:
  * ``quantile(q)`` is within 2% of the exact (nearest-rank) percentile, and
    always inside ``[min, max]``.
  * Zero and negative values (two reads in the same clock tick) count in a
    bucket of their own that reports 0.0.

Never: a clock, a lock or a thread. The caller owns concurrency; reading a
snapshot while one thread adds is safe in CPython because ``summary()``
copies the dict in one C call.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

from ._events import Distribution

__all__ = ["Histogram"]

#: Each bucket covers values within 2% of each other.
GROWTH = 1.02
_LOG_GROWTH = math.log(GROWTH)
#: The bucket of values <= 0.
_ZERO = -(1 << 30)


class Histogram:
    """Counts of values in 2%-wide buckets, with exact count, total, min and max."""

    __slots__ = ("_buckets", "count", "total", "min", "max")

    def __init__(self) -> None:
        self._buckets: Dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min: Optional[float] = None
        self.max: Optional[float] = None

    def add(self, value: float) -> None:
        """Record one value."""
        key = math.floor(math.log(value) / _LOG_GROWTH) if value > 0 else _ZERO
        buckets = self._buckets
        buckets[key] = buckets.get(key, 0) + 1
        self.count += 1
        self.total += value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def merge(self, other: "Histogram") -> None:
        """Add every value of ``other`` to this histogram."""
        for key, n in other._buckets.copy().items():
            self._buckets[key] = self._buckets.get(key, 0) + n
        self.count += other.count
        self.total += other.total
        for value in (other.min, other.max):
            if value is not None:
                self.min = value if self.min is None else min(self.min, value)
                self.max = value if self.max is None else max(self.max, value)

    def quantile(self, q: float) -> Optional[float]:
        """The ``q`` quantile (0..1, nearest rank), or ``None`` when empty."""
        value: Optional[float] = self._quantiles(self._buckets.copy(), (q,))[0]
        return value

    def summary(self) -> Distribution:
        """A frozen :class:`~llmstream.Distribution` of what was recorded so far."""
        buckets = self._buckets.copy()
        p50, p90, p99 = self._quantiles(buckets, (0.50, 0.90, 0.99))
        return Distribution(count=self.count, total=self.total, min=self.min,
                            p50=p50, p90=p90, p99=p99, max=self.max)

    def _quantiles(self, buckets: Dict[int, int], qs: Sequence[float]) -> List[Optional[float]]:
        count = sum(buckets.values())
        if not count or self.min is None or self.max is None:
            return [None] * len(qs)
        lo, hi = self.min, self.max
        keys = sorted(buckets)
        results: List[Optional[float]] = []
        for q in qs:
            rank = max(1, math.ceil(q * count))
            seen = 0
            for key in keys:
                seen += buckets[key]
                if seen >= rank:
                    break
            # The bucket's geometric middle, clamped: exact for a constant series.
            value = 0.0 if key == _ZERO else GROWTH ** (key + 0.5)
            results.append(min(hi, max(lo, value)))
        return results
