"""One attempt of a stream: its passage through the flow control, its request, its deadlines, its body.

Strategy:
  * An :class:`Attempt` is one HTTP request and the reading of its answer. It
    passes the client's flow control (``_flow.Gate``: the circuit breaker and
    the rate limiter), opens the request, reads the body one
    ``_body.BodyReader`` step at a time and, after the end marker, drains the
    body so the connection goes back to the pool. It knows nothing of
    retries: it ends, or raises its failure for the worker, which asks
    ``_next_attempt.RetryDecision`` what comes next.
  * Who reads the body: until the caller consumes, the attempt reads ahead
    and puts each read's events onto the queue as ONE batch. Once the caller
    consumes, it *lends* the caller the body (``_lending.LentBody``) and
    yields it, which ends the worker's segment: the caller's ``next()`` runs
    the read steps. That is why :meth:`Attempt.run` is a generator, which the
    worker's run (``_worker.py``) drives with ``yield from``.
  * Deadlines (design.md, Timeout): ``connect`` and ``first_token`` count
    from the moment the attempt is sent (after the gate let it go);
    ``connect`` bounds opening the connection, ``first_token`` the wait for
    the answer's headers and then its first content; ``total`` (the whole
    stream's) caps both. Each read's deadline is ``BodyReader``'s.

Rules:
  * Cancellation: :meth:`Attempt.interrupt` (any thread) shuts the attempt's
    sockets (``_connection.AttemptSockets``: connecting, waiting for headers
    or reading, all are woken) and recalls a lent body. The attempt
    registers each of them *before* it checks the cancel Event, so a cancel
    that came first is never missed.
  * A failure after cancellation is raised as ``Cancelled``: a shut socket
    looks like a broken stream, but it was our doing (``close()``, or the
    caller's side failed), so it is neither retried nor held against the
    server by the circuit breaker.
  * ``max_output_chars`` ends the answer early: the socket is then closed
    unread, not drained.
  * Metrics: the attempt opens and closes its entry in ``WorkerStats``; the
    gate's wait before the first attempt counts as time queued.

Never: a retry, a sleep, or a reference to the worker; the caller's queue is
only put to (reading ahead) and offered the lent body.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Generator, Optional

from ._body import BodyReader, time_left
from ._config import Timeout
from ._exceptions import StreamError
from ._flow import CancelFlag, FlowControl, Gate
from ._lending import LentBody
from ._monitor import StreamObserver, merge_headers
from ._output_guard import OutputGuard
from ._providers._base import Provider, RequestSpec, StreamDecoder
from ._queue import EventQueue
from ._redact import Redactor
from ._resume import Resumer
from ._stats import WorkerStats
from ._transport import AttemptSockets, Cancelled, OpenResponse, Transport

__all__ = ["Attempt", "AttemptContext", "DRAIN_TIMEOUT"]

#: After the end marker, how long to wait for the body's end so the connection
#: can go back to the pool; past that it is closed instead.
DRAIN_TIMEOUT = 0.5


class AttemptContext:
    """What every attempt of one stream shares: built once, by the stream's worker."""

    __slots__ = ("transport", "provider", "flow", "cancel", "timeout", "total_deadline", "stats",
                 "resumer", "guard", "observer", "redact", "queue", "on_return")

    def __init__(
        self,
        *,
        transport: Transport,
        provider: Provider,
        flow: FlowControl,
        cancel: CancelFlag,
        timeout: Timeout,
        total_deadline: float,
        stats: WorkerStats,
        resumer: Resumer,
        guard: Optional[OutputGuard],
        observer: Optional[StreamObserver],
        redact: Redactor,
        queue: EventQueue,
        on_return: Callable[[], None],
    ) -> None:
        self.transport = transport
        self.provider = provider
        self.flow = flow
        #: Set by the worker's cancel(): the attempt ends as ``Cancelled``.
        self.cancel = cancel
        self.timeout = timeout
        self.total_deadline = total_deadline
        self.stats = stats
        self.resumer = resumer
        self.guard = guard
        self.observer = observer
        self.redact = redact
        self.queue = queue
        #: Called (once per lending) when a lent body comes back: the run's next segment is due.
        self.on_return = on_return


class Attempt:
    """One request and its answer, read ahead or lent to the caller (the rules above).

    Usage (by the worker)::

        attempt = Attempt(context, spec, decoder, lease)
        yield from attempt.run()     # raises the attempt's failure, or Cancelled
        ... attempt.interrupt()      # from cancel(), any thread
    """

    __slots__ = ("_context", "_spec", "_decoder", "_lease", "_lock", "_sockets", "_lent", "charged")

    def __init__(self, context: AttemptContext, spec: RequestSpec, decoder: StreamDecoder, lease: object) -> None:
        self._context = context
        self._spec = spec
        self._decoder = decoder
        self._lease = lease  # the flow's concurrency lease the stream holds (None: no limit)
        # Reentrant: a finalizer (a dropped stream) may call interrupt() in this very thread.
        self._lock = threading.RLock()
        self._sockets: Optional[AttemptSockets] = None
        self._lent: Optional[LentBody] = None
        #: Tokens charged to the rate limiter when the gate let the attempt go
        #: (None: it never passed); the worker corrects them against the usage.
        self.charged: Optional[float] = None

    def interrupt(self) -> None:
        """The stream is cancelled: wake whatever the attempt waits in (any thread, idempotent)."""
        with self._lock:
            sockets, lent = self._sockets, self._lent
        try:
            if sockets is not None:
                sockets.shutdown()  # first: it ends a read the caller may be blocked in
        finally:
            if lent is not None:
                lent.recall()

    def run(self) -> Generator[LentBody, None, None]:
        """The attempt through the flow control; a failure after ``cancel()`` is raised as ``Cancelled``."""
        context = self._context
        stats = context.stats
        gate = Gate(context.flow, context.cancel, context.total_deadline, self._lease)
        error: Optional[BaseException] = None
        try:
            tokens = context.provider.estimate_tokens(self._spec.json) if context.flow.counts_tokens else 0.0
            waited = gate.enter(tokens)
            self.charged = tokens  # corrected at the end against the usage of the attempt that ends the stream
            if stats.attempts == 0:
                stats.queued += waited
            yield from self._send_and_read(gate)
        except StreamError as exc:
            if context.cancel.is_set():
                error = Cancelled()
                raise error from exc
            error = exc
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            # Also after a failed enter(): a probe that never went out is freed.
            gate.leave(error)
            failed = isinstance(error, Exception) and not isinstance(error, Cancelled)
            stats.end_attempt(type(error).__name__ if failed else None, *self._decoder.response_info)

    def _set_sockets(self, sockets: Optional[AttemptSockets]) -> None:
        with self._lock:
            self._sockets = sockets
        if sockets is not None and self._context.cancel.is_set():
            sockets.shutdown()  # cancel() came first: the attempt must not open a socket

    def _send_and_read(self, gate: Gate) -> Generator[LentBody, None, None]:
        context = self._context
        stats = context.stats
        spec = self._spec
        stats.attempts += 1
        started = time.monotonic()
        resume = context.resumer.strategy if stats.attempts > 1 else None
        stats.begin_attempt(resume, started)
        if context.observer is not None:
            extra = context.observer.attempt_started(stats.attempts, resume)
            if extra:  # a W3C traceparent: the provider's own traces join the caller's
                spec = spec.replace(headers=merge_headers(spec.headers, extra))
        timeout = context.timeout
        total_deadline = context.total_deadline
        first_deadline = started + timeout.first_token if timeout.first_token is not None else math.inf
        connect_deadline = started + timeout.connect if timeout.connect is not None else math.inf
        connect, _ = time_left(connect_deadline, "connect", total_deadline, started)
        wait, wait_kind = time_left(first_deadline, "first_token", total_deadline, started)
        sockets = AttemptSockets()
        self._set_sockets(sockets)
        try:
            response = context.transport.open(
                spec, context.provider, connect_timeout=connect, response_timeout=wait, response_timeout_kind=wait_kind,
                cancelled=context.cancel.is_set, sockets=sockets, redact=context.redact,
            )
            gate.answered()
            with response:
                reader = BodyReader(
                    response, self._decoder, stats=stats, resumer=context.resumer, guard=context.guard,
                    idle=timeout.idle, first_deadline=first_deadline, total_deadline=total_deadline,
                )
                yield from self._serve_body(reader)
                if not reader.limited:  # max_output_chars: the socket is closed unread
                    _drain(response)
        finally:
            self._set_sockets(None)

    def _serve_body(self, reader: BodyReader) -> Generator[LentBody, None, None]:
        """Read ahead into the queue until the caller consumes, then lend it the body."""
        queue = self._context.queue
        while not reader.done:
            if queue.consuming:
                yield from self._lend(reader)
                return
            events = reader.step()
            if events:
                queue.put(events)

    def _lend(self, reader: BodyReader) -> Generator[LentBody, None, None]:
        """Let the caller's thread read the body; go on when it comes back, and raise what it met."""
        context = self._context
        lent = LentBody(reader, context.on_return)
        with self._lock:
            self._lent = lent
        if context.cancel.is_set():
            lent.recall()
        context.queue.lend(lent)
        try:
            yield lent  # the worker's segment ends here; the body's return starts the next one
            outcome = lent.take_back()
        finally:
            context.queue.lend(None)
            with self._lock:
                self._lent = None
        if context.cancel.is_set():
            raise Cancelled()
        if outcome is not None:
            raise outcome


def _drain(response: OpenResponse) -> None:
    """Read to the body's end after the end marker so the connection is reused."""
    end = time.monotonic() + DRAIN_TIMEOUT
    try:
        while response.read(max(0.001, end - time.monotonic()), "idle"):
            if time.monotonic() >= end:
                return
    except StreamError:
        # The answer is complete; a server that keeps the body open after its
        # end marker only costs us the connection, which close() discards.
        return
