"""Which failures are retried, and how long to wait before the next attempt.

Rules (design.md, "Errors"):
  * Retried: connection errors, connect / first-token / idle timeouts, HTTP
    408, 409, 429, 5xx and 529, incomplete streams, and the in-stream provider
    errors the provider calls transient (``overloaded_error``...).
  * Never retried: other 4xx, malformed streams, resume failures, the
    ``total`` timeout (it bounds everything), and anything after ``close()``.
  * ``x-should-retry: true|false`` from the server overrides the status rule,
    as in the official openai and anthropic SDKs.
  * Waits: exponential with full jitter from ``backoff``'s wait generators; a
    server's ``Retry-After`` / ``retry-after-ms`` wins when given, up to
    ``Retry.max_retry_after`` (a longer request is not retried at all).

The worker waits on its cancel ``Event``, never ``time.sleep``, so ``close()``
interrupts a wait at once. That is why the wait generators are used directly
rather than backoff's decorator, whose sync path sleeps uninterruptibly.

``backoff`` is imported at the first retry, not with llmstream: its package
imports asyncio (for its async decorator), which alone costs a cold start as
much as the rest of llmstream's own modules, and most streams never retry.
"""

from __future__ import annotations

from typing import Callable, Generator, Optional

from ._config import Retry
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    IncompleteStreamError,
    ProviderError,
    StreamTimeoutError,
)
from ._providers._base import Provider

__all__ = ["is_retryable", "RetrySchedule", "RETRYABLE_STATUSES"]

RETRYABLE_STATUSES = frozenset({408, 409, 429})


def is_retryable(error: BaseException, provider: Provider) -> bool:
    """Whether ``error`` is worth another attempt (the rules above)."""
    if isinstance(error, APIStatusError):
        if error.should_retry is not None:
            return error.should_retry
        return error.status_code in RETRYABLE_STATUSES or error.status_code >= 500
    if isinstance(error, StreamTimeoutError):
        return error.kind != "total"
    if isinstance(error, (APIConnectionError, IncompleteStreamError)):
        return True
    if isinstance(error, ProviderError):
        return provider.is_retryable(error)
    return False


class RetrySchedule:
    """The waits of one stream's retries: a fresh object per stream.

    Per-stream state lives here, never in the user's :class:`Retry`, so one
    ``Retry`` value can serve many streams and threads at once.
    """

    def __init__(self, retry: Retry, jitter: Optional[Callable[[float], float]] = None) -> None:
        self._retry = retry
        self._jitter = jitter
        self._waits: Optional[Generator[float, None, None]] = None  # made at the first retry

    def _next_wait(self) -> float:
        if self._waits is None:
            import backoff  # lazily: see the module docstring

            if self._jitter is None:
                self._jitter = backoff.full_jitter
            self._waits = backoff.expo(factor=self._retry.initial_delay, max_value=self._retry.max_delay)
            next(self._waits)  # backoff's generators are primed with one next()
        return next(self._waits)

    def delay_for(self, error: BaseException) -> Optional[float]:
        """Seconds to wait before retrying after ``error``, or ``None`` to give up.

        A ``Retry-After`` above ``max_retry_after`` gives up: the server said
        it will not serve us in time, and waiting longer than asked is pointless.
        """
        base = self._next_wait()
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            if retry_after > self._retry.max_retry_after:
                return None
            return float(retry_after)
        assert self._jitter is not None  # set by _next_wait
        return float(self._jitter(base))
