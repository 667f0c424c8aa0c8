"""The process-wide monitor: counts over every stream of every client, thread-safe.

Strategy: workers report two moments, a stream's start and its end (with a
:class:`~llmstream.StreamReport`); the monitor adds them up under one lock and
hands each report to its listeners (the Prometheus exporter is one). Circuit
breakers register themselves so a snapshot can show their state; they are
held weakly, so a dropped client's breaker disappears with it.

A listener runs in the worker thread that ended the stream: it must be quick
and must not raise (an exception is logged and the listener kept).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import weakref
from typing import Any, Callable, Counter, Dict, List

from ._events import MonitorSnapshot, StreamReport
from ._histogram import Histogram

__all__ = ["Monitor", "monitor"]

logger = logging.getLogger("llmstream")

Listener = Callable[[StreamReport], None]
_SEVERITY = {"closed": 0, "half-open": 1, "open": 2}


class Monitor:
    """Process-wide stream counts: ``llmstream.monitor.snapshot()``.

    Usage::

        snap = llmstream.monitor.snapshot()
        print(snap.active, snap.success_rate, snap.errors, snap.time_to_first_token.p99)

    Thread-safe. :meth:`subscribe` adds a callback called with each ended
    stream's :class:`~llmstream.StreamReport`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: List[Listener] = []
        self._breakers: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._active = 0
        self._waiting = 0
        self._fallbacks = 0
        self.reset()

    def reset(self) -> None:
        """Set every count back to zero (streams running now are still counted as active)."""
        with self._lock:
            self._started = self._active
            self._fallbacks = 0
            self._outcomes: Counter[str] = collections.Counter()
            self._attempts = 0
            self._errors: Counter[str] = collections.Counter()
            self._retried: Counter[str] = collections.Counter()
            self._tokens = 0
            self._bytes = 0
            self._ttft = Histogram()
            self._duration = Histogram()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(report)`` at the end of every stream; returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def snapshot(self) -> MonitorSnapshot:
        """The counts now, as a frozen :class:`~llmstream.MonitorSnapshot`."""
        with self._lock:
            circuits: Dict[str, str] = {}
            for breaker in list(self._breakers):
                # Two clients may guard one base URL: show the worst state.
                state, known = breaker.state, circuits.get(breaker.base_url)
                if known is None or _SEVERITY[state] > _SEVERITY[known]:
                    circuits[breaker.base_url] = state
            return MonitorSnapshot(
                started=self._started, finished=self._outcomes["finished"], failed=self._outcomes["failed"],
                closed=self._outcomes["closed"], active=self._active, waiting=self._waiting,
                attempts=self._attempts, errors=dict(self._errors), retried_errors=dict(self._retried),
                output_tokens=self._tokens, bytes_received=self._bytes,
                time_to_first_token=self._ttft.summary(), duration=self._duration.summary(), circuits=circuits,
                shared_state_fallbacks=self._fallbacks,
            )

    # -- reports from the IO shell ------------------------------------------------

    def register_breaker(self, breaker: Any) -> None:
        """Show ``breaker.state`` under ``breaker.base_url`` in snapshots."""
        with self._lock:
            self._breakers.add(breaker)

    def stream_started(self) -> None:
        """A worker started."""
        with self._lock:
            self._started += 1
            self._active += 1

    def waiting(self, delta: int) -> None:
        """A worker began (+1) or stopped (-1) waiting for a slot or the rate limiter."""
        with self._lock:
            self._waiting += delta

    def shared_state_fallback(self) -> None:
        """A client decided with its own limits because Redis was unreachable (``RedisState(on_error="open")``)."""
        with self._lock:
            self._fallbacks += 1

    def stream_ended(self, report: StreamReport) -> None:
        """A worker ended: count it and tell the listeners."""
        m = report.metrics
        with self._lock:
            self._active -= 1
            self._outcomes[report.outcome] += 1
            self._attempts += m.attempts
            if report.error is not None:
                self._errors[report.error] += 1
            retried = m.errors[:-1] if report.error is not None else m.errors
            self._retried.update(retried)
            if math.isfinite(m.tokens):
                # The decoders refuse non-finite counts; this is the second line of
                # defence: one inf would make the process-wide total inf for good.
                self._tokens += m.tokens
            self._bytes += m.bytes_received
            if m.time_to_first_token is not None:
                self._ttft.add(m.time_to_first_token)
            self._duration.add(m.duration)
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(report)
            except Exception:  # a broken listener must not break streams; it is logged, not swallowed
                logger.exception("llmstream monitor listener %r failed", listener)


#: The process-wide monitor.
monitor = Monitor()
