"""Anthropic Messages, as the fake server speaks it.

Stream: https://docs.anthropic.com/en/docs/build-with-claude/streaming
(message_start, ping, content blocks, message_delta, message_stop).
Non-streaming: https://docs.anthropic.com/en/api/messages (a ``message`` object).
"""

from __future__ import annotations

import base64
import hmac
from typing import Any, Dict, Iterator, List, Mapping, Optional

from ._reply import Reply, split_words
from ._turns import HadReasoning, sign
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


def redacted_data(number: int) -> str:
    """The opaque, signed ``data`` of the fake's ``redacted_thinking`` block for request ``number``."""
    payload = base64.b64encode(f"redacted thinking of request {number}".encode()).decode()
    return f"{payload}.{sign('redacted:' + payload)}"


def check_turns(body: Mapping[str, Any], had_reasoning: HadReasoning) -> Optional[str]:
    """The 400 message for assistant turns sent back altered, as the Messages API refuses them, or None.

    An assistant ``thinking`` block without a ``signature``, or whose
    signature does not match its text; a ``redacted_thinking`` block whose
    ``data`` was altered; with ``thinking`` enabled, a final assistant message
    with ``tool_use`` that does not start with its thinking block; a
    ``tool_result`` whose ``tool_use_id`` is not a ``tool_use`` of the
    previous assistant message.
    """
    thinking = body.get("thinking")
    enabled = isinstance(thinking, dict) and thinking.get("type") == "enabled"
    return _signed(body.get("messages")) or (_thinking_first(body.get("messages")) if enabled else None)


def _blocks(message: Any) -> List[Any]:
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, list) else []


def _signed(messages: Any) -> Optional[str]:
    if not isinstance(messages, list):
        return None
    previous_uses: List[str] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        uses: List[str] = []
        for j, block in enumerate(_blocks(message)):
            if not isinstance(block, dict):
                continue
            where = f"messages.{i}.content.{j}"
            kind = block.get("type")
            if role == "assistant" and kind == "thinking":
                signature = block.get("signature")
                if not isinstance(signature, str) or not signature:
                    return f"{where}.thinking.signature: Field required"
                if not hmac.compare_digest(signature, sign(str(block.get("thinking", "")))):
                    return f"{where}: Invalid `signature` in `thinking` block"
            elif role == "assistant" and kind == "redacted_thinking":
                payload, _, signature = str(block.get("data", "")).partition(".")
                if not hmac.compare_digest(signature, sign("redacted:" + payload)):
                    return f"{where}: Invalid `data` in `redacted_thinking` block"
            elif role == "assistant" and kind == "tool_use":
                uses.append(str(block.get("id")))
            elif role == "user" and kind == "tool_result" and block.get("tool_use_id") not in previous_uses:
                return (f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {block.get('tool_use_id')}. "
                        "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.")
        previous_uses = uses
    return None


def _thinking_first(messages: Any) -> Optional[str]:
    """With thinking enabled, the final assistant message of a tool loop must start with its thinking."""
    if not isinstance(messages, list):
        return None
    for i in range(len(messages) - 1, -1, -1):
        message = messages[i]
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        blocks = [b for b in _blocks(message) if isinstance(b, dict)]
        if not any(b.get("type") == "tool_use" for b in blocks):
            return None
        first = blocks[0].get("type")
        if first in ("thinking", "redacted_thinking"):
            return None
        return (f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{first}`. "
                "When `thinking` is enabled, a final `assistant` message must start with a thinking block "
                "(preceeding the lastmost set of `tool_use` and `tool_result` blocks).")
    return None
