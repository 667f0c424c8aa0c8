"""The llmstream exception tree.

Every failure of a stream derives from :class:`StreamError` and says what the
caller had already received (``partial_text``) and how many HTTP attempts were
made (``attempts``). Misuse of the API is not a stream failure: it raises a
``RuntimeError`` subclass whose message says what to do instead.

::

    StreamError                      a stream failed; .partial_text, .attempts
    ├── APIStatusError               non-2xx answer; .status_code, .body, .retry_after
    │   ├── BadRequestError          400
    │   ├── AuthenticationError      401
    │   ├── PermissionDeniedError    403
    │   ├── NotFoundError            404
    │   ├── RateLimitError           429
    │   └── ServerError              5xx and 529
    ├── APIConnectionError           could not connect / reset before a response
    ├── StreamTimeoutError           (also a builtin TimeoutError); .kind
    ├── IncompleteStreamError        the stream ended without its end marker
    ├── MalformedStreamError         bytes that are not the provider's protocol
    ├── ProviderError                an error reported inside the stream; .type
    ├── ResumeError                  a broken stream could not be resumed exactly once
    ├── CallbackError                a callback (on_text...) raised; .callback, __cause__ is its exception
    ├── CircuitOpenError             the client's circuit breaker is open; .retry_after, .base_url
    └── SharedStateError             the shared flow-control state (Redis) could not be reached, fail-closed

    StreamClosedError (RuntimeError) iterating a stream after close()
    StreamBusyError (RuntimeError)   iterating one stream from two threads at once
    TextNotKeptError (RuntimeError)  reading .text of a stream made with keep_text=False

Leaves carry their data as keyword-only attributes and stay picklable, so an
error can cross a process boundary (multiprocessing, concurrent.futures).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Type

__all__ = [
    "StreamError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "APIConnectionError",
    "StreamTimeoutError",
    "IncompleteStreamError",
    "MalformedStreamError",
    "ProviderError",
    "ResumeError",
    "CallbackError",
    "CircuitOpenError",
    "SharedStateError",
    "StreamClosedError",
    "StreamBusyError",
    "TextNotKeptError",
    "status_error_class",
]


class StreamError(Exception):
    """Base of every stream failure: carries what was delivered before it.

    Attributes:
        message: the human-readable description (also ``str(exc)``).
        partial_text: the text the caller had already received when the stream
            failed ("" when nothing was delivered).
        attempts: how many HTTP attempts were made (0 when raised by the
            sans-IO core before the IO shell knows).
    """

    def __init__(self, message: str, *, partial_text: str = "", attempts: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.partial_text = partial_text
        self.attempts = attempts

    def _extra(self) -> Dict[str, Any]:
        """Keyword attributes a subclass adds; used for pickling."""
        return {}

    def __reduce__(self) -> Tuple[Any, ...]:
        # Exceptions pickle as cls(*args) by default, which would lose the
        # keyword-only attributes (urllib3 solves the same problem this way).
        kwargs = dict(partial_text=self.partial_text, attempts=self.attempts, **self._extra())
        return (_rebuild, (type(self), self.message, kwargs))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, partial_text={self.partial_text!r}, attempts={self.attempts})"


def _rebuild(cls: Type[StreamError], message: str, kwargs: Dict[str, Any]) -> StreamError:
    return cls(message, **kwargs)


class APIStatusError(StreamError):
    """Raised when the server answered with a non-2xx HTTP status.

    Attributes:
        status_code: the HTTP status.
        body: the response body as text (possibly truncated), for diagnosis.
        retry_after: seconds the server asked to wait (``Retry-After`` or
            ``retry-after-ms``), or ``None``.
        should_retry: the server's ``x-should-retry`` verdict (``True``/``False``),
            or ``None`` when it gave none.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: str = "",
        retry_after: Optional[float] = None,
        should_retry: Optional[bool] = None,
        partial_text: str = "",
        attempts: int = 0,
    ) -> None:
        super().__init__(message, partial_text=partial_text, attempts=attempts)
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after
        self.should_retry = should_retry

    def _extra(self) -> Dict[str, Any]:
        return {
            "status_code": self.status_code,
            "body": self.body,
            "retry_after": self.retry_after,
            "should_retry": self.should_retry,
        }


class BadRequestError(APIStatusError):
    """Raised on HTTP 400: the request was invalid; retrying will not help."""


class AuthenticationError(APIStatusError):
    """Raised on HTTP 401: the API key is missing or wrong."""


class PermissionDeniedError(APIStatusError):
    """Raised on HTTP 403: the key may not use this model or endpoint."""


class NotFoundError(APIStatusError):
    """Raised on HTTP 404: wrong base URL, path or model name."""


class RateLimitError(APIStatusError):
    """Raised on HTTP 429 once retries are exhausted."""


class ServerError(APIStatusError):
    """Raised on HTTP 5xx or 529 (overloaded) once retries are exhausted."""


_STATUS_CLASSES: Dict[int, Type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
    529: ServerError,
}


def status_error_class(status_code: int) -> Type[APIStatusError]:
    """Return the most specific :class:`APIStatusError` subclass for a status."""
    if status_code in _STATUS_CLASSES:
        return _STATUS_CLASSES[status_code]
    if 500 <= status_code <= 599:
        return ServerError
    return APIStatusError


class APIConnectionError(StreamError):
    """Raised when no connection could be made, or it was reset before any response."""


class StreamTimeoutError(StreamError, TimeoutError):
    """Raised when a limit of :class:`llmstream.Timeout` was passed.

    Attributes:
        kind: which limit: ``"connect"``, ``"first_token"``, ``"idle"`` or ``"total"``.
    """

    def __init__(self, message: str, *, kind: str, partial_text: str = "", attempts: int = 0) -> None:
        super().__init__(message, partial_text=partial_text, attempts=attempts)
        self.kind = kind

    def _extra(self) -> Dict[str, Any]:
        return {"kind": self.kind}


class IncompleteStreamError(StreamError):
    """Raised when the stream ended without the provider's end-of-stream marker."""


class MalformedStreamError(StreamError):
    """Raised on bytes that are not the provider's protocol (bad JSON, over-long line, wrong content type)."""


class ProviderError(StreamError):
    """Raised when the provider reported an error inside the stream.

    Attributes:
        type: the provider's error type (``"overloaded_error"``, ``"server_error"``...) or ``None``.
    """

    def __init__(self, message: str, *, type: Optional[str] = None, partial_text: str = "", attempts: int = 0) -> None:
        super().__init__(message, partial_text=partial_text, attempts=attempts)
        self.type = type

    def _extra(self) -> Dict[str, Any]:
        return {"type": self.type}


class ResumeError(StreamError):
    """Raised when a broken stream could not be resumed without duplicating or losing text."""


class CallbackError(StreamError):
    """Raised when a callback (``on_text``, ``on_event``...) raised: the stream is closed; ``__cause__`` is the callback's exception.

    Attributes:
        callback: the callback's name, e.g. ``"on_text"``.
    """

    def __init__(self, message: str, *, callback: str = "", partial_text: str = "", attempts: int = 0) -> None:
        super().__init__(message, partial_text=partial_text, attempts=attempts)
        self.callback = callback

    def _extra(self) -> Dict[str, Any]:
        return {"callback": self.callback}


class CircuitOpenError(StreamError):
    """Raised at once, without a request, while the client's circuit breaker is open.

    After ``CircuitBreaker.failure_threshold`` consecutive failures against one
    base URL, the client stops sending requests there for ``cooldown`` seconds,
    then lets one probe through.

    Attributes:
        retry_after: seconds until the breaker lets a probe through (0 while a probe is in flight).
        base_url: the base URL the breaker guards (credentials removed).
    """

    def __init__(self, message: str, *, retry_after: float = 0.0, base_url: str = "",
                 partial_text: str = "", attempts: int = 0) -> None:
        super().__init__(message, partial_text=partial_text, attempts=attempts)
        self.retry_after = retry_after
        self.base_url = base_url

    def _extra(self) -> Dict[str, Any]:
        return {"retry_after": self.retry_after, "base_url": self.base_url}


class SharedStateError(StreamError):
    """Raised when the fleet's shared state (``RedisState``) cannot be reached and the client fails closed.

    Only with ``RedisState(on_error="closed")``: the stream fails without a
    request rather than going past the fleet's limits. (``on_error="open"``,
    the default, falls back to the client's own limits instead.) Never retried.
    """


class StreamClosedError(RuntimeError):
    """Raised when a stream is iterated after ``close()``; start a new stream instead."""


class StreamBusyError(RuntimeError):
    """Raised when a stream is iterated from two threads at once; give each thread its own stream."""


class TextNotKeptError(RuntimeError):
    """Raised when ``.text`` is read from a stream made with ``keep_text=False``; take the text as it arrives instead."""
