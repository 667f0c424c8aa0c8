"""Client-wide flow control: a FIFO concurrency limit, a token-bucket rate limiter, a circuit breaker.

One :class:`Flow` belongs to one ``Client`` and is shared by all its streams'
workers (many threads), so every method here is thread-safe.

Strategy:
  * :class:`Slots` hands out at most N slots. Waiters are served strictly in
    arrival order: a released slot is handed to the oldest waiter, never
    grabbed by a newcomer. A waiter gives up at its deadline (the stream's
    ``total`` timeout) or when its stream is cancelled; a slot handed to a
    waiter that just gave up is passed on, never lost.
  * :class:`RateLimiter` keeps two token buckets (requests, tokens) that refill
    continuously, and a pause shared by the client: a 429 with ``Retry-After``
    pauses every stream, and empties the request bucket so traffic ramps up
    again instead of returning as a burst.
  * :class:`Breaker` counts consecutive failed attempts; at the threshold it
    opens and refuses attempts (``CircuitOpenError``) for the cooldown, then
    admits one probe (half-open) whose outcome closes or re-opens it.

Every wait is on the stream's cancel ``Event`` or a condition that
``wake_all()`` notifies, so ``close()`` ends a waiting stream at once.

The seam: the worker sees only :class:`FlowControl` (take and give back a
slot per stream; ``enter``/``record`` around each attempt; ``pause`` on a 429;
``correct`` with the usage). :class:`Flow` is the in-process backend built from
the three parts above; ``Client(shared=...)`` takes a :class:`SharedState`
(``llmstream.RedisState``, in ``_redis_state.py``) that builds a fleet-wide one.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Deque, Optional, Protocol, Tuple

from ._config import CircuitBreaker, RateLimit
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    CircuitOpenError,
    IncompleteStreamError,
    MalformedStreamError,
    ProviderError,
    ServerError,
    StreamError,
    StreamTimeoutError,
)
from ._monitor import monitor
from ._transport import Cancelled


class CancelFlag(Protocol):
    """What flow control needs of a stream's cancel flag (``threading.Event`` fits; streams use a ``Latch``)."""

    def is_set(self) -> bool:
        """True once the stream was cancelled."""

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until cancelled or ``timeout`` seconds passed; return :meth:`is_set`."""

__all__ = ["CancelFlag", "FlowControl", "SharedState", "Flow", "Gate", "Slots", "RateLimiter", "Breaker", "counts_as_failure"]



def _total_timeout(what: str) -> StreamTimeoutError:
    return StreamTimeoutError(f"total timeout: the stream's Timeout.total passed while waiting for {what}", kind="total")


class _Waiter:
    __slots__ = ("granted",)

    def __init__(self) -> None:
        self.granted = False


class Slots:
    """At most ``limit`` streams in flight; the others wait in FIFO order."""

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_concurrent must be an int >= 1 (or None for no limit), got {limit!r}")
        self.limit = limit
        self._free = limit
        self._waiters: Deque[_Waiter] = collections.deque()
        # Reentrant: a garbage-collected TokenStream's finalizer calls cancel(),
        # which takes this lock, and may run in a thread that already holds it.
        self._cond = threading.Condition(threading.RLock())

    @property
    def in_use(self) -> int:
        """Slots held right now."""
        return self.limit - self._free

    @property
    def waiting(self) -> int:
        """Streams waiting for a slot right now."""
        return len(self._waiters)

    def acquire(self, cancel: CancelFlag, deadline: float) -> None:
        """Take a slot, waiting in line; raise ``Cancelled`` or a ``total`` ``StreamTimeoutError``."""
        with self._cond:
            if self._free and not self._waiters:
                self._free -= 1
                return
            me = _Waiter()
            self._waiters.append(me)
            while not me.granted:
                left = deadline - time.monotonic()
                if cancel.is_set() or left <= 0:
                    self._waiters.remove(me)
                    if cancel.is_set():
                        raise Cancelled()
                    raise _total_timeout(f"a free slot (Client(max_concurrent={self.limit}))")
                self._cond.wait(min(left, 1.0))

    def release(self) -> None:
        """Give a slot back: to the oldest waiter if there is one."""
        with self._cond:
            if self._waiters:
                self._waiters.popleft().granted = True
                self._cond.notify_all()
            else:
                self._free += 1

    def wake_all(self) -> None:
        """Wake every waiter so a cancelled one notices at once."""
        with self._cond:
            self._cond.notify_all()


class _Bucket:
    """A token bucket: ``rate`` per second, holding at most ``capacity``."""

    __slots__ = ("rate", "capacity", "level", "updated")

    def __init__(self, per_minute: float, burst_seconds: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        """Add what the rate brought since the last refill, up to the capacity."""
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` (capped at the capacity, so it always fits) is available."""
        missing = min(amount, self.capacity) - self.level
        return missing / self.rate if missing > 0 else 0.0


class RateLimiter:
    """The client's shared budget: requests and tokens per minute, and 429 pauses."""

    def __init__(self, config: Optional[RateLimit]) -> None:
        self.config = config
        now = time.monotonic()
        self._requests = _Bucket(config.requests_per_minute, config.burst_seconds, now) \
            if config is not None and config.requests_per_minute else None
        self._tokens = _Bucket(config.tokens_per_minute, config.burst_seconds, now) \
            if config is not None and config.tokens_per_minute else None
        self._paused_until = 0.0
        self._lock = threading.Lock()

    @property
    def counts_tokens(self) -> bool:
        """True when there is a tokens-per-minute budget (requests must be estimated)."""
        return self._tokens is not None

    @property
    def unlimited(self) -> bool:
        """True when a request can go at once: no budget configured and no pause running."""
        return self._requests is None and self._tokens is None and self._paused_until <= time.monotonic()

    def acquire(self, tokens: float, cancel: CancelFlag, deadline: float) -> float:
        """Wait for room for one request of ``tokens``, take it; return the seconds waited."""
        started = time.monotonic()
        while True:
            with self._lock:
                now = time.monotonic()
                wait = self._paused_until - now
                for bucket, amount in ((self._requests, 1.0), (self._tokens, tokens)):
                    if bucket is not None:
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(amount))
                if wait <= 0:
                    if self._requests is not None:
                        self._requests.level -= 1.0
                    if self._tokens is not None:
                        # A request bigger than the bucket waits for a full one, then
                        # leaves a debt that the next requests wait to be paid back.
                        self._tokens.level -= tokens
                    return now - started
            if now + wait >= deadline:
                raise _total_timeout("the client's rate limiter")
            if cancel.wait(wait):
                raise Cancelled()

    def pause(self, seconds: float) -> None:
        """Hold every request of the client for ``seconds`` (a 429's ``Retry-After``)."""
        with self._lock:
            now = time.monotonic()
            self._paused_until = max(self._paused_until, now + seconds)
            if self._requests is not None:
                # After the pause one request may go, then the budget refills
                # from there: a gradual restart, not a burst.
                self._requests.level = min(1.0, self._requests.capacity)
                self._requests.updated = self._paused_until

    def correct(self, tokens: float) -> None:
        """Charge (or refund, if negative) tokens once the real usage is known."""
        # The decoders refuse non-finite counts; this is the second line of
        # defence: one inf or nan in the bucket would block the client forever.
        if self._tokens is None or not tokens or not math.isfinite(tokens):
            return
        with self._lock:
            self._tokens.refill(time.monotonic())
            # A debt below zero is allowed: later requests wait for it to be paid back.
            self._tokens.level = min(self._tokens.capacity, self._tokens.level - tokens)


def counts_as_failure(exc: StreamError) -> bool:
    """Does this error say the server is unwell (and count towards opening the circuit)?"""
    if isinstance(exc, StreamTimeoutError):
        return exc.kind != "total"
    return isinstance(exc, (APIConnectionError, ServerError, IncompleteStreamError, MalformedStreamError, ProviderError))


class Breaker:
    """Circuit breaker state for one client and base URL."""

    def __init__(self, config: CircuitBreaker, base_url: str) -> None:
        self.config = config
        self.base_url = base_url
        self._state = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        """``"closed"`` (requests flow), ``"open"`` (refused) or ``"half-open"`` (one probe allowed)."""
        with self._lock:
            if self._state == "open" and time.monotonic() >= self._opened_at + self.config.cooldown:
                return "half-open"
            return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failed attempts since the last success."""
        return self._failures

    def admit(self) -> bool:
        """Allow one attempt or raise ``CircuitOpenError``; True means it is the probe."""
        with self._lock:
            if self._state == "closed":
                return False
            left = self._opened_at + self.config.cooldown - time.monotonic()
            if self._state == "open" and left <= 0:
                self._state = "half-open"
            if self._state == "half-open" and not self._probing:
                self._probing = True
                return True
            what = "a probe request is in flight" if self._state == "half-open" else f"retrying in {left:.1f}s"
            raise CircuitOpenError(
                f"circuit open for {self.base_url} after {self._failures} consecutive failures ({what})",
                retry_after=max(0.0, left), base_url=self.base_url,
            )

    def record(self, probe: bool, error: Optional[BaseException]) -> None:
        """Record an attempt's outcome: ``error`` None = success.

        Any answer from the server (a 4xx included) proves it is up; a
        cancelled attempt, a ``total`` timeout or a resume failure prove nothing.
        """
        with self._lock:
            if probe:
                self._probing = False
            if isinstance(error, StreamError) and counts_as_failure(error):
                self._failures += 1
                # Attempts already in flight when it opened do not extend the cooldown.
                if probe or (self._state == "closed" and self._failures >= self.config.failure_threshold):
                    self._state = "open"
                    self._opened_at = time.monotonic()
            elif error is None or isinstance(error, APIStatusError):
                self._failures = 0
                self._state = "closed"


class FlowControl:
    """What the workers of one client need from its flow control: the seam between them and a backend.

    :class:`Flow` is the in-process backend (one client's limits, in memory);
    ``llmstream._redis_state`` provides one that shares them with every
    process of a fleet through Redis. Every method is thread-safe and every
    wait is bounded by the stream's ``deadline`` and ended by its ``cancel``.
    """

    base_url: str
    #: True when there is a tokens-per-minute budget (requests must be estimated).
    counts_tokens: bool = False
    #: True when there is a concurrency limit (the worker takes a slot per stream).
    has_slots: bool = False

    def acquire_slot(self, cancel: CancelFlag, deadline: float) -> object:
        """Wait in line for a concurrency slot and return the lease to give back to :meth:`release_slot`."""
        raise NotImplementedError

    def release_slot(self, lease: object, correction: Optional[float] = None) -> None:
        """Give a slot back (never raises: a lease that cannot be returned expires), and :meth:`correct` the usage."""
        raise NotImplementedError

    def wake(self) -> None:
        """Wake every waiter so that a cancelled one notices at once."""

    def enter(self, tokens: float, cancel: CancelFlag, deadline: float,
              lease: object = None) -> Tuple[float, bool]:
        """Admit one attempt: breaker, pause, rate budgets. Return (seconds waited, whether it is the breaker's probe).

        ``lease`` is the stream's slot from :meth:`acquire_slot` (``None`` without
        a concurrency limit): a backend may finish taking it here.
        """
        raise NotImplementedError

    def record(self, probe: bool, error: Optional[BaseException]) -> None:
        """An attempt's outcome, for the circuit breaker (``error`` None = the server answered 2xx)."""

    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (a 429's ``Retry-After``)."""
        raise NotImplementedError

    def correct(self, tokens: float) -> None:
        """Charge (or refund, if negative) tokens once a stream's real usage is known."""

    @property
    def circuit_state(self) -> Optional[str]:
        """The circuit breaker's state, or ``None`` without one."""
        return None


class SharedState:
    """Something that builds a client's :class:`FlowControl` shared beyond the process (``RedisState``)."""

    def flow(self, *, base_url: str, max_concurrent: Optional[int], rate_limit: Optional[RateLimit],
             circuit_breaker: Optional[CircuitBreaker]) -> FlowControl:
        """The flow control of one client with these limits."""
        raise NotImplementedError


class Flow(FlowControl):
    """The in-process flow control of one client: shared by all its streams' workers.

    Attributes:
        base_url: the client's base URL, credentials removed (for messages and metrics).
        slots: the concurrency limit, or ``None`` for none.
        limiter: the rate limiter (always present: it also carries 429 pauses).
        breaker: the circuit breaker, or ``None`` when disabled.
    """

    def __init__(self, *, base_url: str, max_concurrent: Optional[int] = None,
                 rate_limit: Optional[RateLimit] = None, circuit_breaker: Optional[CircuitBreaker] = None) -> None:
        self.base_url = base_url
        self.slots = Slots(max_concurrent) if max_concurrent is not None else None
        self.limiter = RateLimiter(rate_limit)
        self.breaker = Breaker(circuit_breaker, base_url) if circuit_breaker is not None else None
        self.has_slots = self.slots is not None
        self.counts_tokens = self.limiter.counts_tokens
        if self.breaker is not None:
            monitor.register_breaker(self.breaker)

    def acquire_slot(self, cancel: CancelFlag, deadline: float) -> object:
        """Take a local slot (FIFO); the lease is ``None``."""
        if self.slots is not None:
            self.slots.acquire(cancel, deadline)
        return None

    def release_slot(self, lease: object, correction: Optional[float] = None) -> None:
        """Give the local slot back, and correct the token budget."""
        if self.slots is not None:
            self.slots.release()
        if correction is not None:
            self.limiter.correct(correction)

    def wake(self) -> None:
        """Wake the slot waiters (a cancelled one leaves the line at once)."""
        if self.slots is not None:
            self.slots.wake_all()

    def enter(self, tokens: float, cancel: CancelFlag, deadline: float,
              lease: object = None) -> Tuple[float, bool]:
        """The breaker admits the attempt (or raises ``CircuitOpenError``), then the rate limiter lets it go."""
        probe = self.breaker.admit() if self.breaker is not None else False
        limiter = self.limiter
        if limiter.unlimited:
            return 0.0, probe
        monitor.waiting(1)
        try:
            return limiter.acquire(tokens, cancel, deadline), probe
        except BaseException:
            if probe and self.breaker is not None:
                self.breaker.record(True, Cancelled())  # a probe that never went out is freed
            raise
        finally:
            monitor.waiting(-1)

    def record(self, probe: bool, error: Optional[BaseException]) -> None:
        """Tell the breaker the attempt's outcome."""
        if self.breaker is not None:
            self.breaker.record(probe, error)

    def pause(self, seconds: float) -> None:
        """Pause every stream of the client."""
        self.limiter.pause(seconds)

    def correct(self, tokens: float) -> None:
        """Correct the token budget."""
        self.limiter.correct(tokens)

    @property
    def circuit_state(self) -> Optional[str]:
        """The local breaker's state, or ``None`` without one."""
        return self.breaker.state if self.breaker is not None else None


class Gate:
    """One attempt's passage through its client's flow control.

    Usage (by the worker, around each HTTP attempt)::

        gate = Gate(flow, cancel, deadline)
        waited = gate.enter(tokens)    # the breaker admits it, the rate limiter lets it go
        ...  gate.answered()           # a 2xx answer: a probe has proved the server is up
        gate.leave(error)              # the attempt's outcome, for the breaker
    """

    __slots__ = ("_flow", "_cancel", "_deadline", "_lease", "_probe")

    def __init__(self, flow: FlowControl, cancel: CancelFlag, deadline: float, lease: object = None) -> None:
        self._flow = flow
        self._cancel = cancel
        self._deadline = deadline
        self._lease = lease
        self._probe = False

    def enter(self, tokens: float) -> float:
        """Pass the breaker (or raise ``CircuitOpenError``) and the rate limiter; return the seconds waited."""
        waited, self._probe = self._flow.enter(tokens, self._cancel, self._deadline, self._lease)
        return waited

    def answered(self) -> None:
        """The server answered 2xx: a probe closes the circuit now, not when its answer ends."""
        if self._probe:
            self._probe = False
            self._flow.record(True, None)

    def leave(self, error: Optional[BaseException]) -> None:
        """Record the attempt's outcome (``Cancelled`` when the caller stopped it: that proves nothing)."""
        self._flow.record(self._probe, error)
        self._probe = False
