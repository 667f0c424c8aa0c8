"""The process-wide monitor: counts over every stream of every client, thread-safe.

Strategy: workers report two moments, a stream's start and its end (with a
:class:`~llmstream.StreamReport`); the monitor adds them up under one lock and
hands each report to its listeners (the Prometheus exporter is one). Circuit
breakers register themselves so a snapshot can show their state; they are
held weakly, so a dropped client's breaker disappears with it.

A listener runs in the worker thread that ended the stream: it must be quick
and must not raise (an exception is logged and the listener kept).

Observers (``llmstream.otel``): a listener that must see a stream *while* it
runs — to open a trace span in the caller's context and put a ``traceparent``
header on each attempt — registers an observer factory with
:meth:`Monitor.observe`. A stream asks for its observer once, when it is made
(in the caller's thread), and tells it of each attempt and of its end; with no
factory registered a stream costs one attribute read, and nothing is done per
token either way.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Counter, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

from ._events import MonitorSnapshot, StreamReport
from ._histogram import Histogram

__all__ = ["Monitor", "monitor", "StreamStart", "StreamObserver", "merge_headers"]

logger = logging.getLogger("llmstream")

Listener = Callable[[StreamReport], None]
_SEVERITY = {"closed": 0, "half-open": 1, "open": 2}


@dataclass(frozen=True)
class StreamStart:
    """What an observer factory is told of a new stream (in the caller's thread).

    Attributes:
        provider: the provider's name.
        model: the model asked for.
        base_url: the client's base URL, credentials removed.
        url: the request's URL, query and credentials removed.
        body: the request's JSON body (the conversation: content, handle with care).
        started_at: ``time.monotonic()`` at the stream's start.
    """

    provider: str
    model: str
    base_url: str
    url: str
    body: Optional[Mapping[str, Any]]
    started_at: float


class StreamObserver(Protocol):
    """One stream's observer, made by a factory given to :meth:`Monitor.observe`."""

    #: True if the observer wants the delivered text at the end (content capture).
    wants_text: bool

    def attempt_started(self, number: int, resume: Optional[str]) -> Mapping[str, str]:
        """An attempt is about to be sent: return headers to add to its request (may be empty)."""
        ...

    def stream_ended(self, report: StreamReport, gaps: Sequence[Tuple[float, int]], text: Optional[str]) -> None:
        """The stream ended; ``gaps``: its inter-chunk gaps as (seconds, count); ``text``: if wanted."""
        ...


ObserverFactory = Callable[[StreamStart], Optional[StreamObserver]]


class _Observers:
    """Several observers of one stream, told in turn; a failing one is logged and skipped."""

    def __init__(self, observers: List[StreamObserver]) -> None:
        self._observers = observers
        self.wants_text = any(o.wants_text for o in observers)

    def attempt_started(self, number: int, resume: Optional[str]) -> Mapping[str, str]:
        headers: Dict[str, str] = {}
        for observer in self._observers:
            try:
                headers.update(observer.attempt_started(number, resume))
            except Exception:  # telemetry must never break a stream
                logger.exception("llmstream observer %r failed", observer)
        return headers

    def stream_ended(self, report: StreamReport, gaps: Sequence[Tuple[float, int]], text: Optional[str]) -> None:
        for observer in self._observers:
            try:
                observer.stream_ended(report, gaps, text)
            except Exception:  # telemetry must never break a stream
                logger.exception("llmstream observer %r failed", observer)


def merge_headers(headers: Mapping[str, Union[str, bytes]], extra: Mapping[str, str]) -> Dict[str, Union[str, bytes]]:
    """``headers`` plus ``extra``; a header the request already has (any case) is kept as it is."""
    merged = dict(headers)
    present = {name.lower() for name in merged}
    for name, value in extra.items():
        if name.lower() not in present:
            merged[name] = value
    return merged


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
        self._factories: List[ObserverFactory] = []
        #: True while an observer factory is registered: the one check a stream makes.
        self.observing = False
        self.reset()

    def reset(self) -> None:
        """Set every count back to zero (streams running now are still counted as active)."""
        with self._lock:
            self._started = self._active
            self._outcomes: Counter[str] = collections.Counter()
            self._attempts = 0
            self._errors: Counter[str] = collections.Counter()
            self._retried: Counter[str] = collections.Counter()
            self._tokens = 0
            self._bytes = 0
            self._ttft = Histogram()
            self._duration = Histogram()
            self._cost = 0.0
            self._wasted = 0

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(report)`` at the end of every stream; returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def observe(self, factory: ObserverFactory) -> Callable[[], None]:
        """Call ``factory(start)`` for each new stream; the observer it returns follows the stream.

        Returns a function that removes the factory (streams already started keep their observer).
        """
        with self._lock:
            self._factories.append(factory)
            self.observing = True

        def remove() -> None:
            with self._lock:
                if factory in self._factories:
                    self._factories.remove(factory)
                self.observing = bool(self._factories)

        return remove

    def observer_for(self, start: StreamStart) -> Optional[StreamObserver]:
        """The observers of a new stream (None when no factory wants it); runs in the caller's thread."""
        with self._lock:
            factories = list(self._factories)
        observers: List[StreamObserver] = []
        for factory in factories:
            try:
                observer = factory(start)
            except Exception:  # telemetry must never break a stream
                logger.exception("llmstream observer factory %r failed", factory)
                continue
            if observer is not None:
                observers.append(observer)
        # Wrapped even when alone: an observer that raises is logged, never the stream's failure.
        return _Observers(observers) if observers else None

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
                cost=self._cost, wasted_output_tokens=self._wasted,
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
            if report.cost is not None and math.isfinite(report.cost.total):
                self._cost += report.cost.total
            self._wasted += m.wasted_output_tokens
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(report)
            except Exception:  # a broken listener must not break streams; it is logged, not swallowed
                logger.exception("llmstream monitor listener %r failed", listener)


#: The process-wide monitor.
monitor = Monitor()
