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

Cost: ``add`` is on the per-read hot path of every stream, so it only appends
to a short list (and keeps count, total, min and max exact); the logarithms
and the bucket updates are done for :data:`FOLD_EVERY` values at once, or
when a summary is asked for.

Never: a clock, a lock or a thread. The caller owns concurrency; reading a
snapshot while one thread adds is safe in CPython because ``summary()``
copies the dict and the pending list in one C call each (a snapshot taken
while values are being folded may miss those values; the owner's own
summaries are exact).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

from ._events import Distribution

__all__ = ["Histogram"]

#: Each bucket covers values within 2% of each other.
GROWTH = 1.02
_LOG_GROWTH = math.log(GROWTH)
#: The bucket of values <= 0.
_ZERO = -(1 << 30)
#: Values kept unbucketed before they are folded in at once.
FOLD_EVERY = 32


class Histogram:
    """Counts of values in 2%-wide buckets, with exact count, total, min and max."""

    __slots__ = ("_buckets", "_pending", "count", "total", "min", "max")

    def __init__(self) -> None:
        self._buckets: Dict[int, int] = {}
        self._pending: List[float] = []
        self.count = 0
        self.total = 0.0
        self.min: Optional[float] = None
        self.max: Optional[float] = None

    def add(self, value: float) -> None:
        """Record one value."""
        pending = self._pending
        pending.append(value)
        if len(pending) >= FOLD_EVERY:
            self._fold()
        self.count += 1
        self.total += value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def _fold(self) -> None:
        pending, self._pending = self._pending, []
        _bucket_into(self._buckets, pending)

    def _snapshot(self) -> Dict[int, int]:
        buckets = self._buckets.copy()
        _bucket_into(buckets, self._pending.copy())
        return buckets

    def merge(self, other: "Histogram") -> None:
        """Add every value of ``other`` to this histogram."""
        for key, n in other._snapshot().items():
            self._buckets[key] = self._buckets.get(key, 0) + n
        self.count += other.count
        self.total += other.total
        for value in (other.min, other.max):
            if value is not None:
                self.min = value if self.min is None else min(self.min, value)
                self.max = value if self.max is None else max(self.max, value)

    def buckets(self) -> List[Tuple[float, int]]:
        """Every value recorded, as ``(value, count)`` pairs: each bucket's middle (within 2%), clamped to ``[min, max]``."""
        if self.min is None or self.max is None:
            return []
        lo, hi = self.min, self.max
        return [(0.0 if key == _ZERO else min(hi, max(lo, GROWTH ** (key + 0.5))), n)
                for key, n in sorted(self._snapshot().items())]

    def quantile(self, q: float) -> Optional[float]:
        """The ``q`` quantile (0..1, nearest rank), or ``None`` when empty."""
        value: Optional[float] = self._quantiles(self._snapshot(), (q,))[0]
        return value

    def summary(self) -> Distribution:
        """A frozen :class:`~llmstream.Distribution` of what was recorded so far."""
        buckets = self._snapshot()
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


def _bucket_into(buckets: Dict[int, int], values: List[float]) -> None:
    log, floor, get = math.log, math.floor, buckets.get
    for value in values:
        key = floor(log(value) / _LOG_GROWTH) if value > 0 else _ZERO
        buckets[key] = get(key, 0) + 1
