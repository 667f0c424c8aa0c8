"""Per-stream counters and distributions, kept by the worker thread and read by the caller.

Strategy: the worker alone writes (plain attribute updates and histogram
adds, cheap enough for every socket read); :meth:`WorkerStats.metrics` builds
a frozen :class:`~llmstream.StreamMetrics` snapshot that any thread may take
while the stream runs (the histograms copy their buckets in one C call).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple

from ._cost import account
from ._events import AttemptReport, Finish, Reset, StreamMetrics, Usage, deferred_metrics
from ._histogram import Histogram

__all__ = ["WorkerStats"]


class WorkerStats:
    """Counters the worker updates (alone) and the stream reads for its metrics."""

    __slots__ = (
        "attempts", "text_deltas", "usage", "errors", "queued",
        "first_content_at", "ready_at", "started_at", "ended_at", "gaps", "chunk_sizes", "read_times", "_final",
        "finish_reason", "attempt_log", "next_delay", "_open", "_reset_at", "_discarded", "drained_bytes",
    )

    def __init__(self, started_at: float) -> None:
        self.attempts = 0
        self.text_deltas = 0
        self.usage: Optional[Usage] = None
        # Tuples, grown by "+=" (once per error or attempt, never per token): an
        # empty one is shared, an empty list is 56 bytes per stream (issue 17).
        self.errors: Tuple[str, ...] = ()
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
        self.finish_reason: Optional[str] = None
        #: One record per ended attempt (cost accounting, telemetry).
        self.attempt_log: Tuple[AttemptReport, ...] = ()
        #: The backoff wait before the next attempt, set when a retry is decided.
        self.next_delay = 0.0
        # The attempt in progress: (number, resume, delay, started, text_deltas and usage at its start).
        self._open: Optional[tuple[int, Optional[str], float, float, int, Optional[Usage]]] = None
        self._reset_at: Optional[float] = None
        self._discarded = 0
        #: Body bytes read after the end marker, to reuse the connection: received,
        #: so counted in ``bytes_received``, but not reads of the answer (``chunks``).
        self.drained_bytes = 0

    def fold(self) -> None:
        """Fold the per-read histograms' pending values (``BodyReader`` appends to them directly)."""
        self.chunk_sizes.fold()
        self.read_times.fold()
        self.gaps.fold()

    # -- attempts (once each, never per token) ---------------------------------------

    def begin_attempt(self, resume: Optional[str], now: float) -> None:
        """An attempt was sent (``attempts`` already counts it)."""
        self._open = (self.attempts, resume, self.next_delay, now, self.text_deltas, self.usage)
        self.next_delay = 0.0
        self._reset_at, self._discarded = None, 0

    def end_attempt(self, error: Optional[str], response_id: Optional[str], response_model: Optional[str]) -> None:
        """The attempt in progress ended (``error``: the type name of what ended it, else None)."""
        if self._open is None:
            return
        number, resume, delay, started, deltas, usage = self._open
        self._open = None
        ended = time.monotonic()
        first = self.first_content_at
        self.attempt_log += (AttemptReport(
            number=number, started=started, ended=ended, resume=resume, delay=delay, error=error,
            usage=self.usage if self.usage is not usage else None, text_deltas=self.text_deltas - deltas,
            first_content=first if first is not None and started <= first <= ended else None,
            reset=self._reset_at, discarded_chars=self._discarded,
            response_id=response_id, response_model=response_model,
        ),)

    def note(self, event: Any) -> None:
        """A bookkeeping event the caller is handed (Usage, Finish, Reset; never a text delta)."""
        cls = event.__class__
        if cls is Usage:
            self.usage = event
        elif cls is Finish:
            self.finish_reason = event.reason
        elif cls is Reset:
            self._reset_at = time.monotonic()
            self._discarded += len(event.discarded_text)

    def freeze(self, ended_at: float) -> StreamMetrics:
        """The worker's last word: the final metrics, built once and returned by every later call.

        The histograms no longer change, so their summaries are made when first
        read (most streams' never are: issue 17); the counts are made now.
        """
        self.ended_at = ended_at
        sizes = self.chunk_sizes
        chunks, total = sizes.count_and_total()
        self._final = deferred_metrics(self.gaps.summary, sizes.summary, self.read_times.summary,
                                       **self._fields(ended_at, chunks, int(total)))
        return self._final

    def metrics(self) -> StreamMetrics:
        """A snapshot (safe to take from another thread while the worker runs)."""
        if self._final is not None:
            return self._final
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        # Reads and bytes are the chunk-size histogram's count and total: one add per read, not three.
        sizes = self.chunk_sizes.summary()
        return StreamMetrics(chunk_gap=self.gaps.summary(), chunk_size=sizes, read_time=self.read_times.summary(),
                             **self._fields(end, sizes.count, int(sizes.total)))

    def _fields(self, end: float, chunks: int, bytes_received: int) -> Dict[str, Any]:
        first = self.first_content_at
        usage = self.usage
        return dict(
            time_to_first_token=None if first is None else first - self.started_at,
            duration=end - self.started_at,
            text_deltas=self.text_deltas,
            output_tokens=None if usage is None else usage.output_tokens,
            chunks=chunks,
            bytes_received=bytes_received + self.drained_bytes,
            attempts=self.attempts,
            errors=tuple(self.errors),
            queued=self.queued,
            wasted_output_tokens=account(self.attempt_log, complete=False).wasted.output if self.attempts > 1 else 0,
        )
