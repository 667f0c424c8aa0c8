"""The bounded queue between a stream's run and its caller: batches of events, handed over.

Strategy:
  * One producer (the stream's run, in a worker thread or in the caller's
    own) and one consumer (the caller). The run puts each read's events as
    ONE batch; the caller takes every queued batch at once.
  * The hand-over takes no lock: ``deque.append``/``popleft`` are atomic,
    each counter is written by one thread only, and a thread is woken only
    when the other side has said it is waiting (see :class:`EventQueue`).
  * Besides batches, the queue carries the offer of a body lent to the caller
    (``_lending.LentBody``), given only once every batch queued before it was
    taken, so the lent body's text never overtakes queued text.

Rules:
  * Backpressure: ``put`` blocks while the queue holds ``max_buffered``
    events or more. The run then stops reading the socket, TCP flow control
    slows the server, and memory stays bounded however slow the caller is.
  * ``close()`` (any thread) wakes everyone: a blocked ``put`` raises
    ``Cancelled``, a waiting ``get`` returns.
  * The end (with its error) is seen only with or after the last batch.

Never: a lock or a condition per hand-over (the per-token path), a ``put``
that blocks forever on a closed queue, or a wake-up that can be missed.
"""

from __future__ import annotations

import collections
import threading
from typing import Deque, List, Optional, Tuple

from ._connection import Cancelled
from ._events import Event
from ._lending import LentBody

__all__ = ["EventQueue", "Latch", "POLL_INTERVAL", "Signal"]

#: Where signals cannot interrupt a blocked lock (Windows), the caller waits in
#: slices this long, so Ctrl+C is seen promptly.
POLL_INTERVAL = 0.1


class Latch:
    """Set once, never cleared: ``threading.Event``'s ``set``/``is_set``/``wait`` in a fraction of its memory.

    Every stream has two (cancelled, done); an Event is a Condition, a lock
    and a deque, about 1 KiB each — with hundreds of streams (issue 17) that
    is memory for nothing. Here a bare lock is held from creation and
    ``set()`` releases it: each waiter acquires and at once releases it, so
    every waiter, and every later ``wait``, passes. Any thread may ``set``;
    ``set`` is idempotent.
    """

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def is_set(self) -> bool:
        """True once :meth:`set` was called."""
        return self._set

    def set(self) -> None:
        """Set the latch and wake every waiter (any thread, idempotent)."""
        if self._set:
            return
        self._set = True
        try:
            self._lock.release()
        except RuntimeError:
            pass  # two set() calls raced: the other one released it

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until set or ``timeout`` seconds passed (None: no limit); return :meth:`is_set`."""
        if self._set:
            return True
        if timeout is None or timeout >= threading.TIMEOUT_MAX:
            got = self._lock.acquire()
        else:
            got = self._lock.acquire(timeout=max(0.0, timeout))
        if got:
            try:
                self._lock.release()  # for the next waiter
            except RuntimeError:
                pass  # a racing set() released it already
        return self._set


class Signal:
    """A one-slot wake-up between two threads: cheaper than a ``Condition``.

    ``set()`` (from any thread) leaves one wake-up pending; ``wait()`` takes it
    or blocks until one comes. A wake-up may be stale (set while nobody
    waited): waiters re-check their condition in a loop, so it costs one extra
    turn, never a missed event. Built on a bare lock, which a finalizer may
    release from any thread without the deadlock a held Condition could cause.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        """Leave a wake-up for the waiter (idempotent while one is pending)."""
        try:
            self._lock.release()
        except RuntimeError:
            # Released already: a wake-up is pending, which is all set() promises.
            return

    def wait(self, timeout: Optional[float]) -> None:
        """Take the pending wake-up, waiting at most ``timeout`` seconds (None: no limit)."""
        if timeout is None or timeout >= threading.TIMEOUT_MAX:
            self._lock.acquire()
        else:
            self._lock.acquire(timeout=max(0.0, timeout))


class EventQueue:
    """Bounded hand-over of event batches from the worker to the caller.

    One producer (the worker) and one consumer (the caller). The hand-over
    takes no lock: ``deque.append``/``popleft`` are atomic, each counter is
    written by one thread only, and a thread is woken only when the other side
    has said it is waiting (a flag set *before* it re-checks the queue, so
    either the producer sees the flag or the consumer sees the batch). This
    relies on the GIL's sequential consistency: a free-threaded Python would
    need a lock here. A stream whose caller keeps up costs one wake-up per
    batch, not a lock/notify/allocation round.
    """

    __slots__ = ("_max", "_batches", "_put", "_taken", "_caller_waiting", "_worker_waiting",
                 "_wake_caller", "_wake_worker", "_ended", "_error", "_closed", "_lent", "consuming")

    def __init__(self, max_events: int) -> None:
        self._max = max_events
        # Made by the first put: a stream whose caller iterates at once is read in
        # the caller's thread and never queues a batch (a deque is ~600 B, issue 17).
        self._batches: Optional[Deque[List[Event]]] = None
        self._put = 0  # events appended (worker only)
        self._taken = 0  # events taken (caller only)
        self._caller_waiting = False
        self._worker_waiting = False
        # Each made by the side that waits on it, before it says it waits: a
        # stream read in its caller's thread (a lent body) never waits on its
        # queue, and two Signals are ~270 B (issue 17). A wake-up given before
        # it exists is not lost: the waiter re-checks after making it.
        self._wake_caller: Optional[Signal] = None
        self._wake_worker: Optional[Signal] = None
        self._ended = False
        self._error: Optional[BaseException] = None
        self._closed = False
        self._lent: Optional[LentBody] = None
        #: Set by the caller's first ``get``: from then on the worker lends it the body.
        self.consuming = False

    def lend(self, lent: Optional[LentBody]) -> None:
        """Offer the caller a body to read in its own thread (None: take the offer back)."""
        self._lent = lent
        _wake(self._wake_caller)  # once per attempt: a stale wake-up costs one turn of the caller's loop

    @property
    def lent(self) -> Optional[LentBody]:
        """The body the worker lent the caller, while it is still the caller's to read."""
        lent = self._lent
        return lent if lent is not None and not lent.returned else None

    def put(self, batch: List[Event], *, block: bool = True) -> None:
        """Append a batch, blocking while the queue is full; raise ``Cancelled`` if closed.

        ``block=False`` is for the consumer's own thread (a segment it runs
        itself): it would wait for itself; it drains the queue right after.
        """
        while block and self._put - self._taken >= self._max and not self._closed:
            wake = self._wake_worker
            if wake is None:  # only this thread (the producer) waits on it, so only it makes it
                wake = self._wake_worker = Signal()
            self._worker_waiting = True
            if self._put - self._taken >= self._max and not self._closed:
                wake.wait(None)  # close() and every get() that takes wake it
            self._worker_waiting = False
        if self._closed:
            raise Cancelled()
        batches = self._batches
        if batches is None:  # only this thread (the producer) makes it
            batches = self._batches = collections.deque()
        batches.append(batch)
        self._put += len(batch)
        if self._caller_waiting:
            _wake(self._wake_caller)

    def end(self, error: Optional[BaseException]) -> None:
        """Mark the end of the stream (with its error, if any); never blocks."""
        self._error = error
        self._ended = True  # after the error, and after every batch: get() reads it first
        _wake(self._wake_caller)

    def close(self) -> None:
        """Wake everyone: a blocked ``put`` raises ``Cancelled``, ``get`` returns."""
        self._closed = True
        _wake(self._wake_caller)
        _wake(self._wake_worker)

    def get(self, timeout: Optional[float]) -> Tuple[List[List[Event]], bool, Optional[BaseException], Optional[LentBody]]:
        """Take every queued batch, waiting at most ``timeout`` seconds (None: no limit) for one.

        Returns ``(batches, ended, error, lent)``: ``ended`` is True once the
        worker is done and everything it queued is in ``batches`` or was taken
        before; ``lent`` is a body lent to the caller, given only with no
        batch, so the caller reads it only after every batch queued before it.
        Returns at once while a body is lent.
        """
        self.consuming = True
        queued = self._batches
        if not queued and not self._ended and not self._closed and self.lent is None:
            wake = self._wake_caller
            if wake is None:  # only this thread (the consumer) waits on it, so only it makes it
                wake = self._wake_caller = Signal()
            self._caller_waiting = True
            if not queued and not self._ended and not self._closed and self.lent is None:
                wake.wait(timeout)
            self._caller_waiting = False
        # Read "lent" and "ended" before taking: every batch the worker queued
        # was appended before it lent a body or marked the end.
        lent = self.lent
        ended, error = self._ended, self._error
        queued = self._batches  # again: the first put may have made it meanwhile
        batches = []
        taken = 0
        while queued:
            batch = queued.popleft()
            batches.append(batch)
            taken += len(batch)
        if taken:
            self._taken += taken
            if self._worker_waiting:
                _wake(self._wake_worker)
            return batches, ended, error, None
        return batches, ended, error, lent


def _wake(signal: Optional[Signal]) -> None:
    """Wake a waiter, if a waiter ever made its Signal (one that did not re-checks before it waits)."""
    if signal is not None:
        signal.set()
