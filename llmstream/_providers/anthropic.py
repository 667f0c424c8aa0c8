"""Anthropic Messages API: the streaming request and the decoder of its events.

Spec: https://docs.anthropic.com/en/docs/build-with-claude/streaming
(event flow) and https://docs.anthropic.com/en/api/messages (request body).

Strategy: the stream is SSE; every event names its type twice, in the SSE
``event:`` field and in the JSON ``type`` field. The JSON field is the one the
SDKs switch on, so it wins; the SSE name is the fallback. One stream is::

    message_start                      usage.input_tokens
    (content_block_start
     content_block_delta*              text_delta | input_json_delta | thinking_delta | signature_delta
     content_block_stop)*
    message_delta+                     stop_reason, cumulative usage
    message_stop                       the end-of-stream marker

with ``ping`` events anywhere and ``error`` events in place of the rest.

Agent loops: at each ``content_block_stop`` the block is emitted whole as an
:class:`OutputItem` in the request format -- ``thinking`` with its text and
the ``signature`` of its ``signature_delta``, ``redacted_thinking`` with its
``data``, ``text`` (its text filled in by the stream), ``tool_use`` with the
parsed ``input`` -- so ``result.message`` sends signed thinking back
unchanged; the API answers 400 to a thinking block whose signature is
missing or altered.

Invariants:
  * ``message_stop`` is the only end marker: ``close()`` before it raises
    ``IncompleteStreamError``, whatever else arrived.
  * A tool call's arguments are streamed as ``ToolCallDelta`` fragments and
    then given once, whole, as a ``ToolCall`` at its ``content_block_stop``.
  * Unknown event and delta types are ignored, never errors: "we may add new
    event types, and your code should handle unknown event types gracefully"
    (the streaming docs, per Anthropic's versioning policy).
  * Every field read is checked (``_shape``): a wrong type is a
    ``MalformedStreamError`` naming the field; token counts are bounded.

Never: import IO modules, log, or guess at text the server did not send.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .._events import Event, Finish, OutputItem, TextDelta, ThinkingDelta, ToolCall, ToolCallDelta, Usage
from .._exceptions import IncompleteStreamError, MalformedStreamError, ProviderError
from .._fastjson import loads as fast_loads
from ._base import BaseProvider, Message, RequestSpec, ServerSentEvent, Turn, drop_none
from ._shape import field, optional, token_count

__all__ = ["AnthropicProvider", "AnthropicDecoder"]

API_VERSION = "2023-06-01"
#: The Messages API requires ``max_tokens``; this default is what its own examples use.
DEFAULT_MAX_TOKENS = 1024
#: Retrying helps with these in-stream error types; the others (invalid_request_error,
#: authentication_error...) would fail the same way again.
RETRYABLE_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error"})
_EXCERPT = 80


def _excerpt(text: str) -> str:
    return repr(text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else ""))


class AnthropicProvider(BaseProvider):
    """The Anthropic Messages API (``POST /v1/messages`` with ``"stream": true``).

    The base URL is the host without ``/v1``, as in the ``anthropic`` SDK
    (``ANTHROPIC_BASE_URL=https://api.anthropic.com``).

    Usage::

        provider = AnthropicProvider()
        spec = provider.build_request(base_url=provider.default_base_url, api_key=key,
                                      model="claude-sonnet-4-5", messages=messages, params={})
        decoder = StreamDecoder(provider.new_decoder(), framing=provider.framing)
    """

    name = "anthropic"
    framing = "sse"
    api_key_env: Optional[str] = "ANTHROPIC_API_KEY"
    base_url_env: Optional[str] = "ANTHROPIC_BASE_URL"
    default_base_url = "https://api.anthropic.com"
    requires_api_key = True
    #: The API guarantees that a final assistant message (prefill) is continued,
    #: so resume="auto" tries continue before replay (``_resume.PREFILL_GUARANTEED``).
    supports_continue = "prefill"
    env_vars = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")
    default_model = "claude-sonnet-4-5"
    fake_format = "anthropic"
    otel_name = "anthropic"

    def normalize_base_url(self, base_url: str) -> str:
        """Return ``base_url`` without its trailing slashes."""
        return base_url.rstrip("/")

    def build_request(
        self,
        *,
        base_url: str,
        api_key: Optional[str],
        model: str,
        messages: List[Message],
        params: Mapping[str, Any],
    ) -> RequestSpec:
        """Build the streaming ``POST {base_url}/v1/messages`` request.

        Messages with role ``"system"`` move to the top-level ``system`` field
        (joined with a blank line), because the Messages API rejects them in
        ``messages``. ``params`` override the body's keys; a ``None`` value
        removes one (``max_tokens=None`` sends no ``max_tokens``).

        Raises:
            ValueError: ``params`` has a ``system`` key and ``messages`` has
                system messages too: the two would silently compete.
        """
        system, chat = _split_system(messages)
        if system is not None and "system" in params:
            raise ValueError(
                "got a system prompt twice: as system=... and as a message with role 'system'; "
                "the Messages API takes one top-level system prompt, so pass only one of them"
            )
        body: Dict[str, Any] = {"model": model, "messages": chat, "max_tokens": DEFAULT_MAX_TOKENS, "stream": True}
        if system is not None:
            body["system"] = system
        body.update(params)
        headers = {
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
            "accept": "text/event-stream",
        }
        if api_key:
            headers["x-api-key"] = api_key
        url = self.normalize_base_url(base_url) + "/v1/messages"
        return RequestSpec(method="POST", url=url, headers=headers, json=drop_none(body))

    def new_decoder(self) -> AnthropicDecoder:
        """Return a fresh decoder for one stream."""
        return AnthropicDecoder()

    def error_from_body(self, body: str) -> Optional[ProviderError]:
        """Parse ``{"type": "error", "error": {"type", "message"}}``; None if the body is not that."""
        try:
            obj = fast_loads(body)
        except ValueError:  # not JSON, or nested too deeply to be an error object
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("error"), dict):
            return None
        return _provider_error(obj)

    def is_retryable(self, error: ProviderError) -> bool:
        """True for ``overloaded_error``, ``api_error`` and ``rate_limit_error``."""
        return error.type in RETRYABLE_ERROR_TYPES

    def assistant_message(self, turn: Turn) -> Dict[str, Any]:
        """The turn as ``{"role": "assistant", "content": [blocks]}``: signed thinking, text, tool_use, in order.

        Empty text blocks are left out (the API refuses them). A tool_use
        block carries the id of the matching ``ToolCall`` (they differ only
        after a replay, where the caller keeps the first attempt's). Without
        blocks (a decoder that emitted none), the text and tool calls are used.
        """
        blocks = [dict(b) for b in turn.items if not (b.get("type") == "text" and not b.get("text"))]
        # After a replay the caller's ToolCalls keep the first attempt's ids (the
        # tool results it builds use them): the tool_use blocks must say the same.
        uses = [b for b in blocks if b.get("type") == "tool_use"]
        for block, call in zip(uses, turn.tool_calls):
            block["id"] = call.id or block.get("id", "")
        if not turn.items:
            blocks = [{"type": "text", "text": turn.text}] if turn.text else []
            blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": _input(c.arguments)}
                       for c in turn.tool_calls]
        return {"role": "assistant", "content": blocks}

    @staticmethod
    def split_prefill(delivered_text: str) -> Tuple[str, str]:
        """Split delivered text into the prefill to send and the whitespace held back.

        The API refuses an assistant prefill that ends in whitespace ("final
        assistant content cannot end with trailing whitespace"), so
        :meth:`continue_request` sends ``delivered_text.rstrip()``. The caller
        has already received the stripped whitespace, while the model's
        continuation usually begins with whitespace of its own (prefill
        ``"Hello"`` continues ``" world"``). To deliver exactly once, drop from
        the start of the continuation the part that matches ``held_back``.

        Returns:
            ``(prefill, held_back)`` with ``prefill + held_back == delivered_text``.
        """
        prefill = delivered_text.rstrip()
        return prefill, delivered_text[len(prefill) :]

    def continue_request(self, spec: RequestSpec, delivered_text: str) -> RequestSpec:
        """Return a copy of ``spec`` asking the model to continue ``delivered_text``.

        The delivered text becomes the final assistant message (a prefill), so
        the new stream carries only the continuation. Trailing whitespace is
        held back (see :meth:`split_prefill`). If the messages already end
        with an assistant prefill of text, the delivered text extends it,
        since the model was continuing it. If nothing but whitespace was
        delivered, the request is returned unchanged (an empty prefill is
        rejected, and continuing nothing is asking again).

        Note: with extended thinking enabled the API refuses a prefill; the
        caller then falls back to replaying.
        """
        prefill, _ = self.split_prefill(delivered_text)
        if not prefill or spec.json is None:
            return spec
        messages = list(spec.json.get("messages", []))
        last = messages[-1] if messages else None
        if last is not None and last.get("role") == "assistant" and isinstance(last.get("content"), str):
            merged = (last["content"] + delivered_text).rstrip()
            messages[-1] = {**last, "content": merged}
        else:
            messages.append({"role": "assistant", "content": prefill})
        return spec.replace(json={**spec.json, "messages": messages})


def _split_system(messages: List[Message]) -> Tuple[Any, List[Message]]:
    """Move ``role: system`` messages out of ``messages``: (system value or None, the rest)."""
    systems = [m.get("content", "") for m in messages if m.get("role") == "system"]
    chat = [m for m in messages if m.get("role") != "system"]
    if not systems:
        return None, chat
    if all(isinstance(s, str) for s in systems):
        return "\n\n".join(systems), chat
    # Some content is a list of blocks (for cache_control, say): the system
    # field accepts a list of text blocks too, so keep every block as given.
    blocks: List[Any] = []
    for s in systems:
        blocks.extend([{"type": "text", "text": s}] if isinstance(s, str) else s)
    return blocks, chat


def _provider_error(obj: Mapping[str, Any]) -> ProviderError:
    error = obj.get("error")
    if not isinstance(error, dict):
        return ProviderError("Anthropic reported an error without details", type=None)
    message = error.get("message") or "Anthropic reported an error without a message"
    error_type = error.get("type")
    return ProviderError(str(message), type=error_type if isinstance(error_type, str) else None)


@dataclasses.dataclass
class _ToolBlock:
    index: int
    id: str
    name: str
    parts: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Block:
    """A content block other than tool_use, while it streams: kept whole for ``result.message``."""

    item: Dict[str, Any]
    #: The thinking text so far (thinking blocks only; text blocks take the stream's text).
    parts: List[str] = dataclasses.field(default_factory=list)


def _input(arguments: Any) -> Dict[str, Any]:
    """A tool_use block's ``input``: the parsed arguments, or ``{}`` when they are not a JSON object."""
    return arguments if isinstance(arguments, dict) else {}


def _where(event: Mapping[str, Any]) -> str:
    return f"Anthropic {event.get('type')!r} event"


class AnthropicDecoder:
    """Per-stream state machine: Anthropic ``ServerSentEvent`` in, unified events out.

    Raises (from ``feed`` or ``close``; staying failed is
    :class:`~llmstream._providers._base.StreamDecoder`'s job):
        ProviderError: an ``error`` event (``.type`` is e.g. ``"overloaded_error"``).
        MalformedStreamError: an event whose data is not a JSON object of the expected shape.
        IncompleteStreamError: ``close()`` before ``message_stop``.
    """

    def __init__(self) -> None:
        self._finished = False
        self._start_usage: Dict[str, Any] = {}
        self._stop_reason: Optional[str] = None
        #: The message ``id`` and ``model`` from ``message_start`` (observability).
        self.response_id: Optional[str] = None
        self.response_model: Optional[str] = None
        self._tools: Dict[int, _ToolBlock] = {}  # keyed by the content block index
        self._blocks: Dict[int, _Block] = {}  # the other open blocks, by index
        self._next_tool_index = 0
        self._handlers: Dict[str, Callable[[Dict[str, Any]], List[Event]]] = {
            "message_start": self._message_start,
            "content_block_start": self._block_start,
            "content_block_delta": self._block_delta,
            "content_block_stop": self._block_stop,
            "message_delta": self._message_delta,
            "message_stop": self._message_stop,
            "error": self._on_error,
        }

    @property
    def finished(self) -> bool:
        """True once ``message_stop`` was seen."""
        return self._finished

    def feed(self, message: ServerSentEvent) -> List[Event]:
        """Decode one SSE event; return the unified events it produces (often none)."""
        if self._finished:
            return []  # nothing follows message_stop; a stray ping must not break a finished stream
        obj = self._parse(message)
        kind = obj.get("type")
        if kind.__class__ is not str:  # the message is built only when needed: this runs per token
            kind = optional(obj, "type", str, f"Anthropic {message.event!r} event")
        kind = kind or message.event
        handler = self._handlers.get(kind)
        # Unknown types (ping included) are ignored: see the module contract.
        return handler(obj) if handler is not None else []

    def close(self) -> List[Event]:
        """End of input: raise ``IncompleteStreamError`` unless ``message_stop`` was seen."""
        if not self._finished:
            raise IncompleteStreamError("the Anthropic stream ended before its message_stop event")
        return []

    @staticmethod
    def _parse(message: ServerSentEvent) -> Dict[str, Any]:
        try:
            obj = fast_loads(message.data)
        except ValueError:  # not JSON, or nested too deeply
            raise MalformedStreamError(
                f"invalid JSON in Anthropic {message.event!r} event: {_excerpt(message.data)}"
            ) from None
        if not isinstance(obj, dict):
            raise MalformedStreamError(f"Anthropic {message.event!r} event is not a JSON object: {_excerpt(message.data)}")
        return obj

    def _message_start(self, obj: Dict[str, Any]) -> List[Event]:
        where = _where(obj)
        message = field(obj, "message", dict, where)
        usage = optional(message, "usage", dict, where, "message.")
        for name in ("id", "model"):
            value = message.get(name)
            if isinstance(value, str) and 0 < len(value) <= 256:
                setattr(self, f"response_{name}", value)
        if usage is None:
            return []
        event = _usage(usage, where, "message.usage.")
        self._start_usage = usage
        return [event]

    def _block_start(self, obj: Dict[str, Any]) -> List[Event]:
        where = _where(obj)
        index = field(obj, "index", int, where)
        block = field(obj, "content_block", dict, where)
        kind = optional(block, "type", str, where, "content_block.")
        if kind == "tool_use":
            call_id = optional(block, "id", str, where, "content_block.") or ""
            name = optional(block, "name", str, where, "content_block.") or ""
            tool = _ToolBlock(self._next_tool_index, call_id, name)
            self._next_tool_index += 1
            self._tools[index] = tool
            return [ToolCallDelta(tool.index, tool.id, tool.name, "")]
        # A text or thinking block starts empty in practice; keep any text it does carry.
        if kind == "text":
            text = optional(block, "text", str, where, "content_block.")
            self._blocks[index] = _Block({"type": "text", "text": ""})
            return [TextDelta(text)] if text else []
        if kind == "thinking":
            thinking = optional(block, "thinking", str, where, "content_block.")
            signature = optional(block, "signature", str, where, "content_block.") or ""
            self._blocks[index] = _Block({"type": "thinking", "thinking": "", "signature": signature},
                                         [thinking] if thinking else [])
            return [ThinkingDelta(thinking)] if thinking else []
        if kind == "redacted_thinking":
            optional(block, "data", str, where, "content_block.")  # checked: it goes back as it came
        # redacted_thinking, server tool blocks and future types go back as they started.
        self._blocks[index] = _Block(dict(block))
        return []

    def _block_delta(self, obj: Dict[str, Any]) -> List[Event]:
        delta = obj.get("delta")
        if obj.get("index").__class__ is int and delta.__class__ is dict and delta.get("type") == "text_delta":
            text = delta.get("text")
            if text.__class__ is str:  # the hot path, every field checked; anything else is reported below
                return [TextDelta(text)] if text else []
        where = _where(obj)
        index = field(obj, "index", int, where)
        delta = field(obj, "delta", dict, where)
        kind = optional(delta, "type", str, where, "delta.")
        if kind == "text_delta":
            text = field(delta, "text", str, where, "delta.")
            return [TextDelta(text)] if text else []
        if kind == "input_json_delta":
            fragment = field(delta, "partial_json", str, where, "delta.")
            tool = self._tools.get(index)
            if tool is None or not fragment:
                # A server tool's input is no ToolCall, but it goes back whole in result.message.
                block = self._blocks.get(index)
                if block is not None and fragment:
                    block.parts.append(fragment)
                return []
            tool.parts.append(fragment)
            return [ToolCallDelta(tool.index, None, None, fragment)]
        if kind == "thinking_delta":
            thinking = field(delta, "thinking", str, where, "delta.")
            block = self._blocks.get(index)
            if block is not None and thinking:
                block.parts.append(thinking)
            return [ThinkingDelta(thinking)] if thinking else []
        if kind == "signature_delta":
            signature = field(delta, "signature", str, where, "delta.")
            block = self._blocks.get(index)
            if block is not None:
                block.item["signature"] = block.item.get("signature", "") + signature
        return []  # citations_delta and future delta types carry no text

    def _block_stop(self, obj: Dict[str, Any]) -> List[Event]:
        index = field(obj, "index", int, _where(obj))
        tool = self._tools.pop(index, None)
        if tool is None:
            block = self._blocks.pop(index, None)
            if block is None:
                return []
            if block.item.get("type") == "text":
                return [OutputItem(block.item, text_key="text")]
            if block.item.get("type") == "thinking":
                block.item["thinking"] = "".join(block.parts)
            elif block.parts:
                try:
                    block.item["input"] = fast_loads("".join(block.parts))
                except ValueError:
                    pass  # cut short: the block goes back with the input it started with
            return [OutputItem(block.item)]
        raw = "".join(tool.parts)
        try:
            # A call without arguments streams no fragment at all: that means {}.
            arguments = fast_loads(raw) if raw else {}
        except ValueError:
            arguments = None  # cut short (max_tokens), invalid or nested too deeply: the raw text is kept
        item = {"type": "tool_use", "id": tool.id, "name": tool.name, "input": _input(arguments)}
        return [ToolCall(tool.index, tool.id, tool.name, arguments, raw), OutputItem(item)]

    def _message_delta(self, obj: Dict[str, Any]) -> List[Event]:
        where = _where(obj)
        delta = optional(obj, "delta", dict, where) or {}
        stop_reason = optional(delta, "stop_reason", str, where, "delta.")
        usage = optional(obj, "usage", dict, where)
        # The figures here are cumulative; input_tokens may be absent, then
        # message_start's count stands. raw merges both, so the last Usage is complete.
        event = None if usage is None else _usage({**self._start_usage, **usage}, where, "usage.")
        if stop_reason:  # checked whole before any state changes
            self._stop_reason = stop_reason
        return [] if event is None else [event]

    def _message_stop(self, obj: Dict[str, Any]) -> List[Event]:
        self._finished = True
        # message_delta always brings stop_reason before message_stop; "unknown" marks a server that did not.
        return [Finish(self._stop_reason or "unknown")]

    def _on_error(self, obj: Dict[str, Any]) -> List[Event]:
        raise _provider_error(obj)


def _usage(raw: Dict[str, Any], where: str, prefix: str) -> Usage:
    # Anthropic's input_tokens excludes the cache: reads and writes are counted apart.
    return Usage(
        input_tokens=token_count(raw, "input_tokens", where, prefix),
        output_tokens=token_count(raw, "output_tokens", where, prefix),
        raw=raw,
        cached_input_tokens=token_count(raw, "cache_read_input_tokens", where, prefix),
        cache_write_tokens=token_count(raw, "cache_creation_input_tokens", where, prefix),
    )
