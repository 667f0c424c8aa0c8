"""Client: where a stream's settings come from, and the module-level shortcuts.

Strategy: a :class:`Client` holds one provider, one base URL, one API key and
one ``requests.Session`` (connection reuse). ``stream()`` normalises the
arguments (a prompt or messages), builds the request with the provider, and
starts a worker; ``complete()`` is a stream consumed to its end.

API keys and base URLs default from the environment variables each provider's
own SDK reads. The key is kept out of every repr, log line and message.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ._config import CircuitBreaker, RateLimit, Retry, Timeout, TimeoutTypes
from ._cost import Pricing
from ._events import StreamResult
from ._flow import Flow
from ._providers import get_provider
from ._providers._base import Message, Provider
from ._stream import TokenStream
from ._transport import Transport, redact_url
from ._worker import Worker
from .sse import DEFAULT_MAX_LINE_LENGTH

__all__ = ["Client", "stream", "complete", "build_messages"]

#: Events the queue may hold before the worker blocks (backpressure).
DEFAULT_MAX_BUFFERED = 1024


def build_messages(prompt: Optional[str], messages: Optional[Sequence[Message]], system: Optional[str]) -> List[Message]:
    """The conversation a stream sends: a prompt or messages, with the system prompt first (the CLI uses it too)."""
    if (prompt is None) == (messages is None):
        raise ValueError("pass either a prompt or messages=[...], not both and not neither")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        result: List[Message] = [{"role": "user", "content": prompt}]
    else:
        result = [dict(m) for m in messages or ()]
        if not result:
            raise ValueError("messages must not be empty")
    if system is not None:
        result.insert(0, {"role": "system", "content": system})
    return result


def _check_max_output_chars(value: Optional[int]) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_output_chars must be an int >= 1 (or None for no limit), got {value!r}")
    return value


#: Connections a client keeps for reuse per host when neither ``pool_size``
#: nor ``max_concurrent`` says otherwise (httpx keeps up to 100 connections).
DEFAULT_POOL_SIZE = 100


class Client:
    """A configured connection to one provider; make streams with :meth:`stream`.

    Args:
        provider: ``"openai"`` (chat completions, and any OpenAI-compatible
            server), ``"openai-responses"``, ``"anthropic"`` or ``"ollama"``.
        base_url: as the provider's own SDK means it (OpenAI's includes
            ``/v1``; Anthropic's does not; Ollama's is the host). Defaults from
            ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL`` / ``OLLAMA_HOST``.
        api_key: defaults from ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` / ``OLLAMA_API_KEY``.
        timeout: a :class:`Timeout`, a number (connect, first_token and idle) or None (defaults).
        retry: a :class:`Retry`, an int (max_attempts) or None (defaults).
        max_buffered: events the queue may hold before the worker stops reading
            the socket (backpressure).
        max_line_length: the longest line accepted from the server, in bytes.
        max_concurrent: at most this many streams of this client in flight;
            more wait their turn in FIFO order, within their ``total`` timeout
            (``None``: no limit).
        rate_limit: a :class:`RateLimit` (requests / tokens per minute) shared
            by every stream of this client. Whether set or not, a 429 answer
            with ``Retry-After`` pauses all of the client's streams.
        circuit_breaker: a :class:`CircuitBreaker` to stop calling a failing
            server for a while (``True`` for the defaults; ``None``: off).
        max_output_chars: cut every answer at this many characters (text,
            thinking and tool-call arguments): the stream ends with
            ``finish_reason == "max_output_chars"`` and its socket is closed.
        pool_size: connections kept open for reuse, per host (default:
            ``max_concurrent``, or 100 without it). More streams than this may
            still run at once; the connections beyond it are closed when their
            stream ends instead of being reused, so a web app running hundreds
            of streams should set it to about as many.
        pricing: a :class:`Pricing` table: each stream's ``cost`` (and
            ``result.cost``) is then computed over all its attempts.

    Usage::

        client = llmstream.Client(provider="anthropic", timeout=llmstream.Timeout(idle=30))
        with client.stream("Hi", model="claude-sonnet-4-5", max_tokens=512) as s:
            for text in s:
                print(text, end="")

    A client is thread-safe: many threads may stream from one client at once.
    """

    def __init__(
        self,
        provider: str = "openai",
        *,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: TimeoutTypes = None,
        retry: Union[Retry, int, None] = None,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_concurrent: Optional[int] = None,
        rate_limit: Optional[RateLimit] = None,
        circuit_breaker: Union[CircuitBreaker, bool, None] = None,
        max_output_chars: Optional[int] = None,
        pool_size: Optional[int] = None,
        pricing: Optional[Pricing] = None,
    ) -> None:
        if pricing is not None and not isinstance(pricing, Pricing):
            raise TypeError(f"pricing must be a llmstream.Pricing or None, not {type(pricing).__name__}")
        self.pricing = pricing
        self._provider: Provider = get_provider(provider)
        env_base = os.environ.get(self._provider.base_url_env) if self._provider.base_url_env else None
        self.base_url = self._provider.normalize_base_url(base_url or env_base or self._provider.default_base_url)
        key_env = self._provider.api_key_env
        self._api_key = api_key if api_key is not None else (os.environ.get(key_env) if key_env else None)
        if not self._api_key and self._provider.requires_api_key and not (base_url or env_base):
            raise ValueError(
                f"no API key for provider {provider!r}: pass api_key=... or set {key_env}"
                " (or pass base_url=... for a server that needs none)"
            )
        self.timeout = Timeout.coerce(timeout)
        self.retry = Retry.coerce(retry)
        if max_buffered < 1:
            raise ValueError(f"max_buffered must be >= 1, got {max_buffered!r}")
        self.max_buffered = max_buffered
        self.max_line_length = max_line_length
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise TypeError(f"rate_limit must be a llmstream.RateLimit or None, not {type(rate_limit).__name__}")
        if circuit_breaker is True:
            circuit_breaker = CircuitBreaker()
        elif circuit_breaker is False:
            circuit_breaker = None
        elif circuit_breaker is not None and not isinstance(circuit_breaker, CircuitBreaker):
            raise TypeError("circuit_breaker must be a llmstream.CircuitBreaker, True, False or None, "
                            f"not {type(circuit_breaker).__name__}")
        self.max_output_chars = _check_max_output_chars(max_output_chars)
        self._flow = Flow(base_url=redact_url(self.base_url), max_concurrent=max_concurrent,
                          rate_limit=rate_limit, circuit_breaker=circuit_breaker)
        if pool_size is None:
            pool_size = max_concurrent if max_concurrent is not None else DEFAULT_POOL_SIZE
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise ValueError(f"pool_size must be a whole number >= 1, got {pool_size!r}")
        self.pool_size = pool_size
        self._transport = Transport(pool_size=pool_size)

    @property
    def provider(self) -> str:
        """The provider's name."""
        return self._provider.name

    @property
    def circuit_state(self) -> Optional[str]:
        """The circuit breaker's state (``"closed"``, ``"open"``, ``"half-open"``), or ``None`` without one."""
        return self._flow.breaker.state if self._flow.breaker is not None else None

    def stream(
        self,
        prompt: Optional[str] = None,
        *,
        messages: Optional[Sequence[Message]] = None,
        model: str,
        system: Optional[str] = None,
        timeout: TimeoutTypes = None,
        retry: Union[Retry, int, None] = None,
        max_output_chars: Optional[int] = None,
        **params: Any,
    ) -> TokenStream:
        """Start streaming an answer and return its :class:`TokenStream` at once.

        Args:
            prompt: a user message (or pass ``messages``).
            messages: the conversation, in the provider's message format.
            model: the model name.
            system: a system prompt, put where the provider wants it.
            timeout: overrides the client's :class:`Timeout` for this stream.
            retry: overrides the client's :class:`Retry` for this stream.
            max_output_chars: overrides the client's output length guard for this stream.
            **params: go into the request body unchanged (``temperature``,
                ``max_tokens``, ``tools``...); a ``None`` value removes a default.

        Raises:
            ValueError: for arguments that cannot make a request. Network and
                server failures are raised while iterating, as ``StreamError``.
        """
        if not isinstance(model, str) or not model:
            raise ValueError("model must be a non-empty string, e.g. model='gpt-4o-mini'")
        spec = self._provider.build_request(
            base_url=self.base_url, api_key=self._api_key, model=model,
            messages=build_messages(prompt, messages, system), params=params,
        )
        worker = Worker(
            transport=self._transport, provider=self._provider, spec=spec,
            timeout=self.timeout if timeout is None else Timeout.coerce(timeout),
            retry=self.retry if retry is None else Retry.coerce(retry),
            max_buffered=self.max_buffered, max_line_length=self.max_line_length,
            flow=self._flow, model=model,
            max_output_chars=self.max_output_chars if max_output_chars is None
            else _check_max_output_chars(max_output_chars),
            # OpenAI's own API has no assistant prefill; compatible servers (vLLM...) do.
            continue_allowed=not (self._provider.name == "openai" and "api.openai.com" in self.base_url),
            pricing=self.pricing,
        )
        return TokenStream(worker, provider=self._provider.name, model=model)

    def complete(self, prompt: Optional[str] = None, **kwargs: Any) -> StreamResult:
        """Stream an answer to its end and return the :class:`StreamResult` (same arguments as :meth:`stream`)."""
        with self.stream(prompt, **kwargs) as s:
            return s.result

    def close(self) -> None:
        """Close the connection pool. Streams still running keep their connection until they end."""
        self._transport.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"Client(provider={self.provider!r}, base_url={redact_url(self.base_url)!r}, api_key=<{key}>)"


_default_clients: Dict[Tuple[str, Optional[str], Optional[str]], Client] = {}
_default_lock = threading.Lock()


def _default_client(provider: str, base_url: Optional[str], api_key: Optional[str]) -> Client:
    # Shared per (provider, base_url, key) so repeated llmstream.stream() calls
    # reuse connections, as the official SDKs' module-level clients do.
    key = (provider, base_url, api_key)
    with _default_lock:
        client = _default_clients.get(key)
        if client is None:
            client = _default_clients[key] = Client(provider, base_url=base_url, api_key=api_key)
        return client


def stream(
    prompt: Optional[str] = None,
    *,
    messages: Optional[Sequence[Message]] = None,
    model: str,
    provider: str = "openai",
    base_url: Optional[str] = None,
    api_key: Optional[str] = None,
    timeout: TimeoutTypes = None,
    retry: Union[Retry, int, None] = None,
    **params: Any,
) -> TokenStream:
    """Stream an answer with a shared default :class:`Client` for ``provider``.

    Usage::

        for text in llmstream.stream("Tell me a story", model="gpt-4o-mini"):
            print(text, end="", flush=True)

    Same arguments as :meth:`Client.stream`, plus the client's ``provider``,
    ``base_url`` and ``api_key``.
    """
    client = _default_client(provider, base_url, api_key)
    return client.stream(prompt, messages=messages, model=model, timeout=timeout, retry=retry, **params)


def complete(prompt: Optional[str] = None, **kwargs: Any) -> StreamResult:
    """Like :func:`stream`, consumed to its end: returns the :class:`StreamResult`."""
    with stream(prompt, **kwargs) as s:
        return s.result


