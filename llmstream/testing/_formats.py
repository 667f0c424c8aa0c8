"""Wire formats: the table of providers the fake server speaks, and what their formats share.

Strategy: each provider's format lives in a module of its own (``_openai_chat``,
``_openai_responses``, ``_anthropic``, ``_ollama``): its streaming formatter, a
generator of :class:`~._wire.Event` (the JSON payload as UTF-8 bytes, the SSE
event name, how many text tokens it carries, whether it is the end marker); its
non-streaming answer; its error bodies; the endpoints its SDK also calls. This
module lists them in :data:`FORMATS` (one row per provider: adding a provider
is one module and one row) and holds the encoders that turn events into SSE
blocks or JSON lines.

Streaming formatters never build the text as one string: tokens come from
``ctx.tokens()`` one at a time and each delta is a pre-encoded template plus
the JSON-escaped token, which keeps the server at hundreds of thousands of
tokens per second.

Deterministic on purpose: ids count requests (``chatcmpl-fake-1``), times are
fixed, so a test can assert exact bytes.

Must never: import ``llmstream``, or join a streamed reply's tokens into one
string (except the Responses closing events, whose format repeats the full text).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple

from . import _anthropic, _azure, _gemini, _ollama, _openai_chat, _openai_responses
from ._reply import Reply
from ._turns import TurnCheck
from ._wire import CREATED_AT, Event, StreamContext, dump, q

__all__ = [
    "CONTENT_TYPES", "Event", "FORMATS", "FORMATTERS", "PROVIDERS", "ProviderFormat", "StreamContext", "encoder",
    "error_body", "error_events", "keepalive", "oversized", "reason",
]


class ProviderFormat(NamedTuple):
    """Everything the fake server needs to speak one provider's API."""

    path: str  #: the POST endpoint that answers (streaming or not)
    stream: Callable[[Reply, StreamContext], Iterator[Event]]
    complete: Callable[[Reply, StreamContext], Dict[str, Any]]  #: the non-streaming answer
    error_events: Callable[[StreamContext, Optional[str], Optional[str], int], List[Event]]
    error_body: Callable[[int, str, Optional[str]], Dict[str, Any]]
    catalog: Callable[[Mapping[str, str]], Dict[str, Any]]  #: the model list
    #: other endpoints its SDK calls: ``(method, path) -> answer(json body or None, headers)``
    endpoints: Mapping[Tuple[str, str], Callable[[Any, Mapping[str, str]], Dict[str, Any]]] = {}
    content_type: str = "text/event-stream; charset=utf-8"
    streams_by_default: bool = False  #: whether a request without ``"stream"`` streams (Ollama's does)
    json_lines: bool = False  #: one JSON object per line instead of SSE (Ollama)
    keepalive_event: Optional[Event] = None  #: sent while idle instead of an SSE comment (Anthropic's ping)
    #: for endpoints whose path names the model: ``path -> {"model": ...}`` (``{}``: the body names it), None for another path
    route: Optional[Callable[[str], Optional[Dict[str, str]]]] = None
    #: the format's own encoder, ``(line_ending, ids, id_prefix) -> encode(event, index)`` (Gemini's bare error JSON)
    encode: Optional[Callable[[bytes, bool, str], Callable[[Event, int], bytes]]] = None
    quiet: bool = False  #: sends nothing while idle (Gemini: its client reads any line but data: as JSON)
    #: the environment variables that point its SDK at the server: ``(server URL, key) -> {name: value}``
    environment: Optional[Callable[[str, str], Dict[str, str]]] = None
    #: how the API checks the assistant turns a request sends back (signatures...): the 400 message, or None
    check_turns: Optional[TurnCheck] = None


FORMATS: Dict[str, ProviderFormat] = {
    "openai": ProviderFormat("/v1/chat/completions", _openai_chat.stream, _openai_chat.complete,
                             _openai_chat.error_events, _openai_chat.error_body, _openai_chat.catalog,
                             check_turns=_openai_chat.check_turns),
    "openai-responses": ProviderFormat("/v1/responses", _openai_responses.stream, _openai_responses.complete,
                                       _openai_responses.error_events, _openai_responses.error_body,
                                       _openai_responses.catalog, check_turns=_openai_responses.check_turns),
    "anthropic": ProviderFormat("/v1/messages", _anthropic.stream, _anthropic.complete, _anthropic.error_events,
                                _anthropic.error_body, _anthropic.catalog,
                                {("POST", "/v1/messages/count_tokens"): _anthropic.count_tokens},
                                keepalive_event=Event(b'{"type": "ping"}', b"ping"), check_turns=_anthropic.check_turns),
    "ollama": ProviderFormat("/api/chat", _ollama.stream, _ollama.complete, _ollama.error_events,
                             _ollama.error_body, _ollama.catalog, {("GET", "/api/tags"): _ollama.tags},
                             "application/x-ndjson", streams_by_default=True, json_lines=True),
    "gemini": ProviderFormat("/v1beta/models/{model}:streamGenerateContent", _gemini.stream, _gemini.complete,
                             _gemini.error_events, _gemini.error_body, _gemini.catalog, content_type="text/event-stream",
                             streams_by_default=True, route=_gemini.route, encode=_gemini.encoder, quiet=True,
                             environment=_gemini.environment, check_turns=_gemini.check_turns),
    "azure": ProviderFormat(_azure.PATH, _azure.stream, _azure.complete, _azure.error_events, _azure.error_body,
                            _azure.catalog, route=_azure.route, environment=_azure.environment,
                            check_turns=_openai_chat.check_turns),  # the same chat format, the same check
}
#: Gemini on Vertex AI: the same format on Vertex's path (``_gemini.route`` knows both).
FORMATS["vertex"] = FORMATS["gemini"]
PROVIDERS = tuple(FORMATS)
CONTENT_TYPES = {name: fmt.content_type for name, fmt in FORMATS.items()}
FORMATTERS = {name: fmt.stream for name, fmt in FORMATS.items()}


def error_events(ctx: StreamContext, error_type: Optional[str], message: Optional[str],
                 next_sequence: int) -> List[Event]:
    """The provider's in-stream error; ``next_sequence`` is the Responses sequence number to use."""
    return FORMATS[ctx.provider].error_events(ctx, error_type, message, next_sequence)


def error_body(provider: str, status: int, message: Optional[str], error_type: Optional[str]) -> bytes:
    """The JSON body of a non-2xx answer, in the provider's error format."""
    return dump(FORMATS[provider].error_body(status, message or reason(status), error_type))


def reason(status: int) -> str:
    """The HTTP reason phrase, including Anthropic's 529."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else "Error"


def keepalive(provider: str, line_ending: bytes) -> bytes:
    """What the provider sends while idle: an SSE comment, or its own event (Anthropic's ping); JSON lines: nothing."""
    fmt = FORMATS[provider]
    if fmt.json_lines or fmt.quiet:
        return b""
    if fmt.keepalive_event is not None:
        return encoder(provider, line_ending, ids=False)(fmt.keepalive_event, 0)
    return b": keep-alive" + line_ending * 2


def oversized(provider: str, size: int, line_ending: bytes, model: str) -> bytes:
    """One line of exactly ``size`` bytes (before its line ending) that a decoder must skip or refuse."""
    if not FORMATS[provider].json_lines:
        return b":" + b"x" * (size - 1) + line_ending * 2
    head = b'{"model":%s,"created_at":"%s","message":{"role":"assistant","content":""},"done":false,"padding":"' % (
        q(model), CREATED_AT.encode())
    return head + b"x" * max(0, size - len(head) - 2) + b'"}' + line_ending


def encoder(provider: str, line_ending: bytes, ids: bool, id_prefix: str = "") -> Callable[[Event, int], bytes]:
    """Return ``encode(event, index) -> bytes``: an SSE block, or one JSON line (Ollama).

    With ``ids``, each SSE block has ``id: {id_prefix}{index}`` (UTF-8).
    """
    le = line_ending
    own = FORMATS[provider].encode
    if own is not None:
        return own(line_ending, ids, id_prefix)
    if FORMATS[provider].json_lines:
        return lambda event, index: event.data + le
    if ids:
        # The prefix is data, not a format: its "%" must not act as one.
        id_line = b"id: " + id_prefix.encode("utf-8").replace(b"%", b"%%") + b"%d" + le
        named = b"event: %s" + le + id_line + b"data: %s" + le + le
        plain = id_line + b"data: %s" + le + le
        return lambda event, index: (named % (event.name, index, event.data) if event.name
                                     else plain % (index, event.data))
    named_only = b"event: %s" + le + b"data: %s" + le + le
    data_only = b"data: %s" + le + le
    return lambda event, index: named_only % (event.name, event.data) if event.name else data_only % event.data
