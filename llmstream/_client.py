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
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from ._config import CircuitBreaker, RateLimit, Retry, Timeout, TimeoutTypes
from ._callbacks import Callbacks
from ._cost import Pricing
from ._events import Event, Retrying, StreamResult
from ._exceptions import StreamError
from ._flow import Flow, FlowControl, SharedState
from ._providers import DEFAULT_PROVIDER, get_provider
from ._providers._base import BearerToken, Message, Provider
from ._stream import Sink, TokenStream
from ._options import CALL_OPTIONS, HeaderValues, apply_extras, build_messages, check_headers, check_params
from ._transport import Session, Transport, TransportOptions, redact_url
from ._worker import Worker
from .sse import DEFAULT_MAX_LINE_LENGTH

if TYPE_CHECKING:
    from ._async import AsyncTokenStream

__all__ = ["Client", "stream", "complete", "astream", "acomplete", "build_messages", "CALL_OPTIONS"]

#: An API key, or a callable returning a fresh bearer token before each stream (Entra ID, Google OAuth).
ApiKey = Union[str, Callable[[], str], None]

#: Events the queue may hold before the worker blocks (backpressure).
DEFAULT_MAX_BUFFERED = 1024


def _check_max_output_chars(value: Optional[int]) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_output_chars must be an int >= 1 (or None for no limit), got {value!r}")
    return value


#: Connections a client keeps for reuse per host when neither ``pool_size``
#: nor ``max_concurrent`` says otherwise (httpx keeps up to 100 connections).
DEFAULT_POOL_SIZE = 100
def _check_keep_text(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"keep_text must be True or False, not {value!r}")
    return value


class Client:
    """A configured connection to one provider; make streams with :meth:`stream`.

    Args:
        provider: ``"openai"`` (chat completions, and any OpenAI-compatible
            server), ``"openai-responses"``, ``"anthropic"``, ``"ollama"``,
            ``"gemini"``, ``"vertex"`` or ``"azure"`` (README, "Provider by provider").
        base_url: as the provider's own SDK means it (OpenAI's includes
            ``/v1``; Anthropic's does not; Ollama's is the host; Azure's is the
            resource endpoint). Defaults from the provider's environment variable
            (``OPENAI_BASE_URL``, ``ANTHROPIC_BASE_URL``, ``OLLAMA_HOST``, ``AZURE_OPENAI_ENDPOINT``...).
        api_key: a key, or a callable returning a fresh bearer token, called
            before each stream (Entra ID, Vertex AI). Defaults from the
            provider's environment variable (``OPENAI_API_KEY``, ``GEMINI_API_KEY``...).
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
        shared: a :class:`RedisState` to share ``max_concurrent``,
            ``rate_limit``, the 429 pause (and, if it says so, the circuit
            breaker) with every client of every process that uses the same
            Redis and prefix (``None``: this client's limits are its own).
        default_headers: headers sent with every request (``OpenAI-Organization``,
            ``anthropic-beta``, a proxy's headers), over the provider's own;
            a ``None`` value removes one. Secret-looking ones (``*auth*``,
            ``*key*``, ``*token*``...) are redacted wherever a request is shown.
        proxies: ``{"https": "http://proxy:3128"}`` as requests takes them, or
            one URL for both schemes. Without it the environment's proxies
            (``HTTPS_PROXY``, ``NO_PROXY``...) apply, as in requests; given,
            it wins over them scheme by scheme.
        verify: ``False`` to skip TLS verification, or the path of a CA bundle
            (default: ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, else certifi's).
        cert: a client certificate: a path (key included), or ``(cert, key)`` paths.
        session: a ``requests.Session`` of yours (its headers, auth, cookies,
            adapters and proxies apply). llmstream makes its adapters track
            their sockets, so ``close()`` still ends a stream at once; the
            session stays usable for your other requests, and
            :meth:`close` leaves it open (it is yours).
        keep_text: keep the delivered text for ``.text``, ``partial_text``
            and ``result.text`` (the default; kept once, shared with the
            resumer). ``False`` keeps none, so memory stays flat however long
            the answer: take the text as it arrives (iterate, ``sink=``,
            ``stream.to_file()``). Resume then works by ``last-event-id`` and by
            ``replay`` (checked against a hash of the delivered text; a
            mismatch is a ``ResumeError``), not by ``continue``.
        on_text, on_event, on_retry, on_error, on_complete: callbacks for every
            stream of this client (a stream's own replace them one by one);
            they fire in the consuming thread for exactly what the caller is
            given: each text piece, each event, each ``Retrying``, the
            failure (a ``StreamError``), the ``StreamResult``. A callback that
            raises closes the stream: :class:`CallbackError` (its
            ``__cause__`` is the callback's exception). ``on_text=print``
            prints the pieces with no newline between them. Not used by
            :meth:`astream` (an ``async for`` loop is the async callback).

    Usage::

        client = llmstream.Client(provider="anthropic", timeout=llmstream.Timeout(idle=30))
        with client.stream("Hi", model="claude-sonnet-4-5", max_tokens=512) as s:
            for text in s:
                print(text, end="")

    A client is thread-safe: many threads may stream from one client at once.
    """

    def __init__(
        self,
        provider: str = DEFAULT_PROVIDER,
        *,
        base_url: Optional[str] = None,
        api_key: ApiKey = None,
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
        shared: Optional[SharedState] = None,
        default_headers: Optional[HeaderValues] = None,
        proxies: Union[Mapping[str, str], str, None] = None,
        verify: Union[bool, str, None] = None,
        cert: Union[str, Tuple[str, str], None] = None,
        session: Optional[Session] = None,
        keep_text: bool = True,
        on_text: Optional[Callable[[str], Any]] = None,
        on_event: Optional[Callable[[Event], Any]] = None,
        on_retry: Optional[Callable[[Retrying], Any]] = None,
        on_error: Optional[Callable[[StreamError], Any]] = None,
        on_complete: Optional[Callable[[StreamResult], Any]] = None,
    ) -> None:
        if pricing is not None and not isinstance(pricing, Pricing):
            raise TypeError(f"pricing must be a llmstream.Pricing or None, not {type(pricing).__name__}")
        self.pricing = pricing
        self._callbacks = Callbacks(on_text=on_text, on_event=on_event, on_retry=on_retry, on_error=on_error,
                                    on_complete=on_complete)
        self._provider: Provider = get_provider(provider)
        env_base = self._provider.base_url_from_env(os.environ)
        self.base_url = self._provider.normalize_base_url(base_url or env_base or self._provider.default_base_url)
        key_env = self._provider.api_key_env
        self._api_key: ApiKey = api_key if api_key is not None else self._provider.api_key_from_env(os.environ)
        # Provider options from the environment (Azure's OPENAI_API_VERSION...), under each call's params.
        self._env_params = self._provider.params_from_env(os.environ)
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
        self.keep_text = _check_keep_text(keep_text)
        if shared is not None and not isinstance(shared, SharedState):
            raise TypeError(f"shared must be a llmstream.RedisState or None, not {type(shared).__name__}")
        self._flow: FlowControl
        if shared is None:
            self._flow = Flow(base_url=redact_url(self.base_url), max_concurrent=max_concurrent,
                              rate_limit=rate_limit, circuit_breaker=circuit_breaker)
        else:
            self._flow = shared.flow(base_url=redact_url(self.base_url), max_concurrent=max_concurrent,
                                     rate_limit=rate_limit, circuit_breaker=circuit_breaker)
        if pool_size is None:
            pool_size = max_concurrent if max_concurrent is not None else DEFAULT_POOL_SIZE
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise ValueError(f"pool_size must be a whole number >= 1, got {pool_size!r}")
        self.pool_size = pool_size
        self.default_headers = check_headers("default_headers", default_headers)
        self._transport = Transport(pool_size=pool_size, options=TransportOptions.coerce(
            proxies=proxies, verify=verify, cert=cert, session=session))

    @property
    def provider(self) -> str:
        """The provider's name."""
        return self._provider.name

    @property
    def circuit_state(self) -> Optional[str]:
        """The circuit breaker's state (``"closed"``, ``"open"``, ``"half-open"``), or ``None`` without one."""
        return self._flow.circuit_state

    def stream(
        self,
        prompt: Optional[str] = None,
        *,
        messages: Optional[Sequence[Message]] = None,
        model: Optional[str] = None,
        system: Optional[str] = None,
        timeout: TimeoutTypes = None,
        retry: Union[Retry, int, None] = None,
        max_output_chars: Optional[int] = None,
        extra_headers: Optional[HeaderValues] = None,
        extra_query: Optional[Mapping[str, Any]] = None,
        extra_body: Optional[Mapping[str, Any]] = None,
        keep_text: Optional[bool] = None,
        sink: Sink = None,
        on_text: Optional[Callable[[str], Any]] = None,
        on_event: Optional[Callable[[Event], Any]] = None,
        on_retry: Optional[Callable[[Retrying], Any]] = None,
        on_error: Optional[Callable[[StreamError], Any]] = None,
        on_complete: Optional[Callable[[StreamResult], Any]] = None,
        **params: Any,
    ) -> TokenStream:
        """Start streaming an answer and return its :class:`TokenStream` at once.

        Args:
            prompt: a user message (or pass ``messages``).
            messages: the conversation, in the provider's message format.
            model: the model name (Azure: the deployment name); None: the provider's default model.
            system: a system prompt, put where the provider wants it.
            timeout: overrides the client's :class:`Timeout` for this stream.
            retry: overrides the client's :class:`Retry` for this stream.
            max_output_chars: overrides the client's output length guard for this stream.
            extra_headers: headers for this request, over the client's
                ``default_headers`` (a ``None`` value removes one).
            extra_query: query parameters added to the URL.
            extra_body: keys set at the top of the JSON body, sent as given
                (after the provider's own and ``params``).
            keep_text: overrides the client's ``keep_text`` for this stream.
            sink: also give each text piece, as it is delivered, to this
                callable or file-like object (``write(str)``); a replayed
                answer that does not match what the sink has is a ``ResumeError``.
            on_text, on_event, on_retry, on_error, on_complete: this stream's
                callbacks, each replacing the client's (see :class:`Client`).
            **params: go into the request body unchanged (``temperature``,
                ``max_tokens``, ``tools``...); a ``None`` value removes a default.

        Raises:
            ValueError: for arguments that cannot make a request. Network and
                server failures are raised while iterating, as ``StreamError``.
            TypeError: a client option (``api_key=``, ``base_url=``, ``provider=``,
                ``headers=``...) or a misspelt option (``timout=``) among ``params``;
                messages that are not a list of dicts.
        """
        callbacks = self._callbacks.merged(on_text=on_text, on_event=on_event, on_retry=on_retry,
                                           on_error=on_error, on_complete=on_complete)
        return self._new_stream(prompt, messages=messages, model=model, system=system, timeout=timeout, retry=retry,
                                max_output_chars=max_output_chars, extra_headers=extra_headers,
                                extra_query=extra_query, extra_body=extra_body, keep_text=keep_text, sink=sink,
                                callbacks=callbacks or None, params=params)

    def _new_stream(self, prompt: Optional[str], *, messages: Optional[Sequence[Message]], model: Optional[str],
                    system: Optional[str], timeout: TimeoutTypes, retry: Union[Retry, int, None],
                    max_output_chars: Optional[int], extra_headers: Optional[HeaderValues],
                    extra_query: Optional[Mapping[str, Any]], extra_body: Optional[Mapping[str, Any]],
                    keep_text: Optional[bool], sink: Sink, callbacks: Optional[Callbacks],
                    params: Dict[str, Any]) -> TokenStream:
        check_params(params, where="Client.stream()", provider_options=self._provider.call_options)
        if model is None:
            model = self._provider.default_model
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, e.g. model={self._provider.default_model!r}")
        key = self._api_key
        if callable(key):
            # A token provider is asked before each stream, as the official SDKs do, so it can refresh.
            token = key()
            if not isinstance(token, str) or not token:
                raise ValueError("the api_key callable must return a non-empty str (a bearer token)")
            key = BearerToken(token)
        spec = self._provider.build_request(
            base_url=self.base_url, api_key=key, model=model,
            messages=build_messages(prompt, messages, system), params={**self._env_params, **params},
        )
        spec = apply_extras(
            spec, headers=(self.default_headers, check_headers("extra_headers", extra_headers)),
            query=extra_query, body=extra_body,
        )
        worker = Worker(
            transport=self._transport, provider=self._provider, spec=spec,
            timeout=self.timeout if timeout is None else Timeout.coerce(timeout),
            retry=self.retry if retry is None else Retry.coerce(retry),
            max_buffered=self.max_buffered, max_line_length=self.max_line_length,
            flow=self._flow, model=model,
            max_output_chars=self.max_output_chars if max_output_chars is None
            else _check_max_output_chars(max_output_chars),
            continue_allowed=self._provider.continue_allowed(self.base_url),
            pricing=self.pricing,
            keep_text=self.keep_text if keep_text is None else _check_keep_text(keep_text),
        )
        return TokenStream(worker, provider=self._provider.name, model=model, sink=sink, callbacks=callbacks)

    def complete(self, prompt: Optional[str] = None, **kwargs: Any) -> StreamResult:
        """Stream an answer to its end and return the :class:`StreamResult` (same arguments as :meth:`stream`)."""
        with self.stream(prompt, **kwargs) as s:
            return s.result

    def astream(
        self,
        prompt: Optional[str] = None,
        *,
        messages: Optional[Sequence[Message]] = None,
        model: Optional[str] = None,
        system: Optional[str] = None,
        timeout: TimeoutTypes = None,
        retry: Union[Retry, int, None] = None,
        max_output_chars: Optional[int] = None,
        extra_headers: Optional[HeaderValues] = None,
        extra_query: Optional[Mapping[str, Any]] = None,
        extra_body: Optional[Mapping[str, Any]] = None,
        keep_text: Optional[bool] = None,
        **params: Any,
    ) -> "AsyncTokenStream":
        """Like :meth:`stream`, for asyncio: an :class:`AsyncTokenStream` (``async for``, ``async with``).

        Usage::

            async with client.astream("Hi", model="gpt-4o-mini") as s:
                async for text in s:
                    print(text, end="")

        Same arguments as :meth:`stream`, without the callbacks (the ``async
        for`` loop is the callback; the client's are not used). The event
        loop is never blocked; cancelling the task that iterates closes the
        stream and its socket.
        """
        from ._async import AsyncTokenStream

        # No callbacks: they would fire in the reader thread, not on the loop.
        stream = self._new_stream(prompt, messages=messages, model=model, system=system, timeout=timeout, retry=retry,
                                  max_output_chars=max_output_chars, extra_headers=extra_headers,
                                  extra_query=extra_query, extra_body=extra_body, keep_text=keep_text, sink=None,
                                  callbacks=None, params=params)
        return AsyncTokenStream(stream, max_buffered=self.max_buffered)

    async def acomplete(self, prompt: Optional[str] = None, **kwargs: Any) -> StreamResult:
        """Like :meth:`complete`, for asyncio: ``await client.acomplete(...)`` returns the :class:`StreamResult`."""
        from ._async import consume_to_result

        return await consume_to_result(self.astream(prompt, **kwargs))

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


_default_clients: Dict[Tuple[str, Optional[str], ApiKey], Client] = {}
_default_lock = threading.Lock()


def _default_client(provider: str, base_url: Optional[str], api_key: ApiKey) -> Client:
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
    model: Optional[str] = None,
    provider: str = DEFAULT_PROVIDER,
    base_url: Optional[str] = None,
    api_key: ApiKey = None,
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
    check_params(params, where="llmstream.stream()", provider_options=get_provider(provider).call_options)
    client = _default_client(provider, base_url, api_key)
    return client.stream(prompt, messages=messages, model=model, timeout=timeout, retry=retry, **params)


def complete(prompt: Optional[str] = None, **kwargs: Any) -> StreamResult:
    """Like :func:`stream`, consumed to its end: returns the :class:`StreamResult`."""
    with stream(prompt, **kwargs) as s:
        return s.result




def astream(prompt: Optional[str] = None, *, provider: str = DEFAULT_PROVIDER, base_url: Optional[str] = None,
            api_key: ApiKey = None, **kwargs: Any) -> "AsyncTokenStream":
    """Like :func:`stream`, for asyncio: an :class:`AsyncTokenStream` from the shared default client.

    Usage::

        async for text in llmstream.astream("Tell me a story", model="gpt-4o-mini"):
            print(text, end="", flush=True)
    """
    return _default_client(provider, base_url, api_key).astream(prompt, **kwargs)


async def acomplete(prompt: Optional[str] = None, **kwargs: Any) -> StreamResult:
    """Like :func:`complete`, for asyncio: ``await llmstream.acomplete(...)``."""
    from ._async import consume_to_result

    return await consume_to_result(astream(prompt, **kwargs))
