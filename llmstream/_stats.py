"""Per-stream counters and distributions, kept by the worker thread and read by the caller.

Strategy: the worker alone writes (plain attribute updates and histogram
adds, cheap enough for every socket read); :meth:`WorkerStats.metrics` builds
a frozen :class:`~llmstream.StreamMetrics` snapshot that any thread may take
while the stream runs (the histograms copy their buckets in one C call).
"""

from __future__ import annotations

import time
from typing import List, Optional

from ._events import StreamMetrics, Usage
from ._histogram import Histogram

__all__ = ["WorkerStats"]


class WorkerStats:
    """Counters the worker updates (alone) and the stream reads for its metrics."""

    __slots__ = (
        "attempts", "bytes_received", "chunks", "text_deltas", "usage", "errors", "queued",
        "first_content_at", "ready_at", "started_at", "ended_at", "gaps", "chunk_sizes", "read_times", "_final",
    )

    def __init__(self, started_at: float) -> None:
        self.attempts = 0
        self.bytes_received = 0
        self.chunks = 0
        self.text_deltas = 0
        self.usage: Optional[Usage] = None
        self.errors: List[str] = []
        self.queued = 0.0
        self.first_content_at: Optional[float] = None
        #: When the worker was last ready for more content (after handing the last over).
        self.ready_at = started_at
        self.started_at = started_at
        self.ended_at: Optional[float] = None
        self.gaps = Histogram()
        self.chunk_sizes = Histogram()
        self.read_times = Histogram()
        self._final: Optional[StreamMetrics] = None

    def freeze(self, ended_at: float) -> StreamMetrics:
        """The worker's last word: the final metrics, built once and returned by every later call."""
        self.ended_at = ended_at
        self._final = self.metrics()
        return self._final

    def metrics(self) -> StreamMetrics:
        """A snapshot (safe to take from another thread while the worker runs)."""
        if self._final is not None:
            return self._final
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        first = self.first_content_at
        usage = self.usage
        return StreamMetrics(
            time_to_first_token=None if first is None else first - self.started_at,
            duration=end - self.started_at,
            text_deltas=self.text_deltas,
            output_tokens=None if usage is None else usage.output_tokens,
            chunks=self.chunks,
            bytes_received=self.bytes_received,
            attempts=self.attempts,
            errors=tuple(self.errors),
            chunk_gap=self.gaps.summary(),
            chunk_size=self.chunk_sizes.summary(),
            read_time=self.read_times.summary(),
            queued=self.queued,
        )
