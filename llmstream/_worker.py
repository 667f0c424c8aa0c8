"""The worker thread and the bounded queue it fills: one of each per stream.

Strategy:
  * The worker owns one stream's attempts: flow control, the request, the
    retry and resume decisions. The body of each attempt is read one step at
    a time by ``_body.BodyReader`` (one socket read, decoded, filtered).
  * Who runs it: the stream's run is a generator (:meth:`Worker._main`) driven
    one *segment* at a time by whoever claims it — the caller's thread if it
    iterates within ``START_GRACE`` (then no thread is made at all), else a
    thread the shared starter gives it. Until the caller consumes, the run
    reads ahead and puts each read's events onto the queue as ONE batch. Once
    the caller consumes, the run *lends* it the body (:class:`_Lent`) and its
    segment ends: the caller's ``next()`` runs the read steps itself. A slow
    stream then costs one thread wake-up per token, not two — what lets
    hundreds of streams share one process (issue 17). The body comes back at
    its end, on a failure (the next segment decides on a retry) or on
    ``cancel()``; the next segment runs in the caller's loop, or in a thread
    when the caller is not there to run it.
  * Backpressure: ``put`` blocks while the queue holds ``max_buffered`` events
    or more; a lent body is read only when the caller asks. Either way an
    unread socket lets TCP flow control slow the server, and memory stays
    bounded however slow the caller is.
  * Timeouts: before each read the step computes its deadline (first token,
    idle or total) and hands the time left to the socket. Only content events
    move the idle clock; keep-alive comments and pings do not. The clock
    restarts when the next step starts (after ``put`` returned, or when the
    caller asked for more), so time spent on a slow caller never counts as
    server idleness.
  * Cancellation: ``cancel()`` (any thread) sets an Event, shuts down the
    attempt's socket (``_connection.AttemptSockets``: connecting, waiting for
    headers or reading, all are woken), recalls a lent body and wakes a
    blocked ``put`` or backoff wait. The worker then ends without reporting
    an error.
  * Redaction: every error leaves this thread (raised, or as a ``Retrying``
    event's cause, or in a log line) through the stream's ``Redactor``, which
    knows the request's credentials: servers echo keys back.
  * Retries: a failed attempt that may be retried waits on the cancel Event
    (never ``time.sleep``) and tries again; the resume rules of
    ``_resume.py`` make sure nothing is delivered twice or lost.
  * Flow control (``_flow.py``, shared by a client's workers): the worker
    takes a concurrency slot before its first attempt and keeps it to its
    end; before each attempt it asks the circuit breaker and the rate limiter.
    A 429 pauses the whole client. ``max_output_chars`` cuts the answer at
    that many characters, ends it with ``Finish("max_output_chars")`` and
    closes the socket without reading further.
  * Metrics: counters and histograms (``_stats.WorkerStats``) are updated by
    the thread that holds the body (never two at once); the caller reads a
    snapshot. At its end the worker reports the stream to the process-wide
    monitor.

The worker never references the ``TokenStream`` that owns it, and the
stream's finalizer holds the worker only weakly, so a stream the caller drops
(or that failed) is collected, and its finalizer cancels the worker.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
import weakref
from typing import Callable, Deque, Generator, List, Optional, Set, Tuple

from ._config import Retry, Timeout
from ._body import BodyReader, time_left
from ._cost import Pricing, account, price
from ._events import Cost, Event, Retrying, StreamReport
from ._exceptions import RateLimitError, StreamError
from ._flow import FlowControl, Gate
from ._monitor import StreamStart, merge_headers, monitor
from ._output_guard import OutputGuard
from ._providers._base import Provider, RequestSpec, StreamDecoder
from ._redact import Redactor, redact_error, secrets_in_request
from ._resume import Resumer
from ._retry import RetrySchedule, is_retryable
from ._stats import WorkerStats
from ._textlog import SharedText
from ._transport import AttemptSockets, Cancelled, OpenResponse, Transport, redact_url

__all__ = ["EventQueue", "Worker"]

logger = logging.getLogger("llmstream")

#: Where signals cannot interrupt a blocked lock (Windows), the caller waits in
#: slices this long, so Ctrl+C is seen promptly.
POLL_INTERVAL = 0.1
#: After the end marker, how long to wait for the body's end so the connection
#: can go back to the pool; past that it is closed instead.
DRAIN_TIMEOUT = 0.5

_thread_ids = itertools.count(1)


class _Signal:
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
        self._batches: Deque[List[Event]] = collections.deque()
        self._put = 0  # events appended (worker only)
        self._taken = 0  # events taken (caller only)
        self._caller_waiting = False
        self._worker_waiting = False
        self._wake_caller = _Signal()
        self._wake_worker = _Signal()
        self._ended = False
        self._error: Optional[BaseException] = None
        self._closed = False
        self._lent: Optional[_Lent] = None
        #: Set by the caller's first ``get``: from then on the worker lends it the body.
        self.consuming = False

    def lend(self, lent: Optional["_Lent"]) -> None:
        """Offer the caller a body to read in its own thread (None: take the offer back)."""
        self._lent = lent
        self._wake_caller.set()  # once per attempt: a stale wake-up costs one turn of the caller's loop

    @property
    def lent(self) -> Optional["_Lent"]:
        """The body the worker lent the caller, while it is still the caller's to read."""
        lent = self._lent
        return lent if lent is not None and not lent.returned else None

    def put(self, batch: List[Event], *, block: bool = True) -> None:
        """Append a batch, blocking while the queue is full; raise ``Cancelled`` if closed.

        ``block=False`` is for the consumer's own thread (a segment it runs
        itself): it would wait for itself; it drains the queue right after.
        """
        while block and self._put - self._taken >= self._max and not self._closed:
            self._worker_waiting = True
            if self._put - self._taken >= self._max and not self._closed:
                self._wake_worker.wait(None)  # close() and every get() that takes wake it
            self._worker_waiting = False
        if self._closed:
            raise Cancelled()
        self._batches.append(batch)
        self._put += len(batch)
        if self._caller_waiting:
            self._wake_caller.set()

    def end(self, error: Optional[BaseException]) -> None:
        """Mark the end of the stream (with its error, if any); never blocks."""
        self._error = error
        self._ended = True  # after the error, and after every batch: get() reads it first
        self._wake_caller.set()

    def close(self) -> None:
        """Wake everyone: a blocked ``put`` raises ``Cancelled``, ``get`` returns."""
        self._closed = True
        self._wake_caller.set()
        self._wake_worker.set()

    def get(self, timeout: Optional[float]) -> Tuple[List[List[Event]], bool, Optional[BaseException], Optional["_Lent"]]:
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
            self._caller_waiting = True
            if not queued and not self._ended and not self._closed and self.lent is None:
                self._wake_caller.wait(timeout)
            self._caller_waiting = False
        # Read "lent" and "ended" before taking: every batch the worker queued
        # was appended before it lent a body or marked the end.
        lent = self.lent
        ended, error = self._ended, self._error
        batches = []
        taken = 0
        while queued:
            batch = queued.popleft()
            batches.append(batch)
            taken += len(batch)
        if taken:
            self._taken += taken
            if self._worker_waiting:
                self._wake_worker.set()
            return batches, ended, error, None
        return batches, ended, error, lent


class _Lent:
    """A body lent to the caller, whose thread runs its read steps until the body ends.

    No thread waits while the caller reads: the worker's run is a generator
    that *yields* the lent body, and its segment ends. The body comes back
    when it ends, when a step fails (the failure is the outcome, raised in the
    worker, which decides on a retry), or when ``cancel()`` recalls it; then
    ``on_return`` makes the run's next segment due (for the caller's loop or a
    thread), exactly once, and only after the segment that lent the body has
    left the generator.
    A step in progress finishes before the worker goes on (the ``busy``
    lock), so two threads never touch the response at once; a recalled step
    ends promptly because ``cancel()`` shut the socket first.
    """

    __slots__ = ("reader", "returned", "outcome", "_busy", "_lock", "_back", "_detached", "_on_return")

    def __init__(self, reader: BodyReader, on_return: Callable[[], None]) -> None:
        self.reader = reader
        self.returned = False
        self.outcome: Optional[BaseException] = None
        self._busy = threading.Lock()
        self._lock = threading.Lock()
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
        with self._lock:
            if self._back:
                return
            self._back = True
            ready = self._detached
        if ready:
            self._on_return()

    def detached(self) -> None:
        """The segment that lent the body has left the generator: the next one may run."""
        with self._lock:
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


#: How long a new stream waits for its caller to iterate (and run the request
#: in its own thread) before the starter gives it a thread of its own.
START_GRACE = 0.005


class _Starter:
    """One daemon thread that gives a thread to streams whose caller did not iterate in time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Weak: a stream dropped before its start is simply collected (nothing was
        # sent), and one whose caller ran it is not held here for the grace period.
        self._due: Deque[Tuple[float, "weakref.ref[Worker]"]] = collections.deque()
        self._wake = _Signal()
        self._thread: Optional[threading.Thread] = None

    def schedule(self, worker: "Worker") -> None:
        with self._lock:
            self._due.append((time.monotonic() + START_GRACE, weakref.ref(worker)))  # in order: one grace for all
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="llmstream-starter", daemon=True)
                self._thread.start()
        self._wake.set()

    def _serve(self) -> None:
        while True:
            with self._lock:
                if not self._due:
                    self._thread = None
                    return  # a new one starts with the next stream
                when, worker_ref = self._due[0]
                wait = when - time.monotonic()
                if wait <= 0:
                    self._due.popleft()
            if wait > 0:
                self._wake.wait(wait)
                continue
            worker = worker_ref()
            if worker is not None:
                worker.due()
            del worker


_starter = _Starter()


#: Workers whose body is lent, so no thread of theirs is running: kept alive
#: here (a dropped stream's finalizer must still find its worker to cancel it).
_LENDING: Set["Worker"] = set()
_LENDING_LOCK = threading.Lock()


class Worker:
    """Runs one stream's attempts in a daemon thread and fills an :class:`EventQueue`."""

    def __init__(
        self,
        *,
        transport: Transport,
        provider: Provider,
        spec: RequestSpec,
        timeout: Timeout,
        retry: Retry,
        max_buffered: int,
        max_line_length: int,
        flow: FlowControl,
        model: str = "",
        max_output_chars: Optional[int] = None,
        continue_allowed: bool = True,
        pricing: Optional[Pricing] = None,
        keep_text: bool = True,
    ) -> None:
        self.queue = EventQueue(max_buffered)
        #: The delivered text, kept once: the resumer appends, the stream reads (None: keep_text=False).
        self.text: Optional[SharedText] = SharedText() if keep_text else None
        self.stats = WorkerStats(time.monotonic())
        self._pricing = pricing
        #: The stream's cost, set at its end when the client has pricing for the model.
        self.cost: Optional[Cost] = None
        # Telemetry (llmstream.otel): asked once, here, in the caller's thread, so
        # a trace span opens in the caller's context. None when nobody observes.
        self._observer = monitor.observer_for(StreamStart(
            provider=provider.name, model=model, base_url=flow.base_url, url=redact_url(spec.url),
            body=spec.json, started_at=self.stats.started_at,
        )) if monitor.observing else None
        self._flow = flow
        self._model = model
        self._guard = OutputGuard(max_output_chars) if max_output_chars is not None else None
        self._charged = 0.0
        self._lease: object = None  # the flow's concurrency lease, while the stream holds one
        self._corrected = False
        self._failure: Optional[BaseException] = None
        self._transport = transport
        self._provider = provider
        self._spec = spec
        self._timeout = timeout
        self._retry = retry
        self._total_deadline = self.stats.started_at + (timeout.total if timeout.total is not None else math.inf)
        self._cancel = threading.Event()
        # Reentrant: a finalizer (a dropped stream) may call cancel() in this very thread.
        self._sockets_lock = threading.RLock()
        self._sockets: Optional[AttemptSockets] = None
        self._lent: Optional[_Lent] = None
        self._redact = Redactor(secrets_in_request(spec.headers, spec.url))
        # With a single attempt nothing is ever resumed, so nothing need be remembered for it.
        resume = retry.resume if retry.max_attempts > 1 else "never"
        self._resumer = Resumer(provider, spec, resume, max_line_length=max_line_length,
                                continue_allowed=continue_allowed, text=self.text, keep_text=keep_text)
        self._run = self._main()
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None
        # Who runs the next segment of the stream: "runnable" means a segment
        # is due and nobody has claimed it (see _claim).
        self._owner_lock = threading.Lock()
        self._runnable = True
        self._began = False
        self._consumer: Optional[int] = None

    @property
    def provider(self) -> Provider:
        """The provider this stream speaks (its ``assistant_message`` builds ``result.message``)."""
        return self._provider

    @property
    def total_deadline(self) -> float:
        """The ``time.monotonic()`` value past which the stream fails with ``total``."""
        return self._total_deadline

    def start(self) -> None:
        """Start the stream: in the caller's thread if it iterates at once, else in a thread of its own.

        A caller that iterates within :data:`START_GRACE` runs the request
        itself (no thread is made for it); otherwise the shared starter gives
        the stream a thread, so streams started together run together.
        """
        _starter.schedule(self)

    def _claim(self) -> bool:
        with self._owner_lock:
            claimed, self._runnable = self._runnable, False
        return claimed

    def run_here(self) -> None:
        """The consumer's turn: run the stream's due segment in this thread, if nobody has claimed it."""
        self._consumer = threading.get_ident()
        self.queue.consuming = True  # the segment must lend the body, not read ahead in this thread
        if self._runnable and self._claim():  # the flag first: no lock per token
            self._segment()

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._segment, name=f"llmstream-worker-{next(_thread_ids)}", daemon=True)
        try:
            thread.start()
        except RuntimeError:
            # No thread to be had (the process is out of them, or shutting
            # down): the segment is due again, for the caller's loop to run.
            logger.warning("llmstream could not start a worker thread; the stream goes on when it is iterated")
            self._make_due()
            return
        self._thread = thread

    def _start_claimed(self) -> None:
        """Run the claimed segment in a new thread; a stream that never began just ends."""
        if not self._began and self._cancel.is_set():
            self._run.close()  # never started: nothing was sent, nothing to report
            self._done.set()
            return
        self._start_thread()

    def _segment(self) -> None:
        """Run the stream until it lends its body to the caller, or to its end."""
        self._began = True
        try:
            lent = next(self._run)
            if lent is None:  # a pause in the consumer's own thread: it runs on when it asks for more
                self._due_for_consumer()
                return
        except StopIteration:
            self._done.set()
            return
        except BaseException:
            self._done.set()  # an interrupt ended the run (its finally reported it)
            raise
        with _LENDING_LOCK:
            _LENDING.add(self)
        lent.detached()

    def _make_due(self) -> None:
        with self._owner_lock:
            self._runnable = True

    def _due_for_consumer(self) -> None:
        """The next segment is the consumer's loop's to run (run_here).

        If the consumer does not come back within the grace, the starter gives
        it a thread, so a caller that stops pulling cannot hold the
        connection and its concurrency slot.
        """
        self._make_due()
        _starter.schedule(self)

    def _resume(self) -> None:
        """The lent body came back: the consumer runs the next segment, or a thread of its own does."""
        with _LENDING_LOCK:
            _LENDING.discard(self)
        if threading.get_ident() == self._consumer and not self._cancel.is_set():
            self._due_for_consumer()
            return
        self._make_due()
        self.due()

    def due(self) -> None:
        """Give the due segment a thread of its own, unless someone has claimed it (the starter, cancel())."""
        if self._claim():
            self._start_claimed()

    def cancel(self) -> None:
        """Stop the stream from any thread: idempotent, returns at once."""
        self._cancel.set()
        self.due()  # a segment was due and nobody ran it: end the stream properly
        self.queue.close()
        self._flow.wake()
        with self._sockets_lock:
            sockets, lent = self._sockets, self._lent
        try:
            if sockets is not None:
                sockets.shutdown()  # first: it ends a read the caller may be blocked in
        finally:
            if lent is not None:
                lent.recall()

    def fail(self, error: BaseException) -> None:
        """Stop the stream because the caller's side failed it (so it is reported as failed, not closed)."""
        if self._failure is None:
            self._failure = error
        self.cancel()

    def join(self, timeout: Optional[float]) -> bool:
        """Wait for the stream's run to end; return True if it has."""
        if threading.current_thread() is self._thread:
            return self._done.is_set()
        return self._done.wait(timeout)

    # -- the thread ----------------------------------------------------------

    def _main(self) -> Generator[Optional[_Lent], None, None]:
        """The whole stream, as a generator that yields when it lends the body (see :class:`_Lent`)."""
        error: Optional[BaseException] = None
        monitor.stream_started()
        try:
            yield from self._run_in_slot()
        except Cancelled:
            error = self._failure
        except StreamError as exc:
            exc.attempts = self.stats.attempts
            redact_error(exc, self._redact)
            logger.info("stream failed after %d attempt(s): %s: %s", exc.attempts, type(exc).__name__, exc.message)
            error = exc
        except Exception as exc:  # a bug: hand it to the caller
            logger.debug("llmstream worker crashed", exc_info=True)
            error = exc
        except BaseException:
            # Ctrl+C (or SystemExit) in the caller's thread, which was running
            # this segment itself: the stream is closed, and the interrupt goes on.
            self._cancel.set()
            raise
        finally:
            try:
                self._report(error)
            finally:
                self.queue.end(error)  # whatever happens in the report, the caller must see the end

    def _report(self, error: Optional[BaseException]) -> None:
        stats = self.stats
        if error is not None:
            stats.errors.append(type(error).__name__)
        metrics = stats.freeze(time.monotonic())  # built once: the report and every later .metrics share it
        usage = stats.usage
        correction = self._usage_correction()
        if correction is not None and not self._corrected:
            self._flow.correct(correction)
        outcome = "failed" if error is not None else ("closed" if self._cancel.is_set() else "finished")
        if self._pricing is not None:
            complete = outcome == "finished" and stats.finish_reason != "max_output_chars"
            self.cost = price(self._pricing, self._model, account(stats.attempt_log, complete=complete))
        report = StreamReport(
            provider=self._provider.name, base_url=self._flow.base_url, model=self._model, outcome=outcome,
            error=None if error is None else type(error).__name__, metrics=metrics,
            attempts=tuple(stats.attempt_log), usage=usage, finish_reason=stats.finish_reason, cost=self.cost,
            started_at=stats.started_at,
        )
        monitor.stream_ended(report)
        observer = self._observer
        if observer is not None:
            text = self._resumer.delivered_text if observer.wants_text else None
            observer.stream_ended(report, stats.gaps.buckets(), text)

    def _usage_correction(self) -> Optional[float]:
        """Tokens to charge (or refund) once the usage is known: reported minus estimated."""
        usage = self.stats.usage
        if usage is None or usage.input_tokens is None or usage.output_tokens is None:
            return None
        return usage.input_tokens + usage.output_tokens - self._charged

    def _run_in_slot(self) -> Generator[Optional[_Lent], None, None]:
        flow = self._flow
        if not flow.has_slots:
            yield from self._run_attempts()
            return
        monitor.waiting(1)
        try:
            lease = flow.acquire_slot(self._cancel, self._total_deadline)
        finally:
            monitor.waiting(-1)
            self.stats.queued = time.monotonic() - self.stats.started_at
        self._lease = lease
        try:
            yield from self._run_attempts()
        finally:
            self._lease = None
            # The usage correction goes with the slot (one round-trip to a shared backend).
            correction = self._usage_correction()
            self._corrected = correction is not None
            flow.release_slot(lease, correction)

    def _run_attempts(self) -> Generator[Optional[_Lent], None, None]:
        schedule = RetrySchedule(self._retry)
        spec = self._spec
        while True:
            decoder = self._resumer.new_decoder()
            try:
                yield from self._attempt(spec, decoder)
                return
            except StreamError as exc:
                if isinstance(exc, RateLimitError):
                    # One stream's 429 slows every stream of the client.
                    pause = exc.retry_after if exc.retry_after is not None else self._retry.initial_delay
                    self._flow.pause(min(pause, self._retry.max_retry_after))
                spec = yield from self._prepare_retry(exc, schedule, decoder)

    def _prepare_retry(self, exc: StreamError, schedule: RetrySchedule,
                       decoder: StreamDecoder) -> Generator[Optional[_Lent], None, RequestSpec]:
        """Wait before the next attempt and return its request, or raise ``exc``."""
        if self.stats.attempts >= self._retry.max_attempts:
            raise exc
        # A server that refuses a resume request (a prefill answered with 400...)
        # is asked again at once in the next way, without a backoff wait.
        next_spec = self._resumer.fallback(exc, decoder)
        delay = 0.0
        if next_spec is None:
            wait = schedule.delay_for(exc) if is_retryable(exc, self._provider) else None
            if wait is None or time.monotonic() + wait >= self._total_deadline:
                raise exc
            delay = wait
            next_spec = self._resumer.next_request(exc, decoder)  # raises if it cannot resume
        attempt = self.stats.attempts + 1
        self.stats.errors.append(type(exc).__name__)
        self.stats.next_delay = delay
        # The cause in the Retrying event says, like a raised error, what came before it.
        exc.attempts = self.stats.attempts
        exc.partial_text = self._resumer.delivered_text
        redact_error(exc, self._redact)
        logger.info(
            "retrying (attempt %d of %d) in %.2fs after %s: %s",
            attempt, self._retry.max_attempts, delay, type(exc).__name__, exc.message,
        )
        inline = threading.get_ident() == self._consumer
        self.queue.put([Retrying(attempt=attempt, delay=delay, cause=exc, resume=self._resumer.strategy)],
                       block=not inline)
        if inline:
            # The caller runs this segment itself: let it have the Retrying event
            # before the wait, as a worker thread's caller would (yield a pause);
            # the wait runs when it asks for more.
            yield None
        if self._cancel.wait(delay):
            raise Cancelled()
        return next_spec

    def _set_sockets(self, sockets: Optional[AttemptSockets]) -> None:
        with self._sockets_lock:
            self._sockets = sockets
        if sockets is not None and self._cancel.is_set():
            sockets.shutdown()  # cancel() came first: the attempt must not open a socket

    def _attempt(self, spec: RequestSpec, decoder: StreamDecoder) -> Generator[Optional[_Lent], None, None]:
        """One attempt through the flow control; a failure after ``cancel()`` is raised as ``Cancelled``."""
        gate = Gate(self._flow, self._cancel, self._total_deadline, self._lease)
        error: Optional[BaseException] = None
        try:
            tokens = self._provider.estimate_tokens(spec.json) if self._flow.counts_tokens else 0.0
            waited = gate.enter(tokens)
            self._charged = tokens  # corrected at the end against the usage of the attempt that ends the stream
            if self.stats.attempts == 0:
                self.stats.queued += waited
            yield from self._send_and_read(spec, decoder, gate)
        except StreamError as exc:
            if self._cancel.is_set():
                # A shut socket looks like a broken stream: it was our doing (close(),
                # or the caller's side failed), so it is neither retried nor held
                # against the server by the circuit breaker.
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
            self.stats.end_attempt(type(error).__name__ if failed else None, *decoder.response_info)

    def _send_and_read(self, spec: RequestSpec, decoder: StreamDecoder, gate: Gate) -> Generator[Optional[_Lent], None, None]:
        self.stats.attempts += 1
        started = time.monotonic()
        resume = self._resumer.strategy if self.stats.attempts > 1 else None
        self.stats.begin_attempt(resume, started)
        if self._observer is not None:
            extra = self._observer.attempt_started(self.stats.attempts, resume)
            if extra:  # a W3C traceparent: the provider's own traces join the caller's
                spec = spec.replace(headers=merge_headers(spec.headers, extra))
        timeout = self._timeout
        first_deadline = started + timeout.first_token if timeout.first_token is not None else math.inf
        connect_deadline = started + timeout.connect if timeout.connect is not None else math.inf
        connect, _ = time_left(connect_deadline, "connect", self._total_deadline, started)
        wait, wait_kind = time_left(first_deadline, "first_token", self._total_deadline, started)
        sockets = AttemptSockets()
        self._set_sockets(sockets)
        try:
            response = self._transport.open(
                spec, self._provider, connect_timeout=connect, response_timeout=wait, response_timeout_kind=wait_kind,
                cancelled=self._cancel.is_set, sockets=sockets, redact=self._redact,
            )
            gate.answered()
            with response:
                reader = BodyReader(
                    response, decoder, stats=self.stats, resumer=self._resumer, guard=self._guard,
                    idle=timeout.idle, first_deadline=first_deadline, total_deadline=self._total_deadline,
                )
                yield from self._serve_body(reader)
                if not reader.limited:  # max_output_chars: the socket is closed unread
                    self._drain(response)
        finally:
            self._set_sockets(None)

    def _serve_body(self, reader: BodyReader) -> Generator[Optional[_Lent], None, None]:
        """Read ahead into the queue until the caller consumes, then lend it the body."""
        queue = self.queue
        while not reader.done:
            if queue.consuming:
                yield from self._lend(reader)
                return
            events = reader.step()
            if events:
                queue.put(events)

    def _lend(self, reader: BodyReader) -> Generator[Optional[_Lent], None, None]:
        """Let the caller's thread read the body; go on when it comes back, and raise what it met."""
        lent = _Lent(reader, self._resume)
        with self._sockets_lock:
            self._lent = lent
        if self._cancel.is_set():
            lent.recall()
        self.queue.lend(lent)
        try:
            yield lent  # this thread ends here; the body's return starts the next segment
            outcome = lent.take_back()
        finally:
            self.queue.lend(None)
            with self._sockets_lock:
                self._lent = None
        if self._cancel.is_set():
            raise Cancelled()
        if outcome is not None:
            raise outcome

    def _drain(self, response: OpenResponse) -> None:
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
