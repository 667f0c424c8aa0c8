"""Configuration values: :class:`Timeout`, :class:`Retry`, :class:`RateLimit`, :class:`CircuitBreaker`.

All are small immutable values: validated once in ``__init__``, with a
``__repr__`` that round-trips and value equality, so one instance can be shared
by many clients and threads. Nothing here does IO or reads a clock.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple, Union

__all__ = ["Timeout", "Retry", "RateLimit", "CircuitBreaker", "RESUME_MODES", "TimeoutTypes"]

def _check_seconds(name: str, value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Timeout.{name} must be a number of seconds or None, not {type(value).__name__}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"Timeout.{name} must be > 0 seconds (or None for no limit), got {value!r}")
    return float(value)


class _Frozen:
    """Mixin: refuse attribute assignment after ``__init__``."""

    __slots__: Tuple[str, ...] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; build a new one with .replace(...)")

    def _init(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _values(self) -> Tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def replace(self, **changes: Any) -> Any:
        """Return a copy with some fields changed (validated again)."""
        values = dict(zip(self.__slots__, self._values()))
        values.update(changes)
        return type(self)(**values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Frozen) or type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={v!r}" for n, v in zip(self.__slots__, self._values()))
        return f"{type(self).__name__}({fields})"


class Timeout(_Frozen):
    """Time limits for a stream, in seconds (``None`` = no limit).

    Args:
        connect: to open the TCP (and TLS) connection.
        first_token: from sending the request to the first content (text or a
            tool call); keep-alive comments and pings do not count.
        idle: the longest wait for the next content after the first. Keep-alive
            comments and ``ping`` events do not count as progress, and time the
            worker spends blocked because the caller is slow never counts.
        total: a deadline for the whole stream, retries and their waits included.

    The defaults never wait forever: 10 s to connect, 120 s to the first token
    (reasoning models think before they speak), 60 s between tokens, 600 s in all.

    Usage::

        llmstream.Timeout(idle=30, total=300)
        llmstream.Timeout(first_token=None)      # wait as long as the model thinks
        client = llmstream.Client(timeout=20)    # a number: connect, first_token and idle

    A plain number given where a ``Timeout`` is expected sets ``connect``,
    ``first_token`` and ``idle`` (the same meaning as a ``requests`` timeout)
    and keeps the default ``total``.
    """

    __slots__ = ("connect", "first_token", "idle", "total")
    connect: Optional[float]
    first_token: Optional[float]
    idle: Optional[float]
    total: Optional[float]

    def __init__(
        self,
        connect: Optional[float] = 10.0,
        first_token: Optional[float] = 120.0,
        idle: Optional[float] = 60.0,
        total: Optional[float] = 600.0,
    ) -> None:
        for name, value in (("connect", connect), ("first_token", first_token), ("idle", idle), ("total", total)):
            self._init(name, _check_seconds(name, value))

    @classmethod
    def coerce(cls, value: "TimeoutTypes") -> "Timeout":
        """Turn what a caller may pass as ``timeout=`` into a :class:`Timeout`.

        ``None`` gives the defaults, a number sets ``connect``, ``first_token``
        and ``idle``, and a :class:`Timeout` is returned unchanged.
        """
        if value is None:
            return cls()
        if isinstance(value, Timeout):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(connect=value, first_token=value, idle=value)
        raise TypeError(f"timeout must be a Timeout, a number of seconds or None, not {type(value).__name__}")


TimeoutTypes = Union[Timeout, float, int, None]

#: The resume modes of :class:`Retry`, in the order ``"auto"`` prefers them.
RESUME_MODES = ("auto", "last-event-id", "continue", "replay", "never")


class Retry(_Frozen):
    """When and how a failed stream is tried again.

    Args:
        max_attempts: HTTP attempts in all, the first included (1 = never retry).
        initial_delay: the base of the exponential backoff, in seconds.
        max_delay: the cap of one backoff wait, in seconds.
        max_retry_after: the longest ``Retry-After`` honoured; a server asking
            for more is not retried.
        resume: how a stream that broke after delivering text continues without
            showing it twice: ``"auto"`` (the best the provider supports),
            ``"last-event-id"``, ``"continue"``, ``"replay"`` or ``"never"``.

    Waits use full jitter: a random time between 0 and
    ``min(max_delay, initial_delay * 2**n)``. The ``total`` timeout bounds all
    attempts and waits together.

    Usage::

        llmstream.Retry(max_attempts=4, resume="auto")
        llmstream.Retry(max_attempts=1)          # no retries
    """

    __slots__ = ("max_attempts", "initial_delay", "max_delay", "max_retry_after", "resume")
    max_attempts: int
    initial_delay: float
    max_delay: float
    max_retry_after: float
    resume: str

    def __init__(
        self,
        max_attempts: int = 3,
        initial_delay: float = 0.5,
        max_delay: float = 8.0,
        max_retry_after: float = 60.0,
        resume: str = "auto",
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"Retry.max_attempts must be an int >= 1, got {max_attempts!r}")
        for name, value in (("initial_delay", initial_delay), ("max_delay", max_delay), ("max_retry_after", max_retry_after)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise ValueError(f"Retry.{name} must be a number >= 0, got {value!r}")
        if resume not in RESUME_MODES:
            raise ValueError(f"Retry.resume must be one of {', '.join(map(repr, RESUME_MODES))}; got {resume!r}")
        self._init("max_attempts", max_attempts)
        self._init("initial_delay", float(initial_delay))
        self._init("max_delay", float(max_delay))
        self._init("max_retry_after", float(max_retry_after))
        self._init("resume", resume)

    @classmethod
    def coerce(cls, value: Union["Retry", int, None]) -> "Retry":
        """``None`` gives the defaults, an int sets ``max_attempts``, a :class:`Retry` is returned unchanged."""
        if value is None:
            return cls()
        if isinstance(value, Retry):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(max_attempts=value)
        raise TypeError(f"retry must be a Retry, an int (max_attempts) or None, not {type(value).__name__}")


def _check_rate(owner: str, name: str, value: Optional[float], *, allow_none: bool = True) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a number > 0{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


class RateLimit(_Frozen):
    """Client-side request and token budgets, shared by every stream of one client.

    Args:
        requests_per_minute: requests the client may send per minute (``None`` = no limit).
        tokens_per_minute: tokens per minute, estimated before each request as
            its prompt's characters / 4 plus its output limit (``max_tokens``),
            then corrected with the usage the provider reports.
        burst_seconds: how much of a minute's budget may be spent at once; the
            buckets hold ``per_minute * burst_seconds / 60`` (at least one request).

    Token bucket: the budget refills continuously. Whatever the limits, a 429
    answer with ``Retry-After`` pauses every stream of the client for that long,
    and the buckets start empty after the pause so traffic ramps up again.

    Usage::

        client = llmstream.Client(rate_limit=llmstream.RateLimit(requests_per_minute=500,
                                                                 tokens_per_minute=200_000))
    """

    __slots__ = ("requests_per_minute", "tokens_per_minute", "burst_seconds")
    requests_per_minute: Optional[float]
    tokens_per_minute: Optional[float]
    burst_seconds: float

    def __init__(
        self,
        requests_per_minute: Optional[float] = None,
        tokens_per_minute: Optional[float] = None,
        burst_seconds: float = 10.0,
    ) -> None:
        self._init("requests_per_minute", _check_rate("RateLimit", "requests_per_minute", requests_per_minute))
        self._init("tokens_per_minute", _check_rate("RateLimit", "tokens_per_minute", tokens_per_minute))
        self._init("burst_seconds", _check_rate("RateLimit", "burst_seconds", burst_seconds, allow_none=False))


class CircuitBreaker(_Frozen):
    """When a client stops sending requests to a failing server, and for how long.

    Args:
        failure_threshold: consecutive failed attempts that open the circuit.
            Failures are what says the server is unwell: connection errors,
            connect / first-token / idle timeouts, 5xx and 529, incomplete or
            malformed streams, provider errors. A 4xx answer (429 included:
            the rate limiter handles it) or any complete answer resets the count.
        cooldown: seconds the circuit stays open, failing streams at once with
            :class:`~llmstream.CircuitOpenError`; then one probe request goes
            through (half-open): its success closes the circuit, its failure
            opens it for another cooldown.

    Usage::

        client = llmstream.Client(circuit_breaker=llmstream.CircuitBreaker(failure_threshold=5, cooldown=30))
    """

    __slots__ = ("failure_threshold", "cooldown")
    failure_threshold: int
    cooldown: float

    def __init__(self, failure_threshold: int = 5, cooldown: float = 30.0) -> None:
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ValueError(f"CircuitBreaker.failure_threshold must be an int >= 1, got {failure_threshold!r}")
        self._init("failure_threshold", failure_threshold)
        self._init("cooldown", _check_rate("CircuitBreaker", "cooldown", cooldown, allow_none=False))
