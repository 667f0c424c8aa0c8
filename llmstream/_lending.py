"""A body lent to the caller: its thread runs the read steps, and the body comes back exactly once.

Strategy: once the caller consumes, the stream's run (a generator, see
``_worker.py``) lends it the attempt's body and *yields*: no thread waits
while the caller reads, and the caller's ``next()`` runs one
``_body.BodyReader`` step at a time. A slow stream then costs one thread
wake-up per token, not two (issue 17).

Rules:
  * The body comes back when it ends, when a step fails (the failure is the
    outcome, raised in the run, which decides on a retry), or when
    ``cancel()`` recalls it (any thread, idempotent).
  * ``on_return`` makes the run's next segment due exactly once, and only
    after the segment that lent the body has left the generator
    (:meth:`LentBody.detached`): two segments never run at once.
  * A step in progress finishes before the run goes on (the ``busy`` lock),
    so two threads never touch the response at once; a recalled step ends
    promptly because ``cancel()`` shut the socket first.
  * Backpressure: a lent body is read only when the caller asks, so an
    unread socket lets TCP flow control slow the server.

Never: a thread blocked while the caller reads, a second ``on_return``, or an
error swallowed (a step's failure is the run's to raise or retry).
"""

from __future__ import annotations

import threading
from typing import Callable, List, Optional

from ._body import BodyReader
from ._events import Event

__all__ = ["LentBody"]

#: Taken only to set a lent body's ``_back`` and ``_detached`` flags (nothing
#: allocated under it, so a finalizer's ``recall()`` cannot find it held by its
#: own thread): one lock for every lent body, not one each (issue 17).
_FLAGS_LOCK = threading.Lock()


class LentBody:
    """A body lent to the caller, whose thread runs its read steps until the body comes back (the rules above)."""

    __slots__ = ("reader", "returned", "outcome", "_busy", "_back", "_detached", "_on_return")

    def __init__(self, reader: BodyReader, on_return: Callable[[], None]) -> None:
        self.reader = reader
        self.returned = False
        self.outcome: Optional[BaseException] = None
        self._busy = threading.Lock()
        self._back = False
        self._detached = False
        self._on_return = on_return

    def step(self) -> Optional[List[Event]]:
        """Run one read step in the caller's thread; None once the body went back to the worker."""
        with self._busy:
            if self.returned:
                return None
            try:
                events = self.reader.step()
            except Exception as exc:  # not swallowed: the worker raises it, or retries a StreamError
                # A StreamError is the worker's to retry; anything else (a bug)
                # ends the stream as failed, raised to the caller by the worker.
                self._give_back(exc)
                return []
            if self.reader.done:
                self._give_back(None)
            return events

    def _give_back(self, outcome: Optional[BaseException]) -> None:
        self.outcome = outcome
        self.returned = True
        self.recall()

    def recall(self) -> None:
        """The body goes back to the worker (its end, a failure, or ``cancel()``): any thread, idempotent."""
        with _FLAGS_LOCK:
            if self._back:
                return
            self._back = True
            ready = self._detached
        if ready:
            self._on_return()

    def detached(self) -> None:
        """The segment that lent the body has left the generator: the next one may run."""
        with _FLAGS_LOCK:
            self._detached = True
            ready = self._back
        if ready:
            self._on_return()

    def take_back(self) -> Optional[BaseException]:
        """The worker's side, once resumed: end the lending; return the failure the caller met, if any."""
        with self._busy:  # a step in progress ends first
            self.returned = True
        outcome, self.outcome = self.outcome, None
        return outcome

