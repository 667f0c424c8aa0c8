"""What comes after a failed attempt: the next request and the wait before it, or the end.

Strategy: one :class:`RetryDecision` per stream, asked by the worker each
time an attempt fails. It holds the stream's retry state (the backoff
schedule of ``_retry.py``) and asks the stream's ``Resumer`` how the next
attempt goes on, so that nothing is delivered twice or lost. It answers with
values; the worker does the waiting, the telling (the ``Retrying`` event)
and the pausing of the client's flow control.

Rules (design.md, "Errors" and "Resume: exactly once"), in order:
  1. No attempt past ``Retry.max_attempts``: the error is raised.
  2. A server that refuses a resume request (a prefill answered with 400...)
     is asked again at once in the next way (``Resumer.fallback``), with no
     backoff wait: the refusal was about the way, not about the server.
  3. Otherwise only a retryable error (``_retry.is_retryable``) is retried,
     after the schedule's wait (full jitter, or the server's ``Retry-After``
     up to ``max_retry_after``; a longer one gives up).
  4. A wait that would end at or past the stream's ``total`` deadline gives
     up now rather than fail later with less said.
  5. The next request is the resumer's: a fresh one, or how to resume after
     what was delivered; ``ResumeError`` when it cannot resume.
  Besides (:meth:`RetryDecision.flow_pause`): a 429 pauses the whole client
  for its ``Retry-After`` (else ``initial_delay``), up to ``max_retry_after``,
  whether or not this stream retries: one stream's 429 slows every stream.

Never: a thread, a clock (the caller passes ``now``) or a sleep; never a
mutation of the user's ``Retry``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from ._config import Retry
from ._exceptions import RateLimitError, StreamError
from ._providers._base import Provider, RequestSpec, StreamDecoder
from ._resume import Resumer
from ._retry import RetrySchedule, is_retryable

__all__ = ["NextAttempt", "RetryDecision"]


class NextAttempt(NamedTuple):
    """The decision to try again: with this request, after this many seconds."""

    request: RequestSpec
    delay: float


class RetryDecision:
    """One stream's decision of what comes after each failed attempt (the rules above).

    Usage (by the worker, after an attempt failed with ``error``)::

        decision = RetryDecision(retry, provider, resumer, total_deadline)
        pause = decision.flow_pause(error)    # a 429: pause the client's flow control
        following = decision.after(error, decoder, attempts=n, now=time.monotonic())  # or raises
    """

    __slots__ = ("_retry", "_provider", "_resumer", "_total_deadline", "_schedule")

    def __init__(self, retry: Retry, provider: Provider, resumer: Resumer, total_deadline: float,
                 schedule: Optional[RetrySchedule] = None) -> None:
        self._retry = retry
        self._provider = provider
        self._resumer = resumer
        self._total_deadline = total_deadline
        self._schedule = schedule if schedule is not None else RetrySchedule(retry)

    def flow_pause(self, error: StreamError) -> Optional[float]:
        """Seconds to pause the client's flow control after ``error`` (a 429), or None."""
        if not isinstance(error, RateLimitError):
            return None
        pause = error.retry_after if error.retry_after is not None else self._retry.initial_delay
        return min(pause, self._retry.max_retry_after)

    def after(self, error: StreamError, decoder: StreamDecoder, *, attempts: int, now: float) -> NextAttempt:
        """The next attempt after ``error``, which ended attempt number ``attempts``.

        Args:
            error: the failed attempt's error.
            decoder: the failed attempt's decoder (where a cursor resume goes on).
            attempts: attempts made so far, the failed one included.
            now: ``time.monotonic()``, for the ``total`` deadline.

        Raises:
            StreamError: ``error`` itself when it is not retried, or
                ``ResumeError`` when the stream cannot be resumed.
        """
        if attempts >= self._retry.max_attempts:
            raise error
        request = self._resumer.fallback(error, decoder)
        if request is not None:
            return NextAttempt(request, 0.0)
        # The schedule advances only for an error that is retried.
        wait = self._schedule.delay_for(error) if is_retryable(error, self._provider) else None
        if wait is None or now + wait >= self._total_deadline:
            raise error
        return NextAttempt(self._resumer.next_request(error, decoder), wait)  # raises if it cannot resume
