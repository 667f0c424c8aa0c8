"""What one scripted answer of the fake server looks like: content, HTTP, framing, faults.

Strategy: :class:`Reply` is a frozen value checked once, in ``__post_init__``;
everything the server later does with it is a pure function of the reply and
the request. The text is never materialised for ``token_count`` replies:
:meth:`Reply.iter_tokens` is a generator, and every consumer (the formatters,
the prefill continuation) walks it lazily.

Fault positions are counted in *text tokens*: one token is one content delta
on the wire (one ``choices[0].delta.content`` chunk, one ``text_delta``, one
``response.output_text.delta``, one Ollama line). Thinking deltas and tool-call
argument fragments do not count.

Must never: import anything from ``llmstream`` (this package is standalone), or
hold a reference to a server (a reply can be scripted on many servers).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

__all__ = ["DEFAULT_TEXT", "Reply", "continuation", "fault_free", "split_words"]

#: The text streamed by a default ``Reply()``: deterministic, with accents, an
#: em dash, CJK and an emoji (a 4-byte UTF-8 character), so a client that cuts
#: UTF-8 at a network boundary shows it at once.
DEFAULT_TEXT = (
    "Hello from llmstream's built-in server! Ça marche — 日本語も大丈夫 🎉 "
    "Everything you see was streamed token by token."
)

_WORDS = re.compile(r"\s*\S+|\s+")
_LINE_ENDINGS = ("\n", "\r\n", "\r")


def split_words(text: str) -> Tuple[str, ...]:
    """Split text into word-ish tokens that keep their leading spaces (``" from"``)."""
    return tuple(_WORDS.findall(text))


def _counted_tokens(count: int) -> Iterator[str]:
    # "tok0 tok1 tok2 ..." produced one token at a time, never as one string.
    if count > 0:
        yield "tok0"
    for index in range(1, count):
        yield f" tok{index}"


def _check_count(name: str, value: object, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Reply.{name} must be an int >= {minimum} or None, got {value!r}")


def _check_seconds(name: str, value: object, allow_inf: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(f"Reply.{name} must be a number of seconds >= 0, got {value!r}")
    if math.isinf(value) and not allow_inf:
        raise ValueError(f"Reply.{name} must be finite, got {value!r}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"Reply.{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class Reply:
    """One scripted answer of :class:`FakeLLMServer`: what to stream, how, and how to fail.

    Every field has a default, so ``Reply()`` streams :data:`DEFAULT_TEXT`
    cleanly. The same reply renders in each provider's wire format; the route
    of the request picks the format. A request that does not ask for a stream
    gets the same reply as one JSON object in the provider's non-streaming
    shape; of the faults, only those about bytes apply to it
    (``stall_before_first_byte``, ``close_after_bytes``), and the framing
    options only pace or split its writes.

    Content:
        text: the answer text (``None``: :data:`DEFAULT_TEXT`; ``""``: no text,
            e.g. a tool-call-only answer).
        tokens: an explicit token split; joined, it must equal ``text`` when
            both are given. Default: words with their leading spaces.
        token_count: stream ``"tok0 tok1 ..."`` of this many tokens, generated
            lazily (for huge streams and benchmarks). Excludes text/tokens.
        tool_calls: ``(name, arguments)`` pairs streamed after the text, each
            call's JSON arguments in several fragments (Ollama sends whole
            calls, as the real server does).
        thinking: reasoning text streamed before the answer (Anthropic
            thinking block, Ollama ``thinking``, chat ``reasoning_content``,
            Responses reasoning summary).
        redacted_thinking: Anthropic only: open the answer with a
            ``redacted_thinking`` block (opaque, signed ``data``).
        finish_reason: the provider's stop reason; default ``stop`` /
            ``end_turn`` / ``completed``, or ``tool_calls`` / ``tool_use`` when
            there are tool calls.
        usage: ``(input_tokens, output_tokens)``; default ``(12, number of text
            tokens streamed)``.

    HTTP:
        status: the status code; non-2xx answers carry a JSON error body in
            the provider's format and a ``Content-Length``.
        error: the error message (of the non-2xx body, or of the in-stream
            error event).
        error_type: the error type of the non-2xx body (default per status).
        headers: extra response headers (``Retry-After``, ``retry-after-ms``...).
        content_type: overrides the ``Content-Type`` header.
        raw_body: bytes sent verbatim instead of the provider's frames (a 2xx
            raw body still goes through the framing and fault options).

    Framing:
        chunked: ``True``: HTTP/1.1 chunked, keep-alive; ``False``: no length,
            ``Connection: close``, the body ends when the socket closes.
        events_per_write: events grouped into one socket write.
        line_ending: ``"\\n"``, ``"\\r\\n"`` or ``"\\r"``.
        keepalive_every: after every N events, an SSE ``: keep-alive`` comment
            (Anthropic: an ``event: ping``; Ollama has none). 0: never.
        event_ids: give each SSE event an ``id:`` (its 1-based index) so a
            client can reconnect with ``Last-Event-ID``. Off by default, as
            the real OpenAI and Anthropic APIs send no ids.
        event_id_prefix: text put before each id's number (``"résumé-€-"``
            sends ``id: résumé-€-1``...). ``Last-Event-ID`` is read as UTF-8,
            as browsers send it; a value that is not the prefix and a number
            streams the whole reply again.
        interval: seconds between socket writes (a paced stream).
        drip: write one byte at a time.
        split_seed: cut every write into random pieces of 1 to 32 bytes,
            reproducibly.

    Faults (token positions count text tokens; N=0 means "before the first"):
        close_after_tokens: close the connection abruptly right after the
            event carrying the N-th token.
        close_after_bytes: close abruptly after exactly N body bytes.
        stall_before_first_byte: wait after the headers (``inf``: until the
            server stops or the client goes away).
        stall_after_tokens: ``(N, seconds)``: pause after the N-th token.
        malformed_at: the N-th event (1-based) carries truncated JSON.
        omit_end_marker: end cleanly without ``[DONE]`` / ``message_stop`` /
            ``response.completed`` / the ``done: true`` line.
        error_event_at: after N tokens, the provider's in-stream error, then
            a clean end.
        error_event_type: its type (default ``server_error``;
            Anthropic ``overloaded_error``).
        oversized_line: one SSE comment (Ollama: one JSON line) of exactly
            this many bytes, right after the first token.
        refuse_prefill: answer 400 when the conversation ends with an
            assistant message.
        ignore_prefill: ignore a final assistant message (and
            ``continue_final_message``) and stream the whole reply from its
            beginning, as many OpenAI-compatible servers silently do.

    Usage::

        server.script(Reply(text="Paris", close_after_tokens=1), Reply(text="Paris"))
    """

    text: Optional[str] = None
    tokens: Optional[Sequence[str]] = None
    token_count: Optional[int] = None
    tool_calls: Sequence[Tuple[str, Mapping[str, Any]]] = field(default=(), hash=False)
    thinking: Optional[str] = None
    redacted_thinking: bool = False
    finish_reason: Optional[str] = None
    usage: Optional[Tuple[int, int]] = None
    status: int = 200
    error: Optional[str] = None
    error_type: Optional[str] = None
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    content_type: Optional[str] = None
    raw_body: Optional[bytes] = None
    chunked: bool = True
    events_per_write: int = 1
    line_ending: str = "\n"
    keepalive_every: int = 0
    event_ids: bool = False
    event_id_prefix: str = ""
    interval: float = 0.0
    drip: bool = False
    split_seed: Optional[int] = None
    close_after_tokens: Optional[int] = None
    close_after_bytes: Optional[int] = None
    stall_before_first_byte: float = 0.0
    stall_after_tokens: Optional[Tuple[int, float]] = None
    malformed_at: Optional[int] = None
    omit_end_marker: bool = False
    error_event_at: Optional[int] = None
    error_event_type: Optional[str] = None
    oversized_line: Optional[int] = None
    refuse_prefill: bool = False
    ignore_prefill: bool = False

    def __post_init__(self) -> None:
        self._check_content()
        self._check_http()
        self._check_framing()
        self._check_faults()

    def _set(self, name: str, value: Any) -> None:
        # Normalise inputs (lists -> tuples) on a frozen instance.
        object.__setattr__(self, name, value)

    def _check_content(self) -> None:
        if self.token_count is not None and (self.text is not None or self.tokens is not None):
            raise ValueError("Reply.token_count cannot be combined with text or tokens; use one of them")
        _check_count("token_count", self.token_count, 0)
        if self.tokens is not None:
            tokens = tuple(self.tokens)
            if not all(isinstance(token, str) and token for token in tokens):
                raise ValueError(f"Reply.tokens must be non-empty strings, got {tokens!r}")
            if self.text is not None and "".join(tokens) != self.text:
                raise ValueError("Reply.tokens joined must equal Reply.text; give only one of them")
            self._set("tokens", tokens)
        _check_bool("redacted_thinking", self.redacted_thinking)
        for name in ("text", "thinking", "finish_reason"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"Reply.{name} must be a str or None, got {value!r}")
        calls = tuple(tuple(call) for call in self.tool_calls)
        for call in calls:
            if len(call) != 2 or not isinstance(call[0], str) or not isinstance(call[1], Mapping):
                raise ValueError(f"Reply.tool_calls items must be (name, arguments dict), got {call!r}")
        self._set("tool_calls", calls)
        if self.usage is not None:
            usage = tuple(self.usage)
            if len(usage) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in usage):
                raise ValueError(f"Reply.usage must be (input_tokens, output_tokens), got {self.usage!r}")
            self._set("usage", usage)

    def _check_http(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int) or not 200 <= self.status <= 599:
            raise ValueError(f"Reply.status must be an int from 200 to 599, got {self.status!r}")
        for name in ("error", "error_type", "content_type", "error_event_type"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"Reply.{name} must be a str or None, got {value!r}")
        headers = dict(self.headers)
        for key, value in headers.items():
            if not isinstance(key, str) or not isinstance(value, str) or "\n" in key + value or "\r" in key + value:
                raise ValueError(f"Reply.headers must map str to str without line breaks, got {key!r}: {value!r}")
        self._set("headers", headers)
        if self.raw_body is not None and not isinstance(self.raw_body, bytes):
            raise ValueError(f"Reply.raw_body must be bytes or None, got {type(self.raw_body).__name__}")

    def _check_framing(self) -> None:
        for name in ("chunked", "event_ids", "drip", "omit_end_marker", "refuse_prefill", "ignore_prefill"):
            _check_bool(name, getattr(self, name))
        prefix = self.event_id_prefix
        if not isinstance(prefix, str) or any(c in prefix for c in "\r\n\x00"):
            # An SSE id is one line, and one with NUL is ignored (WHATWG).
            raise ValueError(f"Reply.event_id_prefix must be a str without CR, LF or NUL, got {prefix!r}")
        _check_count("events_per_write", self.events_per_write, 1)
        _check_count("keepalive_every", self.keepalive_every, 0)
        _check_count("split_seed", self.split_seed, 0)
        if self.line_ending not in _LINE_ENDINGS:
            raise ValueError(f"Reply.line_ending must be one of '\\n', '\\r\\n', '\\r', got {self.line_ending!r}")
        _check_seconds("interval", self.interval, allow_inf=False)
        if self.drip and self.split_seed is not None:
            raise ValueError("Reply.drip and Reply.split_seed both split writes; set only one of them")

    def _check_faults(self) -> None:
        _check_count("close_after_tokens", self.close_after_tokens, 0)
        _check_count("close_after_bytes", self.close_after_bytes, 0)
        _check_count("malformed_at", self.malformed_at, 1)
        _check_count("error_event_at", self.error_event_at, 0)
        _check_count("oversized_line", self.oversized_line, 1)
        _check_seconds("stall_before_first_byte", self.stall_before_first_byte, allow_inf=True)
        if self.stall_after_tokens is not None:
            stall = tuple(self.stall_after_tokens)
            if len(stall) != 2:
                raise ValueError(f"Reply.stall_after_tokens must be (tokens, seconds), got {self.stall_after_tokens!r}")
            _check_count("stall_after_tokens[0]", stall[0], 0)
            _check_seconds("stall_after_tokens[1]", stall[1], allow_inf=True)
            self._set("stall_after_tokens", stall)

    def iter_tokens(self) -> Iterator[str]:
        """Yield the text tokens this reply streams, lazily (before any prefill is applied)."""
        if self.token_count is not None:
            return _counted_tokens(self.token_count)
        if self.tokens is not None:
            return iter(self.tokens)
        return iter(split_words(DEFAULT_TEXT if self.text is None else self.text))


_FAULT_DEFAULTS: Dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(Reply)
    if f.name
    in (
        "close_after_tokens",
        "close_after_bytes",
        "stall_before_first_byte",
        "stall_after_tokens",
        "malformed_at",
        "omit_end_marker",
        "error_event_at",
        "oversized_line",
        "refuse_prefill",
        "ignore_prefill",
    )
}


def fault_free(reply: Reply) -> Reply:
    """Return the reply with every fault field reset (content and framing kept)."""
    return dataclasses.replace(reply, **_FAULT_DEFAULTS)


def continuation(tokens: Callable[[], Iterator[str]], prefix: str) -> Iterator[str]:
    """Yield the tokens after ``prefix`` if the token stream starts with it, else all of them.

    This is how a model answers an assistant prefill: it continues the text
    it was given. A reply that does not start with the prefix is a model that
    ignored it, and streams in full. Lazy: at most ``len(prefix)`` characters
    are compared before the first token is yielded.
    """
    consumed = 0
    source = tokens()
    for token in source:
        need = prefix[consumed:]
        if token.startswith(need):
            rest = token[len(need):]
            if rest:
                yield rest
            yield from source
            return
        if not need.startswith(token):
            break
        consumed += len(token)
    else:
        if consumed == len(prefix):
            return
    yield from tokens()
