"""A small log-bucketed histogram: percentiles of a stream of values in bounded memory.

Strategy: a value ``v > 0`` falls in bucket ``floor(log(v) / log(GROWTH))``,
so every bucket spans 2% of its value (HdrHistogram's idea with a fixed
relative precision). Counts live in a dict keyed by bucket, so a stream of
five million inter-token gaps costs a few hundred entries, not five million
floats. Exact ``count``, ``total``, ``min`` and ``max`` are kept beside it.
Up to :data:`KEYS_KEPT` folded values are kept as bucket numbers in an
``array`` (2 bytes each) before they are counted into the dict: a slow
stream's values mostly fall in distinct buckets, and a dict entry with its
int key costs ~60 bytes (issue 17: hundreds of streams at once).

Invariants:
  * ``quantile(q)`` is within 2% of the exact (nearest-rank) percentile, and
    always inside ``[min, max]``.
  * Zero and negative values (two reads in the same clock tick) count in a
    bucket of their own that reports 0.0.
  * Bucket numbers fit in 2 bytes: a value beyond ``GROWTH ** ±32766``
    (~1e±282: no time or size comes near) counts in the outermost bucket.

Cost: recording is on the per-read hot path of every stream, so it only
appends to a short list (:attr:`Histogram.pending`: a hot path appends to it
directly, without even the call of ``add``); count, total, min, max, the
logarithms and the bucket updates are done for :data:`FOLD_EVERY` values at
once (by C builtins where they can), or when a summary is asked for.

Never: a clock, a lock or a thread. The caller owns concurrency; reading a
snapshot while one thread adds is safe in CPython because ``summary()``
copies the dict and the pending list in one C call each (a snapshot taken
while values are being folded may miss those values; the owner's own
summaries are exact).
"""

from __future__ import annotations

import math
from collections import _count_elements  # type: ignore[attr-defined]  # Counter's C helper
from array import array
from itertools import repeat
from struct import Struct
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ._events import Distribution

__all__ = ["Histogram"]

#: Each bucket covers values within 2% of each other.
GROWTH = 1.02
_LOG_GROWTH = math.log(GROWTH)
#: The outermost bucket numbers: a bucket number is kept in 2 bytes (``array("h")``).
_MOST = (1 << 15) - 1
#: The bucket of values <= 0, below every other.
_ZERO = -_MOST - 1
#: Values from here to there have bucket numbers within +-_MOST without clamping.
_LEAST_VALUE = GROWTH ** (1 - _MOST)
_MOST_VALUE = GROWTH ** (_MOST - 1)
#: Values kept unbucketed before they are folded in at once.
FOLD_EVERY = 32
#: Folded values are kept as their bucket numbers (2 bytes each) up to this
#: many, then counted into the dict: a dict entry and its int key cost ~60
#: bytes, and a slow stream's few hundred values mostly fall in distinct buckets.
KEYS_KEPT = 1024
# A whole fold's bucket numbers packed in one C call: array('h').extend() would
# parse each int with PyArg_Parse (~300 instructions a value, three values a read).
_PACKED = FOLD_EVERY
_PACK_FOLD = Struct(f"={_PACKED}h").pack


class Histogram:
    """Counts of values in 2%-wide buckets, with exact count, total, min and max."""

    __slots__ = ("_buckets", "_keys", "pending", "_count", "_total", "_min", "_max")

    def __init__(self) -> None:
        # Both made when first needed: a stream's three histograms start empty (issue 17).
        self._buckets: Optional[Dict[int, int]] = None
        self._keys: "Optional[array[int]]" = None  # 2-byte bucket numbers
        #: Values recorded and not yet folded in: the same list for the
        #: histogram's life, so a hot path may keep ``pending.append`` and
        #: call it directly (issue 17) -- and must then call :meth:`fold` once
        #: ``len(pending)`` reaches :data:`FOLD_EVERY`, to keep memory bounded.
        # A list, not an array of doubles: array.append() parses its argument
        # with PyArg_Parse, ~3% of a slow stream's CPU for three values a read
        # (issue 17); FOLD_EVERY keeps the list short.
        self.pending: List[float] = []
        # Of the folded values only; the pending ones are added when asked for.
        self._count = 0
        self._total = 0.0
        self._min: Optional[float] = None
        self._max: Optional[float] = None

    def add(self, value: float) -> None:
        """Record one value."""
        # Only an append per value: count, total, min and max are updated at
        # the fold, by C builtins over the pending list (issue 17: three adds per read).
        pending = self.pending
        pending.append(value)
        if len(pending) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Fold the pending values into the counts and buckets (the writer's thread only)."""
        pending = self.pending
        values = pending[:]
        # Emptied before the values are counted: a reader in another thread
        # then misses the values being folded rather than counting them twice.
        del pending[:]
        if not values:
            return
        least, most = min(values), max(values)  # once, for the totals and the buckets' range check
        self._count, self._total, self._min, self._max = _add(
            values, least, most, self._count, self._total, self._min, self._max)
        keys = self._keys
        if keys is None:
            keys = self._keys = array("h")
        numbers = _bucket_numbers(values, least, most)
        if len(values) == _PACKED:
            keys.frombytes(_PACK_FOLD(*numbers))
        else:
            keys.extend(numbers)
        if len(keys) >= KEYS_KEPT:
            # Taken away before they are counted: a reader then misses them rather than counting them twice.
            self._keys = None
            buckets = self._buckets
            if buckets is None:
                buckets = self._buckets = {}
            _count_elements(buckets, keys)

    def _state(self) -> Tuple[Dict[int, int], int, float, Optional[float], Optional[float]]:
        """Buckets, count, total, min and max of every value so far, pending ones included (a copy)."""
        # Read in the reverse order of fold()'s writes (pending, then totals, then
        # bucket numbers, then buckets): a snapshot taken during a fold never counts a value twice.
        folded = self._buckets
        buckets = {} if folded is None else folded.copy()
        kept = self._keys
        keys = [] if kept is None else kept.tolist()
        count, total, low, high = self._count, self._total, self._min, self._max
        pending = self.pending[:]
        _count_elements(buckets, keys)
        _count_elements(buckets, _bucket_numbers(pending))
        return (buckets, *_totals(pending, count, total, low, high))

    def count_and_total(self) -> Tuple[int, float]:
        """How many values were recorded, and their sum (the writer's thread, or once writes are over)."""
        pending = self.pending
        return self._count + len(pending), self._total + sum(pending)

    def merge(self, other: "Histogram") -> None:
        """Add every value of ``other`` to this histogram."""
        self.fold()
        buckets, count, total, low, high = other._state()
        mine = self._buckets
        if mine is None:
            mine = self._buckets = {}
        for key, n in buckets.items():
            mine[key] = mine.get(key, 0) + n
        self._count += count
        self._total += total
        for value in (low, high):
            if value is not None:
                self._min = value if self._min is None else min(self._min, value)
                self._max = value if self._max is None else max(self._max, value)

    def buckets(self) -> List[Tuple[float, int]]:
        """Every value recorded, as ``(value, count)`` pairs: each bucket's middle (within 2%), clamped to ``[min, max]``."""
        buckets, _, _, lo, hi = self._state()
        if lo is None or hi is None:
            return []
        return [(0.0 if key == _ZERO else min(hi, max(lo, GROWTH ** (key + 0.5))), n)
                for key, n in sorted(buckets.items())]

    def quantile(self, q: float) -> Optional[float]:
        """The ``q`` quantile (0..1, nearest rank), or ``None`` when empty."""
        buckets, _, _, lo, hi = self._state()
        value: Optional[float] = _quantiles(buckets, (q,), lo, hi)[0]
        return value

    def summary(self) -> Distribution:
        """A frozen :class:`~llmstream.Distribution` of what was recorded so far."""
        buckets, count, total, lo, hi = self._state()
        p50, p90, p99 = _quantiles(buckets, (0.50, 0.90, 0.99), lo, hi)
        return Distribution(count=count, total=total, min=lo, p50=p50, p90=p90, p99=p99, max=hi)


def _totals(values: Sequence[float], count: int, total: float, low: Optional[float],
            high: Optional[float]) -> Tuple[int, float, Optional[float], Optional[float]]:
    """Count, total, min and max with ``values`` added."""
    if not values:
        return count, total, low, high
    return _add(values, min(values), max(values), count, total, low, high)


def _add(values: Sequence[float], least: float, most: float, count: int, total: float, low: Optional[float],
         high: Optional[float]) -> Tuple[int, float, Optional[float], Optional[float]]:
    """:func:`_totals` for values (at least one) whose min and max are known."""
    return (count + len(values), total + sum(values),
            least if low is None or least < low else low, most if high is None or most > high else high)


def _quantiles(buckets: Dict[int, int], qs: Sequence[float], lo: Optional[float],
               hi: Optional[float]) -> List[Optional[float]]:
    count = sum(buckets.values())
    if not count or lo is None or hi is None:
        return [None] * len(qs)
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


def _bucket_numbers(values: Sequence[float], least: Optional[float] = None,
                    most: Optional[float] = None) -> Iterable[int]:
    """Each value's bucket: its log base GROWTH, floored, within +-_MOST; :data:`_ZERO` for a value <= 0.

    ``least`` and ``most``: the values' min and max, when the caller has them.
    """
    if not values:
        return ()
    if least is None or most is None:
        least, most = min(values), max(values)
    if least >= _LEAST_VALUE and most <= _MOST_VALUE:
        # The usual case, in C: the caller's extend() or Counter's helper consumes it.
        return map(math.floor, map(math.log, values, repeat(GROWTH, len(values))))
    return map(_bucket_of, values)


def _bucket_of(value: float) -> int:
    if not value > 0:
        return _ZERO
    if value >= _MOST_VALUE:
        return _MOST
    if value <= _LEAST_VALUE:
        return -_MOST
    return math.floor(math.log(value) / _LOG_GROWTH)
