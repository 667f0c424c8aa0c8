"""Runs: a stream's events, numbered and kept, detached from any one browser connection.

Strategy: a :class:`Run` owns a ``TokenStream`` and one pump thread that
iterates ``stream.events()`` (so the worker runs in that thread, as for any
caller that iterates at once). Each event becomes a *relay event*
``(id, name, data)``: ids count from 1, names are the wire names the relay
sends (``text``, ``thinking``, ``tool_call_delta``, ``tool_call``, ``usage``,
``finish``, ``retrying``, ``reset``, ``error``, ``done``), data is a JSON-ready
dict. Readers (the relay's response bodies) take the events after a cursor,
blocking (threads) or through a waker (asyncio), so many browsers may read one
run, and a reconnecting browser picks up after its ``Last-Event-ID``.

Invariants:
  * A run always ends with one ``done`` event, after an ``error`` event when
    the stream failed: a reader never sees a silently cut run.
  * The kept events are bounded (``max_events``): the oldest go first; a
    reader whose cursor fell behind them is told the run is not resumable
    (:class:`NotResumableError`), never given a gap.
  * Error messages leave through one redaction step (``_redact.Redactor``)
    that knows the provider keys of the environment and any secrets given.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import os
import secrets as _secrets
import threading
import time
import weakref
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Protocol, Set, Tuple

from ._async import spawn
from ._events import Event, Finish, Reset, Retrying, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from ._exceptions import APIStatusError, StreamError
from ._providers import PROVIDERS
from ._redact import Redactor
from ._stream import TokenStream

__all__ = ["RelayEvent", "Run", "RunSource", "RunStore", "MemoryRunStore", "NotResumableError", "describe_error"]

#: One relay event: (id, wire name, JSON-ready data).
RelayEvent = Tuple[int, str, Dict[str, Any]]


_pump_ids = itertools.count(1)
#: Text pieces are merged into one kept event (while no reader has it) up to
#: this many characters: fewer, larger events, and no quadratic concatenation.
MERGE_LIMIT = 4096


class NotResumableError(LookupError):
    """Raised when a run is unknown, expired, or no longer holds the events after the reader's cursor."""


def _redactor(extra: Iterable[str]) -> Redactor:
    # Every provider's key from the environment (each provider knows where it reads its own).
    keys = [provider.api_key_from_env(os.environ) for provider in PROVIDERS.values()]
    return Redactor([*(key for key in keys if key), *extra])


def describe_error(error: BaseException, delivered: str, redact: Redactor) -> Dict[str, Any]:
    """The data of an ``error`` event: class, message (redacted), what was delivered.

    A ``StreamError``'s message was already redacted by the worker (it knew
    the request's key); it is redacted again with the keys known here. Any
    other exception is a bug or a callback's failure: its class is sent, its
    message is not (it may quote anything), and the server logs it.
    """
    data: Dict[str, Any] = {"class": type(error).__name__, "delivered": delivered}
    if isinstance(error, StreamError):
        data["message"] = redact(error.message)
        data["attempts"] = error.attempts
        if isinstance(error, APIStatusError):
            data["status_code"] = error.status_code
    else:
        data["message"] = "internal error (see the server's log)"
    return data


def convert(event: Event, redact: Redactor) -> Optional[Tuple[str, Dict[str, Any]]]:
    """A stream event as (wire name, data); None for an event the relay does not send."""
    cls = event.__class__
    if cls is TextDelta:
        return "text", {"text": event.text}  # type: ignore[union-attr]
    if cls is ThinkingDelta:
        return "thinking", {"text": event.text}  # type: ignore[union-attr]
    if isinstance(event, ToolCallDelta):
        return "tool_call_delta", {"index": event.index, "id": event.id, "name": event.name, "arguments": event.arguments}
    if isinstance(event, ToolCall):
        return "tool_call", {"index": event.index, "id": event.id, "name": event.name, "arguments": event.arguments}
    if isinstance(event, Usage):
        return "usage", {"input_tokens": event.input_tokens, "output_tokens": event.output_tokens}
    if isinstance(event, Finish):
        return "finish", {"reason": event.reason}
    if isinstance(event, Retrying):
        cause = event.cause
        message = redact(cause.message) if isinstance(cause, StreamError) else type(cause).__name__
        return "retrying", {"attempt": event.attempt, "delay": event.delay,
                            "error": {"class": type(cause).__name__, "message": message}}
    if isinstance(event, Reset):
        # The browser discards what it showed; the discarded text itself is not re-sent.
        return "reset", {"attempt": event.attempt, "discarded_chars": len(event.discarded_text)}
    return None


class Run:
    """One stream's relay events, kept while it generates, readable by any number of readers.

    Args:
        stream: the stream to pump (a pump thread iterates its events).
        run_id: the run's id (default: a random URL-safe token).
        max_events: events kept; past it the oldest are dropped.
        secrets: extra strings to redact from error frames.
        orphan_timeout: stop the run when nobody has read it for this long
            (``None``: never).
    """

    def __init__(self, stream: TokenStream, *, run_id: Optional[str] = None, max_events: int = 100_000,
                 secrets: Iterable[str] = (), orphan_timeout: Optional[float] = None) -> None:
        if max_events < 2:
            raise ValueError(f"max_events must be >= 2, got {max_events!r}")
        self.id = run_id or _secrets.token_urlsafe(12)
        self.stream = stream
        self._max_events = max_events
        self._redact = _redactor(secrets)
        self._events: Deque[RelayEvent] = collections.deque()
        self._last_id = 0
        self._cond = threading.Condition(threading.Lock())  # a plain lock: cheaper than the default RLock
        self._wakers: Set[Callable[[], None]] = set()
        self._readers = 0
        self._blocked = 0  # readers waiting in wait_after
        self._handed = 0  # the newest id any reader was given: events up to it never change
        self._orphan_timeout = orphan_timeout
        self.finished_at: Optional[float] = None
        self.unwatched_since: Optional[float] = time.monotonic()
        self._pumped = threading.Event()
        # Started through the launcher: Thread.start() waits for the new thread to
        # run, which blocks an event loop (a Starlette route makes runs on it).
        spawn(self._pump, (), f"llmstream-relay-{next(_pump_ids)}")
        if orphan_timeout is not None:
            # A run nobody ever reads (the browser left before the body began) stops too.
            _timers.schedule(orphan_timeout, weakref.ref(self), orphan_timeout)

    # -- the pump ----------------------------------------------------------------

    def _pump(self) -> None:
        stream, redact = self.stream, self._redact
        status = "finished"
        # Text pieces already in the stream's current batch are joined here,
        # without the lock, and appended once the batch is used up (when the
        # next event would have to be waited for): one lock round per batch,
        # not per token, and no piece waits for one that has not arrived.
        pending: List[str] = []
        pending_name = "text"
        try:
            for event in stream.events():
                cls = event.__class__
                if cls is TextDelta or cls is ThinkingDelta:  # the hot path: no dict per token
                    name = "text" if cls is TextDelta else "thinking"
                    if name != pending_name and pending:
                        self._append_text(pending_name, "".join(pending))
                        pending.clear()
                    pending_name = name
                    pending.append(event.text)  # type: ignore[union-attr]
                    if stream._more_in_hand():
                        continue
                    self._append_text(name, pending[0] if len(pending) == 1 else "".join(pending))
                    pending.clear()
                    continue
                if pending:
                    self._append_text(pending_name, "".join(pending))
                    pending.clear()
                converted = convert(event, redact)
                if converted is not None:
                    self._append(*converted)
            if stream.status == "closed":
                status = "closed"
        except BaseException as exc:  # every failure becomes an error frame, never a cut body
            status = "failed"
            if pending:  # delivered text: it goes before the error
                self._append_text(pending_name, "".join(pending))
            self._append("error", describe_error(exc, stream.text, redact))
        finally:
            stream.close()
            self.finished_at = time.monotonic()  # before "done": a reader that sees it sees a finished run
            self._append("done", {"status": status})
            self._pumped.set()

    def _append_text(self, name: str, text: str) -> None:
        """Append a text (or thinking) piece: merged into the newest event while no reader has been given it."""
        with self._cond:
            events = self._events
            if events:
                last = events[-1]
                # Ids stay exact: an event handed to a reader is never changed, so a
                # reconnect after its id misses nothing and repeats nothing.
                data = last[2]
                if last[1] == name and last[0] > self._handed and len(data["text"]) < MERGE_LIMIT:
                    data["text"] += text
                    if self._blocked or self._wakers:
                        self._notify()
                    return
        self._append(name, {"text": text})

    def _notify(self) -> None:
        # Called with the lock held.
        if self._blocked:
            self._cond.notify_all()
        for wake in self._wakers:
            wake()

    def _append(self, name: str, data: Dict[str, Any]) -> None:
        with self._cond:
            self._last_id += 1
            self._events.append((self._last_id, name, data))
            if len(self._events) > self._max_events:
                self._events.popleft()
            self._notify()

    # -- readers -----------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the ``done`` event is kept."""
        return self.finished_at is not None

    @property
    def last_id(self) -> int:
        """The id of the newest event (0 before any)."""
        return self._last_id

    @property
    def first_id(self) -> int:
        """The id of the oldest kept event (1 before any)."""
        with self._cond:
            return self._events[0][0] if self._events else 1

    def events_after(self, cursor: int) -> List[RelayEvent]:
        """The kept events whose id is above ``cursor`` (non-blocking).

        Raises:
            NotResumableError: events after ``cursor`` were dropped already.
        """
        with self._cond:
            return self._after(cursor)

    def _after(self, cursor: int) -> List[RelayEvent]:
        events = self._events
        if not events or cursor >= self._last_id:
            return []
        first = events[0][0]
        if cursor < first - 1:
            raise NotResumableError(f"run {self.id!r} no longer holds the events after {cursor}")
        # From the right: a live reader wants the few newest of many kept events
        # (indexing a deque from the left walks it).
        fresh = list(itertools.islice(reversed(events), self._last_id - max(cursor, first - 1)))
        fresh.reverse()
        if fresh and fresh[-1][0] > self._handed:
            self._handed = fresh[-1][0]
        return fresh

    def wait_after(self, cursor: int, timeout: float) -> List[RelayEvent]:
        """Like :meth:`events_after`, waiting at most ``timeout`` seconds for one."""
        with self._cond:
            found = self._after(cursor)
            if not found and timeout > 0:
                self._blocked += 1
                try:
                    self._cond.wait(timeout)
                finally:
                    self._blocked -= 1
                found = self._after(cursor)
            return found

    def attach(self, waker: Optional[Callable[[], None]] = None) -> None:
        """A reader starts (with a waker called, from the pump thread, after each new event)."""
        with self._cond:
            self._readers += 1
            self.unwatched_since = None
            if waker is not None:
                self._wakers.add(waker)

    def detach(self, waker: Optional[Callable[[], None]] = None) -> None:
        """A reader ended (its browser went away or it read ``done``)."""
        with self._cond:
            self._readers -= 1
            if waker is not None:
                self._wakers.discard(waker)
            if self._readers or self.finished_at is not None:
                return
            self.unwatched_since = time.monotonic()
        if self._orphan_timeout is not None:
            # Weak: a pending timer must not keep a finished run (and its stream) alive.
            _timers.schedule(self._orphan_timeout, weakref.ref(self), self._orphan_timeout)

    def stop(self) -> None:
        """Cancel the upstream stream (any thread; returns at once): the run ends with ``done`` (closed)."""
        # close() may wait up to a second for the worker: never on the caller's
        # (maybe an event loop's) thread.
        spawn(self.stream.close, (), "llmstream-relay-stop")

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the pump to end; True if it has."""
        return self._pumped.wait(timeout)


class RunSource(Protocol):
    """What the relay reads a run through (a :class:`Run` in memory; another store's run object)."""

    @property
    def finished(self) -> bool:
        """True once the ``done`` event is kept."""

    @property
    def last_id(self) -> int:
        """The id of the newest event (0 before any)."""

    def events_after(self, cursor: int) -> List[RelayEvent]:
        """The events after ``cursor``, at once; raises :class:`NotResumableError` if they are gone."""

    def wait_after(self, cursor: int, timeout: float) -> List[RelayEvent]:
        """Like ``events_after``, waiting at most ``timeout`` seconds for one (a WSGI body's thread)."""

    def attach(self, waker: Optional[Callable[[], None]] = None) -> None:
        """A reader starts; ``waker`` (any thread) is called after each new event."""

    def detach(self, waker: Optional[Callable[[], None]] = None) -> None:
        """A reader ended."""

    def stop(self) -> None:
        """Cancel the upstream stream; returns at once."""


class RunStore(Protocol):
    """A store of runs: :class:`MemoryRunStore` here; a Redis one implements the same three methods."""

    def start(self, stream: TokenStream) -> str:
        """Start a run from ``stream``; return its id."""

    def get(self, run_id: str) -> RunSource:
        """The run; raises :class:`NotResumableError` if unknown or expired."""

    def stop(self, run_id: str) -> bool:
        """Cancel the run's upstream stream; False if unknown."""


class _Timers:
    """One daemon thread for every run's orphan check (a ``threading.Timer`` is a thread each)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: List[Tuple[float, int, "weakref.ref[Run]", float]] = []
        self._wake = threading.Event()
        self._started = False
        self._order = itertools.count()

    def schedule(self, delay: float, ref: "weakref.ref[Run]", timeout: float) -> None:
        with self._lock:
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._order), ref, timeout))
            start, self._started = not self._started, True
        if start:
            spawn(self._serve, (), "llmstream-relay-timers")
        self._wake.set()

    def _serve(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                ready = []
                while self._due and self._due[0][0] <= now:
                    ready.append(heapq.heappop(self._due))
                wait = self._due[0][0] - now if self._due else None
            for _, _, ref, timeout in ready:
                _stop_if_orphan(ref, timeout)
            del ready
            self._wake.wait(wait)
            self._wake.clear()


_timers = _Timers()


def _stop_if_orphan(ref: "weakref.ref[Run]", timeout: float) -> None:
    run = ref()
    if run is None:
        return
    since = run.unwatched_since
    # A reader that came and went meanwhile set a later "since" (and its own timer).
    if since is not None and run.finished_at is None and time.monotonic() - since >= timeout - 0.01:
        run.stop()


class MemoryRunStore:
    """Runs kept in this process's memory: the default run store.

    Args:
        ttl: seconds a finished run stays resumable.
        max_events: events kept per run (the oldest go first).
        orphan_timeout: a run that nobody reads for this long is stopped
            (its upstream stream closed); ``None``: never.
        secrets: extra strings to redact from error frames.

    Usage::

        runs = MemoryRunStore()
        run_id = runs.start(client.stream("Hi", model="gpt-4o-mini"))
        body = runs.body(run_id, after=relay.last_event_id(request.headers, request.args))

    A store is thread-safe. Another store (Redis...) implements the same
    three methods: ``start``, ``get`` and ``stop``; the relay reads runs through
    ``events_after``/``wait_after``/``attach``/``detach``.
    """

    def __init__(self, *, ttl: float = 300.0, max_events: int = 100_000, orphan_timeout: Optional[float] = 60.0,
                 secrets: Iterable[str] = ()) -> None:
        self.ttl = ttl
        self.max_events = max_events
        self.orphan_timeout = orphan_timeout
        self._secrets = tuple(secrets)
        self._runs: Dict[str, Run] = {}
        self._lock = threading.Lock()

    def start(self, stream: TokenStream) -> str:
        """Start pumping ``stream`` into a new run; return the run's id."""
        self._sweep()
        run = Run(stream, max_events=self.max_events, secrets=self._secrets, orphan_timeout=self.orphan_timeout)
        with self._lock:
            self._runs[run.id] = run
        return run.id

    def get(self, run_id: str) -> Run:
        """The run with this id.

        Raises:
            NotResumableError: unknown or expired.
        """
        self._sweep()
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise NotResumableError(f"run {run_id!r} is unknown or expired")
        return run

    def stop(self, run_id: str) -> bool:
        """Cancel a run's upstream stream; False if the run is unknown."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            return False
        run.stop()
        return True

    def _sweep(self) -> None:
        # Lazy (no timer thread): every start and get drops expired runs and
        # stops orphans, so a store costs nothing while idle.
        now = time.monotonic()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            finished_at, unwatched = run.finished_at, run.unwatched_since
            if finished_at is not None and now - finished_at > self.ttl:
                with self._lock:
                    self._runs.pop(run.id, None)
            elif (finished_at is None and unwatched is not None and self.orphan_timeout is not None
                  and now - unwatched > self.orphan_timeout):
                run.stop()  # started and never read: no detach() timer was ever set

    def close(self) -> None:
        """Stop every run and forget them."""
        with self._lock:
            runs, self._runs = list(self._runs.values()), {}
        for run in runs:
            run.stop()
