"""What a provider is: how to build its request and how to decode its stream.

Strategy: a provider is a stateless object (one per process) that knows its
wire format; a *decoder* is a small per-stream state machine that turns the
provider's framed messages (a ``ServerSentEvent`` for SSE providers, a parsed
JSON object for JSON-lines providers) into the unified events of
``llmstream._events``. :class:`StreamDecoder` chains the framing and the
provider decoder so the IO shell only ever feeds bytes.

Invariants every decoder keeps (tests check each provider):
  * ``feed`` returns the events of exactly the input given, in order; events
    are never repeated or held back longer than the framing requires.
  * ``close()`` raises ``IncompleteStreamError`` when the end marker never came.
  * every value read from the wire is checked (``_shape``) before it is
    used: a shape the decoder does not understand raises ``MalformedStreamError``.

:class:`StreamDecoder` alone owns "stays failed" (h11's ERROR state): after
it raised, every later call raises a copy of the same error, whatever the
provider decoder would do. It is also the last line of defence: an
unexpected ``TypeError``, ``KeyError``... from a provider decoder (a check
that is missing) becomes ``MalformedStreamError``, after the events decoded
before it are delivered.

Sans-IO: nothing here, or in any provider module, touches a socket, thread,
clock or logging configuration.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Protocol, Tuple, Union

from .._events import Event
from .._record import FrozenInstanceError, Record, set_field
from .._exceptions import IncompleteStreamError, MalformedStreamError, ProviderError, StreamError
from .._jsonl import JSONLinesDecoder
from .._turn import Turn
from ..sse import DEFAULT_MAX_LINE_LENGTH, ServerSentEvent, SSEDecoder
from ._sse_json import SSEWithJSONDecoder

__all__ = ["RequestSpec", "PackedSpec", "encoded_body", "ProviderDecoder", "Provider", "BaseProvider", "BearerToken", "StreamDecoder", "Message", "Turn",
           "ServerSentEvent", "drop_none", "PREFILL_GUARANTEED"]

#: The value of a provider's ``supports_continue`` when its API guarantees that a
#: final assistant message is continued (a prefill); any other true value is a
#: continuation the server may silently ignore.
PREFILL_GUARANTEED = "prefill"


class BearerToken(str):
    """An API credential that came from a token callable (Entra ID, Google OAuth): sent as ``Bearer``.

    The client calls the caller's callable before each stream and hands the
    provider its result as a ``BearerToken``, so a provider with two ways to
    authenticate (Azure's ``api-key`` header or an Entra ID bearer token) can
    tell which one it was given. For every other provider it is just a ``str``.
    """

Message = Mapping[str, Any]

#: What a provider decoder raises when a shape check is missing (``None["x"]``,
#: ``5 + "a"``, ``[][0]``...), or when a value is too deep to copy. Each is a
#: bug in the decoder, met on input it should have refused: the stream fails
#: as malformed instead of escaping as a builtin error without partial text.
_UNEXPECTED = (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError)


class RequestSpec(Record):
    """One HTTP request, fully described, ready for the transport to send.

    Attributes:
        method: ``"POST"`` (or ``"GET"`` for a cursor resume).
        url: the absolute URL.
        headers: request headers, secrets included: never log or repr them.
            A ``bytes`` value is sent as is (a ``Last-Event-ID`` that is not
            Latin-1 goes as its UTF-8 bytes, as browsers send it).
        json: the JSON body, or ``None`` for a request without one.
    """

    __slots__ = __match_args__ = ("method", "url", "headers", "json")
    _hidden = ("headers",)  # secrets: never in a repr
    method: str
    url: str
    headers: Mapping[str, Union[str, bytes]]
    json: Optional[Mapping[str, Any]]

    def __init__(self, method: str, url: str, headers: Mapping[str, Union[str, bytes]],
                 json: Optional[Mapping[str, Any]] = None) -> None:
        set_field(self, "method", method)
        set_field(self, "url", url)
        set_field(self, "headers", headers)
        set_field(self, "json", json)


def _encode(body: Mapping[str, Any]) -> bytes:
    # What is sent: UTF-8 JSON, non-ASCII characters as themselves.
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


class PackedSpec(RequestSpec):
    """A :class:`RequestSpec` that keeps its JSON body encoded, as it is sent.

    Why (issue 17, memory per stream): a stream keeps its request for a
    retry, but the body's dicts and lists (the messages, the options) cost
    ~0.8 KiB per stream, and the encoded body is already held by the request
    in flight -- this is the same ``bytes`` object. ``json`` decodes it
    again when asked (a retry, a resume, a token estimate: never per token);
    the request built from it is the same on the wire.
    """

    __slots__ = ("body",)
    body: bytes

    def __init__(self, method: str, url: str, headers: Mapping[str, Union[str, bytes]],
                 json: Optional[Mapping[str, Any]] = None, *, body: Optional[bytes] = None) -> None:
        set_field(self, "method", method)
        set_field(self, "url", url)
        set_field(self, "headers", headers)
        set_field(self, "body", body if body is not None else _encode(json if json is not None else {}))

    @property
    def json(self) -> Optional[Mapping[str, Any]]:
        """The JSON body, decoded from :attr:`body` (a new object at each call)."""
        value: Mapping[str, Any] = json.loads(self.body)
        return value

    @json.setter
    def json(self, value: Optional[Mapping[str, Any]]) -> None:
        raise FrozenInstanceError(f"cannot assign to field 'json': {type(self).__name__} is immutable")

    def replace(self, **changes: Any) -> "PackedSpec":
        """A copy with some fields changed; the body is not decoded unless ``json`` is one of them."""
        if "json" in changes:
            return super().replace(**changes)
        unknown = set(changes) - {"method", "url", "headers"}
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(sorted(unknown))}")
        return PackedSpec(changes.get("method", self.method), changes.get("url", self.url),
                          changes.get("headers", self.headers), body=self.body)

    @classmethod
    def pack(cls, spec: RequestSpec, shared: Dict[Any, Any]) -> RequestSpec:
        """``spec`` to keep for a stream's life: its body encoded, its URL and headers shared.

        ``shared`` (the client's) maps a set of headers to one dict of them:
        the streams of a client keep one copy of its headers, not one each
        (they are never changed in place: a request that needs others is
        made with new ones). A body that cannot be encoded is left as it
        is: sending it raises the error as before.
        """
        if spec.json is None or isinstance(spec, PackedSpec):
            return spec
        try:
            body = _encode(spec.json)
        except (TypeError, ValueError, RecursionError):
            return spec
        headers = spec.headers
        key = tuple(headers.items())
        try:
            headers = shared.setdefault(key, headers)
        except TypeError:  # an unhashable header value: kept as it is
            pass
        if len(shared) > _SHARED_HEADERS:
            shared.clear()  # a token callable's new token at every stream: never more than a few kept
        return cls(spec.method, sys.intern(spec.url), headers, body=body)


#: How many sets of headers a client shares between its streams (a changing token makes a new set each time).
_SHARED_HEADERS = 8


def encoded_body(spec: RequestSpec) -> Optional[bytes]:
    """The body to send: a :class:`PackedSpec`'s own bytes, or the JSON body encoded (None: no body)."""
    if isinstance(spec, PackedSpec):
        return spec.body
    return None if spec.json is None else _encode(spec.json)


class ProviderDecoder(Protocol):
    """Per-stream state machine: framed messages in, unified events out."""

    def feed(self, message: Any) -> List[Event]:
        """Decode one framed message (``ServerSentEvent`` or JSON object)."""
        ...

    def close(self) -> List[Event]:
        """Signal end of input; raise ``IncompleteStreamError`` if the end marker is missing."""
        ...

    @property
    def finished(self) -> bool:
        """True once the provider's end-of-stream marker was seen."""
        ...


class Provider(Protocol):
    """A provider's wire format. Implementations live one per module."""

    name: str
    #: ``"sse"``, ``"jsonl"`` or ``"sse+json"`` (SSE plus bare JSON error objects, ``_sse_json``).
    framing: str
    #: Environment variable holding the API key, or None.
    api_key_env: Optional[str]
    #: Environment variable holding the base URL, or None.
    base_url_env: Optional[str]
    default_base_url: str
    #: Whether the API key is required (Ollama's is not).
    requires_api_key: bool

    def normalize_base_url(self, base_url: str) -> str:
        """Return the base URL as the provider's own SDK understands it (no trailing slash)."""
        ...

    def build_request(
        self,
        *,
        base_url: str,
        api_key: Optional[str],
        model: str,
        messages: List[Message],
        params: Mapping[str, Any],
    ) -> RequestSpec:
        """Build the streaming request; ``params`` go into the body unchanged (a None value removes a default key)."""
        ...

    def new_decoder(self) -> ProviderDecoder:
        """Return a fresh decoder for one stream."""
        ...

    def error_from_body(self, body: str) -> Optional[ProviderError]:
        """Parse the provider's error message out of a non-2xx body, or None."""
        ...

    def is_retryable(self, error: ProviderError) -> bool:
        """Whether an in-stream error is worth retrying (overloaded, server error...)."""
        ...

    # -- environment and defaults ----------------------------------------------------

    @property
    def env_vars(self) -> Tuple[str, ...]:
        """Every environment variable the provider reads, for documentation and the CLI."""
        ...

    @property
    def default_model(self) -> str:
        """The model used when the caller names none (the CLI's default)."""
        ...

    def api_key_from_env(self, environ: Mapping[str, str]) -> Optional[str]:
        """The API key the provider's own SDK would read from ``environ``, or None."""
        ...

    def base_url_from_env(self, environ: Mapping[str, str]) -> Optional[str]:
        """The base URL the provider's own SDK would read from ``environ``, or None."""
        ...

    def params_from_env(self, environ: Mapping[str, str]) -> Dict[str, Any]:
        """Provider options read from ``environ`` (Azure's ``api_version``...), under the caller's ``params``."""
        ...

    # -- resume --------------------------------------------------------------------------

    @property
    def supports_continue(self) -> Union[bool, str]:
        """False, True (a continuation the server may ignore) or :data:`PREFILL_GUARANTEED`."""
        ...

    def continue_allowed(self, base_url: str) -> bool:
        """Whether the server at ``base_url`` continues a final assistant message (host rules live here)."""
        ...

    def continue_request(self, spec: RequestSpec, delivered_text: str) -> RequestSpec:
        """``spec`` asking to continue ``delivered_text``; ``spec`` itself when the provider cannot."""
        ...

    def split_prefill(self, delivered_text: str) -> Tuple[str, str]:
        """(the prefill to send, the text held back because the API refuses it in a prefill)."""
        ...

    def cursor_request(self, spec: RequestSpec, decoder: ProviderDecoder) -> Optional[Tuple[RequestSpec, ProviderDecoder]]:
        """The provider's own resume cursor (Responses' ``starting_after``): the request and the decoder going on, or None."""
        ...

    # -- budgets -----------------------------------------------------------------------------

    def output_limit(self, body: Optional[Mapping[str, Any]]) -> int:
        """The output token limit a request body sets (0 when it sets none)."""
        ...

    def limit_params(self, max_tokens: int) -> Dict[str, Any]:
        """The body params that set the output limit to ``max_tokens`` (the CLI's ``--max-tokens``)."""
        ...

    def estimate_tokens(self, body: Optional[Mapping[str, Any]]) -> float:
        """A request's likely token cost, for the client's token rate limit."""
        ...

    def temperature_params(self, temperature: float) -> Dict[str, Any]:
        """The body params that set the sampling temperature (the CLI's ``--temperature``)."""
        ...

    def hint(self, error: BaseException, *, base_url: Optional[str], model: Optional[str],
             environ: Mapping[str, str]) -> Optional[str]:
        """A next step for an error a user of this provider can fix (the CLI shows it), or None."""
        ...

    @property
    def call_options(self) -> Tuple[str, ...]:
        """Per-call options this provider takes out of the call's parameters (Vertex's
        ``project``, ``location``), which llmstream's check of misplaced options lets through."""
        ...

    def assistant_message(self, turn: Turn) -> Any:
        """The assistant's turn in this provider's request format (``StreamResult.message``).

        A message dict, or a list of input items where the API takes a turn
        as several (the Responses API), such that ``messages + [message]``
        (or ``input + items``) followed by the tool results is a valid next
        request. Signed content (thinking signatures) comes from ``turn.items``.
        """
        ...

    # -- the fake server -------------------------------------------------------------------

    @property
    def otel_name(self) -> str:
        """OpenTelemetry's ``gen_ai.provider.name`` for this provider (when the host says nothing more)."""
        ...

    @property
    def fake_format(self) -> str:
        """The fake server's format for this provider (``llmstream.testing`` finds it by this name)."""
        ...


class BaseProvider:
    """Defaults for everything on :class:`Provider` but the wire format itself.

    A provider module subclasses it and sets ``name``, ``framing``,
    ``default_base_url``, ``build_request``, ``new_decoder``,
    ``error_from_body`` and ``is_retryable``; it overrides the rest only where
    its API differs.
    """

    name: str = ""
    framing: str = "sse"
    api_key_env: Optional[str] = None
    base_url_env: Optional[str] = None
    default_base_url: str = ""
    requires_api_key: bool = True
    env_vars: Tuple[str, ...] = ()
    default_model: str = ""
    supports_continue: Union[bool, str] = False
    #: Body keys that set the output limit (the last one present wins).
    output_limit_keys: Tuple[str, ...] = ("max_tokens",)
    #: The body object that holds the generation settings (the output limit, the
    #: temperature), when they are not top-level keys: Ollama's ``options``,
    #: Gemini's ``generationConfig``.
    settings_key: Optional[str] = None
    fake_format: str = ""
    otel_name: str = ""
    call_options: Tuple[str, ...] = ()

    def normalize_base_url(self, base_url: str) -> str:
        """Return ``base_url`` without its trailing slash."""
        return base_url.rstrip("/")

    def api_key_from_env(self, environ: Mapping[str, str]) -> Optional[str]:
        """``environ[api_key_env]``, or None."""
        return environ.get(self.api_key_env) if self.api_key_env else None

    def base_url_from_env(self, environ: Mapping[str, str]) -> Optional[str]:
        """``environ[base_url_env]``, or None."""
        return environ.get(self.base_url_env) if self.base_url_env else None

    def params_from_env(self, environ: Mapping[str, str]) -> Dict[str, Any]:
        """None by default."""
        return {}

    def continue_allowed(self, base_url: str) -> bool:
        """True: any server of this provider continues alike."""
        return True

    def continue_request(self, spec: RequestSpec, delivered_text: str) -> RequestSpec:
        """``spec`` itself: no continuation (resume is a replay)."""
        return spec

    def split_prefill(self, delivered_text: str) -> Tuple[str, str]:
        """The whole text is the prefill; nothing is held back."""
        return delivered_text, ""

    def cursor_request(self, spec: RequestSpec, decoder: ProviderDecoder) -> Optional[Tuple[RequestSpec, ProviderDecoder]]:
        """None: no cursor of its own (``Last-Event-ID`` still applies when the server sends ids)."""
        return None

    def output_limit(self, body: Optional[Mapping[str, Any]]) -> int:
        """The value of the last of :attr:`output_limit_keys` present in the settings (0 for none)."""
        settings = body.get(self.settings_key) if body and self.settings_key else body
        output = 0
        if isinstance(settings, Mapping):
            for key in self.output_limit_keys:
                value = settings.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    output = value
        return output

    def limit_params(self, max_tokens: int) -> Dict[str, Any]:
        """``{output_limit_keys[0]: max_tokens}``, inside :attr:`settings_key` if any."""
        return self._settings({self.output_limit_keys[0]: max_tokens})

    def temperature_params(self, temperature: float) -> Dict[str, Any]:
        """``{"temperature": temperature}``, inside :attr:`settings_key` if any."""
        return self._settings({"temperature": temperature})

    def _settings(self, settings: Dict[str, Any]) -> Dict[str, Any]:
        return {self.settings_key: settings} if self.settings_key else settings

    def hint(self, error: BaseException, *, base_url: Optional[str], model: Optional[str],
             environ: Mapping[str, str]) -> Optional[str]:
        """None: no provider-specific advice."""
        return None

    def estimate_tokens(self, body: Optional[Mapping[str, Any]]) -> float:
        """~4 characters per prompt token (the messages, or the whole body), plus the output limit."""
        if not body:
            return 1.0
        prompt_part = body.get("messages") or body.get("input") or body.get("contents") or body
        prompt = len(json.dumps(prompt_part, ensure_ascii=False, default=str)) / 4
        return max(1.0, prompt + max(0, self.output_limit(body)))


class StreamDecoder:
    """Bytes in, unified events out, for one stream of one provider.

    Chains the framing (:class:`~llmstream.sse.SSEDecoder` or
    :class:`~llmstream._jsonl.JSONLinesDecoder`) with the provider's decoder.

    Usage::

        decoder = StreamDecoder(provider.new_decoder(), framing="sse")
        for chunk in chunks:
            events = decoder.feed(chunk)
        events = decoder.close()   # raises IncompleteStreamError if truncated

    After it raised (or kept an error in :attr:`error`), every later
    ``feed``/``close`` raises a copy of that error: it stays failed.
    """

    # Slotted: one per attempt, hundreds at once (issue 17).
    __slots__ = ("decoder", "finished", "framing", "_max_line_length", "_inherited_event_id", "_resume_point", "error",
                 "_frames")

    def __init__(
        self,
        decoder: ProviderDecoder,
        *,
        framing: str,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        last_event_id: str = "",
    ) -> None:
        self.decoder = decoder
        #: True once the provider's end-of-stream marker was seen: the provider
        #: decoder's own flag, copied after each feed and close. An attribute,
        #: not a property: it is read at every read (issue 17).
        self.finished = decoder.finished
        self.framing = framing
        self._max_line_length = max_line_length
        # The event stream's last event ID survives a reconnection (WHATWG: the
        # EventSource keeps it), so a resumed decoder starts from the old one.
        self._inherited_event_id = last_event_id
        self._resume_point: Optional[ProviderDecoder] = None
        #: The failure met after the events last returned, to raise once they are
        #: delivered (an attribute, not a property: it is read at every read).
        self.error: Optional[StreamError] = None
        self._frames: Union[SSEDecoder, JSONLinesDecoder, SSEWithJSONDecoder]
        if framing == "sse":
            self._frames = SSEDecoder(max_line_length=max_line_length)
        elif framing == "jsonl":
            self._frames = JSONLinesDecoder(max_line_length=max_line_length)
        elif framing == "sse+json":
            self._frames = SSEWithJSONDecoder(max_line_length=max_line_length)
        else:
            raise ValueError(f"unknown framing {framing!r}; expected 'sse', 'jsonl' or 'sse+json'")

    @property
    def last_event_id(self) -> str:
        """The SSE last event ID ("" for JSON-lines framing or when none was sent)."""
        frames = self._frames
        if isinstance(frames, SSEDecoder) and frames.last_event_id:
            return frames.last_event_id
        return self._inherited_event_id

    def _deliver_then_fail(self, out: List[Event], exc: StreamError) -> List[Event]:
        # Events decoded before the failure in the same piece of input were
        # received all the same: hand them over first, fail afterwards. The
        # error is kept either way: from now on every call raises it again.
        self.error = exc
        if not out:
            raise exc
        return out

    def _raise_again(self) -> NoReturn:
        assert self.error is not None
        # A copy, chained to the original, so that raising it again and again
        # does not pile tracebacks onto one object.
        again = copy.copy(self.error)
        raise again from self.error

    def feed(self, data: bytes) -> List[Event]:
        """Feed bytes as they arrive; return the events they complete.

        If the input also holds a failure (an in-stream error event, bad
        JSON...), the events before it are returned and the failure is kept
        in :attr:`error`; it is raised by the next ``feed``/``close``.
        """
        if self.error is not None:
            self._raise_again()
        out: List[Event] = []
        frames = self._frames
        try:
            messages = frames.feed(data)
            decoder = self.decoder
            if len(messages) == 1 and not frames.failed:
                # A slow stream's every read: one message, its events as they are (issue 17).
                return decoder.feed(messages[0])
            feed = decoder.feed
            for message in messages:
                out.extend(feed(message))
            if frames.failed:
                frames.feed(b"")  # the framing failed after the messages it returned: raise its error
        except StreamError as exc:
            return self._deliver_then_fail(out, exc)
        except _UNEXPECTED as exc:
            return self._deliver_then_fail(out, _unexpected(exc))
        finally:
            self.finished = self.decoder.finished
        return out

    def close(self) -> List[Event]:
        """End of input: flush, then check the end marker (raises ``IncompleteStreamError``).

        As with :meth:`feed`, events before a failure are returned first and
        the failure kept in :attr:`error`.
        """
        if self.error is not None:
            self._raise_again()
        out: List[Event] = []
        try:
            return self._close(out)
        except StreamError as exc:
            return self._deliver_then_fail(out, exc)
        except _UNEXPECTED as exc:
            return self._deliver_then_fail(out, _unexpected(exc))
        finally:
            self.finished = self.decoder.finished

    def _close(self, out: List[Event]) -> List[Event]:
        try:
            messages = self._frames.close()
        except MalformedStreamError as exc:
            if self.decoder.finished:
                raise
            # A line cut off by the end of input is a truncated stream, not a
            # wrong protocol: report it as incomplete so it is retried.
            raise IncompleteStreamError(f"stream ended mid-message: {exc.message}") from exc
        for message in messages:
            out.extend(self.decoder.feed(message))
        if not self.decoder.finished:
            # close() is about to fail; keep the provider decoder's state as it
            # was after the last complete event, for a resume that goes on.
            self._resume_point = copy.deepcopy(self.decoder)
        out.extend(self.decoder.close())
        return out

    @property
    def response_info(self) -> "tuple[Optional[str], Optional[str]]":
        """The provider's answer id and the model that answered, when its decoder saw them (telemetry)."""
        # Read the provider decoder's optional ``response_id``/``response_model``
        # as the resumer reads ``response_id``: a decoder that has none gives None.
        decoder = self.decoder
        return getattr(decoder, "response_id", None), getattr(decoder, "response_model", None)

    def resume_point(self) -> ProviderDecoder:
        """The provider decoder as it was after the last complete message (before a failing close)."""
        return self._resume_point if self._resume_point is not None else self.decoder

    def resumed_with(self, decoder: ProviderDecoder) -> "StreamDecoder":
        """A decoder for a reconnection that goes on where this one stopped (``Last-Event-ID``).

        The framing starts afresh (a half-received block was never dispatched
        and the server sends it again); the provider decoder carries on.
        """
        return StreamDecoder(decoder, framing=self.framing, max_line_length=self._max_line_length,
                             last_event_id=self.last_event_id)


def _unexpected(exc: BaseException) -> MalformedStreamError:
    error = MalformedStreamError(f"the stream's data has a shape the decoder does not handle ({type(exc).__name__}: {exc})")
    error.__cause__ = exc  # as ``raise error from exc`` would: the decoder's own traceback stays reachable
    return error


def drop_none(body: Dict[str, Any]) -> Dict[str, Any]:
    """Remove keys whose value is None: how a caller removes a default body key."""
    return {k: v for k, v in body.items() if v is not None}

