"""The worker: who runs one stream, when, and in which thread; its cancellation, its end and its report.

Strategy:
  * The stream's run is a generator (:meth:`Worker._main`): the concurrency
    slot, then attempts (``_attempt.Attempt``: one request and its body) until
    one ends the stream, each failure decided by ``_next_attempt.RetryDecision``
    (retry, resume, or the end). The queue (``_queue.EventQueue``) carries its
    events to the caller.
  * Who runs it: the run is driven one *segment* at a time by whoever claims
    it — the caller's thread if it iterates within ``START_GRACE`` (then no
    thread is made at all), else a thread the shared starter gives it. A
    segment ends when the attempt lends the caller its body
    (``_lending.LentBody``): the caller's ``next()`` then runs the read steps
    itself, so a slow stream costs one thread wake-up per token, not two —
    what lets hundreds of streams share one process (issue 17). The body
    comes back at its end, on a failure (the next segment decides on a
    retry) or on ``cancel()``; the next segment runs in the caller's loop, or
    in a thread when the caller is not there to run it.
  * Cancellation: ``cancel()`` (any thread) sets an Event, interrupts the
    current attempt (its sockets are shut, a lent body is recalled) and wakes
    a blocked ``put``, a flow-control wait or a backoff wait. The run then
    ends without reporting an error.
  * Retries: the worker tells the caller (a ``Retrying`` event) and waits on
    the cancel Event (never ``time.sleep``), so ``close()`` interrupts the
    wait at once.
  * Flow control (``_flow.py``, shared by a client's workers): the run takes
    a concurrency slot before its first attempt and keeps it to its end
    (each attempt passes the breaker and the rate limiter itself); the
    tokens charged are corrected against the reported usage at the end.
  * Metrics: counters and histograms (``_stats.WorkerStats``) are updated by
    the thread that holds the body (never two at once); the caller reads a
    snapshot. At its end the worker reports the stream to the process-wide
    monitor (and the stream's observer, and its cost).

Rules:
  * Redaction: every error leaves the run (raised, or as a ``Retrying``
    event's cause, or in a log line) through the stream's ``Redactor``,
    which knows the request's credentials: servers echo keys back.
  * The end is put on the queue whatever happens in the report: the caller
    must see it.
  * Exactly one segment runs at a time: a segment is claimed under the
    claim lock, and a lent body's return makes the next one due only once
    the segment that lent it has left the generator.

Never: a reference to the ``TokenStream`` that owns it (so a stream the
caller drops, or that failed, is collected, and its ``__del__`` cancels the
worker).
"""

from __future__ import annotations

import bisect
import collections
import itertools
import logging
import math
import threading
import time
import weakref
from typing import Deque, Generator, Optional, Set, Tuple

from ._attempt import Attempt, AttemptContext
from ._config import Retry, Timeout
from ._cost import Pricing, account, price
from ._events import Cost, Retrying, StreamReport
from ._exceptions import StreamError
from ._flow import FlowControl
from ._lending import LentBody
from ._monitor import StreamStart, monitor
from ._next_attempt import RetryDecision
from ._output_guard import OutputGuard
from ._providers._base import PackedSpec, Provider, RequestSpec
from ._queue import POLL_INTERVAL, EventQueue, Latch, Signal
from ._redact import redact_error, redactor_for, secrets_in_request
from ._resume import Resumer
from ._stats import WorkerStats
from ._textlog import SharedText
from ._transport import Cancelled, Transport, redact_url

# POLL_INTERVAL belongs to the queue (``_queue.py``); ``_stream.py`` imports it from here.
__all__ = ["POLL_INTERVAL", "Worker"]

logger = logging.getLogger("llmstream")

_thread_ids = itertools.count(1)


#: How long a new stream waits for its caller to iterate (and run the request
#: in its own thread) before the starter gives it a thread of its own: at
#: least this long, at most half as long again (the starter serves the streams
#: due within that half in one wake-up).
START_GRACE = 0.005


class _Starter:
    """One daemon thread that gives a thread to streams whose caller did not iterate in time.

    Wake-ups: the thread sleeps until half a grace past the first entry due,
    then serves every entry due by then; :meth:`schedule` wakes it only for an
    entry due *before* that first one (never while :data:`START_GRACE` is
    constant: entries come in due order), and never while it is running (it
    looks at the deque again before it sleeps). A wake-up per stream was a
    thread switch per stream, and ``Signal.set`` raising and catching a
    ``RuntimeError`` while one was pending (issue 17).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Weak: a stream dropped before its start is simply collected (nothing was
        # sent), and one whose caller ran it is not held here for the grace period.
        # Sorted by due time (appended in order while START_GRACE stays the same).
        self._due: Deque[Tuple[float, "weakref.ref[Worker]"]] = collections.deque()
        self._wake = Signal()
        self._thread: Optional[threading.Thread] = None
        # The due time the thread sleeps until (it wakes then by itself); -inf
        # while it runs, or a wake-up is pending: nothing to wake it for.
        self._sleeps_until = -math.inf

    def schedule(self, worker: "Worker") -> None:
        with self._lock:
            when = time.monotonic() + START_GRACE  # under the lock: appended in due order
            due = self._due
            if not due or due[-1][0] <= when:
                due.append((when, weakref.ref(worker)))
            else:  # START_GRACE was lowered (tests): keep the deque in due order
                due.insert(bisect.bisect_right([entry[0] for entry in due], when), (when, weakref.ref(worker)))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="llmstream-starter", daemon=True)
                self._sleeps_until = -math.inf
                self._thread.start()
                return
            wake = when < self._sleeps_until
            if wake:
                self._sleeps_until = -math.inf  # one wake-up is enough
        if wake:
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
                    self._sleeps_until = -math.inf
                else:
                    self._sleeps_until = when
            if wait > 0:
                # Until half a grace past the first due entry, so that the
                # entries due by then are served in one wake-up: with hundreds
                # of streams starting, one wake-up per stream (a thread switch
                # under a contended GIL each) was ~5% of their CPU (issue 17).
                # Woken earlier by schedule() for an earlier entry; a stale
                # wake-up costs one more turn of the loop, nothing else.
                self._wake.wait(wait + START_GRACE / 2)
                continue
            worker = worker_ref()
            if worker is not None:
                worker.due()
            del worker


_starter = _Starter()


#: Taken only to claim a worker's next segment, to make one due and to end the
#: run (a flag or two each, nothing allocated under it, so a finalizer run by
#: the garbage collector cannot find it held by its own thread): one lock for
#: every stream, not one each (issue 17).
_CLAIM_LOCK = threading.Lock()

#: Workers whose body is lent, so no thread of theirs is running: kept alive
#: here (a dropped stream's finalizer must still find its worker to cancel it).
_LENDING: Set["Worker"] = set()
_LENDING_LOCK = threading.Lock()


class Worker:
    """Owns one stream's run: who runs its segments, its cancellation, its end and its report.

    The caller's side is :attr:`queue`; the run's attempts are
    ``_attempt.Attempt`` objects, and what follows a failed one is
    ``_next_attempt.RetryDecision``'s to decide.
    """

    # Slotted: one per stream, hundreds at once (issue 17); weakly referenced
    # by the starter.
    __slots__ = (
        "queue", "text", "stats", "_pricing", "cost", "_observer", "_flow", "_model", "_charged", "_corrected",
        "_failure", "_provider", "_spec", "_retry", "_total_deadline", "_cancel", "_redact", "_resumer",
        "_attempt_context", "_attempt", "_run", "_finished", "_done", "_thread", "_runnable", "_began",
        "_consumer", "__weakref__",
    )

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
        # Kept for a retry: the body encoded (the bytes the request sends), the
        # client's headers shared (issue 17: ~1 KiB less per stream).
        spec = PackedSpec.pack(spec, transport.shared_headers)
        self._flow = flow
        self._model = model
        self._charged = 0.0  # tokens the last attempt to pass the rate limiter was charged
        self._corrected = False
        self._failure: Optional[BaseException] = None
        self._provider = provider
        self._spec = spec
        self._retry = retry
        self._total_deadline = self.stats.started_at + (timeout.total if timeout.total is not None else math.inf)
        self._cancel = Latch()
        self._redact = redactor_for(secrets_in_request(spec.headers, spec.url))
        # With a single attempt nothing is ever resumed, so nothing need be remembered for it.
        resume = retry.resume if retry.max_attempts > 1 else "never"
        self._resumer = Resumer(provider, spec, resume, max_line_length=max_line_length,
                                continue_allowed=continue_allowed, text=self.text, keep_text=keep_text)
        self._attempt_context = AttemptContext(
            transport=transport, provider=provider, flow=flow, cancel=self._cancel, timeout=timeout,
            total_deadline=self._total_deadline, stats=self.stats, resumer=self._resumer,
            guard=OutputGuard(max_output_chars) if max_output_chars is not None else None,
            observer=self._observer, redact=self._redact, queue=self.queue, on_return=self._resume,
        )
        #: The current attempt, what cancel() interrupts (None once the run is past it).
        self._attempt: Optional[Attempt] = None
        self._run = self._main()
        self._finished = False
        self._done: Optional[Latch] = None  # made by the first join() that has to wait
        self._thread: Optional[threading.Thread] = None
        # Who runs the next segment of the stream: "runnable" means a segment
        # is due and nobody has claimed it (see _claim, under _CLAIM_LOCK).
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
        with _CLAIM_LOCK:
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
            self._end()
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
            self._end()
            return
        except BaseException:
            self._end()  # an interrupt ended the run (its finally reported it)
            raise
        with _LENDING_LOCK:
            _LENDING.add(self)
        lent.detached()

    def _make_due(self) -> None:
        with _CLAIM_LOCK:
            self._runnable = True

    def _end(self) -> None:
        """The run is over: wake every join()."""
        with _CLAIM_LOCK:
            self._finished = True
            done = self._done
        if done is not None:
            done.set()

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
        attempt = self._attempt
        if attempt is not None:
            attempt.interrupt()

    def fail(self, error: BaseException) -> None:
        """Stop the stream because the caller's side failed it (so it is reported as failed, not closed)."""
        if self._failure is None:
            self._failure = error
        self.cancel()

    def join(self, timeout: Optional[float]) -> bool:
        """Wait for the stream's run to end; return True if it has."""
        if self._finished or threading.current_thread() is self._thread:
            return self._finished
        latch = Latch()  # made outside the lock: nothing is allocated under it (a finalizer may claim)
        with _CLAIM_LOCK:
            if self._finished:
                return True
            if self._done is None:
                self._done = latch
            done = self._done
        return done.wait(timeout)

    # -- the run (a generator: see _segment) -----------------------------------

    def _main(self) -> Generator[Optional[LentBody], None, None]:
        """The whole stream, as a generator that yields when it lends the body (see :class:`LentBody`).

        The run's only generator (the slot, the attempts and the retry waits
        are inline; an attempt is an object with a start and an end): one
        frame and one C stack level per stream (issue 17, memory per stream).
        It pauses (yields) when it lends the body to the caller's thread, and
        when the caller runs it itself and must see a ``Retrying`` event before
        the retry's wait.
        """
        error: Optional[BaseException] = None
        monitor.stream_started()
        try:
            lease = self._take_slot()
            try:
                decision: Optional[RetryDecision] = None  # made at the first failure
                spec = self._spec
                while True:
                    decoder = self._resumer.new_decoder()
                    attempt = Attempt(self._attempt_context, spec, decoder, lease)
                    self._attempt = attempt  # before it opens a socket: cancel() must find it (see Attempt.interrupt)
                    try:
                        lent = attempt.start()
                        if lent is not None:
                            try:
                                yield lent  # the segment ends here; the body's return starts the next one
                            except BaseException as exc:  # the run closed at the pause (GeneratorExit)
                                attempt.abandon(exc)
                                raise
                            attempt.take_back(lent)
                        break
                    except StreamError as exc:
                        if decision is None:
                            decision = RetryDecision(self._retry, self._provider, self._resumer, self._total_deadline)
                        pause = decision.flow_pause(exc)
                        if pause is not None:
                            self._flow.pause(pause)
                        following = decision.after(exc, decoder, attempts=self.stats.attempts, now=time.monotonic())
                        if self._announce_retry(exc, following.delay):
                            # The caller runs this segment itself: let it have the Retrying
                            # event before the wait, as a worker thread's caller would (a
                            # pause); the wait runs when it asks for more.
                            yield None
                        if self._cancel.wait(following.delay):
                            raise Cancelled()
                        spec = following.request
                    finally:
                        self._attempt = None
                        if attempt.charged is not None:
                            self._charged = attempt.charged
            finally:
                self._leave_slot(lease)
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
            stats.errors += (type(error).__name__,)
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

    def _take_slot(self) -> object:
        """Wait for the flow's concurrency slot (None without a limit); the stream keeps it to its end."""
        flow = self._flow
        if not flow.has_slots:
            return None
        monitor.waiting(1)
        try:
            lease = flow.acquire_slot(self._cancel, self._total_deadline)
        finally:
            monitor.waiting(-1)
            self.stats.queued = time.monotonic() - self.stats.started_at
        return lease

    def _leave_slot(self, lease: object) -> None:
        if not self._flow.has_slots:
            return
        # The usage correction goes with the slot (one round-trip to a shared backend).
        correction = self._usage_correction()
        self._corrected = correction is not None
        self._flow.release_slot(lease, correction)

    def _announce_retry(self, exc: StreamError, delay: float) -> bool:
        """Tell the caller about the retry (a ``Retrying`` event); True if the caller runs this segment itself."""
        attempt = self.stats.attempts + 1
        self.stats.errors += (type(exc).__name__,)
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
        return inline
