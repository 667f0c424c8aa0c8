"""Anthropic Messages, as the fake server speaks it.

Stream: https://docs.anthropic.com/en/docs/build-with-claude/streaming
(message_start, ping, content blocks, message_delta, message_stop).
Non-streaming: https://docs.anthropic.com/en/api/messages (a ``message`` object).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Mapping, Optional

from ._reply import Reply, split_words
from ._turns import redacted_data, sign
from ._wire import CREATED_AT, MODELS, Event, estimate_tokens, StreamContext, chain, dump, fragments, q, text_of, usage_of


def _anthropic(kind: str, **fields: Any) -> Event:
    return Event(dump({"type": kind, **fields}), kind.encode())


def stream(reply: Reply, ctx: StreamContext) -> Iterator[Event]:
    """Messages events, ``message_stop`` last."""
    inp = reply.usage[0] if reply.usage is not None else 12
    yield _anthropic("message_start", message={
        "id": f"msg_fake_{ctx.number}", "type": "message", "role": "assistant", "model": ctx.model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": _usage(inp, 1)})
    yield _anthropic("ping")
    index = 0
    if reply.redacted_thinking:
        yield _anthropic("content_block_start", index=index,
                         content_block={"type": "redacted_thinking", "data": redacted_data(ctx.number)})
        yield _anthropic("content_block_stop", index=index)
        index += 1
    if reply.thinking:
        yield _anthropic("content_block_start", index=index,
                         content_block={"type": "thinking", "thinking": "", "signature": ""})
        for piece in split_words(reply.thinking):
            yield _anthropic("content_block_delta", index=index, delta={"type": "thinking_delta", "thinking": piece})
        yield _anthropic("content_block_delta", index=index,
                         delta={"type": "signature_delta", "signature": sign(reply.thinking)})
        yield _anthropic("content_block_stop", index=index)
        index += 1
    streamed = 0
    tokens = ctx.tokens()
    first = next(tokens, None)
    if first is not None:
        yield _anthropic("content_block_start", index=index, content_block={"type": "text", "text": ""})
        pre = b'{"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":' % index
        for token in chain(first, tokens):
            streamed += 1
            yield Event(pre + q(token) + b"}}", b"content_block_delta", 1)
        yield _anthropic("content_block_stop", index=index)
        index += 1
    for number, (name, arguments) in enumerate(reply.tool_calls):
        yield _anthropic("content_block_start", index=index, content_block={
            "type": "tool_use", "id": f"toolu_fake_{ctx.number}_{number}", "name": name, "input": {}})
        for fragment in [""] + fragments(arguments):  # the API opens with an empty partial_json
            yield _anthropic("content_block_delta", index=index,
                             delta={"type": "input_json_delta", "partial_json": fragment})
        yield _anthropic("content_block_stop", index=index)
        index += 1
    stop = reply.finish_reason or ("tool_use" if reply.tool_calls else "end_turn")
    yield _anthropic("message_delta", delta={"stop_reason": stop, "stop_sequence": None},
                     usage={"output_tokens": usage_of(reply, streamed)[1]})
    yield _anthropic("message_stop")._replace(end=True)


def _usage(inp: int, out: int) -> Dict[str, Any]:
    # As the API sends it: the cache counters are present (0) even without caching.
    return {"input_tokens": inp, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": out, "service_tier": "standard"}


def complete(reply: Reply, ctx: StreamContext) -> Dict[str, Any]:
    """The non-streaming answer: one ``message`` object with every content block."""
    text, count = text_of(ctx)
    content: List[Dict[str, Any]] = []
    if reply.redacted_thinking:
        content.append({"type": "redacted_thinking", "data": redacted_data(ctx.number)})
    if reply.thinking:
        content.append({"type": "thinking", "thinking": reply.thinking, "signature": sign(reply.thinking)})
    if text:
        content.append({"type": "text", "text": text})
    for number, (name, arguments) in enumerate(reply.tool_calls):
        content.append({"type": "tool_use", "id": f"toolu_fake_{ctx.number}_{number}", "name": name,
                        "input": dict(arguments)})
    inp, out = usage_of(reply, count)
    return {"id": f"msg_fake_{ctx.number}", "type": "message", "role": "assistant", "model": ctx.model,
            "content": content, "stop_reason": reply.finish_reason or ("tool_use" if reply.tool_calls else "end_turn"),
            "stop_sequence": None, "usage": _usage(inp, out)}


def error_events(ctx: StreamContext, error_type: Optional[str], message: Optional[str],
                 next_sequence: int) -> List[Event]:
    """The in-stream ``error`` event."""
    kind = error_type or "overloaded_error"
    return [_anthropic("error", error={"type": kind, "message": message or "Overloaded"})]


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
          529: "overloaded_error"}


def error_body(status: int, message: str, error_type: Optional[str]) -> Dict[str, Any]:
    """The body of a non-2xx answer."""
    kind = error_type or _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def count_tokens(body: Any, headers: Mapping[str, str]) -> Dict[str, Any]:
    """``POST /v1/messages/count_tokens``: a deterministic estimate of the request's input."""
    return {"input_tokens": estimate_tokens([body.get("system"), body.get("messages"), body.get("tools")])}


def catalog(headers: Mapping[str, str]) -> Dict[str, Any]:
    """``GET /v1/models`` asked by an Anthropic client (it sends ``anthropic-version``)."""
    data = [{"type": "model", "id": name, "display_name": name, "created_at": CREATED_AT} for name in MODELS["anthropic"]]
    return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
