"""Wire formats: one function per provider turning a reply into that provider's exact frames.

Strategy: each formatter is a generator of :class:`Event` (the JSON payload as
UTF-8 bytes, the SSE event name, how many text tokens it carries, whether it
is the end marker). It never builds the text as one string: tokens come from
``ctx.tokens()`` one at a time and each delta is a pre-encoded template plus
the JSON-escaped token, which keeps the server at hundreds of thousands of
tokens per second. The encoders turn events into SSE blocks or JSON lines.

Formats follow the providers' documented streams (field order aside):
  * OpenAI chat: https://platform.openai.com/docs/api-reference/chat-streaming
    (role chunk, content deltas, ``tool_calls`` deltas by index, finish chunk,
    a ``choices: []`` usage chunk only with ``stream_options.include_usage``,
    ``data: [DONE]``).
  * OpenAI Responses: https://platform.openai.com/docs/api-reference/responses-streaming
    (typed events with a 0-based ``sequence_number``, ending with
    ``response.completed`` / ``response.incomplete``; no ``[DONE]``).
  * Anthropic: https://docs.anthropic.com/en/docs/build-with-claude/streaming
    (message_start, ping, content blocks, message_delta, message_stop).
  * Ollama: https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion
    (JSON lines, the last one ``"done": true`` with ``done_reason`` and counts).

Deterministic on purpose: ids count requests (``chatcmpl-fake-1``), times are
fixed, so a test can assert exact bytes.

Must never: import ``llmstream``, or join a reply's tokens into one string
(except the Responses closing events, whose format repeats the full text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from ._reply import Reply, split_words
from ._turns import redacted_data, sign

__all__ = [
    "CONTENT_TYPES", "Event", "FORMATTERS", "PROVIDERS", "StreamContext", "encoder", "error_body",
    "error_events", "keepalive", "oversized",
]

PROVIDERS = ("openai", "openai-responses", "anthropic", "ollama")
CONTENT_TYPES = {
    "openai": "text/event-stream; charset=utf-8",
    "openai-responses": "text/event-stream; charset=utf-8",
    "anthropic": "text/event-stream; charset=utf-8",
    "ollama": "application/x-ndjson",
}
CREATED = 1735689600  # 2025-01-01T00:00:00Z, fixed so streams are byte-for-byte reproducible
CREATED_AT = "2025-01-01T00:00:00Z"
FRAGMENT = 8  # characters of tool-call JSON per arguments delta

_quote = json.JSONEncoder(ensure_ascii=False).encode  # str -> JSON string literal, C fast path


def _q(text: str) -> bytes:
    return _quote(text).encode("utf-8")


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Event(NamedTuple):
    """One provider message: an SSE event (name + data) or one JSON line (data)."""

    data: bytes
    name: bytes = b""
    tokens: int = 0
    end: bool = False


@dataclass(frozen=True)
class StreamContext:
    """What a formatter needs from the request: who asked, and which tokens to stream."""

    provider: str
    model: str
    number: int  # the request's arrival number, used in every id
    include_usage: bool
    tokens: Callable[[], Iterator[str]]


def _usage(reply: Reply, streamed: int) -> Tuple[int, int]:
    return reply.usage if reply.usage is not None else (12, streamed)


def _fragments(arguments: Any) -> List[str]:
    text = json.dumps(arguments, ensure_ascii=False)
    return [text[i:i + FRAGMENT] for i in range(0, len(text), FRAGMENT)] or [""]


# --- OpenAI chat completions -------------------------------------------------------------


def openai_chat(reply: Reply, ctx: StreamContext) -> Iterator[Event]:
    """Chat Completions chunks, ``data: [DONE]`` last."""
    head = b'{"id":"chatcmpl-fake-%d","object":"chat.completion.chunk","created":%d,"model":%s,"choices":[' % (
        ctx.number, CREATED, _q(ctx.model))
    tail = b"]" + (b',"usage":null' if ctx.include_usage else b"") + b"}"

    def chunk(delta: bytes, finish: bytes = b"null") -> bytes:
        return head + b'{"index":0,"delta":' + delta + b',"logprobs":null,"finish_reason":' + finish + b"}" + tail

    yield Event(chunk(b'{"role":"assistant","content":""}'))
    for piece in split_words(reply.thinking or ""):
        yield Event(chunk(b'{"reasoning_content":' + _q(piece) + b"}"))
    pre = head + b'{"index":0,"delta":{"content":'
    post = b'},"logprobs":null,"finish_reason":null}' + tail
    streamed = 0
    for token in ctx.tokens():
        streamed += 1
        yield Event(pre + _q(token) + post, tokens=1)
    for index, (name, arguments) in enumerate(reply.tool_calls):
        call_id = b'"call_fake_%d_%d"' % (ctx.number, index)
        yield Event(chunk(b'{"tool_calls":[{"index":%d,"id":%s,"type":"function","function":{"name":%s,"arguments":""}}]}'
                          % (index, call_id, _q(name))))
        for fragment in _fragments(arguments):
            yield Event(chunk(b'{"tool_calls":[{"index":%d,"function":{"arguments":%s}}]}' % (index, _q(fragment))))
    finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    yield Event(chunk(b"{}", _q(finish)))
    if ctx.include_usage:
        prompt, completion = _usage(reply, streamed)
        yield Event(head + b'],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}'
                    % (prompt, completion, prompt + completion))
    yield Event(b"[DONE]", end=True)


# --- OpenAI Responses ----------------------------------------------------------------------


def _response(ctx: StreamContext, status: str, output: List[Any], usage: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    return {"id": f"resp_fake_{ctx.number}", "object": "response", "created_at": CREATED, "status": status,
            "error": None, "incomplete_details": None, "model": ctx.model, "output": output, "usage": usage}


class _Seq:
    """The Responses ``sequence_number``: 0 for ``response.created``, +1 per event."""

    def __init__(self) -> None:
        self.value = -1

    def event(self, kind: str, **fields: Any) -> Event:
        self.value += 1
        return Event(_dump({"type": kind, "sequence_number": self.value, **fields}), kind.encode())


def _responses_reasoning(seq: _Seq, ctx: StreamContext, thinking: str, index: int) -> Iterator[Event]:
    item = {"id": f"rs_fake_{ctx.number}", "type": "reasoning", "summary": [],
            "encrypted_content": sign(f"rs_fake_{ctx.number}")}
    where = {"item_id": item["id"], "output_index": index}
    yield seq.event("response.output_item.added", output_index=index, item=item)
    yield seq.event("response.reasoning_summary_part.added", **where, summary_index=0,
                    part={"type": "summary_text", "text": ""})
    for piece in split_words(thinking):
        yield seq.event("response.reasoning_summary_text.delta", **where, summary_index=0, delta=piece)
    part = {"type": "summary_text", "text": thinking}
    yield seq.event("response.reasoning_summary_text.done", **where, summary_index=0, text=thinking)
    yield seq.event("response.reasoning_summary_part.done", **where, summary_index=0, part=part)
    yield seq.event("response.output_item.done", output_index=index, item={**item, "summary": [part]})


def _responses_message(seq: _Seq, ctx: StreamContext, tokens: Iterator[str], index: int,
                       parts: List[str]) -> Iterator[Event]:
    item_id = f"msg_fake_{ctx.number}"
    item = {"id": item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    yield seq.event("response.output_item.added", output_index=index, item=item)
    yield seq.event("response.content_part.added", **where,
                    part={"type": "output_text", "annotations": [], "logprobs": [], "text": ""})
    pre = b'{"type":"response.output_text.delta","sequence_number":%d,"item_id":"' + item_id.encode()
    pre += b'","output_index":%d,"content_index":0,"delta":' % index
    for token in tokens:
        parts.append(token)
        seq.value += 1
        yield Event(pre % seq.value + _q(token) + b',"logprobs":[]}', b"response.output_text.delta", 1)
    text = "".join(parts)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    yield seq.event("response.output_text.done", **where, text=text, logprobs=[])
    yield seq.event("response.content_part.done", **where, part=part)
    yield seq.event("response.output_item.done", output_index=index,
                    item={**item, "status": "completed", "content": [part]})


def _responses_call(seq: _Seq, ctx: StreamContext, call: Tuple[str, Any], number: int, index: int) -> Iterator[Event]:
    name, arguments = call
    item = {"id": f"fc_fake_{ctx.number}_{number}", "type": "function_call", "status": "in_progress",
            "arguments": "", "call_id": f"call_fake_{ctx.number}_{number}", "name": name}
    yield seq.event("response.output_item.added", output_index=index, item=item)
    for fragment in _fragments(arguments):
        yield seq.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                        delta=fragment)
    text = json.dumps(arguments, ensure_ascii=False)
    yield seq.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                    name=name, arguments=text)
    yield seq.event("response.output_item.done", output_index=index,
                    item={**item, "status": "completed", "arguments": text})


def openai_responses(reply: Reply, ctx: StreamContext) -> Iterator[Event]:
    """Responses API events, ``response.completed`` (or ``response.incomplete``) last."""
    seq = _Seq()
    yield seq.event("response.created", response=_response(ctx, "in_progress", [], None))
    yield seq.event("response.in_progress", response=_response(ctx, "in_progress", [], None))
    index = 0
    if reply.thinking:
        yield from _responses_reasoning(seq, ctx, reply.thinking, index)
        index += 1
    tokens = ctx.tokens()
    first = next(tokens, None)
    parts: List[str] = []
    if first is not None:
        yield from _responses_message(seq, ctx, _chain(first, tokens), index, parts)
        index += 1
    for number, call in enumerate(reply.tool_calls):
        yield from _responses_call(seq, ctx, call, number, index + number)
    inp, out = _usage(reply, len(parts))
    usage = {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": out,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": inp + out}
    output = _responses_output(reply, ctx, "".join(parts))
    if reply.finish_reason in (None, "completed", "stop", "tool_calls"):
        final = seq.event("response.completed", response=_response(ctx, "completed", output, usage))
    else:
        response = _response(ctx, "incomplete", output, usage)
        response["incomplete_details"] = {"reason": reply.finish_reason}
        final = seq.event("response.incomplete", response=response)
    yield final._replace(end=True)


def _responses_output(reply: Reply, ctx: StreamContext, text: str) -> List[Any]:
    output: List[Any] = []
    if reply.thinking:
        output.append({"id": f"rs_fake_{ctx.number}", "type": "reasoning",
                       "summary": [{"type": "summary_text", "text": reply.thinking}],
                       "encrypted_content": sign(f"rs_fake_{ctx.number}")})
    if text:
        output.append({"id": f"msg_fake_{ctx.number}", "type": "message", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]})
    for number, (name, arguments) in enumerate(reply.tool_calls):
        output.append({"id": f"fc_fake_{ctx.number}_{number}", "type": "function_call", "status": "completed",
                       "arguments": json.dumps(arguments, ensure_ascii=False),
                       "call_id": f"call_fake_{ctx.number}_{number}", "name": name})
    return output


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


# --- Anthropic Messages ----------------------------------------------------------------------


def _anthropic(kind: str, **fields: Any) -> Event:
    return Event(_dump({"type": kind, **fields}), kind.encode())


def anthropic(reply: Reply, ctx: StreamContext) -> Iterator[Event]:
    """Messages events, ``message_stop`` last."""
    inp = reply.usage[0] if reply.usage is not None else 12
    yield _anthropic("message_start", message={
        "id": f"msg_fake_{ctx.number}", "type": "message", "role": "assistant", "model": ctx.model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": inp, "output_tokens": 1}})
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
        for token in _chain(first, tokens):
            streamed += 1
            yield Event(pre + _q(token) + b"}}", b"content_block_delta", 1)
        yield _anthropic("content_block_stop", index=index)
        index += 1
    for number, (name, arguments) in enumerate(reply.tool_calls):
        yield _anthropic("content_block_start", index=index, content_block={
            "type": "tool_use", "id": f"toolu_fake_{ctx.number}_{number}", "name": name, "input": {}})
        for fragment in [""] + _fragments(arguments):  # the API opens with an empty partial_json
            yield _anthropic("content_block_delta", index=index,
                             delta={"type": "input_json_delta", "partial_json": fragment})
        yield _anthropic("content_block_stop", index=index)
        index += 1
    stop = reply.finish_reason or ("tool_use" if reply.tool_calls else "end_turn")
    yield _anthropic("message_delta", delta={"stop_reason": stop, "stop_sequence": None},
                     usage={"output_tokens": _usage(reply, streamed)[1]})
    yield _anthropic("message_stop")._replace(end=True)


# --- Ollama /api/chat ------------------------------------------------------------------------------


def ollama(reply: Reply, ctx: StreamContext) -> Iterator[Event]:
    """JSON lines, the ``"done": true`` line last."""
    head = b'{"model":%s,"created_at":"%s","message":{"role":"assistant","content":' % (_q(ctx.model), CREATED_AT.encode())
    for piece in split_words(reply.thinking or ""):
        yield Event(head + b'"","thinking":' + _q(piece) + b'},"done":false}')
    streamed = 0
    for token in ctx.tokens():
        streamed += 1
        yield Event(head + _q(token) + b'},"done":false}', tokens=1)
    for number, (name, arguments) in enumerate(reply.tool_calls):
        call = {"id": f"call_fake_{ctx.number}_{number}",
                "function": {"index": number, "name": name, "arguments": dict(arguments)}}
        yield Event(head + b'"","tool_calls":[' + _dump(call) + b']},"done":false}')
    inp, out = _usage(reply, streamed)
    final = {"done_reason": reply.finish_reason or "stop", "done": True, "total_duration": 5_000_000,
             "load_duration": 1_000_000, "prompt_eval_count": inp, "prompt_eval_duration": 1_000_000,
             "eval_count": out, "eval_duration": 3_000_000}
    yield Event(head + b'""},' + _dump(final)[1:], end=True)


FORMATTERS: Dict[str, Callable[[Reply, StreamContext], Iterator[Event]]] = {
    "openai": openai_chat, "openai-responses": openai_responses, "anthropic": anthropic, "ollama": ollama,
}


# --- errors, keep-alives, encoders -------------------------------------------------------------------


def error_events(ctx: StreamContext, error_type: Optional[str], message: Optional[str],
                 next_sequence: int) -> List[Event]:
    """The provider's in-stream error; ``next_sequence`` is the Responses sequence number to use."""
    if ctx.provider == "anthropic":
        kind = error_type or "overloaded_error"
        return [_anthropic("error", error={"type": kind, "message": message or "Overloaded"})]
    text = message or "The server had an error while processing your request. Sorry about that!"
    if ctx.provider == "ollama":
        return [Event(_dump({"error": text}))]
    kind = error_type or "server_error"
    if ctx.provider == "openai":
        return [Event(_dump({"error": {"message": text, "type": kind, "param": None, "code": None}}))]
    seq = _Seq()
    seq.value = next_sequence - 1
    failed = _response(ctx, "failed", [], None)
    failed["error"] = {"code": kind, "message": text}
    return [seq.event("error", code=kind, message=text, param=None), seq.event("response.failed", response=failed)]


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                    529: "overloaded_error"}
_OPENAI_TYPES: Dict[int, Tuple[str, Optional[str]]] = {
    401: ("invalid_request_error", "invalid_api_key"), 429: ("requests", "rate_limit_exceeded")}


def reason(status: int) -> str:
    """The HTTP reason phrase, including Anthropic's 529."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else "Error"


def error_body(provider: str, status: int, message: Optional[str], error_type: Optional[str]) -> bytes:
    """The JSON body of a non-2xx answer, in the provider's error format."""
    text = message or reason(status)
    if provider == "ollama":
        return _dump({"error": text})
    if provider == "anthropic":
        kind = error_type or _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return _dump({"type": "error", "error": {"type": kind, "message": text}})
    default = _OPENAI_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    kind, code = (error_type, None) if error_type else default
    return _dump({"error": {"message": text, "type": kind, "param": None, "code": code}})


def keepalive(provider: str, line_ending: bytes) -> bytes:
    """What the provider sends while idle: an SSE comment, Anthropic's ping, nothing for Ollama."""
    if provider == "ollama":
        return b""
    if provider == "anthropic":
        return b"event: ping" + line_ending + b'data: {"type": "ping"}' + line_ending * 2
    return b": keep-alive" + line_ending * 2


def oversized(provider: str, size: int, line_ending: bytes, model: str) -> bytes:
    """One line of exactly ``size`` bytes (before its line ending) that a decoder must skip or refuse."""
    if provider != "ollama":
        return b":" + b"x" * (size - 1) + line_ending * 2
    head = b'{"model":%s,"created_at":"%s","message":{"role":"assistant","content":""},"done":false,"padding":"' % (
        _q(model), CREATED_AT.encode())
    return head + b"x" * max(0, size - len(head) - 2) + b'"}' + line_ending


def encoder(provider: str, line_ending: bytes, ids: bool, id_prefix: str = "") -> Callable[[Event, int], bytes]:
    """Return ``encode(event, index) -> bytes``: an SSE block, or one JSON line for Ollama.

    With ``ids``, each SSE block has ``id: {id_prefix}{index}`` (UTF-8).
    """
    le = line_ending
    if provider == "ollama":
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
