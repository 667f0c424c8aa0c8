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
    returns it from :meth:`Attempt.start`; the worker's run (a generator,
    ``_worker.py``) yields it, which ends the worker's segment, and the
    caller's ``next()`` runs the read steps. When the body comes back the run
    resumes and calls :meth:`Attempt.take_back`. The attempt is an object
    with a start and an end, not a generator of its own: one generator per
    stream (the run's) costs one frame and one C stack level, not seven
    (issue 17, memory per stream).
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
from typing import Callable, NoReturn, Optional

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
        lent = attempt.start()       # raises the attempt's failure, or Cancelled
        if lent is not None:         # the caller's thread reads the body
            ... pause the run until the body comes back, then:
            attempt.take_back(lent)  # raises what the caller's reads met
        ... attempt.interrupt()      # from cancel(), any thread
    """

    __slots__ = ("_context", "_spec", "_decoder", "_lease", "_lock", "_sockets", "_lent", "charged",
                 "_gate", "_response", "_reader")

    def __init__(self, context: AttemptContext, spec: RequestSpec, decoder: StreamDecoder, lease: object) -> None:
        self._context = context
        self._spec = spec
        self._decoder = decoder
        self._lease = lease  # the flow's concurrency lease the stream holds (None: no limit)
        # Reentrant: a finalizer (a dropped stream) may call interrupt() in this very thread.
        self._lock = threading.RLock()
        self._sockets: Optional[AttemptSockets] = None
        self._lent: Optional[LentBody] = None
        self._gate: Optional[Gate] = None
        self._response: Optional[OpenResponse] = None
        self._reader: Optional[BodyReader] = None
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

    def start(self) -> Optional[LentBody]:
        """Pass the flow control, send the request and read ahead until the caller consumes.

        Returns the body lent to the caller (the run pauses until it comes
        back, then calls :meth:`take_back`), or None: the attempt is over.
        Raises the attempt's failure (``Cancelled`` after ``cancel()``), the
        attempt then over too.
        """
        try:
            self._open()
            lent = self._serve()
        except BaseException as exc:
            self._fail(exc)
        if lent is None:
            self._end(None)
        return lent

    def take_back(self, lent: LentBody) -> None:
        """The lent body came back (the run resumed): end the attempt, raising what the caller's reads met."""
        try:
            try:
                outcome = lent.take_back()
            finally:
                self._unlend()
            if self._context.cancel.is_set():
                raise Cancelled()
            if outcome is not None:
                raise outcome
            self._finish_body()
        except BaseException as exc:
            self._fail(exc)
        self._end(None)

    def abandon(self, exc: BaseException) -> None:
        """The run was closed while the body was lent (``GeneratorExit``): end the attempt with ``exc``."""
        try:
            self._unlend()
        finally:
            self._end(exc)

    def _open(self) -> None:
        """The gate, then the request: on return the response and its reader are the attempt's."""
        context = self._context
        stats = context.stats
        gate = self._gate = Gate(context.flow, context.cancel, context.total_deadline, self._lease)
        tokens = context.provider.estimate_tokens(self._spec.json) if context.flow.counts_tokens else 0.0
        waited = gate.enter(tokens)
        self.charged = tokens  # corrected at the end against the usage of the attempt that ends the stream
        if stats.attempts == 0:
            stats.queued += waited
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
        sockets = AttemptSockets(self._lock)
        self._set_sockets(sockets)
        response = self._response = context.transport.open(
            spec, context.provider, connect_timeout=connect, response_timeout=wait, response_timeout_kind=wait_kind,
            cancelled=context.cancel.is_set, sockets=sockets, redact=context.redact,
        )
        gate.answered()
        self._reader = BodyReader(
            response, self._decoder, stats=stats, resumer=context.resumer, guard=context.guard,
            idle=timeout.idle, first_deadline=first_deadline, total_deadline=total_deadline,
        )

    def _serve(self) -> Optional[LentBody]:
        """Read ahead into the queue until the caller consumes (then lend it the body), or to the body's end."""
        reader = self._reader
        assert reader is not None
        queue = self._context.queue
        while not reader.done:
            if queue.consuming:
                return self._lend(reader)
            events = reader.step()
            if events:
                queue.put(events)
        self._finish_body()
        return None

    def _lend(self, reader: BodyReader) -> LentBody:
        """Let the caller's thread read the body (the run pauses); :meth:`take_back` raises what it met."""
        context = self._context
        lent = LentBody(reader, context.on_return)
        with self._lock:
            self._lent = lent
        if context.cancel.is_set():
            lent.recall()
        context.queue.lend(lent)
        return lent

    def _unlend(self) -> None:
        self._context.queue.lend(None)
        with self._lock:
            self._lent = None

    def _finish_body(self) -> None:
        """After the end marker: drain the body so the connection is reused (max_output_chars closes it unread)."""
        reader, response = self._reader, self._response
        if reader is not None and response is not None and not reader.limited:
            self._context.stats.drained_bytes += _drain(response)

    def _fail(self, exc: BaseException) -> NoReturn:
        """End the attempt with ``exc`` and raise it (as ``Cancelled`` after ``cancel()``)."""
        error = self._end(exc)
        if error is exc or error is None:
            raise exc
        raise error from exc

    def _end(self, exc: Optional[BaseException]) -> Optional[BaseException]:
        """Close what the attempt holds and record its outcome; return the error it ends with.

        A failure after ``cancel()`` ends it as ``Cancelled``: a shut socket
        looks like a broken stream, but it was our doing.
        """
        error = exc
        try:
            try:
                response, self._response, self._reader = self._response, None, None
                if response is not None:
                    response.close()
            finally:
                self._set_sockets(None)
            if isinstance(exc, StreamError) and self._context.cancel.is_set():
                error = Cancelled()
        except BaseException as late:
            error = late
            raise
        finally:
            # Also after a failed enter(): a probe that never went out is freed.
            gate, self._gate = self._gate, None
            if gate is not None:
                gate.leave(error)
            failed = isinstance(error, Exception) and not isinstance(error, Cancelled)
            self._context.stats.end_attempt(type(error).__name__ if failed else None, *self._decoder.response_info)
        return error

    def _set_sockets(self, sockets: Optional[AttemptSockets]) -> None:
        with self._lock:
            self._sockets = sockets
        if sockets is not None and self._context.cancel.is_set():
            sockets.shutdown()  # cancel() came first: the attempt must not open a socket


def _drain(response: OpenResponse) -> int:
    """Read to the body's end after the end marker so the connection is reused; return the bytes read."""
    end = time.monotonic() + DRAIN_TIMEOUT
    drained = 0
    try:
        while True:
            data = response.read(max(0.001, end - time.monotonic()), "idle")
            if not data:
                return drained
            drained += len(data)
            if time.monotonic() >= end:
                return drained
    except StreamError:
        # The answer is complete; a server that keeps the body open after its
        # end marker only costs us the connection, which close() discards.
        return drained
